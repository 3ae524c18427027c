//! What Kafka Connect does to a Debezium outbox value on its way to bytes, in three steps
//! kept apart so each can be checked against the Java it stands for:
//!
//! - [`parse`]: Jackson's `ObjectMapper.readTree` with its defaults: object fields in
//!   document order (a repeated name keeps its first place and its last value), integers
//!   as `int` when they fit 32 bits, `long` when they fit 64, else a big integer; every
//!   number with a fraction or an exponent as a `double`;
//! - [`expand`]: Debezium's `table.expand.json.payload` (`JsonSchemaData` of Debezium
//!   3.x): a schema inferred from the document, then the document read through it. Null
//!   fields are left out (`table.json.payload.null.behavior = ignore`, the default) or
//!   kept as optional bytes (`optional_bytes`); empty arrays are left out; the elements of
//!   an array must be of one type, and an array of objects gets the union of their
//!   fields. Where Debezium's schema inference throws (not JSON, an array mixing types),
//!   it logs a warning and sends the payload unexpanded ([`Expansion::Kept`]). Where the
//!   schema is inferred but the document does not fit it (an array at the top, an
//!   integer beyond 64 bits, array elements whose values differ in type below the
//!   first level), Debezium 3.6 keeps the inferred schema with the string value and
//!   the converter (or the envelope) throws: its task stops on that row
//!   ([`Expansion::Fails`], poison for relay-cdc);
//! - [`write`]: `JsonConverter` with `schemas.enable=false`, serialised by Jackson: no
//!   whitespace, every field of a struct's schema written (`null` where absent), strings
//!   escaped as Jackson does (`\"`, `\\`, `\b \t \n \f \r`, other control characters as
//!   `\u00XX` with upper-case hex, a character beyond U+FFFF as its UTF-16 surrogate
//!   pair `\uD83D\uDE00`: Jackson's UTF-8 writer does not combine them; nothing else),
//!   doubles as Java's `Double.toString`, bytes as a base64 string (Jackson's default
//!   variant: standard alphabet, padded, no line breaks).
//!
//! Known difference: Debezium merges the element schemas of an array of objects in a
//! `HashSet`'s order; here they merge in the order the elements come. Both give the same
//! fields when the elements have the same fields in the same order (always so for jsonb,
//! which sorts keys), and may order the fields differently otherwise.

use std::fmt::Write as _;

/// A JSON document as Jackson's tree model holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    /// Fits 32 bits (Jackson's `IntNode`).
    Int(i32),
    /// Fits 64 bits (`LongNode`).
    Long(i64),
    /// An integer beyond 64 bits (`BigIntegerNode`), as written.
    BigInt(String),
    /// A number with a fraction or an exponent (`DoubleNode`).
    Double(f64),
    Str(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

/// Parses one JSON document; `None` if it is not JSON.
pub fn parse(text: &str) -> Option<Node> {
    let mut p = Parser {
        b: text.as_bytes(),
        i: 0,
    };
    let node = p.value(0)?;
    p.ws();
    // Jackson's readTree ignores what follows the first value; so does this.
    Some(node)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

/// Deeper documents are refused rather than overflowing the stack (Jackson's default
/// limit is 1000 as well).
const MAX_DEPTH: usize = 1000;

impl Parser<'_> {
    fn ws(&mut self) {
        while self
            .b
            .get(self.i)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    fn literal(&mut self, word: &[u8], node: Node) -> Option<Node> {
        self.b[self.i..].starts_with(word).then(|| {
            self.i += word.len();
            node
        })
    }

    fn value(&mut self, depth: usize) -> Option<Node> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut fields: Vec<(String, Node)> = Vec::new();
                if self.eat(b'}').is_some() {
                    return Some(Node::Object(fields));
                }
                loop {
                    self.ws();
                    let name = self.string()?;
                    self.eat(b':')?;
                    let v = self.value(depth + 1)?;
                    match fields.iter_mut().find(|(n, _)| *n == name) {
                        Some(slot) => slot.1 = v,
                        None => fields.push((name, v)),
                    }
                    if self.eat(b',').is_none() {
                        self.eat(b'}')?;
                        return Some(Node::Object(fields));
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                if self.eat(b']').is_some() {
                    return Some(Node::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat(b',').is_none() {
                        self.eat(b']')?;
                        return Some(Node::Array(items));
                    }
                }
            }
            b'"' => self.string().map(Node::Str),
            b't' => self.literal(b"true", Node::Bool(true)),
            b'f' => self.literal(b"false", Node::Bool(false)),
            b'n' => self.literal(b"null", Node::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn number(&mut self) -> Option<Node> {
        let start = self.i;
        let mut fraction = false;
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' | b'e' | b'E' => fraction = true,
                _ => break,
            }
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        if fraction {
            return text.parse::<f64>().ok().map(Node::Double);
        }
        let digits = text.strip_prefix('-').unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        Some(match text.parse::<i64>() {
            Ok(v) => match i32::try_from(v) {
                Ok(v) => Node::Int(v),
                Err(_) => Node::Long(v),
            },
            Err(_) => Node::BigInt(text.to_string()),
        })
    }

    fn string(&mut self) -> Option<String> {
        (self.b.get(self.i) == Some(&b'"')).then_some(())?;
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = *self.b.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp)
                                && self.b[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo.checked_sub(0xDC00)?);
                            }
                            let ch = char::from_u32(cp)?;
                            out.extend(ch.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        _ => return None,
                    }
                }
                _ => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.b.get(self.i..self.i + 4)?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    }
}

/// A Kafka Connect schema, as far as the expansion makes them.
#[derive(Debug, Clone, PartialEq)]
pub enum Schema {
    Str,
    Bool,
    Int32,
    Int64,
    Float64,
    /// What a null becomes under `optional_bytes`.
    Bytes,
    Array(Box<Schema>),
    Struct(Vec<(String, Schema)>),
}

/// A Kafka Connect value read through a [`Schema`].
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
    /// A `BYTES` value (a `bytea` payload).
    Bytes(Vec<u8>),
    Array(Vec<Data>),
    /// Every field of the schema, in its order; absent ones are null.
    Struct(Vec<(String, Data)>),
}

/// `table.json.payload.null.behavior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NullBehavior {
    Ignore,
    OptionalBytes,
}

/// What `table.expand.json.payload` makes of a payload string.
#[derive(Debug, Clone, PartialEq)]
pub enum Expansion {
    /// The JSON it holds, read through the inferred schema.
    Expanded(Data),
    /// Debezium logs "JSON expansion failed" and sends the string as it is: it does not
    /// start with `{` or `[`, is not JSON, its arrays are not of one type, or an array
    /// holds only nulls (or empty arrays) under `ignore`.
    Kept,
    /// Debezium infers a schema the document does not fit, sends the string with it,
    /// and its task stops on a `DataException` (why, for the poison's reason).
    Fails(&'static str),
}

/// Debezium's expansion of a payload string (see the module doc and [`Expansion`]).
pub fn expand(payload: &str, nulls: NullBehavior) -> Expansion {
    if !(payload.starts_with('{') || payload.starts_with('[')) {
        return Expansion::Kept;
    }
    let Some(node) = parse(payload) else {
        return Expansion::Kept;
    };
    let schema = match schema_of(&node, nulls) {
        Ok(Some(schema)) => schema,
        // `[]`: no schema, so Connect writes the string as it is.
        Ok(None) | Err(Inhomogeneous) => return Expansion::Kept,
    };
    let Schema::Struct(fields) = &schema else {
        return Expansion::Fails("an array at the top is not a struct");
    };
    match struct_data(&node, fields) {
        Some(d) => Expansion::Expanded(d),
        None => Expansion::Fails(
            "a value does not fit the inferred schema (an integer beyond 64 bits, or array elements of other types)",
        ),
    }
}

struct Inhomogeneous;

/// `JsonSchemaData.toConnectSchema`: `Ok(None)` where Debezium has no schema (a null
/// under `ignore`, an empty array); `Err` where it throws.
fn schema_of(node: &Node, nulls: NullBehavior) -> Result<Option<Schema>, Inhomogeneous> {
    Ok(Some(match node {
        Node::Str(_) => Schema::Str,
        Node::Bool(_) => Schema::Bool,
        Node::Int(_) => Schema::Int32,
        Node::Long(_) => Schema::Int64,
        Node::BigInt(_) | Node::Double(_) => Schema::Float64,
        Node::Array(items) if items.is_empty() => return Ok(None),
        Node::Array(items) => Schema::Array(Box::new(array_schema(items, nulls)?)),
        Node::Object(fields) => {
            let mut out: Vec<(String, Schema)> = Vec::new();
            for (name, v) in fields {
                if let Some(s) = schema_of(v, nulls)? {
                    if !out.iter().any(|(n, _)| n == name) {
                        out.push((name.clone(), s));
                    }
                }
            }
            Schema::Struct(out)
        }
        Node::Null => match nulls {
            NullBehavior::OptionalBytes => Schema::Bytes,
            NullBehavior::Ignore => return Ok(None),
        },
    }))
}

/// `toConnectSchemaWithCycles` and `getFirstArrayElement`: the first non-null element
/// decides; others must be of its JSON type (and numbers of its schema); objects merge.
fn array_schema(items: &[Node], nulls: NullBehavior) -> Result<Schema, Inhomogeneous> {
    let kind = |n: &Node| std::mem::discriminant(&json_type(n));
    let Some(first) = items.iter().find(|n| !matches!(n, Node::Null)) else {
        // Only nulls: the sample is a null.
        return schema_of(&Node::Null, nulls)?.ok_or(Inhomogeneous);
    };
    let first_number = matches!(json_type(first), JsonType::Number)
        .then(|| schema_of(first, nulls))
        .transpose()?;
    for n in items.iter().filter(|n| !matches!(n, Node::Null)) {
        if kind(n) != kind(first) {
            return Err(Inhomogeneous);
        }
        if let Some(want) = &first_number {
            if &schema_of(n, nulls)? != want {
                return Err(Inhomogeneous);
            }
        }
    }
    if let Node::Object(_) = first {
        let mut merged: Option<Vec<(String, Schema)>> = None;
        let mut seen: Vec<Schema> = Vec::new();
        for n in items.iter().filter(|n| matches!(n, Node::Object(_))) {
            let Some(s) = schema_of(n, nulls)? else {
                continue;
            };
            if seen.contains(&s) {
                continue;
            }
            seen.push(s.clone());
            let Schema::Struct(right) = s else {
                continue;
            };
            merged = Some(match merged {
                None => right,
                Some(mut left) => {
                    for (name, schema) in right {
                        match left.iter_mut().find(|(n, _)| *n == name) {
                            None => left.push((name, schema)),
                            Some(old) if old.1 == Schema::Bytes && schema != Schema::Bytes => {
                                old.1 = schema
                            }
                            Some(_) => {}
                        }
                    }
                    left
                }
            });
        }
        return Ok(Schema::Struct(merged.unwrap_or_default()));
    }
    schema_of(first, nulls)?.ok_or(Inhomogeneous)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Null,
    Bool,
    Number,
    Str,
    Array,
    Object,
}

fn json_type(n: &Node) -> JsonType {
    match n {
        Node::Null => JsonType::Null,
        Node::Bool(_) => JsonType::Bool,
        Node::Int(_) | Node::Long(_) | Node::BigInt(_) | Node::Double(_) => JsonType::Number,
        Node::Str(_) => JsonType::Str,
        Node::Array(_) => JsonType::Array,
        Node::Object(_) => JsonType::Object,
    }
}

/// `jsonNodeToStructInternal`: each schema field the document has, validated as
/// `Struct.put` validates it; `None` where that throws.
fn struct_data(node: &Node, fields: &[(String, Schema)]) -> Option<Data> {
    let Node::Object(doc) = node else {
        return None;
    };
    let mut out = Vec::with_capacity(fields.len());
    for (name, schema) in fields {
        let v = match doc.iter().find(|(n, _)| n == name) {
            Some((_, v)) => field_data(v, schema)?,
            None => Data::Null,
        };
        out.push((name.clone(), v));
    }
    Some(Data::Struct(out))
}

/// `getStructFieldValue` then the schema check of `Struct.put`.
fn field_data(node: &Node, schema: &Schema) -> Option<Data> {
    match (node, schema) {
        (Node::Null, _) => Some(Data::Null),
        (Node::Str(s), Schema::Str) => Some(Data::Str(s.clone())),
        (Node::Bool(b), Schema::Bool) => Some(Data::Bool(*b)),
        (Node::Int(i), Schema::Int32) => Some(Data::Int(i64::from(*i))),
        (Node::Long(i), Schema::Int64) => Some(Data::Int(*i)),
        (Node::Double(d), Schema::Float64) => Some(Data::Double(*d)),
        (Node::Array(items), Schema::Array(inner)) => items
            .iter()
            .map(|n| field_data(n, inner))
            .collect::<Option<Vec<_>>>()
            .map(Data::Array),
        (Node::Object(_), Schema::Struct(fields)) => struct_data(node, fields),
        // A big integer is a BigDecimal for a FLOAT64 field; any other mismatch too.
        _ => None,
    }
}

/// `data` as `JsonConverter` (schemas disabled) and Jackson write it.
pub fn write(data: &Data, out: &mut String) {
    match data {
        Data::Null => out.push_str("null"),
        Data::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Data::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Data::Double(d) => out.push_str(&java_double(*d)),
        Data::Str(s) => write_str(s, out),
        Data::Bytes(b) => {
            out.push('"');
            base64(b, out);
            out.push('"');
        }
        Data::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Data::Struct(fields) => {
            out.push('{');
            for (i, (name, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(name, out);
                out.push(':');
                write(v, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string as Jackson escapes it.
pub fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\u{0C}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c if (c as u32) > 0xFFFF => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04X}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Standard base64 with padding (`java.util.Base64.getEncoder()`, Jackson's
/// `MIME_NO_LINEFEEDS`). Hand-written: twelve lines do not warrant a dependency.
pub fn base64(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}

/// Java's `Double.toString` (JDK 19 and later): plain from 10^-3 up to 10^7, else
/// `d.dddE±n`; at least one digit after the point. The digits are those of
/// [`java_digits`].
pub fn java_double(d: f64) -> String {
    if d == 0.0 {
        return if d.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    if d.is_nan() {
        return "NaN".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let (digits, exp) = java_digits(d.abs());
    let mut out = String::new();
    if d < 0.0 {
        out.push('-');
    }
    let (first, rest) = digits.split_at(1);
    let rest = if rest.is_empty() { "0" } else { rest };
    if (1e-3..1e7).contains(&d.abs()) {
        if exp >= 0 {
            // exp < 7 here: the integer part is the first exp + 1 digits, zero-padded.
            let int_len = exp as usize + 1;
            let padded = format!("{digits:0<int_len$}");
            let (int, frac) = padded.split_at(int_len);
            out.push_str(int);
            out.push('.');
            out.push_str(if frac.is_empty() { "0" } else { frac });
        } else {
            out.push_str("0.");
            out.push_str(&"0".repeat((-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        let _ = write!(out, "{first}.{rest}E{exp}");
    }
    out
}

/// The significant digits (no trailing zeros) and the decimal exponent of the first one
/// that Java 19+ prints for a finite `d > 0`: of the decimals that read back as `d`,
/// those of the fewest digits (of one or two digits where one would do), the closest
/// to `d`, on a tie the one whose last digit is even (`Double.toString`'s javadoc).
/// Rust's `{:e}` gives the fewest digits; `{:.N$e}`, correctly rounded with ties to
/// even, the closest decimal of that many, taken when it reads back as `d`. They differ
/// on ties (`1.7491785262816592E15`, where `{:e}` ends in 3) and near zero
/// (`Double.MIN_VALUE` is `4.9E-324`, not `5.0E-324`).
fn java_digits(d: f64) -> (String, i32) {
    let shortest = format!("{d:e}");
    let (mantissa, _) = shortest.split_once('e').expect("{:e} has an exponent");
    let n = mantissa.bytes().filter(u8::is_ascii_digit).count().max(2);
    let closest = format!("{d:.prec$e}", prec = n - 1);
    let chosen = if closest.parse::<f64>() == Ok(d) {
        closest
    } else {
        shortest
    };
    let (mantissa, exp) = chosen.split_once('e').expect("{:e} has an exponent");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    (
        digits.to_string(),
        exp.parse().expect("an integer exponent"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(payload: &str, nulls: NullBehavior) -> Option<String> {
        match expand(payload, nulls) {
            Expansion::Expanded(d) => {
                let mut s = String::new();
                write(&d, &mut s);
                Some(s)
            }
            _ => None,
        }
    }

    #[test]
    fn an_expanded_object_is_written_compactly_in_document_order() {
        let got = expanded(
            r#"{"id": 1, "lineItems": [{"id": 1, "item": "Debezium in Action", "quantity": 2, "totalPrice": 39.98}], "orderDate": "2019-01-31T12:13:01", "customerId": 123}"#,
            NullBehavior::Ignore,
        );
        assert_eq!(
            got.as_deref(),
            Some(
                r#"{"id":1,"lineItems":[{"id":1,"item":"Debezium in Action","quantity":2,"totalPrice":39.98}],"orderDate":"2019-01-31T12:13:01","customerId":123}"#
            )
        );
    }

    #[test]
    fn nulls_and_empty_arrays_are_left_out_unless_nulls_are_optional_bytes() {
        let doc = r#"{"a": null, "b": [], "c": {"d": null, "e": true}}"#;
        assert_eq!(
            expanded(doc, NullBehavior::Ignore).as_deref(),
            Some(r#"{"c":{"e":true}}"#)
        );
        assert_eq!(
            expanded(doc, NullBehavior::OptionalBytes).as_deref(),
            Some(r#"{"a":null,"c":{"d":null,"e":true}}"#)
        );
    }

    #[test]
    fn an_array_of_objects_gets_the_union_of_their_fields() {
        assert_eq!(
            expanded(
                r#"{"xs": [{"a": 1}, {"a": 2, "b": "x"}, null]}"#,
                NullBehavior::Ignore
            )
            .as_deref(),
            Some(r#"{"xs":[{"a":1,"b":null},{"a":2,"b":"x"},null]}"#)
        );
    }

    #[test]
    fn what_debezium_cannot_infer_a_schema_for_stays_a_string() {
        for doc in [
            r#" {"a": 1}"#,                                  // must start with { or [
            r#""text""#,                                     // not an object
            r#"{"a": [1, "x"]}"#,                            // mixed types in an array
            r#"{"a": [1, 2.5]}"#,                            // int and double in an array
            r#"{"a": [1, 10000000000]}"#,                    // int and long in an array
            r#"{"a": [1, 123456789012345678901234567890]}"#, // int and big integer
            r#"{"a": [null, null]}"#,                        // only nulls: no member schema
            r#"{"a": [[], [1]]}"#,                           // the first element has no schema
            r#"{"a": "#,                                     // not JSON
            r#"[]"#,                                         // no schema at all
        ] {
            assert_eq!(expand(doc, NullBehavior::Ignore), Expansion::Kept, "{doc}");
        }
        assert_eq!(
            expanded(r#"{"a": [null, null]}"#, NullBehavior::OptionalBytes).as_deref(),
            Some(r#"{"a":[null,null]}"#)
        );
    }

    #[test]
    fn a_document_that_does_not_fit_its_schema_stops_debezium() {
        for doc in [
            r#"[1, 2]"#,                                       // an array at the top is no Struct
            r#"{"a": 123456789012345678901234567890}"#, // a big integer: FLOAT64 schema, BigDecimal value
            r#"{"a": [1.5, 123456789012345678901234567890]}"#, // both FLOAT64, one a BigDecimal
            r#"{"a": [{"b": 1}, {"b": 1.5}]}"#,         // merged objects whose field types differ
            r#"{"a": [[1], ["x"]]}"#,                   // inner arrays of other types
        ] {
            assert!(
                matches!(expand(doc, NullBehavior::Ignore), Expansion::Fails(_)),
                "{doc}"
            );
        }
    }

    #[test]
    fn numbers_keep_jacksons_types() {
        assert_eq!(
            expanded(
                r#"{"i": -2147483648, "l": 2147483648, "d": 1.0, "e": 1.5e-7, "big": 12345678.5, "small": 0.001}"#,
                NullBehavior::Ignore
            )
            .as_deref(),
            Some(r#"{"i":-2147483648,"l":2147483648,"d":1.0,"e":1.5E-7,"big":1.23456785E7,"small":0.001}"#)
        );
    }

    #[test]
    fn strings_are_escaped_as_jackson_escapes_them() {
        let mut s = String::new();
        write_str("a\"b\\c/d\n\u{1f}é\u{7f}", &mut s);
        assert_eq!(s, "\"a\\\"b\\\\c/d\\n\\u001Fé\u{7f}\"");
        // Seen from Kafka Connect 4.1.1 (Jackson 2.19): astral characters as surrogate pairs.
        let mut s = String::new();
        write_str("Zoë 😀\u{2028}漢", &mut s);
        assert_eq!(s, "\"Zoë \\uD83D\\uDE00\u{2028}漢\"");
        let parsed = parse(r#""\u00e9\ud83d\ude00\/""#);
        assert_eq!(parsed, Some(Node::Str("é😀/".into())));
    }

    #[test]
    fn doubles_print_as_java_prints_them() {
        for (d, want) in [
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (39.98, "39.98"),
            (1e7, "1.0E7"),
            (9999999.0, "9999999.0"),
            (0.001, "0.001"),
            (0.0001, "1.0E-4"),
            (1.2345e-10, "1.2345E-10"),
            (1e21, "1.0E21"),
            (f64::MAX, "1.7976931348623157E308"),
            // Seen from Kafka Connect on Java 25: two digits where one is farther off.
            (f64::from_bits(1), "4.9E-324"),
            (f64::from_bits(2), "9.9E-324"),
            (1e23, "1.0E23"),
            (2.82879384806159e17, "2.82879384806159E17"),
            // A tie between two shortest decimals: the even last digit.
            (f64::from_bits(0xc318db7972d4beed), "-1.7491785262816592E15"),
            (1234567.0, "1234567.0"),
            (1e6, "1000000.0"),
            (0.5, "0.5"),
            (0.00123, "0.00123"),
            (100.25, "100.25"),
        ] {
            assert_eq!(java_double(d), want, "{d}");
        }
    }

    #[test]
    fn bytes_are_a_padded_base64_string() {
        for (bytes, want) in [
            (&b""[..], "\"\""),
            (b"\x00\xff\x10\xab", "\"AP8Qqw==\""),
            (b"\x01\x02", "\"AQI=\""),
            (b"foobar", "\"Zm9vYmFy\""),
            (b"\xfb\xff", "\"+/8=\""),
        ] {
            let mut s = String::new();
            write(&Data::Bytes(bytes.to_vec()), &mut s);
            assert_eq!(s, want, "{bytes:?}");
        }
    }

    #[test]
    fn a_repeated_name_keeps_its_first_place_and_its_last_value() {
        assert_eq!(
            parse(r#"{"a": 1, "b": 2, "a": 3}"#),
            Some(Node::Object(vec![
                ("a".into(), Node::Int(3)),
                ("b".into(), Node::Int(2))
            ]))
        );
    }
}

//! W3C Trace Context at the services' edges. The `traceparent`/`tracestate` of a
//! request or a Kafka record ([`Carrier`]) become the parent of the span that handles
//! it ([`continue_trace`]); that span's own context ([`context_of`]) is what the outbox
//! rows it writes and the answers it gives carry.
//!
//! Invariants:
//! - a handling span always belongs to a trace: the caller's when its `traceparent` is
//!   valid, a new one when it is missing or invalid (a receiver ignores an invalid
//!   context, it never refuses the request for it);
//! - its span id is its own: it is a child of the caller's span, so what it writes names
//!   it, not the caller, as the parent;
//! - its fields `trace_id` and `span_id` hold those ids, so every log line inside it
//!   carries them.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use outbox::TraceContext;
use tracing::field::display;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use outbox::headers::{TRACEPARENT, TRACESTATE};

/// The target of the spans that handle a request or a record. These spans are enabled
/// whatever `RUST_LOG` says (a warning needs its trace id most), and they are the only
/// spans exported over OTLP.
pub const SPAN_TARGET: &str = "service_telemetry::trace";

/// The W3C response header naming the span that answered (Trace Context Level 2):
/// `00-<trace id>-<the service span's id>-<flags>`.
pub const TRACERESPONSE: &str = "traceresponse";

/// The longest `tracestate` passed on (W3C: propagate at least 512 characters; the
/// outbox column holds that much).
pub const TRACESTATE_MAX: usize = 512;

/// W3C: entries longer than this are the first dropped when `tracestate` is too long.
const TRACESTATE_LONG_ENTRY: usize = 128;

/// The trace context a request or a record came with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carrier {
    parent: Parent,
    tracestate: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Parent {
    #[default]
    Missing,
    Invalid,
    Valid(String),
}

/// Where a handling span's trace came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The caller's `traceparent`: the span is its child.
    Continued,
    /// No `traceparent`: a new trace.
    Started,
    /// A `traceparent` that breaks the W3C rules (or came more than once): ignored, a
    /// new trace.
    Ignored,
}

impl Carrier {
    /// The context in `headers` (HTTP or Kafka, names compared ignoring case). W3C's
    /// rules for receivers: a `traceparent` given more than once, or not valid UTF-8, or
    /// malformed, is invalid; several `tracestate` values are one list joined by commas,
    /// in order (one that is not UTF-8 drops them all).
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut parents = Vec::new();
        let mut states = Vec::new();
        for (name, value) in headers {
            let value = std::str::from_utf8(value).ok().map(str::trim);
            if name.eq_ignore_ascii_case(TRACEPARENT) {
                parents.push(value);
            } else if name.eq_ignore_ascii_case(TRACESTATE) {
                states.push(value);
            }
        }
        let parent = match parents.as_slice() {
            [] => Parent::Missing,
            [Some(value)] => well_formed(value).map_or(Parent::Invalid, Parent::Valid),
            _ => Parent::Invalid,
        };
        let tracestate = states
            .into_iter()
            .collect::<Option<Vec<&str>>>()
            .map(|parts| {
                parts
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty());
        Self { parent, tracestate }
    }

    /// The context in an HTTP request's headers ([`Carrier::from_headers`]).
    pub fn from_http(headers: &http::HeaderMap) -> Self {
        Self::from_headers(
            headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes())),
        )
    }

    fn origin(&self) -> Origin {
        match self.parent {
            Parent::Missing => Origin::Started,
            Parent::Invalid => Origin::Ignored,
            Parent::Valid(_) => Origin::Continued,
        }
    }
}

/// The `traceparent` to read from `value`, if it is one: version `00` exactly as W3C
/// writes it; a later version may append fields, of which the first four are read.
fn well_formed(value: &str) -> Option<String> {
    let head = match value.get(..55) {
        Some(head) if !value.starts_with("00") && value.as_bytes().get(55) == Some(&b'-') => head,
        _ => value,
    };
    TraceContext::parse(head, None)
        .ok()
        .map(|context| context.traceparent)
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => match &self.parent {
                Parent::Valid(value) => Some(value),
                _ => None,
            },
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// Makes `span` continue the trace `carrier` names: a child of the caller's span, or
/// the root of a new trace (see [`Origin`]); records its `trace_id` and `span_id`
/// fields. Call it right after creating `span`, before it is entered. A span that is
/// disabled, or lives in a subscriber without [`crate::init`]'s layers, gets no ids.
pub fn continue_trace(span: &Span, carrier: &Carrier) -> Origin {
    let parent = match carrier.parent {
        Parent::Valid(_) => TraceContextPropagator::new().extract(carrier),
        // A root, whatever span or context happens to be current here.
        _ => Context::new(),
    };
    // Fails only for a span without an OpenTelemetry layer, which gets no ids below.
    let _ = span.set_parent(parent);
    let context = span.context();
    let own = context.span().span_context().clone();
    if own.is_valid() {
        span.record("trace_id", display(own.trace_id()));
        span.record("span_id", display(own.span_id()));
    }
    carrier.origin()
}

/// The W3C context that names `span` as the parent: `traceparent` with its trace id,
/// its own span id and its sampling flag, and the `tracestate` it inherited (cut to
/// [`TRACESTATE_MAX`] the way W3C says). `None` for a span without ids.
pub fn context_of(span: &Span) -> Option<TraceContext> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut headers = Headers::default();
    TraceContextPropagator::new().inject_context(&context, &mut headers);
    let traceparent = headers.0.remove(TRACEPARENT)?;
    let tracestate = headers
        .0
        .remove(TRACESTATE)
        .map(|state| fit_tracestate(&state))
        .filter(|state| !state.is_empty());
    TraceContext::parse(&traceparent, tracestate.as_deref())
        .or_else(|_| TraceContext::parse(&traceparent, None))
        .ok()
}

#[derive(Default)]
struct Headers(HashMap<String, String>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

/// `state` cut to [`TRACESTATE_MAX`] characters as W3C asks of a vendor that must cut:
/// entries longer than 128 characters go first, then entries from the end.
pub fn fit_tracestate(state: &str) -> String {
    if state.len() <= TRACESTATE_MAX {
        return state.to_string();
    }
    let mut entries: Vec<&str> = state
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && e.len() <= TRACESTATE_LONG_ENTRY)
        .collect();
    while entries.iter().map(|e| e.len() + 1).sum::<usize>() > TRACESTATE_MAX + 1 {
        entries.pop();
    }
    entries.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn carrier(headers: &[(&str, &[u8])]) -> Carrier {
        Carrier::from_headers(headers.iter().copied())
    }

    #[test]
    fn a_single_valid_traceparent_is_the_parent_whatever_the_name_case() {
        let c = carrier(&[("TraceParent", TP.as_bytes()), ("x-other", b"1")]);
        assert_eq!(c.origin(), Origin::Continued);
        assert_eq!(c.get(TRACEPARENT), Some(TP));
        assert_eq!(c.get(TRACESTATE), None);
    }

    #[test]
    fn a_missing_repeated_malformed_or_non_utf8_traceparent_is_no_parent() {
        assert_eq!(carrier(&[]).origin(), Origin::Started);
        let twice = carrier(&[(TRACEPARENT, TP.as_bytes()), (TRACEPARENT, TP.as_bytes())]);
        assert_eq!(twice.origin(), Origin::Ignored);
        for bad in [
            "".as_bytes(),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-abc-def-01",
            b"00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"\xff\xfe",
        ] {
            let c = carrier(&[(TRACEPARENT, bad)]);
            assert_eq!(c.origin(), Origin::Ignored, "{bad:?}");
            assert_eq!(c.get(TRACEPARENT), None);
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_four_fields() {
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let c = carrier(&[(TRACEPARENT, v1.as_bytes())]);
        assert_eq!(c.get(TRACEPARENT), Some(&v1[..55]));
    }

    #[test]
    fn tracestate_values_join_in_order_and_one_unreadable_drops_them_all() {
        let c = carrier(&[
            (TRACEPARENT, TP.as_bytes()),
            (TRACESTATE, b"a=1"),
            (TRACESTATE, b" b=2 "),
        ]);
        assert_eq!(c.get(TRACESTATE), Some("a=1,b=2"));
        let c = carrier(&[(TRACESTATE, b"a=1"), (TRACESTATE, b"\xff")]);
        assert_eq!(c.get(TRACESTATE), None);
    }

    #[test]
    fn a_long_tracestate_loses_long_entries_first_then_entries_from_the_end() {
        assert_eq!(fit_tracestate("a=1,b=2"), "a=1,b=2");
        let long = format!("big={}", "x".repeat(200));
        let entries: Vec<String> = (0..60).map(|i| format!("k{i:02}=vvvv")).collect();
        let state = format!("{},{long},{}", entries[0], entries[1..].join(","));
        let fitted = fit_tracestate(&state);
        assert!(fitted.len() <= TRACESTATE_MAX, "{}", fitted.len());
        assert!(!fitted.contains("big="));
        assert!(fitted.starts_with("k00=vvvv,k01=vvvv,"), "{fitted}");
        // k00..k56 fit: 57 entries of 8 characters and 56 commas make 512.
        assert!(fitted.ends_with(",k56=vvvv"), "{fitted}");
    }
}

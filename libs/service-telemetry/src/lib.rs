//! How both HTTP services report: log lines, traces and the Prometheus text exposition.
//! (relay-cdc has its own: its admin endpoint and log setup differ.)
//!
//! [`init`] installs one subscriber for logs and traces:
//! - log lines: JSON when stdout is not a terminal, readable text when it is, filtered
//!   by `RUST_LOG`; a line inside a request's or a record's span carries that span's
//!   fields, among them `trace_id` and `span_id` ([`trace`]);
//! - traces: every span of target [`trace::SPAN_TARGET`] is an OpenTelemetry span (with
//!   the log lines at `INFO` and above inside it as its events). With an OTLP endpoint
//!   ([`TelemetrySettings`]) they are exported in batches from a thread of their own:
//!   a bounded queue (spans beyond it are dropped, never waited for), each export with
//!   a timeout, so a slow or absent collector never delays a request.

mod settings;
pub mod trace;

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use prometheus::{Encoder, Registry, TextEncoder};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

pub use settings::{OtlpSettings, TelemetrySettings, OTLP_PROTOCOL};

/// The filter when `RUST_LOG` is unset: `info`, with PostgreSQL's notices ("relation
/// already exists, skipping" from the migrator) at `warn`.
pub const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn";

/// How long [`Telemetry::shutdown`] waits for queued spans to be exported.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why logs and traces could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot create the OTLP span exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("a log subscriber is installed already")]
    AlreadyInstalled,
}

/// What [`init`] set up. [`Telemetry::shutdown`] before exit exports what is queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports the spans still queued, for at most [`FLUSH_TIMEOUT`]; what is left then
    /// is lost (logged).
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(error = %error, "spans still queued at exit were not exported");
        }
    }
}

/// Installs the global subscriber (see the crate docs) writing to stdout, and routes
/// the `log` records of librdkafka and sqlx into it. Call once, first thing in `main`.
/// With an OTLP endpoint, call it outside any async runtime (the exporter's HTTP client
/// runs one of its own).
pub fn init(settings: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    let format = if std::io::stdout().is_terminal() {
        Format::Text
    } else {
        Format::Json(BoxMakeWriter::new(std::io::stdout))
    };
    install(settings, format)
}

/// [`init`] for a test process that runs services in itself: JSON lines kept in
/// memory instead of written to stdout, nothing exported. The first call installs it
/// (as `service_name`), every call returns its lines; tests pick theirs by trace id.
///
/// # Panics
/// When another subscriber was installed before.
pub fn init_in_memory(service_name: &str) -> &'static LogBuffer {
    static INSTALLED: OnceLock<(Telemetry, LogBuffer)> = OnceLock::new();
    &INSTALLED
        .get_or_init(|| {
            let logs = LogBuffer::default();
            let writer = logs.clone();
            let format = Format::Json(BoxMakeWriter::new(move || writer.clone()));
            let telemetry = install(&TelemetrySettings::logs_only(service_name), format)
                .expect("no other subscriber is installed");
            (telemetry, logs)
        })
        .1
}

/// JSON log lines kept in memory ([`init_in_memory`]).
#[derive(Debug, Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// Every complete line so far, parsed.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().expect("log buffer lock").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The lines logged inside a span of trace `trace_id`.
    pub fn of_trace(&self, trace_id: &str) -> Vec<serde_json::Value> {
        self.lines()
            .into_iter()
            .filter(|line| span_field(line, "trace_id") == Some(trace_id))
            .collect()
    }
}

/// Field `name` of the innermost span of JSON log `line` that has it.
pub fn span_field<'a>(line: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    line["spans"]
        .as_array()?
        .iter()
        .rev()
        .find_map(|span| span[name].as_str())
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("log buffer lock")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn install(settings: &TelemetrySettings, format: Format) -> Result<Telemetry, TelemetryError> {
    let provider = provider(settings)?;
    subscriber(
        env_filter(std::env::var("RUST_LOG").ok()),
        format,
        &provider,
    )
    .try_init()
    .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry { provider })
}

/// How log lines are written.
enum Format {
    Text,
    Json(BoxMakeWriter),
}

/// `rust_log` (or [`DEFAULT_FILTER`] when it is unset, empty or unreadable), with the
/// spans of [`trace::SPAN_TARGET`] always on: a line at any level inside them carries
/// their trace ids.
fn env_filter(rust_log: Option<String>) -> EnvFilter {
    let filter = rust_log
        .filter(|directives| !directives.trim().is_empty())
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    filter.add_directive(
        format!("{}=info", trace::SPAN_TARGET)
            .parse()
            .expect("a valid directive"),
    )
}

/// A tracer provider for `settings`: ids for every span, and a batch exporter when an
/// endpoint is set (queue, batch size and delay from the `OTEL_BSP_*` variables, the
/// export timeout from `OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by default).
fn provider(settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(otlp) = &settings.otlp {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(&otlp.traces_endpoint)
            .build()
            .map_err(TelemetryError::Exporter)?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// The layers: `filter`, the log lines, and the OpenTelemetry spans of `provider`.
fn subscriber(
    filter: EnvFilter,
    format: Format,
    provider: &SdkTracerProvider,
) -> impl Subscriber + Send + Sync + for<'a> LookupSpan<'a> {
    let (text, json) = match format {
        Format::Text => (Some(fmt::layer()), None),
        Format::Json(writer) => (
            None,
            Some(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(writer),
            ),
        ),
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("service-telemetry"))
        .with_filter(filter_fn(exported));
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(spans)
}

/// What becomes OpenTelemetry data: the handling spans, and the lines at `INFO` and
/// above inside them (as span events). Nothing else: the exporter's own HTTP client
/// must never produce spans it would then export.
fn exported(metadata: &Metadata<'_>) -> bool {
    if metadata.is_span() {
        metadata.target() == trace::SPAN_TARGET
    } else {
        *metadata.level() <= Level::INFO
    }
}

/// The content type of [`render`]'s output.
pub fn content_type() -> &'static str {
    prometheus::TEXT_FORMAT
}

/// The Prometheus text exposition of everything `registry` holds.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .expect("text encoding of gathered metrics");
    String::from_utf8(buffer).expect("the text format is UTF-8")
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use prometheus::{IntCounter, Registry};
    use serde_json::Value;

    use super::trace::{context_of, continue_trace, Carrier, Origin, TRACEPARENT, TRACESTATE};
    use super::*;

    #[test]
    fn a_registered_counter_shows_in_the_exposition() {
        let registry = Registry::new();
        let counter = IntCounter::new("things_total", "Things.").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(3);
        let text = render(&registry);
        assert!(text.contains("# TYPE things_total counter"), "{text}");
        assert!(text.contains("things_total 3"), "{text}");
        assert!(content_type().starts_with("text/plain"));
    }

    /// Finished spans, kept in memory.
    #[derive(Debug, Clone, Default)]
    struct Finished(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Finished {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// Runs `f` under the subscriber [`init`] installs (JSON lines, `filter`), spans
    /// exported at once; returns the lines and the spans.
    fn traced(filter: &str, f: impl FnOnce()) -> (Vec<Value>, Vec<SpanData>) {
        let finished = Finished::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(finished.clone())
            .build();
        let lines = LogBuffer::default();
        let writer = lines.clone();
        let subscriber = subscriber(
            env_filter(Some(filter.to_string())),
            Format::Json(BoxMakeWriter::new(move || writer.clone())),
            &provider,
        );
        tracing::subscriber::with_default(subscriber, f);
        let spans = finished.0.lock().unwrap().clone();
        (lines.lines(), spans)
    }

    fn request_span() -> tracing::Span {
        tracing::info_span!(target: trace::SPAN_TARGET, "request", trace_id = tracing::field::Empty, span_id = tracing::field::Empty)
    }

    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";

    fn caller(flags: &str, state: Option<&str>) -> Carrier {
        let tp = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}");
        let mut headers = vec![(TRACEPARENT, tp.into_bytes())];
        headers.extend(state.map(|s| (TRACESTATE, s.as_bytes().to_vec())));
        Carrier::from_headers(headers.iter().map(|(n, v)| (*n, v.as_slice())))
    }

    #[test]
    fn a_span_continuing_a_caller_is_its_child_and_every_line_inside_carries_the_ids() {
        let mut context = None;
        let (lines, spans) = traced("warn", || {
            let span = request_span();
            assert_eq!(
                continue_trace(&span, &caller("01", Some("congo=t61rcWkgMzE"))),
                Origin::Continued
            );
            let _entered = span.enter();
            // Below the filter's level for events, but inside the span: has the ids.
            tracing::warn!(user_id = 7, "inside the handler");
            context = context_of(&span);
        });

        let context = context.expect("the span has a context");
        assert_eq!(context.trace_id(), CALLER_TRACE);
        let own_span = &context.traceparent[36..52];
        assert_ne!(own_span, CALLER_SPAN, "the span has an id of its own");
        assert!(
            context.traceparent.ends_with("-01"),
            "sampled, as the caller"
        );
        assert_eq!(context.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));

        let line = lines
            .iter()
            .find(|l| l["message"] == "inside the handler")
            .expect("the line");
        assert_eq!(span_field(line, "trace_id"), Some(CALLER_TRACE), "{line}");
        assert_eq!(span_field(line, "span_id"), Some(own_span), "{line}");

        assert_eq!(spans.len(), 1);
        let exported = &spans[0];
        assert_eq!(exported.span_context.trace_id().to_string(), CALLER_TRACE);
        assert_eq!(exported.span_context.span_id().to_string(), own_span);
        assert_eq!(exported.parent_span_id.to_string(), CALLER_SPAN);
        assert_eq!(exported.events.len(), 1, "the line is the span's event");
    }

    #[test]
    fn an_unsampled_caller_stays_unsampled_downstream() {
        let mut context = None;
        traced("info", || {
            let span = request_span();
            continue_trace(&span, &caller("00", None));
            context = context_of(&span);
        });
        let context = context.unwrap();
        assert!(context.traceparent.ends_with("-00"), "{context:?}");
        assert_eq!(context.tracestate, None);
    }

    #[test]
    fn without_a_valid_traceparent_the_span_starts_a_new_trace() {
        let mut contexts = Vec::new();
        let (_, spans) = traced("info", || {
            for (name, value) in [("x-nothing", "1"), (TRACEPARENT, "00-nope-nope-01")] {
                // Inside another span: a new trace all the same, not that span's child.
                let outer = request_span();
                continue_trace(&outer, &caller("01", None));
                let _outer = outer.enter();
                let span = request_span();
                let origin =
                    continue_trace(&span, &Carrier::from_headers([(name, value.as_bytes())]));
                contexts.push((origin, context_of(&span).unwrap()));
            }
        });
        assert_eq!(contexts[0].0, Origin::Started);
        assert_eq!(contexts[1].0, Origin::Ignored);
        for (_, context) in &contexts {
            assert_ne!(context.trace_id(), CALLER_TRACE);
        }
        assert_ne!(contexts[0].1.trace_id(), contexts[1].1.trace_id());
        let roots = spans
            .iter()
            .filter(|s| s.parent_span_id == opentelemetry::trace::SpanId::INVALID);
        assert_eq!(roots.count(), 2, "the two new traces' spans are roots");
    }

    #[test]
    fn other_spans_are_not_exported_and_have_no_context() {
        let mut context = Some(
            outbox::TraceContext::parse(&format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"), None)
                .unwrap(),
        );
        let (_, spans) = traced("info", || {
            let span = tracing::info_span!("some_library_span");
            let _entered = span.enter();
            tracing::info!("a line");
            context = context_of(&span);
        });
        assert_eq!(context, None);
        assert!(spans.is_empty(), "{spans:?}");
    }
}

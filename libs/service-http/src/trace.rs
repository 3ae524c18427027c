//! W3C Trace Context at the HTTP edge: every request gets a span of its own
//! ([`request_span`]) that continues the caller's trace (`traceparent`/`tracestate`) or
//! starts one; handlers get that span's context with [`RequestTrace`] to store with
//! their outbox rows; every answer names the span in a `traceresponse` header. A
//! malformed `traceparent` is ignored, never answered with an error.

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use service_telemetry::trace::{self, Carrier, SPAN_TARGET, TRACERESPONSE};
use tracing::field::Empty;
use tracing::Span;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{OpenApi, RefOr, Required};

/// The span of one request: `method`, `uri`, `version`, and the `trace_id`/`span_id`
/// of the trace it continues or starts (its parent is the caller's span).
pub fn request_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let name = match route {
        Some(route) => format!("{} {route}", request.method()),
        None => request.method().to_string(),
    };
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "request",
        method = %request.method(),
        uri = %request.uri(),
        version = ?request.version(),
        trace_id = Empty,
        span_id = Empty,
        "otel.kind" = "server",
        "otel.name" = name,
    );
    trace::continue_trace(&span, &Carrier::from_http(request.headers()));
    span
}

/// The W3C context of the span handling this request (see [`service_telemetry::trace::context_of`]):
/// what the request's outbox rows carry. `None` when the service runs without
/// [`service_telemetry::init`] (tests that install no subscriber).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestTrace(pub Option<outbox::TraceContext>);

impl<S: Send + Sync> FromRequestParts<S> for RequestTrace {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestTrace>()
            .cloned()
            .unwrap_or_default())
    }
}

/// Middleware inside the request span: hands its context to the handler
/// ([`RequestTrace`]) and names it in the answer's `traceresponse` header.
pub async fn propagate(mut request: Request, next: Next) -> Response {
    let context = trace::context_of(&Span::current());
    request
        .extensions_mut()
        .insert(RequestTrace(context.clone()));
    let mut response = next.run(request).await;
    if let Some(value) = context.and_then(|c| HeaderValue::from_str(&c.traceparent).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(TRACERESPONSE), value);
    }
    response
}

/// Declares the trace headers on every operation of `document`: `traceparent` and
/// `tracestate` as optional request headers (plain strings: a malformed one is
/// ignored, so no value is refused), `traceresponse` on every answer.
pub fn document_headers(document: &mut OpenApi) {
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
            &mut item.query,
        ];
        operations
            .into_iter()
            .flatten()
            .chain(item.additional_operations.values_mut())
            .for_each(document_operation);
    }
}

fn document_operation(operation: &mut Operation) {
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    for (name, description) in [
        (
            trace::TRACEPARENT,
            "W3C Trace Context: the caller's span, `00-<trace id>-<parent id>-<flags>`. The \
             request's span becomes its child and the events it writes carry the trace. \
             Absent or malformed: a new trace (never an error).",
        ),
        (
            trace::TRACESTATE,
            "W3C Trace Context vendor state, passed on with the trace (at most 512 characters kept).",
        ),
    ] {
        parameters.push(RefOr::T(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build(),
        ));
    }
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            response.headers.insert(
                TRACERESPONSE.to_string(),
                RefOr::T(
                    HeaderBuilder::new()
                        .schema(Some(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .pattern(Some("^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")),
                        ))
                        .description(Some(
                            "The span that answered: `00-<trace id>-<its span id>-<flags>` (W3C Trace Context Level 2). Grep the logs for the trace id.",
                        ))
                        .build(),
                ),
            );
        }
    }
}

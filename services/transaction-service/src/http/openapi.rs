//! The OpenAPI 3.1 document's fixed parts. The paths and schemas are generated
//! (utoipa) from the handlers' `#[utoipa::path]` attributes and the DTOs' `ToSchema`
//! derives: [`super::api`] registers each handler for the router and the document in
//! one call, so a route cannot be served undocumented, and the limits a client must
//! respect (amounts, ids, the Idempotency-Key) are in the schemas. `GET /openapi.json`
//! is [`service_http::openapi`].

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(info(
    title = "transaction-service",
    description = "Transfers and deposits between user accounts. A transaction is accepted PENDING and settled asynchronously (COMPLETED or FAILED) from its TransactionCreated event. Accounts open from user-service's UserCreated events, so a transaction naming a user without an account is a 422. Amounts are exact decimals with at most 2 fraction digits; answers carry them as decimal strings. Every error is `{\"code\", \"message\", \"errors\"?}`."
))]
pub struct ApiDoc;

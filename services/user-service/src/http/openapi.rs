//! The OpenAPI 3.1 document's fixed parts. The paths and schemas are generated
//! (utoipa) from the handlers' `#[utoipa::path]` attributes and the DTOs' `ToSchema`
//! derives: [`super::api`] registers each handler for the router and the document in
//! one call, so a route cannot be served undocumented, and the limits a client must
//! respect are in the schemas. `GET /openapi.json` is [`service_http::openapi`].

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(info(
    title = "user-service",
    description = "Creates users. Each sign-up writes the user and a `UserCreated` outbox event in one PostgreSQL transaction; relay-cdc publishes the event to Kafka topic `outbox.event.user`. Every error is `{\"code\", \"message\", \"errors\"?}`."
))]
pub struct ApiDoc;

//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Drover API", description = "Remote and session management of a fleet of servers."),
    paths(
        super::healthz,
        super::metrics,
        super::nodes::list,
        super::nodes::show,
        super::nodes::tag,
        super::nodes::deregister,
        super::activations::create,
        super::activations::list,
        super::register::register,
        super::documents::create,
        super::documents::update,
        super::documents::get,
        super::documents::list,
        super::documents::versions,
        super::documents::set_default,
        super::documents::delete,
        super::commands::send,
        super::commands::list,
        super::commands::show,
        super::commands::wait,
        super::commands::cancel,
        super::commands::invocations,
        super::commands::invocation,
    ),
    modifiers(&Bearer)
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

//! Serves the web console at `/`: its embedded files (`drover-console`), and its page for any
//! other path a browser may open (`/nodes`, a bookmark). The files are public (they hold no
//! data: everything comes from the API, authorized there), and are sent with a policy that lets
//! the page load nothing but this origin's own files.

use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

/// Only this origin's files and API; no inline script, no frames, no plugins.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// The router's fallback: a console file, the console's page, or the API's 404.
pub async fn serve(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let api = path.starts_with("/api/") || path == "/metrics" || path == "/healthz";
    if api || (method != Method::GET && method != Method::HEAD) {
        return ApiError::NotFound("no such endpoint".into()).into_response();
    }
    // A path whose last part has no dot is a page of the console; a missing file is a 404.
    let page = !path.rsplit('/').next().unwrap_or_default().contains('.');
    let asset = drover_console::get(path).or_else(|| page.then(drover_console::index).flatten());
    let Some(asset) = asset else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let cache = if asset.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.mime)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        asset.body,
    )
        .into_response()
}

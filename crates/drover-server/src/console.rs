//! Serves the web console at `/`: its embedded files (`drover-console`). The console routes by
//! `#/...`, so its page lives at `/` alone; every other path that is not one of its files gets
//! the API's JSON 404, so nothing that expects JSON (a client, a probe) ever gets a page. The
//! files are public (they hold no data: everything comes from the API, authorized there), and
//! are sent with a policy that lets the page load nothing but this origin's own files.

use axum::http::{header, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

/// Only this origin's files and API; no inline script (what stops injected markup from
/// running), no frames, no plugins; and Trusted Types, so that HTML written into the page goes
/// through the console's one policy (`web/src/tt.ts`, a deny-list of active markup: the
/// console's own code writes none, and the libraries' markup is fixed). Two allowances, for the libraries the issue chose: inline styles (xterm.js and
/// asciinema-player write style elements and attributes; a style cannot run script) and
/// compiling WebAssembly (asciinema-player's terminal emulator; this does not allow `eval`).
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
                   style-src 'self' 'unsafe-inline'; img-src 'self'; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'; \
                   require-trusted-types-for 'script'; trusted-types default";

/// The router's fallback: a console file, or the API's 404.
pub async fn serve(method: Method, uri: Uri) -> Response {
    let asset = match uri.path() {
        "/" => drover_console::index(),
        path => drover_console::get(path),
    };
    let Some(asset) = asset.filter(|_| method == Method::GET || method == Method::HEAD) else {
        return ApiError::NotFound("no such endpoint".into()).into_response();
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use axum::http::StatusCode;

    use super::*;

    async fn get(method: Method, path: &str) -> Response {
        serve(method, path.parse().unwrap()).await
    }

    fn header(r: &Response, name: header::HeaderName) -> &str {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn the_page_and_its_files_are_served_with_the_policy() {
        let page = get(Method::GET, "/").await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(header(&page, header::CACHE_CONTROL), "no-cache");
        assert!(header(&page, header::CONTENT_SECURITY_POLICY).starts_with("default-src 'self'"));
        assert_eq!(header(&page, header::X_FRAME_OPTIONS), "DENY");
        let asset = drover_console::ASSETS.iter().find(|a| a.immutable).unwrap();
        let file = get(Method::HEAD, asset.path).await;
        assert_eq!(file.status(), StatusCode::OK);
        assert_eq!(header(&file, header::CONTENT_TYPE), asset.mime);
        assert!(header(&file, header::CACHE_CONTROL).contains("immutable"));
    }

    #[tokio::test]
    async fn everything_else_is_the_apis_json_404() {
        for (method, path) in [
            (Method::GET, "/api/v1/nope"),
            (Method::GET, "/api"),
            (Method::GET, "//api/v1/nodes"),
            (Method::GET, "/%61pi/v1/nodes"),
            (Method::GET, "/nodes"),
            (Method::GET, "/favicon.ico"),
            (Method::GET, "/assets/../index.html"),
            (Method::POST, "/"),
            (Method::DELETE, "/index.html"),
        ] {
            let r = get(method.clone(), path).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(
                header(&r, header::CONTENT_TYPE),
                "application/json",
                "{method} {path}"
            );
        }
    }
}

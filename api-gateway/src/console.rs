//! The web console: static files built into the binary (`console/app`), served at
//! `/console/`. The console is a client of the public API like any other: it signs
//! in with an API key kept in the tab's `sessionStorage` and calls `/v1`.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

/// The console's files.
#[derive(rust_embed::Embed)]
#[folder = "console/app"]
struct Assets;

/// What the console's pages may load and reach: only this origin (no CDN; `'self'`
/// covers websockets back to it). CodeMirror sets element styles, hence
/// `'unsafe-inline'` for styles alone.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

/// `GET /console`: to `/console/`, so that the page's relative links resolve.
pub async fn root() -> Redirect {
    Redirect::permanent("/console/")
}

/// `GET /console/` and `GET /console/{*path}`.
pub async fn asset(path: Option<Path<String>>) -> Response {
    let path = path.map(|Path(p)| p).unwrap_or_default();
    let path = if path.is_empty() {
        "index.html"
    } else {
        path.as_str()
    };
    let Some(file) = Assets::get(path) else {
        return crate::handlers::ops::not_found().await.into_response();
    };
    let mut resp = (StatusCode::OK, file.data.into_owned()).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(file.metadata.mimetype()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

//! The pages for people: the migration console at `/console` and the interactive API docs
//! (Swagger UI, vendored) at `/docs`. Both are static files compiled into the binary; they
//! hold no data and fetch everything from the API with the token typed into them, so they
//! need no token themselves and no network but this server.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// One static file: its body and content type.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const CONSOLE: Asset = Asset {
    body: include_bytes!("../../assets/console/index.html"),
    content_type: HTML,
};
const CONSOLE_JS: Asset = Asset {
    body: include_bytes!("../../assets/console/console.js"),
    content_type: JS,
};
const CONSOLE_CSS: Asset = Asset {
    body: include_bytes!("../../assets/console/console.css"),
    content_type: CSS,
};
const DOCS: Asset = Asset {
    body: include_bytes!("../../assets/docs/index.html"),
    content_type: HTML,
};
const DOCS_JS: Asset = Asset {
    body: include_bytes!("../../assets/docs/docs.js"),
    content_type: JS,
};
const SWAGGER_JS: Asset = Asset {
    body: include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js"),
    content_type: JS,
};
const SWAGGER_CSS: Asset = Asset {
    body: include_bytes!("../../assets/swagger-ui/swagger-ui.css"),
    content_type: CSS,
};

/// Scripts and styles from this server only; Swagger UI sets inline styles and data: images.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                   frame-ancestors 'none'";

impl IntoResponse for &'static Asset {
    fn into_response(self) -> Response {
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(self.content_type),
                ),
                (
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(CSP),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            self.body,
        )
            .into_response()
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { &CONSOLE }))
        .route("/console/console.js", get(|| async { &CONSOLE_JS }))
        .route("/console/console.css", get(|| async { &CONSOLE_CSS }))
        .route("/docs", get(|| async { &DOCS }))
        .route("/docs/docs.js", get(|| async { &DOCS_JS }))
        .route("/docs/swagger-ui-bundle.js", get(|| async { &SWAGGER_JS }))
        .route("/docs/swagger-ui.css", get(|| async { &SWAGGER_CSS }))
}

//! The web console: plain HTML, CSS and ES modules embedded in the binary
//! (`console/`), served at `/` from the admin API's port. The assets are
//! public, as a page must load before it can ask for a token; every `/v1`
//! call the page makes carries the bearer token, kept for the tab in
//! `sessionStorage`. The page runs under a Content-Security-Policy that
//! allows only its own scripts, styles and API: no inline script, no
//! other origin.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Each asset: its name under `/console/`, its content type, its bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("console/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("console/api.js"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_str!("console/ui.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("console/chart.js"),
    ),
    (
        "deployment.js",
        "text/javascript; charset=utf-8",
        include_str!("console/deployment.js"),
    ),
];

const INDEX: &str = include_str!("console/index.html");

/// What the page may load and reach: itself only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 5] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ]
}

pub async fn index() -> Response {
    (headers("text/html; charset=utf-8"), INDEX).into_response()
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => (headers(content_type), *body).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no console asset {name:?}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|(n, _, _)| *n).collect();
        for (_, _, body) in ASSETS.iter().chain([&("index.html", "", INDEX)]) {
            for import in body
                .split(['"', '\''])
                .filter(|s| s.starts_with("./") || s.starts_with("/console/"))
            {
                let name = import
                    .trim_start_matches("./")
                    .trim_start_matches("/console/");
                if name.ends_with(".js") || name.ends_with(".css") {
                    assert!(served.contains(&name), "{import} is not served");
                }
            }
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        assert!(!INDEX.contains("<script>"), "inline scripts break the CSP");
        assert!(!INDEX.contains(" style="), "inline styles break the CSP");
        assert!(
            !INDEX.contains("http://") && !INDEX.contains("https://"),
            "no other origin"
        );
    }
}

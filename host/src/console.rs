//! The web console at `/console`: a page of the API for tenants and
//! operators, its files compiled into the binary (`host/console/`), so a node
//! serves it with nothing fetched from anywhere else.
//!
//! The page holds no secrets of its own: it signs in with an API key kept
//! in the browser's session storage and calls `/api/v1` like any client.
//! What it is served with makes a script injected through tenant data
//! inert, and the page unframeable: a Content-Security-Policy allowing
//! only this origin's own script and style (no inline script, no `eval`),
//! `frame-ancestors 'none'` and `X-Frame-Options: DENY`.

use std::sync::LazyLock;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use sha2::{Digest as _, Sha256};

use crate::response::{ResponseBody, empty, error_response, full};

/// The policy every console answer carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One file of the console.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    path: "/console",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../console/index.html"),
};

const ASSETS: [Asset; 4] = [
    INDEX,
    Asset {
        path: "/console/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../console/console.js"),
    },
    Asset {
        path: "/console/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../console/console.css"),
    },
    Asset {
        path: "/console/icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../console/icon.svg"),
    },
];

/// Each asset's entity tag: a digest of its bytes, so a browser revalidates
/// cheaply and never keeps a file of an older binary.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body);
            let tag: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{tag}\"")).expect("hex is a header value")
        })
        .collect()
});

/// Whether `path` is the console's (`/console` and below).
pub fn is_console(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// Answers a request for a console path.
pub fn respond<B>(request: &Request<B>) -> Response<ResponseBody> {
    let path = request.uri().path();
    // `/console/` is the page too (a link typed with its slash).
    let path = if path == "/console/" { INDEX.path } else { path };
    let mut response = match ASSETS.iter().position(|asset| asset.path == path) {
        None => error_response(StatusCode::NOT_FOUND, "not_found", "no such console page"),
        Some(_) if !matches!(*request.method(), Method::GET | Method::HEAD) => {
            let mut response =
                error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET");
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        Some(index) => {
            let asset = &ASSETS[index];
            let etag = &ETAGS[index];
            let fresh = request
                .headers()
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|tag| tag.trim() == etag || tag.trim() == "*");
            let mut response = if fresh {
                let mut response = Response::new(empty());
                *response.status_mut() = StatusCode::NOT_MODIFIED;
                response
            } else if *request.method() == Method::HEAD {
                let mut response = Response::new(empty());
                response.headers_mut().insert(header::CONTENT_LENGTH, asset.body.len().into());
                response
            } else {
                Response::new(full(asset.body))
            };
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
            headers.insert(header::ETAG, etag.clone());
            // Revalidated on each load: a node upgraded under an open
            // console serves the new files at once.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
    };
    let headers = response.headers_mut();
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Response<ResponseBody> {
        respond(&Request::get(path).body(()).unwrap())
    }

    #[test]
    fn every_answer_carries_the_policy_and_refuses_framing() {
        for path in ["/console", "/console/", "/console/console.js", "/console/nope"] {
            let response = get(path);
            let csp = response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
            assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
            assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY", "{path}");
        }
        assert_eq!(get("/console/nope").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        // Every <script> loads a file of this origin; no style attribute or
        // element (the policy would block them, silently breaking the page).
        for (at, _) in html.match_indices("<script") {
            let tag = &html[at..at + html[at..].find('>').unwrap()];
            assert!(tag.contains("src=\"/console/"), "{tag}");
        }
        assert!(!html.contains("<style") && !html.contains("style="), "inline style");
        let js = std::str::from_utf8(ASSETS[1].body).unwrap();
        assert!(
            !js.contains("innerHTML") && !js.contains("insertAdjacentHTML"),
            "HTML built from text"
        );
        assert!(!js.contains("eval(") && !js.contains("new Function"), "eval");
    }

    #[test]
    fn a_known_etag_gets_304_and_head_no_body() {
        let etag = get("/console/console.css").headers()[header::ETAG].clone();
        let request = Request::get("/console/console.css")
            .header(header::IF_NONE_MATCH, etag)
            .body(())
            .unwrap();
        assert_eq!(respond(&request).status(), StatusCode::NOT_MODIFIED);
        let head = respond(&Request::head("/console").body(()).unwrap());
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()[header::CONTENT_LENGTH], INDEX.body.len().to_string().as_str());
        let post = respond(&Request::post("/console").body(()).unwrap());
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}

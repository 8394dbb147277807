//! The debug page at `GET /`: one HTML file with inline CSS and JavaScript
//! that shows the live stream and the current value of every event name,
//! inserts events and loads a name's history, using the API only.
//!
//! Every runtime serves it with [`response`], so the bytes and headers are
//! the same under each. [`Config::debug_page`](crate::Config::debug_page)
//! turns it off, and `/` then gets `404` like any unknown route.

use std::sync::LazyLock;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The route of the page.
pub const PATH: &str = "/";

/// The page itself. It loads nothing from other origins.
pub const HTML: &str = include_str!("debug_page.html");

/// The `cache-control` value: browsers may store the page but revalidate it
/// on each load with `If-None-Match`, because a new binary can change it.
pub const CACHE_CONTROL: &str = "no-cache";

/// A response to `GET /`: `200` with the page, or `304` with no body when
/// the request's `If-None-Match` lists the page's entity tag.
#[derive(Debug, Clone)]
pub struct Response {
    /// `200` or `304`.
    pub status: u16,
    /// Every header of the response, `content-type` included.
    pub headers: Vec<(&'static str, String)>,
    /// The page for `200`, empty for `304`.
    pub body: &'static str,
}

/// Builds the response to `GET /`, given the request's `If-None-Match`
/// header.
pub fn response(if_none_match: Option<&str>) -> Response {
    let policy = &*POLICY;
    let mut headers = vec![
        ("cache-control", CACHE_CONTROL.to_owned()),
        ("etag", policy.etag.clone()),
    ];
    if if_none_match.is_some_and(|header| matches_etag(header, &policy.etag)) {
        return Response {
            status: 304,
            headers,
            body: "",
        };
    }
    headers.extend([
        ("content-type", "text/html; charset=utf-8".to_owned()),
        (
            "content-security-policy",
            policy.content_security_policy.clone(),
        ),
        ("x-content-type-options", "nosniff".to_owned()),
        ("referrer-policy", "no-referrer".to_owned()),
    ]);
    Response {
        status: 200,
        headers,
        body: HTML,
    }
}

/// The headers that depend on the page's bytes, computed on first use.
struct Policy {
    content_security_policy: String,
    etag: String,
}

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    let script = inline_element(HTML, "script");
    let style = inline_element(HTML, "style");
    // Only the page's own script and style run, identified by their
    // SHA-256 hashes. Requests go to this origin only, and the `data:` image
    // is the empty icon that stops browsers from requesting /favicon.ico.
    let content_security_policy = format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        source_hash(script),
        source_hash(style),
    );
    let digest = Sha256::digest(HTML.as_bytes());
    let etag = format!(
        "\"{}\"",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
    );
    Policy {
        content_security_policy,
        etag,
    }
});

/// Returns the text between `<tag>` and `</tag>`, the part that a CSP hash
/// covers.
///
/// # Panics
///
/// Panics when the page has no such element, which the unit tests catch.
fn inline_element<'a>(html: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = html
        .find(&open)
        .unwrap_or_else(|| panic!("the debug page has no {open}"))
        + open.len();
    let length = html[start..]
        .find(&close)
        .unwrap_or_else(|| panic!("the debug page has no {close}"));
    &html[start..start + length]
}

/// Returns a CSP source expression that allows exactly `text` inline.
fn source_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let encoded = base64::engine::general_purpose::STANDARD.encode(digest);
    format!("sha256-{encoded}")
}

/// Returns whether an `If-None-Match` value lists `etag`, comparing weakly
/// as RFC 9110 section 13.1.2 requires, or is `*`.
fn matches_etag(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_one_script_and_style() {
        assert_eq!(HTML.matches("<script").count(), 1);
        assert_eq!(HTML.matches("<style").count(), 1);
        assert!(
            !HTML.contains("http://"),
            "the page loads nothing over HTTP"
        );
        assert!(
            !HTML.contains("https://"),
            "the page loads nothing over HTTPS"
        );
    }

    #[test]
    fn response_headers() {
        let response = response(None);
        assert_eq!(response.status, 200);
        assert_eq!(response.body, HTML);
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.clone())
                .unwrap_or_else(|| panic!("no {name} header"))
        };
        assert_eq!(header("content-type"), "text/html; charset=utf-8");
        let policy = header("content-security-policy");
        assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"));
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        let script_hash = source_hash(inline_element(HTML, "script"));
        assert!(policy.contains(&script_hash), "{policy}");
    }

    #[test]
    fn revalidation_by_etag() {
        let etag = POLICY.etag.clone();
        for header in [etag.clone(), format!("W/{etag}"), format!("\"x\", {etag}")] {
            let response = response(Some(&header));
            assert_eq!(response.status, 304, "If-None-Match: {header}");
            assert!(response.body.is_empty());
        }
        assert_eq!(response(Some("*")).status, 304);
        assert_eq!(response(Some("\"other\"")).status, 200);
    }
}

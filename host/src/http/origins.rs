//! Which browser pages may use the shell: a GraphQL request (or WebSocket
//! upgrade) carrying an `Origin` that is neither the shell's own nor in
//! `http.allowed-origins` is refused with 403 before it runs, so a page of
//! another site cannot use the shell through its visitors' browsers;
//! allowed cross origins get CORS headers. Requests without an `Origin`
//! (curl, servers) are not a browser's and pass.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The browser origins that may use the GraphQL endpoints, besides the
/// shell's own (an `Origin` naming the request's `Host`).
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins {
    any: bool,
    patterns: Vec<OriginPattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginPattern {
    scheme: String,
    host: String,
    port: PortPattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    /// No port given: the scheme's default port.
    Default,
    Exact(u16),
    /// `:*`: any port, the default one included.
    Any,
}

/// `host[:port]` of an origin or a `Host` header: the host lower-cased,
/// the port as written (`*` allowed when `wildcard`).
fn authority(text: &str, wildcard: bool) -> Option<(String, PortPattern)> {
    let (host, port) = match text.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            let port = if after.is_empty() { None } else { Some(after.strip_prefix(':')?) };
            if inside.is_empty() || !inside.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
                return None;
            }
            (format!("[{inside}]"), port)
        }
        None => {
            let (host, port) = match text.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            };
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || "/?#@[]:".contains(c)) {
                return None;
            }
            (host.to_owned(), port)
        }
    };
    let port = match port {
        None => PortPattern::Default,
        Some("*") if wildcard => PortPattern::Any,
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            PortPattern::Exact(port.parse().ok()?)
        }
        Some(_) => return None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// `scheme://host[:port]` (with `:*` when `wildcard`), nothing after it.
fn parse_origin(text: &str, wildcard: bool) -> Option<OriginPattern> {
    let (scheme, rest) = text.trim().split_once("://")?;
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return None;
    }
    let (host, port) = authority(rest, wildcard)?;
    Some(OriginPattern { scheme: scheme.to_ascii_lowercase(), host, port })
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// The port a request goes to: the one given, else the scheme's default.
fn effective_port(scheme: &str, port: PortPattern) -> Option<u16> {
    match port {
        PortPattern::Exact(port) => Some(port),
        _ => default_port(scheme),
    }
}

impl AllowedOrigins {
    /// From `http.allowed-origins` entries: `scheme://host`,
    /// `scheme://host:port`, `scheme://host:*` (any port) or `*` (any origin).
    pub fn new(entries: &[String]) -> Result<Self, String> {
        let mut allowed = Self::default();
        for entry in entries {
            if entry.trim() == "*" {
                allowed.any = true;
                continue;
            }
            let pattern = parse_origin(entry, true).ok_or_else(|| {
                format!(
                    "`{entry}` is not an origin: write `scheme://host`, `scheme://host:port`, \
                     `scheme://host:*` (any port) or `*`, without a path"
                )
            })?;
            allowed.patterns.push(pattern);
        }
        Ok(allowed)
    }

    /// The default: pages served from this machine (localhost, 127.0.0.1,
    /// `[::1]`, any port, http or https).
    pub fn loopback() -> Self {
        let entries: Vec<String> = crate::config::LOOPBACK_ORIGINS.iter().map(|&o| o.to_owned()).collect();
        Self::new(&entries).unwrap_or_default()
    }

    /// Whether a browser request from `origin` may proceed; `host` is the
    /// request's `Host` (a page of the shell's own origin always may).
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        let Some(origin) = parse_origin(origin, false) else { return false };
        let port = effective_port(&origin.scheme, origin.port);
        let own = host.and_then(|h| authority(h.trim(), false)).is_some_and(|(host, host_port)| {
            host == origin.host && effective_port(&origin.scheme, host_port) == port
        });
        own || self.patterns.iter().any(|p| {
            p.scheme == origin.scheme
                && p.host == origin.host
                && (p.port == PortPattern::Any || effective_port(&p.scheme, p.port) == port)
        })
    }
}

/// The host a request was sent to: `Host`, or the URI's authority (HTTP/2).
fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers.get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Refuses, with 403, a browser request from an origin that is not allowed,
/// before anything else sees it (WebSocket upgrades and CORS preflights included).
pub(super) async fn check_origin(
    State(origins): State<Arc<AllowedOrigins>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let text = origin.to_str().unwrap_or("");
        if !origins.allows(text, request_host(headers, request.uri())) {
            tracing::info!(
                origin = text,
                path = request.uri().path(),
                "refused a browser request from an origin not in http.allowed-origins"
            );
            return super::graphql::refuse(
                StatusCode::FORBIDDEN,
                super::graphql::Media::Json,
                format!("pages of origin `{text}` may not use this shell (see `http.allowed-origins`)"),
            );
        }
    }
    next.run(request).await
}

/// CORS for the allowed cross origins: what they may send, for how long a
/// preflight holds. (Disallowed origins never get here.)
pub(super) fn cors(origins: Arc<AllowedOrigins>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, parts| {
            origin.to_str().is_ok_and(|o| origins.allows(o, request_host(&parts.headers, &parts.uri)))
        }))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::AUTHORIZATION,
            HeaderName::from_static("idempotency-key"),
        ])
        .max_age(Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_matched_by_scheme_host_and_port() {
        let allowed = |entries: &[&str]| {
            AllowedOrigins::new(&entries.iter().map(|&e| e.to_owned()).collect::<Vec<_>>()).expect("valid")
        };
        let loopback = AllowedOrigins::loopback();
        for origin in
            ["http://localhost:3000", "http://LOCALHOST", "https://127.0.0.1:8443", "http://[::1]:80"]
        {
            assert!(loopback.allows(origin, None), "{origin}");
        }
        for origin in ["http://evil.example", "http://localhost.evil.example", "null", "", "http://127.0.0.2"]
        {
            assert!(!loopback.allows(origin, None), "{origin}");
        }
        // The shell's own origin: the one its `Host` names (default ports included).
        let none = allowed(&[]);
        assert!(none.allows("http://shell.example:8080", Some("shell.example:8080")));
        assert!(none.allows("https://shell.example", Some("shell.example")));
        assert!(none.allows("http://shell.example", Some("shell.example:80")));
        assert!(!none.allows("http://shell.example:8081", Some("shell.example:8080")));
        assert!(!none.allows("http://evil.example", Some("shell.example")));
        assert!(!none.allows("http://localhost:3000", Some("shell.example")));

        let app = allowed(&["https://app.example.com", "http://dev.example:*"]);
        assert!(app.allows("https://app.example.com", None));
        assert!(app.allows("https://app.example.com:443", None));
        assert!(!app.allows("https://app.example.com:8443", None));
        assert!(!app.allows("http://app.example.com", None));
        assert!(app.allows("http://dev.example:1234", None));
        assert!(allowed(&["*"]).allows("http://anything.example", None));

        for bad in ["app.example.com", "https://app.example.com/", "https://", "https://a:b", "https://[::1"]
        {
            assert!(AllowedOrigins::new(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}

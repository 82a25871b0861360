//! The request path as the upstream will see it: spellings that an upstream could read as another
//! path are refused, and routes match on whole segments.
//!
//! Chosen: refuse rather than normalise. A normalised path would have to be written back for
//! the upstream to see what was decided on (one more host call per request, and a rewrite the
//! API's owner may not expect); refusing costs nothing, and no client of a partner API needs
//! `//`, `/./`, `%2F` or `;` in its paths. Case: route prefixes match ASCII case-insensitively,
//! so `/API/transactions` falls under the route for `/api/transactions` (an upstream that ignores
//! case sees the same resource; one that does not has no such resource).

use certbound_config::Config;

/// Why a path is refused (400 `invalid_request`).
pub const REFUSED: &str = "the request path has a form that is not accepted";

/// The route (index into `cfg.routes`) a request falls under, or `None` for the default policy;
/// `Err` when the path has a spelling an upstream could read as another path: an encoded slash,
/// backslash or dot, a percent-encoded unreserved character (`%74` for `t`), a dot segment, an
/// empty segment, a `;` parameter, a NUL or a missing leading `/`.
pub fn route(cfg: &Config, method: &str, path: &str) -> Result<Option<usize>, &'static str> {
    let path = path.split('?').next().unwrap_or(path);
    if !is_plain(path) {
        return Err(REFUSED);
    }
    Ok(cfg.routes.iter().position(|r| {
        under(path, &r.path_prefix)
            && (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
    }))
}

/// `path` without anything an upstream might decode or collapse into another path.
fn is_plain(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') || b.iter().any(|c| matches!(c, b';' | b'\\' | b'#' | 0)) {
        return false;
    }
    // Percent-encoding: only of bytes that are not unreserved and not `/` (RFC 3986 2.3).
    let mut i = 0;
    while let Some(rel) = b.get(i..).and_then(|r| r.iter().position(|c| *c == b'%')) {
        let at = i + rel;
        let hex = |k: usize| b.get(k).and_then(|c| (*c as char).to_digit(16));
        let (Some(h), Some(l)) = (hex(at + 1), hex(at + 2)) else {
            return false;
        };
        let decoded = (h * 16 + l) as u8;
        // An unreserved character, a separator, or a control character (`%00` cuts C strings).
        if decoded.is_ascii_alphanumeric() || b"-._~/\\".contains(&decoded) || decoded < 0x20 {
            return false;
        }
        i = at + 3;
    }
    // Segments: none empty (`//`, but a trailing `/` is fine), none `.` or `..`.
    let mut segments = path[1..].split('/').peekable();
    while let Some(s) = segments.next() {
        if s == "." || s == ".." || (s.is_empty() && segments.peek().is_some()) {
            return false;
        }
    }
    true
}

/// Whether `path` is `prefix` or below it, on segment boundaries and ignoring ASCII case: `/api`
/// covers `/api` and `/api/x` but not `/apix`; `/api/` covers everything below `/api/`.
fn under(path: &str, prefix: &str) -> bool {
    let (p, q) = (path.as_bytes(), prefix.as_bytes());
    if p.len() < q.len() || !p[..q.len()].eq_ignore_ascii_case(q) {
        return false;
    }
    q.ends_with(b"/") || matches!(p.get(q.len()), None | Some(b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        let mut v = certbound_config::minimal_config("json");
        v["routes"] = json!([
            {"path_prefix": "/api/transactions", "methods": ["POST"], "required_scopes": ["write"]},
            {"path_prefix": "/api/", "required_scopes": ["read"]}
        ]);
        certbound_config::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn routes_match_whole_segments_ignoring_case_then_the_method() {
        let c = config();
        let table = [
            ("POST", "/api/transactions", Some(0)),
            ("POST", "/api/transactions?x=1", Some(0)),
            ("POST", "/api/transactions/42", Some(0)),
            ("POST", "/API/Transactions", Some(0)),
            ("POST", "/api/transactionsX", Some(1)),
            ("GET", "/api/transactions", Some(1)),
            ("GET", "/api/", Some(1)),
            ("GET", "/api", None),
            ("GET", "/apix", None),
            ("GET", "/health", None),
            ("POST", "/api/transactions/", Some(0)),
            ("GET", "/api/a%20b", Some(1)),
        ];
        for (method, path, expected) in table {
            assert_eq!(route(&c, method, path), Ok(expected), "{method} {path}");
        }
    }

    #[test]
    fn spellings_an_upstream_could_read_as_another_path_are_refused() {
        let c = config();
        for path in [
            "//api/transactions",
            "/api//transactions",
            "/api/./transactions",
            "/api/x/../transactions",
            "/api/transactions/..",
            "/api/%74ransactions",
            "/api%2ftransactions",
            "/api%2Ftransactions",
            "/api/%2e%2e/x",
            "/api%5ctransactions",
            "/api\\transactions",
            "/api;x/transactions",
            "/api/transactions;jsessionid=1",
            "/api/x%",
            "/api/x%4",
            "/api/x%zz",
            "/api/transactions%00.json",
            "/api/x%0a",
            "api/transactions",
            "",
            "/api/x#frag",
        ] {
            assert_eq!(route(&c, "POST", path), Err(REFUSED), "{path:?}");
        }
    }
}

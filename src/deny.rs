//! Why a request is denied, and the local reply it gets: one table of reasons (metric, status,
//! RFC 6750 error code, description) that the replies, the metrics and `docs/config.md` all use.

use crate::introspection::Failure;
use crate::token::TokenError;

/// Why a request is denied. The `&'static str` of some variants is the operator's detail, logged
/// and never sent (for 5xx) or sent as the description (for `InvalidRequest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    MissingToken,
    InvalidRequest(&'static str),
    InactiveToken,
    NoClientCertificate,
    TokenNotBound,
    CertificateMismatch,
    ClientNotAllowed,
    InsufficientScope,
    IntrospectionUnavailable(&'static str),
    IntrospectionBadResponse(&'static str),
    UnverifiableBinding,
    NoRoute,
    CertificateNotAllowed(&'static str),
}

/// One row of the table of reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonInfo {
    /// The suffix of the counter `certbound.requests_denied.<metric>`.
    pub metric: &'static str,
    pub status: u32,
    /// The `error` of the JSON body, and of `WWW-Authenticate` where RFC 6750 defines one.
    pub error_code: &'static str,
    /// What the client is told (`InvalidRequest` tells its own detail instead).
    pub description: &'static str,
}

const fn row(
    metric: &'static str,
    status: u32,
    error_code: &'static str,
    description: &'static str,
) -> ReasonInfo {
    ReasonInfo {
        metric,
        status,
        error_code,
        description,
    }
}

/// Every reason, in the order of `DenyReason::index`.
pub const REASONS: [ReasonInfo; 13] = [
    row(
        "missing_token",
        401,
        "unauthorized",
        "a bearer token is required",
    ),
    row(
        "invalid_request",
        400,
        "invalid_request",
        "the request is malformed",
    ),
    row(
        "inactive_token",
        401,
        "invalid_token",
        "the access token is not active",
    ),
    row(
        "no_client_certificate",
        401,
        "invalid_token",
        "a client certificate is required",
    ),
    row(
        "token_not_bound",
        401,
        "invalid_token",
        "the access token is not bound to a certificate",
    ),
    row(
        "certificate_mismatch",
        401,
        "invalid_token",
        "the access token is bound to another certificate",
    ),
    row(
        "client_not_allowed",
        401,
        "invalid_token",
        "the access token's client may not use this route",
    ),
    row(
        "insufficient_scope",
        403,
        "insufficient_scope",
        "the access token lacks a required scope",
    ),
    row(
        "introspection_unavailable",
        503,
        "temporarily_unavailable",
        "the token could not be checked, try again later",
    ),
    row(
        "introspection_bad_response",
        502,
        "server_error",
        "the token could not be checked",
    ),
    row(
        "unverifiable_binding",
        401,
        "invalid_token",
        "the access token is bound by a method this API cannot check",
    ),
    row(
        "no_route",
        403,
        "access_denied",
        "no route allows this request",
    ),
    row(
        "certificate_not_allowed",
        403,
        "access_denied",
        "the client certificate is not allowed on this route",
    ),
];

impl DenyReason {
    /// The row of this reason in `REASONS`.
    pub fn index(self) -> usize {
        match self {
            DenyReason::MissingToken => 0,
            DenyReason::InvalidRequest(_) => 1,
            DenyReason::InactiveToken => 2,
            DenyReason::NoClientCertificate => 3,
            DenyReason::TokenNotBound => 4,
            DenyReason::CertificateMismatch => 5,
            DenyReason::ClientNotAllowed => 6,
            DenyReason::InsufficientScope => 7,
            DenyReason::IntrospectionUnavailable(_) => 8,
            DenyReason::IntrospectionBadResponse(_) => 9,
            DenyReason::UnverifiableBinding => 10,
            DenyReason::NoRoute => 11,
            DenyReason::CertificateNotAllowed(_) => 12,
        }
    }

    fn info(self) -> &'static ReasonInfo {
        // `index` is below REASONS.len() by construction; the fallback only keeps this panic-free.
        REASONS.get(self.index()).unwrap_or(&REASONS[9])
    }

    pub fn metric(self) -> &'static str {
        self.info().metric
    }

    pub fn status(self) -> u32 {
        self.info().status
    }

    pub fn error_code(self) -> &'static str {
        self.info().error_code
    }

    /// What the client is told.
    pub fn description(self) -> &'static str {
        match self {
            DenyReason::InvalidRequest(why) => why,
            other => other.info().description,
        }
    }

    /// The operator-facing detail for the log; never sent to the client for 5xx.
    pub fn detail(self) -> &'static str {
        match self {
            DenyReason::IntrospectionUnavailable(why)
            | DenyReason::IntrospectionBadResponse(why)
            | DenyReason::CertificateNotAllowed(why) => why,
            other => other.description(),
        }
    }
}

impl From<TokenError> for DenyReason {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Missing => DenyReason::MissingToken,
            TokenError::Malformed(why) => DenyReason::InvalidRequest(why),
        }
    }
}

impl From<Failure> for DenyReason {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Unavailable(why) | Failure::Cancelled(why) => {
                DenyReason::IntrospectionUnavailable(why)
            }
            Failure::Bad(why) => DenyReason::IntrospectionBadResponse(why),
        }
    }
}

/// A local reply: the request never reaches the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The reply for `reason`. `required_scopes` fills `scope=` of an `insufficient_scope` challenge.
pub fn reply(reason: DenyReason, realm: &str, required_scopes: &[String]) -> Reply {
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("cache-control", "no-store".to_string()),
    ];
    let challenge = match reason {
        // RFC 6750 section 3.1: no error attribute when the request had no authentication.
        DenyReason::MissingToken => Some(format!("Bearer realm=\"{realm}\"")),
        // Not about the token: a 5xx, or a request no route allows.
        DenyReason::IntrospectionUnavailable(_)
        | DenyReason::IntrospectionBadResponse(_)
        | DenyReason::NoRoute
        | DenyReason::CertificateNotAllowed(_) => None,
        _ => {
            let mut c = format!(
                "Bearer realm=\"{realm}\", error=\"{}\", error_description=\"{}\"",
                reason.error_code(),
                reason.description()
            );
            if reason == DenyReason::InsufficientScope {
                c.push_str(&format!(", scope=\"{}\"", required_scopes.join(" ")));
            }
            Some(c)
        }
    };
    if let Some(c) = challenge {
        headers.push(("www-authenticate", c));
    }
    if reason.status() == 503 {
        headers.push(("retry-after", "5".to_string()));
    }
    let body = serde_json::json!({
        "error": reason.error_code(),
        "error_description": reason.description(),
    })
    .to_string()
    .into_bytes();
    Reply {
        status: reason.status(),
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [DenyReason; 13] = [
        DenyReason::MissingToken,
        DenyReason::InvalidRequest("x"),
        DenyReason::InactiveToken,
        DenyReason::NoClientCertificate,
        DenyReason::TokenNotBound,
        DenyReason::CertificateMismatch,
        DenyReason::ClientNotAllowed,
        DenyReason::InsufficientScope,
        DenyReason::IntrospectionUnavailable("x"),
        DenyReason::IntrospectionBadResponse("x"),
        DenyReason::UnverifiableBinding,
        DenyReason::NoRoute,
        DenyReason::CertificateNotAllowed("x"),
    ];

    fn challenge(r: &Reply) -> Option<&str> {
        r.headers
            .iter()
            .find(|(k, _)| *k == "www-authenticate")
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn every_reason_has_its_own_row_and_a_distinct_metric() {
        for (i, reason) in ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}");
        }
        let metrics: std::collections::HashSet<_> = REASONS.iter().map(|r| r.metric).collect();
        assert_eq!(metrics.len(), REASONS.len());
    }

    #[test]
    fn token_errors_and_introspection_failures_map_to_their_replies() {
        assert_eq!(DenyReason::from(TokenError::Missing).status(), 401);
        assert_eq!(
            DenyReason::from(TokenError::Malformed("x")),
            DenyReason::InvalidRequest("x")
        );
        assert_eq!(DenyReason::from(Failure::Unavailable("x")).status(), 503);
        assert_eq!(DenyReason::from(Failure::Bad("x")).status(), 502);
    }

    /// docs/config.md's table of replies is this table: a row changed here must change there.
    /// (The situation column is the docs' own words.)
    #[test]
    fn the_documented_replies_are_the_table() {
        let docs = include_str!("../docs/config.md");
        for reason in ALL {
            let r = reply(reason, "certbound", &[]);
            let challenge = match challenge(&r) {
                None => "none".to_string(),
                Some(c) if reason == DenyReason::MissingToken => format!("`{c}`"),
                Some(_) => format!("`error=\"{}\"`", reason.error_code()),
            };
            let row = format!(
                " | {} | {} | `{}` | `{}` |",
                reason.status(),
                challenge,
                reason.error_code(),
                reason.metric()
            );
            assert!(docs.contains(&row), "docs/config.md lacks the row\n{row}");
        }
    }

    #[test]
    fn replies_follow_rfc_6750() {
        let missing = reply(DenyReason::MissingToken, "certbound", &[]);
        assert_eq!(missing.status, 401);
        assert_eq!(challenge(&missing), Some("Bearer realm=\"certbound\""));

        let bad = reply(
            DenyReason::InvalidRequest("several Authorization headers"),
            "r",
            &[],
        );
        assert_eq!(bad.status, 400);
        assert_eq!(
            challenge(&bad),
            Some("Bearer realm=\"r\", error=\"invalid_request\", error_description=\"several Authorization headers\"")
        );

        let mismatch = reply(DenyReason::CertificateMismatch, "r", &[]);
        assert_eq!(mismatch.status, 401);
        assert!(challenge(&mismatch)
            .unwrap()
            .contains("error=\"invalid_token\""));

        let scope = reply(
            DenyReason::InsufficientScope,
            "r",
            &["a".into(), "b".into()],
        );
        assert_eq!(scope.status, 403);
        assert!(challenge(&scope).unwrap().ends_with(", scope=\"a b\""));
        let body: serde_json::Value = serde_json::from_slice(&scope.body).unwrap();
        assert_eq!(body["error"], "insufficient_scope");
        assert!(body["error_description"].is_string());

        let down = reply(DenyReason::IntrospectionUnavailable("timeout"), "r", &[]);
        assert_eq!(down.status, 503);
        assert_eq!(challenge(&down), None);
        assert!(down.headers.contains(&("retry-after", "5".to_string())));
        // The operator's detail stays in the log.
        assert!(!String::from_utf8(down.body).unwrap().contains("timeout"));
        assert_eq!(
            reply(DenyReason::IntrospectionBadResponse("x"), "r", &[]).status,
            502
        );
    }
}

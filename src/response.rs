//! Local replies for denied requests: status, RFC 6750 `WWW-Authenticate`, a small JSON body.

use crate::decision::DenyReason;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The reply for `reason`. `required_scopes` fills `scope=` of an `insufficient_scope` challenge.
pub fn deny(reason: DenyReason, realm: &str, required_scopes: &[String]) -> Reply {
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("cache-control", "no-store".to_string()),
    ];
    let challenge = match reason {
        // RFC 6750 section 3.1: no error attribute when the request had no authentication.
        DenyReason::MissingToken => Some(format!("Bearer realm=\"{realm}\"")),
        DenyReason::IntrospectionUnavailable(_) | DenyReason::IntrospectionBadResponse(_) => None,
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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn challenge(r: &Reply) -> Option<&str> {
        r.headers
            .iter()
            .find(|(k, _)| *k == "www-authenticate")
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn replies_follow_rfc_6750() {
        let missing = deny(DenyReason::MissingToken, "certbound", &[]);
        assert_eq!(missing.status, 401);
        assert_eq!(challenge(&missing), Some("Bearer realm=\"certbound\""));

        let bad = deny(
            DenyReason::InvalidRequest("several Authorization headers"),
            "r",
            &[],
        );
        assert_eq!(bad.status, 400);
        assert_eq!(
            challenge(&bad),
            Some("Bearer realm=\"r\", error=\"invalid_request\", error_description=\"several Authorization headers\"")
        );

        let mismatch = deny(DenyReason::CertificateMismatch, "r", &[]);
        assert_eq!(mismatch.status, 401);
        assert!(challenge(&mismatch)
            .unwrap()
            .contains("error=\"invalid_token\""));

        let scope = deny(
            DenyReason::InsufficientScope,
            "r",
            &["a".into(), "b".into()],
        );
        assert_eq!(scope.status, 403);
        assert!(challenge(&scope).unwrap().ends_with(", scope=\"a b\""));
        let body: serde_json::Value = serde_json::from_slice(&scope.body).unwrap();
        assert_eq!(body["error"], "insufficient_scope");
        assert!(body["error_description"].is_string());

        let down = deny(DenyReason::IntrospectionUnavailable("timeout"), "r", &[]);
        assert_eq!(down.status, 503);
        assert_eq!(challenge(&down), None);
        // The operator's detail stays in the log.
        assert!(!String::from_utf8(down.body).unwrap().contains("timeout"));
        assert_eq!(
            deny(DenyReason::IntrospectionBadResponse("x"), "r", &[]).status,
            502
        );
    }
}

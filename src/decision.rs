//! The decision, pure: given what the token is and what the connection presented, allow or deny.

use crate::binding::Thumbprint;
use crate::cache::{ActiveToken, TokenState};
use crate::config::Policy;
use crate::introspection::Failure;
use crate::token::TokenError;

/// Why a request is denied; each has its reply and its metric.
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
}

impl DenyReason {
    pub const ALL_METRICS: [&'static str; 10] = [
        "missing_token",
        "invalid_request",
        "inactive_token",
        "no_client_certificate",
        "token_not_bound",
        "certificate_mismatch",
        "client_not_allowed",
        "insufficient_scope",
        "introspection_unavailable",
        "introspection_bad_response",
    ];

    /// The position of this reason's name in `ALL_METRICS`.
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
        }
    }

    /// The suffix of `certbound.requests_denied.<reason>`.
    pub fn metric(self) -> &'static str {
        Self::ALL_METRICS
            .get(self.index())
            .copied()
            .unwrap_or("unknown")
    }

    pub fn status(self) -> u32 {
        match self {
            DenyReason::MissingToken => 401,
            DenyReason::InvalidRequest(_) => 400,
            DenyReason::InsufficientScope => 403,
            DenyReason::IntrospectionUnavailable(_) => 503,
            DenyReason::IntrospectionBadResponse(_) => 502,
            _ => 401,
        }
    }

    /// The `error` of the JSON body, and of `WWW-Authenticate` where RFC 6750 defines one.
    pub fn error_code(self) -> &'static str {
        match self {
            DenyReason::MissingToken => "unauthorized",
            DenyReason::InvalidRequest(_) => "invalid_request",
            DenyReason::InsufficientScope => "insufficient_scope",
            DenyReason::IntrospectionUnavailable(_) => "temporarily_unavailable",
            DenyReason::IntrospectionBadResponse(_) => "server_error",
            _ => "invalid_token",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            DenyReason::MissingToken => "a bearer token is required",
            DenyReason::InvalidRequest(why) => why,
            DenyReason::InactiveToken => "the access token is not active",
            DenyReason::NoClientCertificate => "a client certificate is required",
            DenyReason::TokenNotBound => "the access token is not bound to a certificate",
            DenyReason::CertificateMismatch => "the access token is bound to another certificate",
            DenyReason::ClientNotAllowed => "the access token's client may not use this route",
            DenyReason::InsufficientScope => "the access token lacks a required scope",
            DenyReason::IntrospectionUnavailable(_) => {
                "the token could not be checked, try again later"
            }
            DenyReason::IntrospectionBadResponse(_) => "the token could not be checked",
        }
    }

    /// The operator-facing detail for the log; never sent to the client for 5xx.
    pub fn detail(self) -> &'static str {
        match self {
            DenyReason::IntrospectionUnavailable(why)
            | DenyReason::IntrospectionBadResponse(why) => why,
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
            Failure::Unavailable(why) => DenyReason::IntrospectionUnavailable(why),
            Failure::Bad(why) => DenyReason::IntrospectionBadResponse(why),
        }
    }
}

/// Allows the request or says why not. RFC 8705 section 3: a bound token is always checked against
/// the connection's certificate, whether or not the route requires binding.
pub fn decide<'a>(
    state: &'a TokenState,
    presented: Option<&Thumbprint>,
    policy: &Policy,
) -> Result<&'a ActiveToken, DenyReason> {
    let TokenState::Active(token) = state else {
        return Err(DenyReason::InactiveToken);
    };
    match (&token.cnf, presented) {
        (None, _) if policy.require_binding => return Err(DenyReason::TokenNotBound),
        (None, _) => {}
        (Some(_), None) => return Err(DenyReason::NoClientCertificate),
        (Some(bound), Some(cert)) if !bound.matches(cert) => {
            return Err(DenyReason::CertificateMismatch)
        }
        (Some(_), Some(_)) => {}
    }
    if !policy.allowed_client_ids.is_empty()
        && !token
            .client_id
            .as_ref()
            .is_some_and(|id| policy.allowed_client_ids.contains(id))
    {
        return Err(DenyReason::ClientNotAllowed);
    }
    let granted = |s: &String| token.scope.split(' ').any(|g| g == s);
    if !policy.required_scopes.iter().all(granted) {
        return Err(DenyReason::InsufficientScope);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::type_complexity
    )]
    use super::*;

    fn policy(scopes: &[&str], binding: bool, clients: &[&str]) -> Policy {
        Policy {
            required_scopes: scopes.iter().map(|s| s.to_string()).collect(),
            require_binding: binding,
            allowed_client_ids: clients.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn token(cnf: Option<Thumbprint>, scope: &str) -> TokenState {
        TokenState::Active(ActiveToken {
            cnf,
            scope: scope.into(),
            client_id: Some("partner-client".into()),
            ..Default::default()
        })
    }

    #[test]
    fn decisions() {
        use DenyReason::*;
        let mine = Thumbprint([1; 32]);
        let other = Thumbprint([2; 32]);
        let bound = token(Some(mine), "transactions read");
        let unbound = token(None, "transactions");
        let p = policy(&["transactions"], true, &[]);
        let table: Vec<(
            &TokenState,
            Option<&Thumbprint>,
            Policy,
            Result<(), DenyReason>,
        )> = vec![
            (&bound, Some(&mine), p.clone(), Ok(())),
            (&bound, Some(&other), p.clone(), Err(CertificateMismatch)),
            (&bound, None, p.clone(), Err(NoClientCertificate)),
            (
                &TokenState::Inactive,
                Some(&mine),
                p.clone(),
                Err(InactiveToken),
            ),
            (&unbound, Some(&mine), p.clone(), Err(TokenNotBound)),
            (
                &unbound,
                None,
                policy(&["transactions"], false, &[]),
                Ok(()),
            ),
            // A bound token is checked even where binding is optional.
            (
                &bound,
                Some(&other),
                policy(&[], false, &[]),
                Err(CertificateMismatch),
            ),
            (
                &bound,
                Some(&mine),
                policy(&["admin"], true, &[]),
                Err(InsufficientScope),
            ),
            (
                &bound,
                Some(&mine),
                policy(&["read", "transactions"], true, &[]),
                Ok(()),
            ),
            (
                &bound,
                Some(&mine),
                policy(&["trans"], true, &[]),
                Err(InsufficientScope),
            ),
            (
                &bound,
                Some(&mine),
                policy(&[], true, &["partner-client"]),
                Ok(()),
            ),
            (
                &bound,
                Some(&mine),
                policy(&[], true, &["someone-else"]),
                Err(ClientNotAllowed),
            ),
        ];
        for (state, cert, policy, expected) in table {
            assert_eq!(
                decide(state, cert, &policy).map(|_| ()),
                expected,
                "{state:?} {cert:?} {policy:?}"
            );
        }
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

    #[test]
    fn every_reason_has_a_distinct_metric_and_a_standard_reply() {
        use DenyReason::*;
        let all = [
            MissingToken,
            InvalidRequest("x"),
            InactiveToken,
            NoClientCertificate,
            TokenNotBound,
            CertificateMismatch,
            ClientNotAllowed,
            InsufficientScope,
            IntrospectionUnavailable("x"),
            IntrospectionBadResponse("x"),
        ];
        let metrics: std::collections::HashSet<_> = all.iter().map(|r| r.metric()).collect();
        assert_eq!(metrics.len(), all.len());
        assert_eq!(InvalidRequest("x").status(), 400);
        assert_eq!(InsufficientScope.status(), 403);
        assert_eq!(CertificateMismatch.status(), 401);
        assert_eq!(CertificateMismatch.error_code(), "invalid_token");
        assert_eq!(IntrospectionUnavailable("x").status(), 503);
        assert_eq!(IntrospectionBadResponse("x").status(), 502);
    }
}

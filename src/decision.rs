//! The decision, pure: given what the token is and what the connection presented, allow or deny.

use crate::binding::Thumbprint;
use crate::cache::{ActiveToken, TokenState};
use crate::config::Policy;
use crate::deny::DenyReason;

/// Allows the request or says why not. RFC 8705 section 3: a bound token is always checked against
/// the connection's certificate, whether or not the route requires binding.
#[inline]
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
        type Case<'a> = (
            &'a TokenState,
            Option<&'a Thumbprint>,
            Policy,
            Result<(), DenyReason>,
        );
        let table: Vec<Case> = vec![
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
}

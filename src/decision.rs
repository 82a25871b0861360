//! The decision, pure: given what the token is and what the connection presented, allow or deny.

use crate::binding::Thumbprint;
use crate::cache::{ActiveToken, Binding, TokenState};
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
        (Binding::Unverifiable, _) => return Err(DenyReason::UnverifiableBinding),
        (Binding::Unbound, _) if policy.require_binding => return Err(DenyReason::TokenNotBound),
        (Binding::Unbound, _) => {}
        (Binding::Certificate(_), None) => return Err(DenyReason::NoClientCertificate),
        (Binding::Certificate(bound), Some(cert)) if !bound.matches(cert) => {
            return Err(DenyReason::CertificateMismatch)
        }
        (Binding::Certificate(_), Some(_)) => {}
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
            certificate_required: binding,
            certificate_rules: None,
        }
    }

    fn token(cnf: Option<Thumbprint>, scope: &str) -> TokenState {
        TokenState::Active(ActiveToken {
            cnf: cnf.map_or(Binding::Unbound, Binding::Certificate),
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
        let dpop = TokenState::Active(ActiveToken {
            cnf: Binding::Unverifiable,
            scope: "transactions".into(),
            ..Default::default()
        });
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
            // A key-bound (DPoP) token is refused even where binding is optional.
            (&dpop, Some(&mine), p.clone(), Err(UnverifiableBinding)),
            (
                &dpop,
                None,
                policy(&[], false, &[]),
                Err(UnverifiableBinding),
            ),
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

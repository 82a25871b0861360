//! Verifying a JWT the identity server returned: algorithm allow-list, key, signature, `typ`,
//! `iss`, `aud`, `exp`/`nbf`. Nothing in a JWT is read before this passes.

use crate::config::{Algorithm, JwtRules};
use crate::jwks::{KeyMaterial, KeySet};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use jwt_simple::JWTError;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    /// `alg` is not on the allow-list (this covers `none` and HMAC, which never are).
    AlgorithmNotAllowed,
    /// No key in the set has this `kid`: the caller may refetch the key set.
    UnknownKey,
    BadSignature,
    BadType,
    BadIssuer,
    BadAudience,
    Expired,
    NotYetValid,
}

impl JwtError {
    /// Whether the token merely is no longer (or not yet) valid, as opposed to untrustworthy.
    pub fn is_time(self) -> bool {
        matches!(self, JwtError::Expired | JwtError::NotYetValid)
    }

    pub fn describe(self) -> &'static str {
        match self {
            JwtError::Malformed => "the JWT is malformed",
            JwtError::AlgorithmNotAllowed => "the JWT algorithm is not allowed",
            JwtError::UnknownKey => "the JWT key is not in the key set",
            JwtError::BadSignature => "the JWT signature is invalid",
            JwtError::BadType => "the JWT typ is not the expected one",
            JwtError::BadIssuer => "the JWT issuer is not the expected one",
            JwtError::BadAudience => "the JWT audience is not the expected one",
            JwtError::Expired => "the token has expired",
            JwtError::NotYetValid => "the token is not valid yet",
        }
    }
}

fn map_error(e: jwt_simple::Error) -> JwtError {
    match e.downcast_ref::<JWTError>() {
        Some(JWTError::TokenHasExpired) => JwtError::Expired,
        Some(JWTError::TokenNotValidYet | JWTError::ClockDrift) => JwtError::NotYetValid,
        Some(JWTError::RequiredIssuerMismatch | JWTError::RequiredIssuerMissing) => {
            JwtError::BadIssuer
        }
        Some(JWTError::RequiredAudienceMismatch | JWTError::RequiredAudienceMissing) => {
            JwtError::BadAudience
        }
        Some(JWTError::RequiredSignatureTypeMismatch | JWTError::NotJWT) => JwtError::BadType,
        Some(JWTError::InvalidSignature) => JwtError::BadSignature,
        _ => JwtError::Malformed,
    }
}

fn allowed(alg: &str, rules: &JwtRules) -> Option<Algorithm> {
    rules.algorithms.iter().copied().find(|a| a.name() == alg)
}

/// Verifies `token` against `keys` and `rules` at unix time `now`; returns all of its claims.
pub fn verify(
    token: &str,
    keys: &KeySet,
    rules: &JwtRules,
    now: u64,
    max_length: usize,
) -> Result<Map<String, Value>, JwtError> {
    let meta = Token::decode_metadata(token).map_err(|_| JwtError::Malformed)?;
    let alg = allowed(meta.algorithm(), rules).ok_or(JwtError::AlgorithmNotAllowed)?;
    let kid = meta.key_id();
    let key = keys
        .keys
        .iter()
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == alg.name()))
        .filter(|k| {
            matches!(
                (&k.material, alg),
                (KeyMaterial::Rsa { .. }, Algorithm::PS256 | Algorithm::RS256)
                    | (KeyMaterial::P256(_), Algorithm::ES256)
                    | (KeyMaterial::Ed25519(_), Algorithm::EdDSA)
            )
        })
        .find(|k| kid.is_none() || k.kid.as_deref() == kid)
        .ok_or(JwtError::UnknownKey)?;

    let options = VerificationOptions {
        allowed_issuers: Some(HashSet::from_strings(&[rules.issuer.as_str()])),
        allowed_audiences: Some(HashSet::from_strings(&rules.audiences)),
        time_tolerance: Some(Duration::from_secs(rules.clock_skew_seconds)),
        required_signature_type: rules.typ.clone(),
        max_token_length: Some(max_length),
        artificial_time: Some(Duration::from_secs(now)),
        ..Default::default()
    };
    let bad_key = |_| JwtError::UnknownKey;
    let result = match (&key.material, alg) {
        (KeyMaterial::Rsa { n, e }, Algorithm::PS256) => PS256PublicKey::from_components(n, e)
            .map_err(bad_key)?
            .verify_token::<NoCustomClaims>(token, Some(options)),
        (KeyMaterial::Rsa { n, e }, Algorithm::RS256) => RS256PublicKey::from_components(n, e)
            .map_err(bad_key)?
            .verify_token::<NoCustomClaims>(token, Some(options)),
        (KeyMaterial::P256(point), Algorithm::ES256) => ES256PublicKey::from_bytes(point)
            .map_err(bad_key)?
            .verify_token::<NoCustomClaims>(token, Some(options)),
        (KeyMaterial::Ed25519(x), Algorithm::EdDSA) => Ed25519PublicKey::from_bytes(x)
            .map_err(bad_key)?
            .verify_token::<NoCustomClaims>(token, Some(options)),
        _ => return Err(JwtError::UnknownKey),
    };
    result.map_err(map_error)?;

    // The signature holds: read every claim, standard or not, from the payload.
    let payload = token.split('.').nth(1).ok_or(JwtError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::config::{Endpoint, Jwks};
    use std::sync::OnceLock;

    pub const ISSUER: &str = "https://login.example.com";
    pub const NOW: u64 = 1_800_000_000;

    pub fn ps256() -> &'static PS256KeyPair {
        static KEY: OnceLock<PS256KeyPair> = OnceLock::new();
        KEY.get_or_init(|| PS256KeyPair::generate(2048).unwrap().with_key_id("k1"))
    }

    pub fn key_set() -> KeySet {
        let c = ps256().public_key().to_components();
        KeySet::parse(
            serde_json::json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "PS256",
                "n": URL_SAFE_NO_PAD.encode(c.n), "e": URL_SAFE_NO_PAD.encode(c.e)}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    pub fn rules(typ: Option<&str>) -> JwtRules {
        JwtRules {
            issuer: ISSUER.into(),
            audiences: vec!["api.example.com".into()],
            algorithms: vec![Algorithm::PS256],
            clock_skew_seconds: 60,
            typ: typ.map(Into::into),
            jwks: Jwks {
                endpoint: Endpoint {
                    cluster: "c".into(),
                    authority: "a".into(),
                    path: "/jwks".into(),
                },
                max_age_seconds: 300,
                min_refetch_interval_seconds: 30,
            },
        }
    }

    /// A PS256 JWT signed by the test key with `extra` claims, valid from NOW - 10 to `exp`.
    pub fn sign(extra: Value, exp: u64, typ: Option<&str>) -> String {
        let mut claims = JWTClaims {
            issued_at: Some(Duration::from_secs(NOW - 10)),
            expires_at: Some(Duration::from_secs(exp)),
            invalid_before: None,
            issuer: Some(ISSUER.into()),
            subject: Some("partner-client".into()),
            audiences: Some(Audiences::AsString("api.example.com".into())),
            jwt_id: Some("jti-1".into()),
            nonce: None,
            custom: extra,
        };
        if exp == 0 {
            claims.expires_at = None;
        }
        let opts = HeaderOptions {
            signature_type: typ.map(Into::into),
            ..Default::default()
        };
        ps256().sign_with_options(claims, &opts).unwrap()
    }

    fn b64json(v: Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn a_good_token_yields_all_its_claims() {
        let t = sign(
            serde_json::json!({"scope": "transactions", "cnf": {"x5t#S256": "x"}}),
            NOW + 300,
            None,
        );
        let claims = verify(&t, &key_set(), &rules(None), NOW, 65536).unwrap();
        assert_eq!(claims["scope"], "transactions");
        assert_eq!(claims["sub"], "partner-client");
        assert_eq!(claims["cnf"]["x5t#S256"], "x");
    }

    #[test]
    fn every_bad_token_is_rejected_with_its_reason() {
        let good = sign(serde_json::json!({}), NOW + 300, None);
        let parts: Vec<&str> = good.split('.').collect();
        let payload = parts[1];
        let unsigned = format!(
            "{}.{}.",
            b64json(serde_json::json!({"alg": "none"})),
            payload
        );
        let hs256 = HS256Key::generate().with_key_id("k1");
        let hmac = hs256
            .authenticate(
                Claims::create(Duration::from_secs(300))
                    .with_issuer(ISSUER)
                    .with_audience("api.example.com"),
            )
            .unwrap();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64json(serde_json::json!({"iss": ISSUER, "aud": "api.example.com", "admin": true})),
            parts[2]
        );
        let other_key = PS256KeyPair::generate(2048).unwrap().with_key_id("k1");
        let other_sig = other_key
            .sign(
                Claims::create(Duration::from_secs(300))
                    .with_issuer(ISSUER)
                    .with_audience("api.example.com"),
            )
            .unwrap();
        let unknown_kid = {
            let k = ps256().clone().with_key_id("k2");
            k.sign(Claims::create(Duration::from_secs(300)).with_issuer(ISSUER))
                .unwrap()
        };
        let wrong_iss = {
            let claims = JWTClaims {
                issuer: Some("https://evil".into()),
                ..jwt_claims()
            };
            ps256().sign(claims).unwrap()
        };
        let wrong_aud = {
            let claims = JWTClaims {
                audiences: Some(Audiences::AsString("other".into())),
                ..jwt_claims()
            };
            ps256().sign(claims).unwrap()
        };
        let not_yet = {
            let claims = JWTClaims {
                invalid_before: Some(Duration::from_secs(NOW + 120)),
                ..jwt_claims()
            };
            ps256().sign(claims).unwrap()
        };
        let table: Vec<(String, JwtError)> = vec![
            ("not.a.jwt".into(), JwtError::Malformed),
            ("garbage".into(), JwtError::Malformed),
            (unsigned, JwtError::AlgorithmNotAllowed),
            (hmac, JwtError::AlgorithmNotAllowed),
            (tampered, JwtError::BadSignature),
            (other_sig, JwtError::BadSignature),
            (unknown_kid, JwtError::UnknownKey),
            (wrong_iss, JwtError::BadIssuer),
            (wrong_aud, JwtError::BadAudience),
            (
                sign(serde_json::json!({}), NOW - 61, None),
                JwtError::Expired,
            ),
            (not_yet, JwtError::NotYetValid),
        ];
        for (token, expected) in table {
            assert_eq!(
                verify(&token, &key_set(), &rules(None), NOW, 65536),
                Err(expected),
                "{token}"
            );
        }
        // Within the skew is still valid.
        assert!(verify(
            &sign(serde_json::json!({}), NOW - 59, None),
            &key_set(),
            &rules(None),
            NOW,
            65536
        )
        .is_ok());
        // An allowed algorithm the key set has no key for is an unknown key.
        let mut rs = rules(None);
        rs.algorithms = vec![Algorithm::ES256];
        assert_eq!(
            verify(&good, &key_set(), &rs, NOW, 65536),
            Err(JwtError::AlgorithmNotAllowed)
        );
        // Too long for the configured cap.
        assert_eq!(
            verify(&good, &key_set(), &rules(None), NOW, 100),
            Err(JwtError::Malformed)
        );
    }

    fn jwt_claims() -> JWTClaims<NoCustomClaims> {
        JWTClaims {
            issued_at: Some(Duration::from_secs(NOW)),
            expires_at: Some(Duration::from_secs(NOW + 300)),
            invalid_before: None,
            issuer: Some(ISSUER.into()),
            subject: None,
            audiences: Some(Audiences::AsString("api.example.com".into())),
            jwt_id: None,
            nonce: None,
            custom: NoCustomClaims {},
        }
    }

    #[test]
    fn typ_is_enforced_when_required() {
        let r = rules(Some("token-introspection+jwt"));
        let good = sign(
            serde_json::json!({}),
            NOW + 300,
            Some("token-introspection+jwt"),
        );
        assert!(verify(&good, &key_set(), &r, NOW, 65536).is_ok());
        for typ in [None, Some("JWT"), Some("at+jwt")] {
            let t = sign(serde_json::json!({}), NOW + 300, typ);
            assert_eq!(
                verify(&t, &key_set(), &r, NOW, 65536),
                Err(JwtError::BadType),
                "{typ:?}"
            );
        }
    }

    #[test]
    fn es256_and_eddsa_keys_verify_when_allowed() {
        let es = ES256KeyPair::generate().with_key_id("e1");
        let ed = Ed25519KeyPair::generate().with_key_id("o1");
        let point = es.public_key().public_key().to_bytes_uncompressed();
        let set = KeySet::parse(
            serde_json::json!({"keys": [
                {"kty": "EC", "crv": "P-256", "kid": "e1", "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
                {"kty": "OKP", "crv": "Ed25519", "kid": "o1", "x": URL_SAFE_NO_PAD.encode(ed.public_key().to_bytes())}
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let mut r = rules(None);
        r.algorithms = vec![Algorithm::ES256, Algorithm::EdDSA];
        let c = || {
            Claims::create(Duration::from_secs(300))
                .with_issuer(ISSUER)
                .with_audience("api.example.com")
        };
        // Claims::create uses the real clock: verify at the real time.
        let now = Clock::now_since_epoch().as_secs();
        assert!(verify(&es.sign(c()).unwrap(), &set, &r, now, 65536).is_ok());
        assert!(verify(&ed.sign(c()).unwrap(), &set, &r, now, 65536).is_ok());
        r.algorithms = vec![Algorithm::PS256];
        assert_eq!(
            verify(&es.sign(c()).unwrap(), &set, &r, now, 65536),
            Err(JwtError::AlgorithmNotAllowed)
        );
    }
}

//! Verifying a JWT the identity server returned: algorithm allow-list, key, signature, `typ`,
//! `iss`, `aud`, `exp`/`nbf`. Nothing in a JWT is read before this passes.
//!
//! The checks, their order and the error each yields are those of jwt-simple 0.12, which this
//! module replaced (its signature crates are used directly, for a smaller module).

use crate::jwks::{KeyMaterial, KeySet};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use certbound_config::{Algorithm, JwtRules};
use rsa::signature::Verifier;
use rsa::{BigUint, RsaPublicKey};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Number, Value};
use sha2::Sha256;

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

/// The longest encoded header accepted.
const MAX_HEADER_LENGTH: usize = 8192;

/// The JOSE header. Every field has the type JOSE gives it: another type makes the JWT malformed,
/// also for the fields that are not used (`_` names), and so does a repeated field.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<Vec<String>>,
    salt: Option<String>,
    #[serde(rename = "cty")]
    _cty: Option<String>,
    #[serde(rename = "x5c")]
    _x5c: Option<Vec<String>>,
    #[serde(rename = "jku")]
    _jku: Option<String>,
    #[serde(rename = "jwk")]
    _jwk: Option<String>,
    #[serde(rename = "x5u")]
    _x5u: Option<String>,
    #[serde(rename = "x5t")]
    _x5t: Option<String>,
    #[serde(rename = "x5t#S256")]
    _x5t_s256: Option<String>,
}

/// The registered claims, typed as for the header. Times are seconds; a fraction is dropped and
/// a negative time is 0.
#[derive(Deserialize)]
struct Registered {
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    iss: Option<String>,
    #[serde(default, deserialize_with = "audiences")]
    aud: Option<Vec<String>>,
    #[serde(rename = "sub")]
    _sub: Option<String>,
    #[serde(rename = "jti")]
    _jti: Option<String>,
    #[serde(rename = "nonce")]
    _nonce: Option<String>,
}

fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n = Number::deserialize(d)?;
    // `as` saturates: a negative time is 0, one beyond u64 is u64::MAX.
    Ok(n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)))
}

/// `aud`: one string or an array of strings.
fn audiences<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let strings = match Value::deserialize(d)? {
        Value::String(s) => vec![s],
        Value::Array(values) => values
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(D::Error::custom("aud: not a string")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(D::Error::custom("aud: neither a string nor an array")),
    };
    Ok(Some(strings))
}

fn b64(part: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)
}

fn allowed(alg: &str, rules: &JwtRules) -> Option<Algorithm> {
    rules.algorithms.iter().copied().find(|a| a.name() == alg)
}

/// A verification key, made from the key set's material for the JWT's algorithm.
enum Key {
    Ps256(rsa::pss::VerifyingKey<Sha256>),
    Rs256(rsa::pkcs1v15::VerifyingKey<Sha256>),
    Es256(p256::ecdsa::VerifyingKey),
    EdDsa(ed25519_compact::PublicKey),
}

const MIN_RSA_BITS: usize = 2048;

/// Whether `material` makes a verification key (for RSA, as a PS256 key: the same checks).
pub(crate) fn usable(material: &KeyMaterial) -> bool {
    let alg = match material {
        KeyMaterial::Rsa { .. } => Algorithm::PS256,
        KeyMaterial::P256(_) => Algorithm::ES256,
        KeyMaterial::Ed25519(_) => Algorithm::EdDSA,
    };
    Key::new(material, alg).is_some()
}

impl Key {
    fn new(material: &KeyMaterial, alg: Algorithm) -> Option<Key> {
        // RSA keys under 2048 bits are refused (RFC 7518 section 3.3, NIST SP 800-131A).
        let rsa = |n: &[u8], e: &[u8]| {
            let n = BigUint::from_bytes_be(n);
            if n.bits() < MIN_RSA_BITS {
                return None;
            }
            RsaPublicKey::new(n, BigUint::from_bytes_be(e)).ok()
        };
        Some(match (material, alg) {
            // PSS with a salt as long as the hash (RFC 7518 section 3.5).
            (KeyMaterial::Rsa { n, e }, Algorithm::PS256) => {
                Key::Ps256(rsa::pss::VerifyingKey::new_with_salt_len(rsa(n, e)?, 32))
            }
            (KeyMaterial::Rsa { n, e }, Algorithm::RS256) => {
                Key::Rs256(rsa::pkcs1v15::VerifyingKey::new(rsa(n, e)?))
            }
            (KeyMaterial::P256(point), Algorithm::ES256) => {
                Key::Es256(p256::ecdsa::VerifyingKey::from_sec1_bytes(point).ok()?)
            }
            (KeyMaterial::Ed25519(x), Algorithm::EdDSA) => {
                Key::EdDsa(ed25519_compact::PublicKey::from_slice(x).ok()?)
            }
            _ => return None,
        })
    }

    /// Checks `signature` over `signed`. An Ed25519 signature of the wrong length is malformed;
    /// any other unusable signature is a bad one.
    fn verify(&self, signed: &[u8], signature: &[u8]) -> Result<(), JwtError> {
        let bad = |_| JwtError::BadSignature;
        match self {
            Key::Ps256(key) => {
                let sig = rsa::pss::Signature::try_from(signature).map_err(bad)?;
                key.verify(signed, &sig).map_err(bad)
            }
            Key::Rs256(key) => {
                let sig = rsa::pkcs1v15::Signature::try_from(signature).map_err(bad)?;
                key.verify(signed, &sig).map_err(bad)
            }
            Key::Es256(key) => {
                let sig = p256::ecdsa::Signature::from_slice(signature).map_err(bad)?;
                key.verify(signed, &sig).map_err(bad)
            }
            Key::EdDsa(key) => {
                let sig = ed25519_compact::Signature::from_slice(signature)
                    .map_err(|_| JwtError::Malformed)?;
                key.verify(signed, &sig).map_err(|_| JwtError::BadSignature)
            }
        }
    }
}

/// `typ`, compared without regard to case: the configured one if any, else absent, `JWT` or
/// `…+JWT`.
fn check_type(typ: Option<&str>, required: Option<&str>) -> Result<(), JwtError> {
    let ok = match (typ.map(str::to_ascii_uppercase), required) {
        (Some(typ), Some(required)) => typ == required.to_ascii_uppercase(),
        (None, Some(_)) => false,
        (Some(typ), None) => typ == "JWT" || typ.ends_with("+JWT"),
        (None, None) => true,
    };
    if ok {
        Ok(())
    } else {
        Err(JwtError::BadType)
    }
}

/// `iat` and `nbf` may be at most the skew ahead of `now`, `exp` at most the skew behind it. A
/// JWT without them is valid at any time.
fn check_times(claims: &Registered, now: u64, skew: u64) -> Result<(), JwtError> {
    let latest_start = now.saturating_add(skew);
    if claims.iat.is_some_and(|iat| iat > latest_start)
        || claims.nbf.is_some_and(|nbf| nbf > latest_start)
    {
        return Err(JwtError::NotYetValid);
    }
    if let Some(exp) = claims.exp {
        if now
            .checked_sub(skew)
            .is_none_or(|earliest_end| earliest_end > exp)
        {
            return Err(JwtError::Expired);
        }
    }
    Ok(())
}

/// Verifies `token` against `keys` and `rules` at unix time `now`; returns all of its claims.
pub fn verify(
    token: &str,
    keys: &KeySet,
    rules: &JwtRules,
    now: u64,
    max_length: usize,
) -> Result<Map<String, Value>, JwtError> {
    let payload = verify_signature(token, keys, rules, max_length)?;
    // The signature holds: read the claims, every one (standard or not) and the registered ones.
    let claims = crate::json::object(&payload).ok_or(JwtError::Malformed)?;
    let registered: Registered =
        serde_json::from_slice(&payload).map_err(|_| JwtError::Malformed)?;
    check_times(&registered, now, rules.clock_skew_seconds)?;
    if registered.iss.as_deref() != Some(rules.issuer.as_str()) {
        return Err(JwtError::BadIssuer);
    }
    let audience_ok = registered
        .aud
        .is_some_and(|aud| aud.iter().any(|a| rules.audiences.contains(a)));
    if !audience_ok {
        return Err(JwtError::BadAudience);
    }
    Ok(claims)
}

/// The JWS part of `verify`: structure, header, algorithm, key and signature. Returns the payload's
/// bytes, not yet read as claims.
pub(crate) fn verify_signature(
    token: &str,
    keys: &KeySet,
    rules: &JwtRules,
    max_length: usize,
) -> Result<Vec<u8>, JwtError> {
    let mut parts = token.split('.');
    let header_b64 = parts.next().ok_or(JwtError::Malformed)?;
    if header_b64.len() > MAX_HEADER_LENGTH {
        return Err(JwtError::Malformed);
    }
    let header_json = b64(header_b64)?;
    crate::json::object(&header_json).ok_or(JwtError::Malformed)?;
    let header: Header = serde_json::from_slice(&header_json).map_err(|_| JwtError::Malformed)?;
    let alg = allowed(&header.alg, rules).ok_or(JwtError::AlgorithmNotAllowed)?;
    if token.len() > max_length {
        return Err(JwtError::Malformed);
    }
    let (Some(payload_b64), Some(signature_b64), None) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    // No critical extension is understood.
    if header.crit.is_some_and(|crit| !crit.is_empty()) {
        return Err(JwtError::Malformed);
    }
    check_type(header.typ.as_deref(), rules.typ.as_deref())?;
    if let Some(salt) = &header.salt {
        b64(salt)?;
    }
    let signature = b64(signature_b64)?;
    let signed = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(JwtError::Malformed)?;
    // The keys of the algorithm's type (and, if the key pins one, its `alg`), with the JWT's `kid`
    // if it names one. Without a `kid` every such key is tried (rotation without key ids).
    let kid = header.kid.as_deref();
    let mut candidates = keys
        .keys
        .iter()
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == alg.name()))
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .filter_map(|k| Key::new(&k.material, alg))
        .peekable();
    if candidates.peek().is_none() {
        return Err(JwtError::UnknownKey);
    }
    let mut outcome = Err(JwtError::BadSignature);
    for key in candidates {
        outcome = key.verify(signed.as_bytes(), &signature);
        if outcome != Err(JwtError::BadSignature) {
            break;
        }
    }
    outcome?;
    b64(payload_b64)
}

#[cfg(test)]
mod conformance;

#[cfg(test)]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use jwt_simple::prelude::*;

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

#[cfg(test)]
mod key_size_tests {
    use super::*;

    #[test]
    fn rsa_keys_under_2048_bits_are_refused() {
        let key = |bytes: usize| KeyMaterial::Rsa {
            n: vec![0xff; bytes],
            e: vec![1, 0, 1],
        };
        assert!(Key::new(&key(128), Algorithm::PS256).is_none(), "1024 bits");
        assert!(Key::new(&key(255), Algorithm::RS256).is_none(), "2040 bits");
        assert!(Key::new(&key(256), Algorithm::PS256).is_some(), "2048 bits");
    }
}

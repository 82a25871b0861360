//! Test support: a PS256 key pair and the JWTs and key sets it signs, for this crate's tests and
//! the filter's (feature `test-support`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::jwks::KeySet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use certbound_config::{Algorithm, Endpoint, Jwks, JwtRules};
use jwt_simple::prelude::*;
use serde_json::Value;
use std::sync::OnceLock;

pub const ISSUER: &str = "https://login.example.com";
pub const NOW: u64 = 1_800_000_000;

pub fn ps256() -> &'static PS256KeyPair {
    static KEY: OnceLock<PS256KeyPair> = OnceLock::new();
    KEY.get_or_init(|| PS256KeyPair::generate(2048).unwrap().with_key_id("k1"))
}

/// A second key, which the key set of `jwks_json` does not have.
pub fn other_ps256() -> &'static PS256KeyPair {
    static KEY: OnceLock<PS256KeyPair> = OnceLock::new();
    KEY.get_or_init(|| PS256KeyPair::generate(2048).unwrap().with_key_id("k2"))
}

/// The JWKS document of `keys` (PS256 key pairs with their key ids).
pub fn jwks_json(keys: &[&PS256KeyPair]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            let c = k.public_key().to_components();
            serde_json::json!({"kty": "RSA", "kid": k.key_id().clone().unwrap(),
                "alg": "PS256", "n": URL_SAFE_NO_PAD.encode(c.n), "e": URL_SAFE_NO_PAD.encode(c.e)})
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

pub fn key_set() -> KeySet {
    KeySet::parse(jwks_json(&[ps256()]).as_bytes()).unwrap()
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
                scheme: None,
            },
            timeout_ms: 2000,
            max_body_bytes: 65536,
            max_age_seconds: 300,
            min_refetch_interval_seconds: 30,
        },
    }
}

/// A PS256 JWT signed by the test key with `extra` claims, valid from NOW - 10 to `exp`.
pub fn sign(extra: Value, exp: u64, typ: Option<&str>) -> String {
    sign_with(ps256(), extra, exp, typ)
}

pub fn sign_with(key: &PS256KeyPair, extra: Value, exp: u64, typ: Option<&str>) -> String {
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
    key.sign_with_options(claims, &opts).unwrap()
}

/// A signer over any header and payload bytes (jwt-simple only signs the headers it makes), for
/// the conformance tests, the differential test and the fuzz seeds. Deterministic: RS256
/// (PKCS #1 v1.5), ES256 (RFC 6979), Ed25519.
pub enum RawSigner {
    Rs256(Box<rsa::pkcs1v15::SigningKey<sha2::Sha256>>),
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_compact::KeyPair),
}

impl RawSigner {
    /// The RS256 signer of a fresh 2048-bit key (jwt-simple makes it; rsa signs with it).
    pub fn rs256() -> RawSigner {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        let der = RS256KeyPair::generate(2048).unwrap().to_der().unwrap();
        let key = rsa::RsaPrivateKey::from_pkcs1_der(&der)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_der(&der))
            .unwrap();
        RawSigner::Rs256(Box::new(rsa::pkcs1v15::SigningKey::new(key)))
    }

    /// A P-256 key whose scalar is `seed` repeated (clamped below the group order's first byte).
    pub fn es256(seed: u8) -> RawSigner {
        let bytes = [seed.clamp(1, 0xfe); 32];
        RawSigner::Es256(p256::ecdsa::SigningKey::from_slice(&bytes).unwrap())
    }

    pub fn ed25519(seed: u8) -> RawSigner {
        let seed = ed25519_compact::Seed::new([seed; 32]);
        RawSigner::EdDsa(ed25519_compact::KeyPair::from_seed(seed))
    }

    pub fn alg(&self) -> &'static str {
        match self {
            RawSigner::Rs256(_) => "RS256",
            RawSigner::Es256(_) => "ES256",
            RawSigner::EdDsa(_) => "EdDSA",
        }
    }

    /// The public JWK, with `kid`.
    pub fn jwk(&self, kid: &str) -> Value {
        let b = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match self {
            RawSigner::Rs256(key) => {
                use rsa::traits::PublicKeyParts;
                let public = key.as_ref().as_ref().to_public_key();
                serde_json::json!({"kty": "RSA", "kid": kid,
                    "n": b(&public.n().to_bytes_be()), "e": b(&public.e().to_bytes_be())})
            }
            RawSigner::Es256(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid,
                    "x": b(point.x().unwrap()), "y": b(point.y().unwrap())})
            }
            RawSigner::EdDsa(pair) => {
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b(&pair.pk[..])})
            }
        }
    }

    /// The raw signature over `input`.
    pub fn signature(&self, input: &[u8]) -> Vec<u8> {
        use rsa::signature::{SignatureEncoding, Signer};
        match self {
            RawSigner::Rs256(key) => key.sign(input).to_vec(),
            RawSigner::Es256(key) => {
                let sig: p256::ecdsa::Signature = key.sign(input);
                sig.to_bytes().to_vec()
            }
            RawSigner::EdDsa(pair) => pair.sk.sign(input, None).to_vec(),
        }
    }

    /// `BASE64URL(header) . BASE64URL(payload) . BASE64URL(signature)`.
    pub fn sign(&self, header: &[u8], payload: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = URL_SAFE_NO_PAD.encode(self.signature(input.as_bytes()));
        format!("{input}.{signature}")
    }
}

/// The key set of `jwks` (each a public JWK).
pub fn key_set_of(jwks: &[Value]) -> KeySet {
    KeySet::parse(serde_json::json!({ "keys": jwks }).to_string().as_bytes()).unwrap()
}

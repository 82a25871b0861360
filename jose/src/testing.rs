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

//! What the fuzz targets share: the keys and rules JWTs are checked with, configurations, and a
//! structure-aware JSON value for inputs that must get past the JSON parser to reach the checks.

use arbitrary::{Arbitrary, Result, Unstructured};
use certbound::config::{Algorithm, Config};
use certbound::jwks::KeySet;
use certbound_jose::testing::{self, RawSigner};
use serde_json::{Map, Value};
use std::sync::OnceLock;

pub use certbound_jose::testing::{ISSUER, NOW};

/// The RSA public key of RFC 7515 appendix A.2 (2048 bits): the targets only verify with RSA, so
/// a fixed public key spares them generating one at start (seconds, which a 3 s smoke run lacks).
const RSA_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";

/// The keys a JWT may be checked with in the targets: the RSA key `k1` (PS256 and RS256), ES256
/// `e1` and Ed25519 `o1` (the two the targets sign with).
pub struct Keys {
    pub set: KeySet,
    pub es256: RawSigner,
    pub ed25519: RawSigner,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let es256 = RawSigner::es256(1);
        let ed25519 = RawSigner::ed25519(1);
        let rsa = serde_json::json!({"kty": "RSA", "kid": "k1", "n": RSA_N, "e": "AQAB"});
        let set = testing::key_set_of(&[rsa, es256.jwk("e1"), ed25519.jwk("o1")]);
        Keys {
            set,
            es256,
            ed25519,
        }
    })
}

/// The rules of `testing::rules`, with every algorithm allowed.
pub fn rules() -> certbound::config::JwtRules {
    let mut r = testing::rules(None);
    r.algorithms = vec![
        Algorithm::PS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ];
    r
}

/// The filter configuration of each format (0: json, 1: jwt, 2: introspection-jwt), with claim
/// headers, routes and audiences, so that every check has something to check.
pub fn config_json(format: u8) -> Value {
    let format = ["json", "jwt", "introspection-jwt"][usize::from(format % 3)];
    let mut v = certbound_config::minimal_config(format);
    v["claim_headers"] = serde_json::json!({"client_id": "x-client-id", "sub": "x-sub"});
    v["routes"] = serde_json::json!([
        {"path_prefix": "/api/transactions", "required_scopes": ["transactions"]},
        {"path_prefix": "/public", "require_binding": false},
        {"path_prefix": "/admin", "methods": ["POST"], "allowed_client_ids": ["admin"]}
    ]);
    v["introspection"]["audiences"] = serde_json::json!(["api.example.com"]);
    if let Some(jwt) = v.get_mut("jwt") {
        jwt["algorithms"] = serde_json::json!(["PS256", "RS256", "ES256", "EdDSA"]);
    }
    v
}

/// The parsed `config_json(format)` (a `Config` holds `Rc`s: one set per thread, kept for good).
pub fn config(format: u8) -> &'static Config {
    thread_local! {
        static CONFIGS: &'static [Config] = Box::leak(
            (0..3)
                .map(|f| {
                    let raw = config_json(f).to_string();
                    certbound::config::parse(raw.as_bytes()).expect("the fuzz configuration is valid")
                })
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
    }
    CONFIGS.with(|all| &all[usize::from(format % 3)])
}

/// A JSON value whose strings and names lean towards the ones certbound reads, so that the
/// fuzzer spends its time on the checks rather than on finding the names.
#[derive(Debug, Clone)]
pub struct Json(pub Value);

const NAMES: &[&str] = &[
    "alg",
    "kid",
    "typ",
    "crit",
    "salt",
    "cty",
    "x5c",
    "jwk",
    "iss",
    "aud",
    "exp",
    "nbf",
    "iat",
    "sub",
    "jti",
    "scope",
    "client_id",
    "cnf",
    "x5t#S256",
    "jkt",
    "active",
    "token_type",
    "token_introspection",
    "keys",
    "kty",
    "crv",
    "n",
    "e",
    "x",
    "y",
    "use",
];

const STRINGS: &[&str] = &[
    "PS256",
    "RS256",
    "ES256",
    "EdDSA",
    "none",
    "HS256",
    "k1",
    "e1",
    "o1",
    "JWT",
    "at+jwt",
    "token-introspection+jwt",
    ISSUER,
    "api.example.com",
    "transactions",
    "RSA",
    "EC",
    "OKP",
    "P-256",
    "Ed25519",
    "sig",
    "enc",
    "access_token",
    "refresh_token",
    "Bearer",
    "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg0",
];

fn name(u: &mut Unstructured) -> Result<String> {
    Ok(if u.ratio(3, 4)? {
        (*u.choose(NAMES)?).to_string()
    } else {
        String::arbitrary(u)?
    })
}

fn value(u: &mut Unstructured, depth: u32) -> Result<Value> {
    let kind = if depth == 0 {
        u.int_in_range(0..=4)?
    } else {
        u.int_in_range(0..=6)?
    };
    Ok(match kind {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u)?),
        2 => {
            // Times around NOW as well as anything.
            let n = if u.ratio(1, 2)? {
                NOW.wrapping_add_signed(i64::from(i16::arbitrary(u)?))
            } else {
                u64::arbitrary(u)?
            };
            Value::from(n)
        }
        3 => Value::from(f64::arbitrary(u)?),
        4 => Value::String(if u.ratio(2, 3)? {
            (*u.choose(STRINGS)?).to_string()
        } else {
            String::arbitrary(u)?
        }),
        5 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array((0..n).map(|_| value(u, depth - 1)).collect::<Result<_>>()?)
        }
        _ => Value::Object(object(u, depth - 1)?),
    })
}

fn object(u: &mut Unstructured, depth: u32) -> Result<Map<String, Value>> {
    let n = u.int_in_range(0..=8)?;
    let mut m = Map::new();
    for _ in 0..n {
        m.insert(name(u)?, value(u, depth)?);
    }
    Ok(m)
}

impl<'a> Arbitrary<'a> for Json {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Json(Value::Object(object(u, 3)?)))
    }
}

/// `client_certificate` with the header source `kind` picks (0 xfcc, 1 client-cert, else
/// pem-header), trusting a hop at 10.0.0.0/8 (the fuzz target's peer is one).
pub fn certificate_sources(kind: u8) -> certbound::config::ClientCertificates {
    let source = match kind {
        0 => "xfcc",
        1 => "client-cert",
        _ => "pem-header",
    };
    let mut v = config_json(0);
    v["client_certificate"] = serde_json::json!({
        "sources": [source, "connection"],
        "trusted_hop": {"cidrs": ["10.0.0.0/8"]}
    });
    if source == "pem-header" {
        v["client_certificate"]["pem_header"] = "x-client-cert".into();
    }
    match certbound::config::parse(v.to_string().as_bytes()) {
        Ok(c) => c.client_certificate,
        Err(e) => panic!("the fuzz configuration is refused: {e}"),
    }
}

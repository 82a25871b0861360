//! The identity server's JSON Web Key Set: parsing, and its copy in shared data.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

/// A verification key's material; the JWT's `alg` decides how RSA keys are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// SEC1 uncompressed point of a P-256 key.
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The key's `alg`, when the key set pins one.
    pub alg: Option<String>,
    pub material: KeyMaterial,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
    /// The keys left out, each as "key N (kid …): why", for a log line.
    pub skipped: Vec<String>,
}

fn b64(value: Option<&Value>) -> Result<Vec<u8>, &'static str> {
    let text = value
        .and_then(Value::as_str)
        .ok_or("a key member is missing")?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| "a key member is not base64url")
}

/// `name` of `key`: absent, or a string (RFC 7517 section 4).
fn optional_string<'a>(
    key: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, &'static str> {
    match key.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err("a member is not a string"),
    }
}

/// One key of the set, or why it cannot be used.
fn key(value: &Value) -> Result<Jwk, &'static str> {
    let key = value.as_object().ok_or("not a JSON object")?;
    let kty = optional_string(key, "kty")?.ok_or("no kty")?;
    let kid = optional_string(key, "kid")?;
    let alg = optional_string(key, "alg")?;
    if optional_string(key, "use")?.is_some_and(|u| u != "sig") {
        return Err("not a signature key");
    }
    let crv = optional_string(key, "crv")?;
    let material = match (kty, crv) {
        ("RSA", _) => KeyMaterial::Rsa {
            n: b64(key.get("n"))?,
            e: b64(key.get("e"))?,
        },
        ("EC", Some("P-256")) => {
            let (x, y) = (b64(key.get("x"))?, b64(key.get("y"))?);
            if x.len() != 32 || y.len() != 32 {
                return Err("a coordinate is not 32 bytes");
            }
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::P256(point)
        }
        ("OKP", Some("Ed25519")) => KeyMaterial::Ed25519(b64(key.get("x"))?),
        _ => return Err("a key type certbound does not verify with"),
    };
    if !crate::jwt::usable(&material) {
        return Err("not a valid key of its type (or an RSA key under 2048 bits)");
    }
    Ok(Jwk {
        kid: kid.map(str::to_string),
        alg: alg.map(str::to_string),
        material,
    })
}

/// At most this many skipped keys are named (a key set may be megabytes of keys); the rest counted.
const MAX_NAMED_SKIPS: usize = 10;

impl KeySet {
    /// Parses a JWKS document. A key that cannot be used (another type or use, a member of the
    /// wrong type, bad material) is skipped and named in `skipped` (RFC 7517 section 5: "ignore
    /// JWKs within a JWK Set that use kty values that are not understood"); a document that is
    /// not an object with a `keys` array, or has no usable key, is an error.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, &'static str> {
        let set = crate::json::object(bytes).ok_or("the key set is not a JSON object")?;
        let Some(Value::Array(values)) = set.get("keys") else {
            return Err("the key set has no keys array");
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        let mut skipped_more = 0usize;
        for (index, value) in values.iter().enumerate() {
            match key(value) {
                Ok(jwk) => keys.push(jwk),
                Err(_) if skipped.len() >= MAX_NAMED_SKIPS => skipped_more += 1,
                Err(why) => {
                    // The kid comes from the server: quoted and cut, never a log line of its own.
                    let kid = value.get("kid").and_then(Value::as_str).unwrap_or("-");
                    let kid: String = kid.chars().take(64).collect();
                    skipped.push(format!("key {index} (kid {kid:?}): {why}"));
                }
            }
        }
        if skipped_more > 0 {
            skipped.push(format!("and {skipped_more} more"));
        }
        if keys.is_empty() {
            return Err("the key set has no usable signature key");
        }
        Ok(KeySet { keys, skipped })
    }
}

/// Whether a key set fetched at `fetched_at` is still fresh enough to use as it is.
pub fn is_fresh(fetched_at: u64, now: u64, max_age: u64) -> bool {
    now < fetched_at.saturating_add(max_age)
}

/// An unknown `kid` may trigger a refetch at most once per interval.
pub fn may_refetch(fetched_at: u64, now: u64, min_interval: u64) -> bool {
    now >= fetched_at.saturating_add(min_interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A JWK of each supported type, made from real keys.
    fn rsa_jwk(kid: &str) -> Value {
        let c = crate::testing::ps256().public_key().to_components();
        json!({"kty": "RSA", "kid": kid, "n": URL_SAFE_NO_PAD.encode(c.n), "e": URL_SAFE_NO_PAD.encode(c.e)})
    }

    fn ec_jwk(kid: &str) -> Value {
        use jwt_simple::prelude::*;
        let point = ES256KeyPair::generate()
            .public_key()
            .public_key()
            .to_bytes_uncompressed();
        json!({"kty": "EC", "crv": "P-256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])})
    }

    fn ed_jwk(kid: &str) -> Value {
        use jwt_simple::prelude::*;
        let x = Ed25519KeyPair::generate().public_key().to_bytes();
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(x)})
    }

    #[test]
    fn usable_keys_are_kept_and_every_other_key_is_skipped_with_its_reason() {
        let mut pinned = rsa_jwk("r1");
        pinned["alg"] = json!("PS256");
        pinned["use"] = json!("sig");
        let mut enc = rsa_jwk("enc");
        enc["use"] = json!("enc");
        let mut kid_number = rsa_jwk("x");
        kid_number["kid"] = json!(7);
        let mut alg_number = ec_jwk("x");
        alg_number["alg"] = json!(-7);
        let mut no_kty = ed_jwk("no-kty");
        no_kty.as_object_mut().unwrap().remove("kty");
        let doc = json!({"keys": [
            pinned,
            enc,
            ec_jwk("e1"),
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AQAB", "y": "AQAB"},
            ed_jwk("o1"),
            {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "bad-b64", "n": "!!", "e": "AQAB"},
            {"kty": "RSA", "kid": "rsa-1024", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "off-curve",
                "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])},
            kid_number,
            alg_number,
            no_kty,
            "not a key",
            ["an", "array"],
            rsa_jwk("r2"),
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["r1", "e1", "o1", "r2"]);
        assert_eq!(set.keys[0].alg.as_deref(), Some("PS256"));
        assert!(
            matches!(&set.keys[1].material, KeyMaterial::P256(p) if p.len() == 65 && p[0] == 4)
        );
        let expected = [
            r#"key 1 (kid "enc"): not a signature key"#,
            r#"key 3 (kid "p384"): a key type certbound does not verify with"#,
            r#"key 5 (kid "h1"): a key type certbound does not verify with"#,
            r#"key 6 (kid "bad-b64"): a key member is not base64url"#,
            r#"key 7 (kid "rsa-1024"): not a valid key of its type (or an RSA key under 2048 bits)"#,
            r#"key 8 (kid "off-curve"): not a valid key of its type (or an RSA key under 2048 bits)"#,
            r#"key 9 (kid "-"): a member is not a string"#,
            r#"key 10 (kid "x"): a member is not a string"#,
            r#"key 11 (kid "no-kty"): no kty"#,
            r#"key 12 (kid "-"): not a JSON object"#,
            "and 1 more",
        ];
        assert_eq!(set.skipped, expected);
    }

    #[test]
    fn only_the_first_ten_skipped_keys_are_named() {
        let mut keys = vec![rsa_jwk("ok")];
        keys.extend((0..25).map(|i| json!({"kty": "oct", "kid": format!("h{i}")})));
        let set = KeySet::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap();
        assert_eq!(set.skipped.len(), 11, "{:?}", set.skipped);
        assert_eq!(set.skipped[10], "and 15 more");
    }

    #[test]
    fn a_kid_is_logged_quoted_and_cut() {
        let doc = json!({"keys": [rsa_jwk("ok"), {"kty": "oct", "kid": format!("a\nb{}", "x".repeat(100))}]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.skipped.len(), 1);
        assert!(
            set.skipped[0].starts_with(r#"key 1 (kid "a\nbxxx"#),
            "{:?}",
            set.skipped
        );
        assert!(!set.skipped[0].contains('\n'));
        assert!(set.skipped[0].len() < 140);
    }

    #[test]
    fn unusable_documents_are_errors() {
        for doc in [
            &b"garbage"[..],
            br#"{"keys": []}"#,
            br#"{"keys": [{"kty":"oct","k":"AA"}]}"#,
            br#"{}"#,
            br#"{"keys": {"kty": "RSA"}}"#,
            br#"[{"keys": []}]"#,
            br#"{"keys": [], "keys": []}"#,
        ] {
            assert!(
                KeySet::parse(doc).is_err(),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
    }

    #[test]
    fn refresh_rules() {
        assert!(is_fresh(100, 399, 300));
        assert!(!is_fresh(100, 400, 300));
        assert!(!may_refetch(100, 129, 30));
        assert!(may_refetch(100, 130, 30));
    }
}

//! The identity server's JSON Web Key Set: parsing, and its copy in shared data.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

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
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64(v: &Option<String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(v.as_deref()?).ok()
}

impl KeySet {
    /// Parses a JWKS document. Keys that are not signature keys of a supported type are skipped;
    /// a set with no usable key is an error.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, &'static str> {
        let raw: RawSet =
            serde_json::from_slice(bytes).map_err(|_| "the key set is not JWKS JSON")?;
        let keys: Vec<Jwk> = raw
            .keys
            .into_iter()
            .filter(|k| k.use_.as_deref().is_none_or(|u| u == "sig"))
            .filter_map(|k| {
                let material = match (k.kty.as_str(), k.crv.as_deref()) {
                    ("RSA", _) => KeyMaterial::Rsa {
                        n: b64(&k.n)?,
                        e: b64(&k.e)?,
                    },
                    ("EC", Some("P-256")) => {
                        let (x, y) = (b64(&k.x)?, b64(&k.y)?);
                        if x.len() != 32 || y.len() != 32 {
                            return None;
                        }
                        let mut point = vec![4u8];
                        point.extend_from_slice(&x);
                        point.extend_from_slice(&y);
                        KeyMaterial::P256(point)
                    }
                    ("OKP", Some("Ed25519")) => KeyMaterial::Ed25519(b64(&k.x)?),
                    _ => return None,
                };
                Some(Jwk {
                    kid: k.kid,
                    alg: k.alg,
                    material,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err("the key set has no usable signature key");
        }
        Ok(KeySet { keys })
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

    #[test]
    fn supported_signature_keys_are_parsed_and_others_skipped() {
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "r1", "alg": "PS256", "use": "sig", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "e1", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])},
            {"kty": "EC", "kid": "e2", "crv": "P-384", "x": "AQAB", "y": "AQAB"},
            {"kty": "OKP", "kid": "o1", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([3u8; 32])},
            {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB"}
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["r1", "e1", "o1"]);
        assert!(
            matches!(&set.keys[1].material, KeyMaterial::P256(p) if p.len() == 65 && p[0] == 4)
        );
    }

    #[test]
    fn unusable_documents_are_errors() {
        for doc in [
            &b"garbage"[..],
            br#"{"keys": []}"#,
            br#"{"keys": [{"kty":"oct","k":"AA"}]}"#,
            br#"{}"#,
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

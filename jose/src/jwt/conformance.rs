//! Conformance of `verify`: the known answers of the standards (RFC 7515 appendix A.2 and A.3,
//! RFC 8037 appendix A.4, with their keys), and the table of tokens that must be refused, each
//! with its error.

use super::*;
use crate::testing::{key_set_of, rules, RawSigner, ISSUER, NOW};
use serde_json::json;

/// RFC 7515 A.2 and A.3 sign `{"iss":"joe", "exp":1300819380, "http://example.com/is_root":true}`
/// (with CR LF between members, as printed in the RFC).
const RFC7515_PAYLOAD: &[u8] =
    b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";

/// (what, public JWK, compact JWS, algorithm, payload). The vectors were taken from the RFCs as
/// embedded in erlang-jose, jwcrypto, jwx and panva/jose, agreeing, and checked with Python's
/// `cryptography` before being written here.
fn vectors() -> [(&'static str, Value, &'static str, Algorithm, &'static [u8]); 3] {
    [
        (
            "RFC 7515 A.2 (RS256)",
            json!({"kty": "RSA", "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ", "e": "AQAB"}),
            "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw",
            Algorithm::RS256,
            RFC7515_PAYLOAD,
        ),
        (
            "RFC 7515 A.3 (ES256)",
            json!({"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}),
            "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q",
            Algorithm::ES256,
            RFC7515_PAYLOAD,
        ),
        (
            "RFC 8037 A.4 (Ed25519)",
            json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
            "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg",
            Algorithm::EdDSA,
            b"Example of Ed25519 signing",
        ),
    ]
}

/// Rules for the vectors: their algorithm, their issuer `joe`, and an audience (certbound always
/// requires one; the vectors carry none).
fn vector_rules(alg: Algorithm) -> JwtRules {
    let mut r = rules(None);
    r.algorithms = vec![alg];
    r.issuer = "joe".into();
    r
}

#[test]
fn the_rfc_vectors_verify_with_their_keys() {
    for (what, jwk, jws, alg, payload) in vectors() {
        let keys = key_set_of(&[jwk]);
        let r = vector_rules(alg);
        assert_eq!(
            verify_signature(jws, &keys, &r, 65536).as_deref(),
            Ok(payload),
            "{what}"
        );
        if payload == RFC7515_PAYLOAD {
            // The claims are read and checked after the signature: at the RFC's time, `joe`
            // passes, and the missing `aud` is the only objection.
            assert_eq!(
                verify(jws, &keys, &r, 1_300_819_000, 65536),
                Err(JwtError::BadAudience),
                "{what}"
            );
            assert_eq!(
                verify(jws, &keys, &r, 1_300_819_380 + 61, 65536),
                Err(JwtError::Expired),
                "{what}"
            );
        } else {
            assert_eq!(
                verify(jws, &keys, &r, NOW, 65536),
                Err(JwtError::Malformed),
                "{what}: its payload is not a claims set"
            );
        }
    }
}

#[test]
fn the_rfc_vectors_are_refused_with_any_other_key() {
    let others = [
        RawSigner::rs256().jwk("k"),
        RawSigner::es256(9).jwk("k"),
        RawSigner::ed25519(9).jwk("k"),
    ];
    for (what, _, jws, alg, _) in vectors() {
        let r = vector_rules(alg);
        assert_eq!(
            verify_signature(jws, &key_set_of(&others), &r, 65536),
            Err(JwtError::BadSignature),
            "{what}"
        );
        // A flipped bit of the signature, with the right key.
        let (input, signature) = jws.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
        sig[5] ^= 1;
        let flipped = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
        let keys = key_set_of(&[vectors().into_iter().find(|v| v.0 == what).unwrap().1]);
        assert_eq!(
            verify_signature(&flipped, &keys, &r, 65536),
            Err(JwtError::BadSignature),
            "{what}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens that must be refused, each with its error.

fn es256() -> &'static RawSigner {
    static KEY: std::sync::OnceLock<RawSigner> = std::sync::OnceLock::new();
    KEY.get_or_init(|| RawSigner::es256(1))
}

/// The key set of the table: the ES256 key `e1` and the PS256 key `k1` of `testing`.
fn table_keys() -> KeySet {
    let ps256 = crate::testing::key_set();
    let mut keys = key_set_of(&[es256().jwk("e1")]);
    keys.keys.extend(ps256.keys);
    keys
}

fn table_rules() -> JwtRules {
    let mut r = rules(None);
    r.algorithms = vec![Algorithm::ES256, Algorithm::PS256];
    r
}

fn good_claims() -> Value {
    json!({"iss": ISSUER, "aud": "api.example.com", "iat": NOW - 10, "exp": NOW + 300, "sub": "s"})
}

fn good_header() -> Value {
    json!({"alg": "ES256", "kid": "e1", "typ": "JWT"})
}

/// An ES256 JWS over these exact bytes, signed by `e1`.
fn es(header: &[u8], payload: &[u8]) -> String {
    es256().sign(header, payload)
}

fn es_json(header: Value, claims: Value) -> String {
    es(header.to_string().as_bytes(), claims.to_string().as_bytes())
}

fn with(mut v: Value, name: &str, value: Value) -> Value {
    v[name] = value;
    v
}

fn b64u(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `good`'s segments with segment `i` replaced.
fn replace_segment(token: &str, i: usize, with: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[i] = with;
    parts.join(".")
}

#[test]
fn the_table_of_refused_tokens() {
    use jwt_simple::prelude::*;
    let good = es_json(good_header(), good_claims());
    assert!(verify(&good, &table_keys(), &table_rules(), NOW, 65536).is_ok());
    let claims_json = good_claims().to_string();
    let claims = claims_json.as_bytes();
    let [header_b64, payload_b64, sig_b64]: [&str; 3] =
        good.split('.').collect::<Vec<_>>().try_into().unwrap();
    let signature = URL_SAFE_NO_PAD.decode(sig_b64).unwrap();

    // HS256 keyed with the bytes of the RSA public key (the key confusion attack).
    let rsa_der = crate::testing::ps256().public_key().to_der().unwrap();
    let hs256 = HS256Key::from_bytes(&rsa_der)
        .with_key_id("k1")
        .authenticate(
            Claims::create(Duration::from_secs(300))
                .with_issuer(ISSUER)
                .with_audience("api.example.com"),
        )
        .unwrap();
    // A valid RS256 token where only PS256 and ES256 are allowed.
    let rs256 = RS256KeyPair::generate(2048)
        .unwrap()
        .with_key_id("k1")
        .sign(Claims::create(Duration::from_secs(300)).with_issuer(ISSUER))
        .unwrap();
    // A DER-encoded ECDSA signature of the same input (what OpenSSL gives, not JWS's R || S).
    let der = {
        use p256::ecdsa::signature::Signer;
        let RawSigner::Es256(key) = es256() else {
            unreachable!()
        };
        let sig: p256::ecdsa::Signature =
            key.sign(format!("{header_b64}.{payload_b64}").as_bytes());
        replace_segment(&good, 2, &b64u(sig.to_der().as_bytes()))
    };
    let n = hex_order();
    let rs = |r: &[u8], s: &[u8]| replace_segment(&good, 2, &b64u(&[r, s].concat()));
    // The last character of a 16-byte signature segment carries 4 unused bits: set one.
    let non_canonical = {
        let last = sig_b64.chars().last().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let i = alphabet.find(last).unwrap();
        let bumped = alphabet.chars().nth(i ^ 1).unwrap();
        format!("{}{bumped}", &good[..good.len() - 1])
    };
    // An RSA key under 2048 bits in the set (left out when the set is read), and a token naming
    // it: refused whatever its signature.
    let small_keys = {
        let mut keys = table_keys();
        let small = json!({"keys": [{"kty": "RSA", "kid": "small", "n": b64u(&[0xc5; 128]), "e": "AQAB"},
            es256().jwk("e1")]});
        let parsed = KeySet::parse(small.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.skipped.len(), 1);
        keys.keys.extend(parsed.keys);
        keys
    };
    let by_small = format!(
        "{}.{payload_b64}.{}",
        b64u(br#"{"alg":"PS256","kid":"small"}"#),
        b64u(&[7; 128])
    );
    let skew = 60;
    let std_alphabet = replace_segment(&good, 2, &sig_b64.replace('-', "+").replace('_', "/"));
    assert_ne!(
        std_alphabet, good,
        "the signature has a - or _ to re-encode"
    );

    use JwtError::*;
    let table: Vec<(&str, String, JwtError)> = vec![
        ("alg none", format!("{}.{payload_b64}.", b64u(br#"{"alg":"none"}"#)), AlgorithmNotAllowed),
        ("alg none, signature kept", replace_segment(&good, 0, &b64u(br#"{"alg":"none","kid":"e1"}"#)), AlgorithmNotAllowed),
        ("HS256 keyed with the RSA public key", hs256, AlgorithmNotAllowed),
        ("RS256 not allowed", rs256, AlgorithmNotAllowed),
        ("alg of another case", es_json(with(good_header(), "alg", json!("es256")), good_claims()), AlgorithmNotAllowed),
        ("kid of a key of another type", es_json(with(good_header(), "kid", json!("k1")), good_claims()), UnknownKey),
        ("kid of no key", es_json(with(good_header(), "kid", json!("e9")), good_claims()), UnknownKey),
        ("unknown crit", es_json(with(with(good_header(), "crit", json!(["exp"])), "exp", json!(1)), good_claims()), Malformed),
        ("crit not an array", es_json(with(good_header(), "crit", json!("exp")), good_claims()), Malformed),
        ("padded header", replace_segment(&good, 0, &format!("{header_b64}==")), Malformed),
        ("padded signature", format!("{good}=="), Malformed),
        ("standard base64 alphabet", std_alphabet, Malformed),
        ("non-canonical base64url", non_canonical, Malformed),
        ("four segments", format!("{good}.x"), Malformed),
        ("two segments", format!("{header_b64}.{payload_b64}"), Malformed),
        ("one segment", header_b64.to_string(), Malformed),
        ("empty", String::new(), Malformed),
        ("empty signature", format!("{header_b64}.{payload_b64}."), BadSignature),
        ("DER-encoded ES256 signature", der, BadSignature),
        ("r = 0", rs(&[0; 32], &signature[32..]), BadSignature),
        ("s = 0", rs(&signature[..32], &[0; 32]), BadSignature),
        ("r = n", rs(&n, &signature[32..]), BadSignature),
        ("s = n", rs(&signature[..32], &n), BadSignature),
        ("r and s all ones", rs(&[0xff; 32], &[0xff; 32]), BadSignature),
        ("signature one byte short", rs(&signature[..32], &signature[32..63]), BadSignature),
        ("RSA key under 2048 bits", by_small, UnknownKey),
        ("header repeats alg", es(br#"{"alg":"ES256","kid":"e1","alg":"none"}"#, claims), Malformed),
        ("header repeats kid", es(br#"{"alg":"ES256","kid":"e9","kid":"e1"}"#, claims), Malformed),
        ("header is an array (serde reads a sequence into a struct)", es(br#"["ES256","e1","JWT",null,null,null,null,null,null,null,null,null]"#, claims), Malformed),
        ("header is a string", es(br#""ES256""#, claims), Malformed),
        ("header kid is a number", es_json(with(good_header(), "kid", json!(1)), good_claims()), Malformed),
        ("claims repeat iss", es(good_header().to_string().as_bytes(), format!(r#"{{"iss":"https://evil","iss":"{ISSUER}","aud":"api.example.com"}}"#).as_bytes()), Malformed),
        ("claims repeat cnf", es(good_header().to_string().as_bytes(), format!(r#"{{"iss":"{ISSUER}","aud":"api.example.com","cnf":{{"x5t#S256":"a"}},"cnf":{{"x5t#S256":"b"}}}}"#).as_bytes()), Malformed),
        ("claims are an array", es(good_header().to_string().as_bytes(), format!(r#"[0,{},"{ISSUER}"]"#, NOW + 300).as_bytes()), Malformed),
        ("claims are a string", es(good_header().to_string().as_bytes(), br#""claims""#), Malformed),
        ("claims are not JSON", es(good_header().to_string().as_bytes(), b"iss=joe"), Malformed),
        ("expired beyond the skew", es_json(good_header(), with(good_claims(), "exp", json!(NOW - skew - 1))), Expired),
        ("nbf beyond the skew", es_json(good_header(), with(good_claims(), "nbf", json!(NOW + skew + 1))), NotYetValid),
        ("iat beyond the skew", es_json(good_header(), with(good_claims(), "iat", json!(NOW + skew + 1))), NotYetValid),
        ("exp not a number", es_json(good_header(), with(good_claims(), "exp", json!("never"))), Malformed),
        ("aud an empty array", es_json(good_header(), with(good_claims(), "aud", json!([]))), BadAudience),
        ("aud an empty string", es_json(good_header(), with(good_claims(), "aud", json!(""))), BadAudience),
        ("aud missing", es_json(good_header(), { let mut c = good_claims(); c.as_object_mut().unwrap().remove("aud"); c }), BadAudience),
        ("aud another API", es_json(good_header(), with(good_claims(), "aud", json!(["other.example.com"]))), BadAudience),
        ("aud a number", es_json(good_header(), with(good_claims(), "aud", json!(5))), Malformed),
        ("aud an array with a number", es_json(good_header(), with(good_claims(), "aud", json!(["api.example.com", 5]))), Malformed),
        ("aud null", es_json(good_header(), with(good_claims(), "aud", json!(null))), Malformed),
        ("aud of another case", es_json(good_header(), with(good_claims(), "aud", json!("API.example.com"))), BadAudience),
        ("iss of another case", es_json(good_header(), with(good_claims(), "iss", json!(ISSUER.to_uppercase()))), BadIssuer),
        ("iss with a trailing slash", es_json(good_header(), with(good_claims(), "iss", json!(format!("{ISSUER}/")))), BadIssuer),
        ("iss missing", es_json(good_header(), { let mut c = good_claims(); c.as_object_mut().unwrap().remove("iss"); c }), BadIssuer),
        ("typ not a JWT's", es_json(with(good_header(), "typ", json!("JOSE")), good_claims()), BadType),
    ];
    for (what, token, expected) in &table {
        let keys = if *what == "RSA key under 2048 bits" {
            &small_keys
        } else {
            &table_keys()
        };
        assert_eq!(
            verify(token, keys, &table_rules(), NOW, 65536),
            Err(*expected),
            "{what}: {token}"
        );
    }
    // And on each side of the skew, what is still valid.
    let accepted = [
        (
            "exp at the skew",
            with(good_claims(), "exp", json!(NOW - skew)),
        ),
        (
            "nbf at the skew",
            with(good_claims(), "nbf", json!(NOW + skew)),
        ),
        (
            "iat at the skew",
            with(good_claims(), "iat", json!(NOW + skew)),
        ),
        (
            "aud a string",
            with(good_claims(), "aud", json!("api.example.com")),
        ),
        (
            "aud an array",
            with(good_claims(), "aud", json!(["other", "api.example.com"])),
        ),
        ("no exp", {
            let mut c = good_claims();
            c.as_object_mut().unwrap().remove("exp");
            c
        }),
    ];
    for (what, claims) in accepted {
        let token = es_json(good_header(), claims);
        assert!(
            verify(&token, &table_keys(), &table_rules(), NOW, 65536).is_ok(),
            "{what}"
        );
    }
}

/// The order n of the P-256 group, big-endian.
fn hex_order() -> Vec<u8> {
    let hex = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn without_a_kid_every_key_of_the_type_is_tried() {
    let first = RawSigner::es256(2);
    let header = json!({"alg": "ES256"}).to_string();
    let claims = good_claims().to_string();
    // Signed by the second of two EC keys, neither named: rotation without key ids.
    let token = es(header.as_bytes(), claims.as_bytes());
    let keys = key_set_of(&[first.jwk("old"), es256().jwk("new")]);
    assert!(verify(&token, &keys, &table_rules(), NOW, 65536).is_ok());
    // With a kid, only that key: the right signature under another kid is refused.
    let named = es_json(with(good_header(), "kid", json!("old")), good_claims());
    assert_eq!(
        verify(&named, &keys, &table_rules(), NOW, 65536),
        Err(JwtError::BadSignature)
    );
    // No key of the type at all.
    let rsa_only = crate::testing::key_set();
    assert_eq!(
        verify(&token, &rsa_only, &table_rules(), NOW, 65536),
        Err(JwtError::UnknownKey)
    );
}

//! `verify` against a reference implementation, jwt-simple (which certbound's JWS code replaced):
//! valid PS256, RS256, ES256 and EdDSA tokens, then many mutations of each — bit flips,
//! insertions, deletions, truncations, segment swaps, re-encodings, and header and claim edits
//! signed again — each accepted or refused by both. Where they differ, certbound is stricter on
//! purpose, and each such case is listed in `STRICTER` and asserted to be refused by certbound
//! and accepted by jwt-simple; any other disagreement fails the test.

use super::*;
use crate::testing::{key_set_of, ps256, rules, RawSigner, ISSUER, NOW};
use jwt_simple::prelude::*;
use serde_json::json;
use std::collections::HashSet;

/// Mutations where certbound refuses what jwt-simple accepts, by design.
const STRICTER: &[&str] = &[
    // RFC 7515 section 4: the header is a JSON object; serde reads an array into a struct.
    "header: an array",
    // RFC 7515 section 4 / RFC 7519 section 4: a repeated member name is refused.
    "claims: cnf twice",
    "claims: scope twice",
    // A JWT without a kid: jwt-simple accepts it for the one key it is given, and certbound tries
    // every key of the type; these are the same, so nothing is listed for it.
];

/// jwt-simple's verdict on a token, with these options.
type Reference = Box<dyn Fn(&str, VerificationOptions) -> bool>;

/// One algorithm under test: our key set and rules, the reference's verdict, and how to sign.
struct Subject {
    alg: &'static str,
    keys: KeySet,
    rules: JwtRules,
    reference: Reference,
    /// Signs header and payload bytes as they are (`None` for PS256: jwt-simple signs it, with
    /// headers of its own making only).
    raw: Option<RawSigner>,
    good: String,
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": "api.example.com", "iat": NOW - 10, "exp": NOW + 300,
        "sub": "partner", "scope": "transactions", "cnf": {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}})
}

fn options(kid: Option<&str>) -> VerificationOptions {
    VerificationOptions {
        allowed_issuers: Some(HashSet::from([ISSUER.to_string()])),
        allowed_audiences: Some(HashSet::from(["api.example.com".to_string()])),
        time_tolerance: Some(Duration::from_secs(60)),
        artificial_time: Some(Duration::from_secs(NOW)),
        max_token_length: Some(65536),
        required_key_id: kid.map(str::to_string),
        ..Default::default()
    }
}

fn our_rules(alg: Algorithm) -> JwtRules {
    let mut r = rules(None);
    r.algorithms = vec![alg];
    r
}

fn raw_subject(signer: RawSigner, alg: Algorithm) -> Subject {
    let jwk = signer.jwk("k1");
    let b = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
    let reference: Reference = match alg {
        Algorithm::RS256 => {
            let key = RS256PublicKey::from_components(&b("n"), &b("e")).unwrap();
            Box::new(move |t, o| key.verify_token::<Value>(t, Some(o)).is_ok())
        }
        Algorithm::ES256 => {
            let point = [&[4u8][..], &b("x"), &b("y")].concat();
            let key = ES256PublicKey::from_bytes(&point).unwrap();
            Box::new(move |t, o| key.verify_token::<Value>(t, Some(o)).is_ok())
        }
        Algorithm::EdDSA => {
            let key = Ed25519PublicKey::from_bytes(&b("x")).unwrap();
            Box::new(move |t, o| key.verify_token::<Value>(t, Some(o)).is_ok())
        }
        Algorithm::PS256 => unreachable!("PS256 is signed by jwt-simple"),
    };
    let header = json!({"alg": signer.alg(), "kid": "k1", "typ": "JWT"}).to_string();
    let good = signer.sign(header.as_bytes(), claims().to_string().as_bytes());
    Subject {
        alg: signer.alg(),
        keys: key_set_of(&[jwk]),
        rules: our_rules(alg),
        reference,
        raw: Some(signer),
        good,
    }
}

fn ps256_subject() -> Subject {
    let pair = ps256();
    let key = pair.public_key().with_key_id("k1");
    let good = crate::testing::sign(
        json!({"scope": "transactions", "cnf": claims()["cnf"].clone()}),
        NOW + 300,
        Some("JWT"),
    );
    Subject {
        alg: "PS256",
        keys: crate::testing::key_set(),
        rules: our_rules(Algorithm::PS256),
        reference: Box::new(move |t, o| key.verify_token::<Value>(t, Some(o)).is_ok()),
        raw: None,
        good,
    }
}

impl Subject {
    fn ours(&self, token: &str) -> bool {
        verify(token, &self.keys, &self.rules, NOW, 65536).is_ok()
    }

    /// jwt-simple, with certbound's `kid` rule: a `kid` must name the key; without one, the key
    /// is tried.
    fn theirs(&self, token: &str) -> bool {
        let kid = Token::decode_metadata(token)
            .ok()
            .and_then(|m| m.key_id().map(str::to_string));
        (self.reference)(token, options(kid.is_some().then_some("k1")))
    }
}

/// (what, token) for every mutation of `s.good` that needs no key.
fn blind_mutations(s: &Subject) -> Vec<(String, String)> {
    let good = &s.good;
    let mut out = Vec::new();
    let chars: Vec<char> = good.chars().collect();
    let alphabet = [
        'A', 'a', 'z', '0', '9', '-', '_', '.', '=', '+', '/', ' ', '%',
    ];
    for (i, &c) in chars.iter().enumerate() {
        for bit in 0..7 {
            let flipped = char::from(c as u8 ^ (1 << bit));
            if flipped.is_ascii_graphic() {
                let mut t = chars.clone();
                t[i] = flipped;
                out.push((format!("flip bit {bit} of char {i}"), t.iter().collect()));
            }
        }
        if i % 7 == 0 {
            for a in alphabet {
                let mut t = chars.clone();
                t.insert(i, a);
                out.push((format!("insert {a:?} at {i}"), t.iter().collect()));
            }
        }
        let mut t = chars.clone();
        t.remove(i);
        out.push((format!("delete char {i}"), t.iter().collect()));
        out.push((format!("truncate to {i}"), chars[..i].iter().collect()));
    }
    let parts: Vec<&str> = good.split('.').collect();
    for (a, b, c) in [
        (0, 2, 1),
        (1, 0, 2),
        (2, 1, 0),
        (0, 0, 2),
        (1, 1, 2),
        (0, 1, 1),
    ] {
        out.push((
            format!("segments {a}{b}{c}"),
            format!("{}.{}.{}", parts[a], parts[b], parts[c]),
        ));
    }
    for (i, part) in parts.iter().enumerate() {
        let bytes = URL_SAFE_NO_PAD.decode(part).unwrap_or_default();
        let encodings = [
            (
                "padded",
                base64::engine::general_purpose::URL_SAFE.encode(&bytes),
            ),
            (
                "standard alphabet",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes),
            ),
            ("with a newline", format!("{part}\n")),
            ("empty", String::new()),
        ];
        for (how, encoded) in encodings {
            let mut p = parts.clone();
            p[i] = &encoded;
            out.push((format!("segment {i} {how}"), p.join(".")));
        }
    }
    out.push(("trailing dot".into(), format!("{good}.")));
    out.push(("leading dot".into(), format!(".{good}")));
    out.push(("two tokens".into(), format!("{good}.{good}")));
    out
}

/// (what, header JSON, claims JSON) for the edits that are signed again.
fn edits(alg: &str) -> Vec<(String, String, String)> {
    let header = |extra: &str| format!(r#"{{"alg":"{alg}","kid":"k1"{extra}}}"#);
    let base_claims = claims().to_string();
    let mut out: Vec<(String, String, String)> = Vec::new();
    let headers = [
        ("header: as signed", header("")),
        ("header: no kid", format!(r#"{{"alg":"{alg}"}}"#)),
        (
            "header: another kid",
            format!(r#"{{"alg":"{alg}","kid":"k2"}}"#),
        ),
        (
            "header: kid a number",
            format!(r#"{{"alg":"{alg}","kid":1}}"#),
        ),
        ("header: typ JWT", header(r#","typ":"JWT""#)),
        ("header: typ at+jwt", header(r#","typ":"at+jwt""#)),
        ("header: typ JOSE", header(r#","typ":"JOSE""#)),
        ("header: typ a number", header(r#","typ":5"#)),
        ("header: crit empty", header(r#","crit":[]"#)),
        ("header: crit exp", header(r#","crit":["exp"],"exp":1"#)),
        ("header: crit a string", header(r#","crit":"exp""#)),
        (
            "header: alg none",
            r#"{"alg":"none","kid":"k1"}"#.to_string(),
        ),
        (
            "header: alg lower case",
            header("").replace(alg, &alg.to_lowercase()),
        ),
        (
            "header: alg HS256",
            r#"{"alg":"HS256","kid":"k1"}"#.to_string(),
        ),
        (
            "header: alg twice",
            format!(r#"{{"alg":"{alg}","alg":"{alg}","kid":"k1"}}"#),
        ),
        ("header: kid twice", header(r#","kid":"k1""#)),
        (
            "header: an array",
            format!(r#"["{alg}","k1",null,null,null,null,null,null,null,null,null,null]"#),
        ),
        ("header: a string", format!(r#""{alg}""#)),
        ("header: x5c not an array", header(r#","x5c":"MIIB""#)),
        ("header: jwk an object", header(r#","jwk":{"kty":"oct"}"#)),
        ("header: salt not base64url", header(r#","salt":"!!""#)),
        ("header: salt", header(r#","salt":"AAAA""#)),
        ("header: whitespace", format!(" {} ", header(""))),
        (
            "header: unknown member",
            header(r#","private":{"a":[1,2]}"#),
        ),
        ("header: cty JWT", header(r#","cty":"JWT""#)),
        ("header: empty object", "{}".to_string()),
        ("header: not JSON", "alg=ES256".to_string()),
    ];
    for (what, h) in headers {
        out.push((what.to_string(), h, base_claims.clone()));
    }
    let edit = |name: &str, value: Value| {
        let mut c = claims();
        c[name] = value;
        c.to_string()
    };
    let without = |name: &str| {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(name);
        c.to_string()
    };
    let body = base_claims.trim_start_matches('{').to_string();
    let claim_edits = [
        (
            "claims: iss upper case",
            edit("iss", json!(ISSUER.to_uppercase())),
        ),
        (
            "claims: iss trailing slash",
            edit("iss", json!(format!("{ISSUER}/"))),
        ),
        ("claims: iss missing", without("iss")),
        ("claims: iss a number", edit("iss", json!(5))),
        (
            "claims: aud an array",
            edit("aud", json!(["x", "api.example.com"])),
        ),
        ("claims: aud empty array", edit("aud", json!([]))),
        ("claims: aud empty string", edit("aud", json!(""))),
        ("claims: aud a number", edit("aud", json!(5))),
        (
            "claims: aud array with a number",
            edit("aud", json!(["api.example.com", 5])),
        ),
        ("claims: aud missing", without("aud")),
        ("claims: aud another", edit("aud", json!("other"))),
        ("claims: exp 61 s ago", edit("exp", json!(NOW - 61))),
        ("claims: exp 60 s ago", edit("exp", json!(NOW - 60))),
        ("claims: exp 59 s ago", edit("exp", json!(NOW - 59))),
        ("claims: exp a string", edit("exp", json!("never"))),
        (
            "claims: exp fractional",
            edit("exp", json!((NOW + 300) as f64 + 0.5)),
        ),
        ("claims: exp missing", without("exp")),
        ("claims: exp null", edit("exp", json!(null))),
        ("claims: nbf null", edit("nbf", json!(null))),
        ("claims: iat null", edit("iat", json!(null))),
        ("claims: nbf in 60 s", edit("nbf", json!(NOW + 60))),
        ("claims: nbf in 61 s", edit("nbf", json!(NOW + 61))),
        ("claims: iat in 61 s", edit("iat", json!(NOW + 61))),
        ("claims: sub a number", edit("sub", json!(5))),
        ("claims: jti a number", edit("jti", json!(5))),
        (
            "claims: iss twice",
            format!(r#"{{"iss":"https://evil",{body}"#),
        ),
        (
            "claims: cnf twice",
            format!(r#"{{"cnf":{{"x5t#S256":"x"}},{body}"#),
        ),
        (
            "claims: scope twice",
            format!(r#"{{"scope":"admin",{body}"#),
        ),
        (
            "claims: an array",
            format!(r#"["{ISSUER}","api.example.com"]"#),
        ),
        ("claims: a string", r#""claims""#.to_string()),
        ("claims: null", "null".to_string()),
        ("claims: trailing garbage", format!("{base_claims} x")),
        ("claims: whitespace", format!("\n{base_claims}\n")),
        ("claims: empty object", "{}".to_string()),
    ];
    for (what, c) in claim_edits {
        out.push((what.to_string(), header(""), c));
    }
    out
}

#[test]
fn verify_agrees_with_jwt_simple_but_where_it_is_stricter_by_design() {
    let subjects = [
        ps256_subject(),
        raw_subject(RawSigner::rs256(), Algorithm::RS256),
        raw_subject(RawSigner::es256(3), Algorithm::ES256),
        raw_subject(RawSigner::ed25519(3), Algorithm::EdDSA),
    ];
    let mut compared = 0;
    let mut disagreements = Vec::new();
    let mut stricter_seen = HashSet::new();
    for s in &subjects {
        assert!(
            s.ours(&s.good) && s.theirs(&s.good),
            "{}: the good token",
            s.alg
        );
        let mut cases = blind_mutations(s);
        if let Some(signer) = &s.raw {
            for (what, header, claims) in edits(s.alg) {
                cases.push((what, signer.sign(header.as_bytes(), claims.as_bytes())));
            }
        }
        for (what, token) in cases {
            compared += 1;
            let (ours, theirs) = (s.ours(&token), s.theirs(&token));
            if ours == theirs {
                continue;
            }
            if STRICTER.contains(&what.as_str()) && !ours && theirs {
                stricter_seen.insert(what);
                continue;
            }
            disagreements.push(format!(
                "{} {what}: certbound {ours}, jwt-simple {theirs}",
                s.alg
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{compared} compared:\n{}",
        disagreements.join("\n")
    );
    // Every listed difference still shows: a stale entry would hide nothing and test nothing.
    let stale: Vec<_> = STRICTER
        .iter()
        .filter(|w| !stricter_seen.contains(**w))
        .collect();
    assert!(stale.is_empty(), "no longer different: {stale:?}");
    assert!(compared > 10_000, "{compared} cases");
}

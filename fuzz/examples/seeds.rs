//! Writes each target's seed corpus (`make fuzz` runs it into fuzz/corpus/<target>): the inputs of
//! the unit and integration tests — requests, introspection answers in each format, signed JWTs
//! of each algorithm, key sets, cache entries, the example certificates, configurations. The
//! structure-aware targets (`jwt_structured`, `flow`) start from their generators instead, and
//! `config` is seeded in its raw form.
//!
//! `cargo run --example seeds -- DIR [CERTS_DIR]`

use certbound::binding::Thumbprint;
use certbound::cache::{encode, ActiveToken, Binding, Entry, TokenKey, TokenState};
use certbound::headers::Headers;
use certbound_fuzz::{keys, ISSUER, NOW};
use certbound_jose::testing::{jwks_json, ps256, sign};
use serde_json::json;
use std::path::Path;

fn claims(cnf: serde_json::Value) -> serde_json::Value {
    json!({"active": true, "iss": ISSUER, "aud": "api.example.com", "iat": NOW - 10,
        "exp": NOW + 300, "sub": "partner", "client_id": "partner", "scope": "transactions",
        "token_type": "access_token", "cnf": cnf, "jti": "j-1"})
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: seeds DIR [CERTS_DIR]");
    let certs = args.next();
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    let bound = json!({"x5t#S256": Thumbprint([1; 32]).to_x5t()});
    let k = keys();
    let jwt_header =
        |alg: &str, kid: &str| json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string();
    let phantoms = [
        sign(
            json!({"scope": "transactions", "cnf": bound}),
            NOW + 300,
            None,
        ),
        k.es256.sign(
            jwt_header("ES256", "e1").as_bytes(),
            claims(bound.clone()).to_string().as_bytes(),
        ),
        k.ed25519.sign(
            jwt_header("EdDSA", "o1").as_bytes(),
            claims(bound.clone()).to_string().as_bytes(),
        ),
    ];

    for value in [
        "Bearer tok-a",
        "bearer  tok-a",
        "Bearer a\nBearer b",
        "Basic dXNlcjpwYXNz",
        "Bearer ",
        "Bearer a=b=",
        "Bearer ab,cd",
        "Bearer tok\u{7f}",
        "Bearer tok-a\n",
    ] {
        seeds.push(("bearer_token", value.as_bytes().to_vec()));
    }
    seeds.push((
        "bearer_token",
        format!("Bearer {}", "a".repeat(4097)).into_bytes(),
    ));
    seeds.push((
        "bearer_token",
        format!("Bearer {}", phantoms[0]).into_bytes(),
    ));

    let request: [(&[u8], &[u8]); 5] = [
        (b":method", b"GET"),
        (b":path", b"/api/transactions?access_token=x"),
        (b"authorization", b"Bearer tok-a"),
        (b"authorization", b"Bearer tok-b"),
        (b"content-type", b"application/x-www-form-urlencoded"),
    ];
    seeds.push(("header_map", Headers::serialize(&request)));
    seeds.push(("header_map", Headers::serialize(&request[..1])));
    seeds.push(("header_map", Headers::serialize(&[])));

    let answer = |format: u8, status: u16, body: &[u8]| {
        [&[format][..], &status.to_be_bytes(), body].concat()
    };
    for cnf in [
        bound.clone(),
        json!({}),
        json!({"jkt": "x"}),
        json!("x"),
        json!(null),
    ] {
        seeds.push((
            "introspection_answer",
            answer(0, 200, claims(cnf).to_string().as_bytes()),
        ));
    }
    seeds.push((
        "introspection_answer",
        answer(0, 200, br#"{"active":false}"#),
    ));
    seeds.push((
        "introspection_answer",
        answer(0, 400, br#"{"error":"invalid_token"}"#),
    ));
    seeds.push(("introspection_answer", answer(1, 204, b"")));
    for jwt in &phantoms {
        seeds.push(("introspection_answer", answer(1, 200, jwt.as_bytes())));
        seeds.push(("jwt_raw", jwt.as_bytes().to_vec()));
    }
    let rfc9701 = json!({"iss": ISSUER, "aud": "introspect-client", "iat": NOW,
        "token_introspection": claims(bound.clone())});
    let rfc9701_header = json!({"alg": "EdDSA", "kid": "o1", "typ": "token-introspection+jwt"});
    let rfc9701 = k.ed25519.sign(
        rfc9701_header.to_string().as_bytes(),
        rfc9701.to_string().as_bytes(),
    );
    seeds.push(("introspection_answer", answer(2, 200, rfc9701.as_bytes())));

    seeds.push(("key_set", jwks_json(&[ps256()]).into_bytes()));
    let mixed = json!({"keys": [k.es256.jwk("e1"), k.ed25519.jwk("o1"),
        {"kty": "oct", "k": "c2VjcmV0"}, {"kty": "RSA", "kid": 7, "n": "AQAB", "e": "AQAB"}, "x"]});
    seeds.push(("key_set", mixed.to_string().into_bytes()));

    let active = ActiveToken {
        cnf: Binding::Certificate(Thumbprint([7; 32])),
        scope: "transactions read".into(),
        client_id: Some("partner".into()),
        jti: Some("j-1".into()),
        forward_authorization: Some(format!("Bearer {}", phantoms[1])),
        headers: vec![("x-client-id".into(), "partner".into())],
        token_hash: [9; 24],
        issued_at: Some(NOW - 10),
        checked_at: NOW,
    };
    for state in [TokenState::Active(active), TokenState::Inactive] {
        let entry = Entry {
            key: TokenKey([3; 32]),
            expires_at: NOW + 60,
            stale_until: NOW + 90,
            state,
        };
        seeds.push(("cache_entry", encode(&entry)));
    }

    seeds.push(("pem", Thumbprint([1; 32]).to_x5t().into_bytes()));
    seeds.push((
        "pem",
        b"0011223344556677889900112233445566778899001122334455667788990011".to_vec(),
    ));
    if let Some(certs) = certs {
        for name in [
            "example.client.pem",
            "example.client2.pem",
            "example.tls.pem",
        ] {
            if let Ok(pem) = std::fs::read(Path::new(&certs).join(name)) {
                seeds.push(("pem", pem.clone()));
                // `certificate`: a kind byte (0 xfcc, 1 client-cert, 2 pem-header), the value.
                let text = String::from_utf8_lossy(&pem).into_owned();
                let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
                let encoded: String = text
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' => (b as char).to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                seeds.push((
                    "certificate",
                    [&[1u8][..], format!(":{body}:").as_bytes()].concat(),
                ));
                seeds.push(("certificate", [&[2u8][..], encoded.as_bytes()].concat()));
                let xfcc = format!(
                    "Hash={};Cert=\"{encoded}\",Hash={}",
                    "00".repeat(32),
                    "07".repeat(32)
                );
                seeds.push(("certificate", [&[0u8][..], xfcc.as_bytes()].concat()));
                use base64::Engine;
                if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&body) {
                    seeds.push(("certificate", [&[3u8][..], &der[..]].concat()));
                }
            }
        }
    }

    // `revocation_feed`: 0 and a feed answer with signed SETs of both event types; 1 and an
    // event's claims.
    let events = [
        json!({"https://certbound.example/secevent/token-revoked":
            {"token_hash": "A".repeat(32), "client_id": "partner", "retain_until": NOW + 300}}),
        json!({"https://certbound.example/secevent/client-offboarded":
            {"client_id": "partner", "issued_before": NOW, "retain_until": NOW + 300}}),
    ];
    let set_header = json!({"alg": "ES256", "kid": "e1", "typ": "secevent+jwt"}).to_string();
    let sets: Vec<String> = events
        .iter()
        .map(|e| {
            let claims = json!({"iss": certbound_fuzz::ISSUER, "aud": "api.example.com",
                                "iat": NOW - 5, "jti": "b.1", "events": e});
            k.es256
                .sign(set_header.as_bytes(), claims.to_string().as_bytes())
        })
        .collect();
    let feed = json!({"events": sets, "next": "b.2"}).to_string();
    seeds.push(("revocation_feed", [&[0u8][..], feed.as_bytes()].concat()));
    for e in &events {
        let claims = json!({"events": e}).to_string();
        seeds.push(("revocation_feed", [&[1u8][..], claims.as_bytes()].concat()));
    }

    // `config` reads `[0, 0, 0, 0]` as its raw variant, the rest as the configuration.
    for format in 0..3 {
        let raw = certbound_fuzz::config_json(format).to_string();
        seeds.push(("config", [&[0u8; 4][..], raw.as_bytes()].concat()));
    }

    for (i, (target, bytes)) in seeds.iter().enumerate() {
        let dir = Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        std::fs::write(dir.join(format!("seed-{i:03}")), bytes).expect("write a seed");
    }
    println!("{} seeds in {dir}", seeds.len());
}

//! The request flow through the fake host (the real root and HTTP contexts): requests with any
//! headers and certificates, call answers of any status and body — member JSON, JWTs signed by a
//! key of the set, key sets, bytes — failures, clients going away, bodies, trailers and time.
//! After every step each request has at most one fate, a request without a certificate never
//! reaches the upstream on a route that requires binding, and no certificate or claim header of
//! the client's does. Half the inputs run as in NGINX (the fake host's `nginx`: the certificate as
//! a PEM per connection, no single-flight, removed headers still forwarded).
#![no_main]
use arbitrary::Arbitrary;
use certbound::binding::Thumbprint;
use certbound::fake_host::Proxy;
use certbound_fuzz::{keys, Json, NOW};
use libfuzzer_sys::fuzz_target;

/// Two "certificates" (minimal DER SEQUENCEs), as NGINX hands them over (PEM), and their thumbprints.
const PEMS: [&str; 2] = [
    "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n",
    "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
];
fn certs() -> [Thumbprint; 2] {
    PEMS.map(|p| Thumbprint::from_pem(p).expect("a PEM"))
}
const PATHS: &[&str] = &[
    "/api/transactions",
    "/api/transactions/42",
    "/API/Transactions",
    "/public/x",
    "/admin",
    "/api//transactions",
    "/api/./transactions",
    "/api/%74ransactions",
    "/",
    "/other",
];
const METHODS: &[&str] = &["GET", "POST", "PUT"];
const TOKENS: &[&str] = &["tok-a", "tok-b", "tok-c"];
const HEADER_NAMES: &[&str] = &[
    "authorization",
    "content-type",
    "x-client-id",
    "x_client_id",
    "client-cert",
    "client_cert",
    "client-cert-chain",
    "x-forwarded-client-cert",
    "x_forwarded_client_cert",
    "x-sub",
    "cookie",
];

#[derive(Arbitrary, Debug)]
enum Auth {
    Token(u8),
    Raw(String),
    None,
    Twice(u8, u8),
}

#[derive(Arbitrary, Debug)]
enum Body {
    Members(Json),
    Signed {
        by: u8,
        header: Json,
        claims: Json,
    },
    /// A phantom JWT the flow accepts: signed, for this issuer and audience, bound to a cert.
    Phantom {
        by: u8,
        cert: u8,
        scope: bool,
    },
    KeySet,
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Request {
        method: u8,
        path: u8,
        raw_path: Option<String>,
        auth: Auth,
        cert: Option<u8>,
        headers: Vec<(u8, String)>,
        /// `x-forwarded-client-cert: Hash=<one of CERTS>`.
        xfcc: Option<u8>,
        /// The peer address: trusted (10.0.0.1) by the header-source configurations, or not.
        trusted: bool,
    },
    Answer {
        which: u8,
        status: u16,
        max_age: Option<u8>,
        body: Body,
    },
    Fail(u8),
    Gone(u8),
    Chunk {
        which: u8,
        data: Vec<u8>,
        last: bool,
    },
    Trailers(u8),
    Advance(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    format: u8,
    /// 0: the connection only; 1: xfcc from 10.0.0.0/8, then the connection; 2: client-cert from
    /// 10.0.0.0/8, forwarding the hash.
    sources: u8,
    /// Run as in NGINX.
    nginx: bool,
    ops: Vec<Op>,
}

fn body_bytes(body: Body) -> Vec<u8> {
    let k = keys();
    let signer = |by: u8| {
        if by.is_multiple_of(2) {
            &k.ed25519
        } else {
            &k.es256
        }
    };
    let header = |by: u8| {
        let (alg, kid) = if by.is_multiple_of(2) {
            ("EdDSA", "o1")
        } else {
            ("ES256", "e1")
        };
        serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string()
    };
    match body {
        Body::Members(json) => {
            let mut v = json.0;
            if v.get("active").is_none() {
                v["active"] = serde_json::json!(true);
            }
            v.to_string().into_bytes()
        }
        Body::Signed { by, header, claims } => signer(by)
            .sign(
                header.0.to_string().as_bytes(),
                claims.0.to_string().as_bytes(),
            )
            .into_bytes(),
        Body::Phantom { by, cert, scope } => {
            // Eight phantoms in all, signed once: signing on every step made this target a
            // signature benchmark (1 500 executions a second).
            static PHANTOMS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
            let all = PHANTOMS.get_or_init(|| {
                (0..8u8)
                    .map(|i| {
                        let (by, cert, scope) = (i & 1, (i >> 1) & 1, i & 4 != 0);
                        let claims = serde_json::json!({
                            "iss": certbound_fuzz::ISSUER, "aud": "api.example.com", "iat": NOW - 5,
                            "exp": NOW + 120, "client_id": "partner", "sub": "s",
                            "scope": if scope { "transactions" } else { "read" },
                            "cnf": {"x5t#S256": certs()[usize::from(cert)].to_x5t()},
                        });
                        signer(by)
                            .sign(header(by).as_bytes(), claims.to_string().as_bytes())
                            .into_bytes()
                    })
                    .collect()
            });
            let i = (by & 1) | ((cert & 1) << 1) | (u8::from(scope) << 2);
            all[usize::from(i)].clone()
        }
        Body::KeySet => {
            let jwks: Vec<_> = [k.es256.jwk("e1"), k.ed25519.jwk("o1")].into();
            serde_json::json!({ "keys": jwks }).to_string().into_bytes()
        }
        Body::Bytes(b) => b,
    }
}

fuzz_target!(|input: Input| {
    let mut config = certbound_fuzz::config_json(input.format);
    let sources = input.sources % 3;
    let hop = serde_json::json!({"cidrs": ["10.0.0.0/8"]});
    match sources {
        1 => {
            config["client_certificate"] =
                serde_json::json!({"sources": ["xfcc", "connection"], "trusted_hop": hop})
        }
        2 => {
            config["client_certificate"] = serde_json::json!({"sources": ["client-cert"],
                "trusted_hop": hop, "forward_xfcc_hash": true})
        }
        _ => {}
    }
    let mut proxy = Proxy::new_in(input.nginx, &config, NOW);
    // (context, had a certificate: its own or one a trusted hop could have sent, path)
    let mut requests: Vec<(u32, bool, String)> = Vec::new();
    let pick = |requests: &Vec<(u32, bool, String)>, which: u8| {
        (!requests.is_empty()).then(|| requests[usize::from(which) % requests.len()].0)
    };
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Request {
                method,
                path,
                raw_path,
                auth,
                cert,
                headers,
                xfcc,
                trusted,
            } => {
                let path =
                    raw_path.unwrap_or_else(|| PATHS[usize::from(path) % PATHS.len()].to_string());
                let mut h: Vec<(String, String)> = vec![
                    (
                        ":method".into(),
                        METHODS[usize::from(method) % METHODS.len()].into(),
                    ),
                    (":path".into(), path.clone()),
                ];
                let token = |i: u8| format!("Bearer {}", TOKENS[usize::from(i) % TOKENS.len()]);
                match auth {
                    Auth::Token(i) => h.push(("authorization".into(), token(i))),
                    Auth::Raw(s) => h.push(("authorization".into(), s)),
                    Auth::None => {}
                    Auth::Twice(a, b) => {
                        h.push(("authorization".into(), token(a)));
                        h.push(("authorization".into(), token(b)));
                    }
                }
                for (name, value) in headers.into_iter().take(8) {
                    h.push((
                        HEADER_NAMES[usize::from(name) % HEADER_NAMES.len()].into(),
                        value,
                    ));
                }
                if let Some(x) = xfcc {
                    let t = certs()[usize::from(x % 2)];
                    h.push((
                        "x-forwarded-client-cert".into(),
                        format!("Hash={}", t.to_hex()),
                    ));
                }
                let refs: Vec<(&str, &str)> =
                    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let cert_index = cert.map(|c| usize::from(c % 2));
                let cert = cert_index.map(|c| certs()[c]);
                let digest = cert.map(|t| t.to_hex());
                let address: &[u8] = if trusted {
                    b"10.0.0.1:5000"
                } else {
                    b"192.0.2.1:5000"
                };
                let mut properties: Vec<(&str, &[u8])> = vec![("source.address", address)];
                // NGINX: one connection per certificate (or none), its PEM, the path as sent.
                let connection = [b"1", b"2", b"3"][cert_index.unwrap_or(2)];
                if input.nginx {
                    properties.push(("id", connection));
                    properties.push(("ngx.request_uri", path.as_bytes()));
                    if let Some(c) = cert_index {
                        properties.push(("ngx.ssl_client_verify", b"SUCCESS"));
                        properties.push(("ngx.ssl_client_raw_cert", PEMS[c].as_bytes()));
                    }
                } else if let Some(d) = &digest {
                    properties.push(("sha256_peer_certificate_digest", d.as_bytes()));
                }
                let id = proxy.request_on(&refs, &properties);
                // From the trusted hop, a certificate header may carry the certificate.
                let from_hop = trusted
                    && sources != 0
                    && refs
                        .iter()
                        .any(|(k, _)| *k == "x-forwarded-client-cert" || *k == "client-cert");
                requests.push((id, cert.is_some() || from_hop, path));
            }
            Op::Answer {
                which,
                status,
                max_age,
                body,
            } => {
                if let Some(ctx) = pick(&requests, which) {
                    let cache = max_age.map(|a| format!("max-age={a}"));
                    let headers: Vec<(&str, &str)> = cache
                        .iter()
                        .map(|c| ("cache-control", c.as_str()))
                        .collect();
                    proxy.answer(ctx, status % 600, &headers, &body_bytes(body));
                }
            }
            Op::Fail(which) => {
                if let Some(ctx) = pick(&requests, which) {
                    proxy.fail_call(ctx);
                }
            }
            Op::Gone(which) => {
                if let Some(ctx) = pick(&requests, which) {
                    proxy.gone(ctx);
                }
            }
            Op::Chunk { which, data, last } => {
                if let Some(ctx) = pick(&requests, which) {
                    proxy.body(ctx, &data, last);
                }
            }
            Op::Trailers(which) => {
                if let Some(ctx) = pick(&requests, which) {
                    proxy.trailers(ctx);
                }
            }
            Op::Advance(seconds) => proxy.advance(u64::from(seconds)),
        }
        // Read in place (Proxy::fate clones the headers: after every step of 64, for every
        // request, that was most of this target's time).
        let host = proxy.host.0.borrow();
        for (ctx, had_cert, path) in &requests {
            let Some(stream) = host.streams.get(ctx) else {
                continue;
            };
            assert!(
                stream.replies.len() <= usize::from(!stream.forwarded),
                "request {ctx} was both forwarded and answered, or answered twice"
            );
            if stream.forwarded {
                assert!(
                    *had_cert || path.to_ascii_lowercase().starts_with("/public"),
                    "forwarded without a certificate: {path}"
                );
                // No certificate header reaches the upstream (none of these configurations
                // forwards one), but the hash certbound sets itself.
                for (name, value) in &stream.headers {
                    let n = name.to_ascii_lowercase().replace('_', "-");
                    let own_hash = sources == 2
                        && name == "x-forwarded-client-cert"
                        && value.len() == 69
                        && value.starts_with("Hash=");
                    assert!(
                        !matches!(
                            n.as_str(),
                            "x-forwarded-client-cert" | "client-cert" | "client-cert-chain"
                        ) || own_hash,
                        "a certificate header reached the upstream: {name}: {value}"
                    );
                }
                // A claim header reaches it once at most, in certbound's own spelling.
                for claim in ["x-client-id", "x-sub"] {
                    let copies: Vec<&String> = stream
                        .headers
                        .iter()
                        .filter(|(k, _)| k.to_ascii_lowercase().replace('_', "-") == claim)
                        .map(|(k, _)| k)
                        .collect();
                    assert!(
                        copies.len() <= 1 && copies.iter().all(|k| *k == claim),
                        "the client's {claim} reached the upstream: {copies:?}"
                    );
                }
            }
        }
    }
});

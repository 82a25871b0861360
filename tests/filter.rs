//! Integration tests of the certbound filter inside a real Envoy, one Envoy per test; the
//! contract they check is docs/config.md (statuses, `WWW-Authenticate`, bodies, metrics, headers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// One test's world. Field order is drop order: Envoy goes first.
struct Fixture {
    envoy: Envoy,
    idp: Introspection,
    upstream: Upstream,
}

impl Fixture {
    fn new(format: Format) -> Fixture {
        Fixture::with(format, |_| {})
    }

    /// Starts the servers and Envoy with `filter_config(format)` changed by `tweak`.
    fn with(format: Format, tweak: impl FnOnce(&mut Value)) -> Fixture {
        Fixture::with_opts(format, tweak, |_| {})
    }

    /// Same, also changing the Envoy options.
    fn with_opts(
        format: Format,
        tweak: impl FnOnce(&mut Value),
        tweak_opts: impl FnOnce(&mut EnvoyOpts),
    ) -> Fixture {
        let upstream = Upstream::start();
        let idp = Introspection::start(format);
        let mut config = filter_config(format);
        tweak(&mut config);
        let mut opts = EnvoyOpts::new(config, idp.port(), upstream.port());
        tweak_opts(&mut opts);
        let envoy = Envoy::start(&opts).unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            envoy,
            idp,
            upstream,
        }
    }

    /// Fails if Envoy's log (the filter logs at debug) contains any of `secrets`.
    fn assert_log_has_none_of(&self, secrets: &[&str]) {
        let log = self.envoy.log();
        for secret in secrets {
            assert!(
                !log.contains(secret),
                "the Envoy log contains a secret ({} chars):\n{log}",
                secret.len()
            );
        }
    }

    /// GET `path` as `cert` with `Authorization: Bearer <token>`.
    fn get(&self, cert: &str, path: &str, token: Option<&str>) -> common::Reply {
        get(&self.envoy.client(cert), &self.envoy, path, token)
    }

    fn counter(&self, name: &str) -> u64 {
        self.envoy.counter(name)
    }

    /// Registers a fresh token bound to `cert` with `scope`.
    fn bound_token(&self, cert: &str, scope: &str) -> String {
        let token = opaque_token("bound");
        self.idp.register(
            &token,
            Behaviour::Active(bound_claims(&thumbprint(cert), scope)),
        );
        token
    }
}

const CLIENT: &str = "example.client";
const CLIENT2: &str = "example.client2";
const SCOPES: &str = "transactions read";

fn assert_www_authenticate_contains(reply: &common::Reply, needle: &str) {
    let value = reply
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate in {reply:?}"));
    assert!(
        value.contains(needle),
        "WWW-Authenticate {value:?} lacks {needle:?}"
    );
    assert!(
        value.starts_with("Bearer "),
        "WWW-Authenticate {value:?} is not a Bearer challenge"
    );
    assert!(
        value.contains(r#"realm="certbound""#),
        "WWW-Authenticate {value:?} lacks the realm"
    );
}

fn assert_invalid_token(reply: &common::Reply) {
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_www_authenticate_contains(reply, r#"error="invalid_token""#);
    assert_eq!(reply.json()["error"], "invalid_token", "{reply:?}");
}

// ---------------------------------------------------------------------------------------------
// The harness itself (no filter): if these fail, the filter tests below say nothing.

#[test]
fn harness_routes_mtls_to_upstream_without_filter() {
    let upstream = Upstream::start();
    let idp = Introspection::start(Format::Json);
    let envoy = Envoy::start(&EnvoyOpts::without_filter(idp.port(), upstream.port()))
        .unwrap_or_else(|e| panic!("{e}"));
    let client = envoy.client(CLIENT);
    let reply = send(
        client
            .get(envoy.url("/hello?x=1"))
            .header("authorization", "Bearer abc")
            .header("x-probe", "one"),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), json!({"ok": true}));
    // Keep-alive: a second request on the same client.
    assert_eq!(get(&client, &envoy, "/again", None).status, 200);
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/hello?x=1");
    assert_eq!(requests[0].header_all("authorization"), ["Bearer abc"]);
    assert_eq!(requests[0].header("x-probe"), Some("one"));
    let stats = stats_matching(envoy.admin_port, r"^cluster\.upstream\.upstream_rq_total$");
    assert_eq!(counter(&stats, "upstream_rq_total"), 2, "{stats:?}");
    assert_eq!(counter(&envoy.stats(), "certbound.requests_allowed"), 0);
}

#[test]
fn harness_rejects_tls_without_trusted_client_certificate() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(&EnvoyOpts::without_filter(free_port(), upstream.port()))
        .unwrap_or_else(|e| panic!("{e}"));
    for cert in [None, Some("untrusted.client"), Some("example.selfsigned")] {
        let client = common::client(envoy.listener_port, cert);
        let result = client.get(envoy.url("/hello")).send();
        assert!(result.is_err(), "{cert:?} got through: {result:?}");
    }
    assert_eq!(upstream.count(), 0);
}

#[test]
fn harness_thumbprint_matches_openssl() {
    let pem = certs_dir().join(format!("{CLIENT}.pem"));
    let Ok(out) = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -outform DER | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '=\\n'",
            pem.display()
        ))
        .output()
    else {
        eprintln!("no sh/openssl; skipped");
        return;
    };
    let expected = String::from_utf8(out.stdout).unwrap();
    assert_eq!(expected.len(), 43, "openssl output {expected:?}");
    assert_eq!(thumbprint_of(&pem), expected);
    assert_ne!(thumbprint(CLIENT), thumbprint(CLIENT2));
}

#[test]
fn harness_introspection_server_speaks_each_format() {
    use jwt_simple::prelude::*;
    let http = common::plain_client(std::time::Duration::from_secs(10));
    let key = introspection::signing_key().public_key();
    for format in Format::ALL {
        let idp = Introspection::start(format);
        let token = opaque_token("probe");
        idp.register(
            &token,
            Behaviour::Active(bound_claims("tp", "transactions")),
        );
        idp.set_max_age(Some(42));
        let url = format!("http://127.0.0.1:{}/introspect", idp.port());
        let introspect = |secret: &str, token: &str| {
            send(
                http.post(&url)
                    .basic_auth(CLIENT_ID, Some(secret))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("token={token}&token_type_hint=access_token")),
            )
        };
        assert_eq!(introspect("wrong", &token).status, 401);
        let reply = introspect(CLIENT_SECRET, &token);
        assert_eq!(reply.status, 200, "{format:?}");
        assert_eq!(reply.header("cache-control"), Some("max-age=42"));
        assert_eq!(idp.answered(&token).as_deref(), Some(reply.body.as_str()));
        let active = match format {
            Format::Json => reply.json(),
            Format::Jwt => {
                let claims = key.verify_token::<Value>(&reply.body, None).unwrap();
                assert_eq!(claims.issuer.as_deref(), Some(ISSUER));
                claims.custom
            }
            Format::IntrospectionJwt => {
                let meta = Token::decode_metadata(&reply.body).unwrap();
                assert_eq!(meta.signature_type(), Some("token-introspection+jwt"));
                let opts = VerificationOptions {
                    allowed_audiences: Some(HashSet::from_strings(&[CLIENT_ID])),
                    ..Default::default()
                };
                let claims = key.verify_token::<Value>(&reply.body, Some(opts)).unwrap();
                claims.custom["token_introspection"].clone()
            }
        };
        assert_eq!(active["cnf"]["x5t#S256"], "tp", "{format:?}: {active}");
        if format != Format::Jwt {
            assert_eq!(active["active"], true);
        }
        let inactive = introspect(CLIENT_SECRET, "unknown");
        assert_eq!(
            inactive.status,
            if format == Format::Jwt { 204 } else { 200 }
        );
        assert_eq!(idp.calls(), 3);
        let jwks = send(http.get(format!("http://127.0.0.1:{}/jwks", idp.port()))).json();
        assert_eq!(jwks["keys"][0]["kid"], introspection::KEY_ID);
        assert_eq!(idp.jwks_fetches(), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The phantom-token flow: allow, forward the JWT, cache.

#[test]
fn jwt_bound_token_with_matching_cert_is_allowed_and_then_served_from_cache() {
    let f = Fixture::new(Format::Jwt);
    let token = f.bound_token(CLIENT, SCOPES);

    let reply = f.get(CLIENT, "/api/transactions", Some(&token));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), json!({"ok": true}));
    let jwt = f
        .idp
        .answered(&token)
        .expect("the identity server answered a JWT");
    assert_ne!(jwt, token);
    let forwarded = f.upstream.last();
    assert_eq!(
        forwarded.header_all("authorization"),
        [format!("Bearer {jwt}")]
    );
    assert_eq!(forwarded.header_all(CLIENT_ID_HEADER), [PARTNER_CLIENT_ID]);

    // The introspection request the filter made.
    let calls = f.idp.requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].token.as_deref(), Some(token.as_str()));
    assert_eq!(calls[0].request.method, "POST");
    assert_eq!(calls[0].request.path, "/introspect");
    assert_eq!(calls[0].request.header("host"), Some("introspection"));
    let accept = calls[0].request.header("accept").unwrap_or_default();
    assert!(accept.contains("application/jwt"), "Accept {accept:?}");
    assert_eq!(f.idp.jwks_fetches(), 1);

    let stats = f.envoy.stats();
    assert_eq!(
        counter(&stats, "certbound.requests_allowed"),
        1,
        "{stats:?}"
    );
    assert_eq!(
        counter(&stats, "certbound.introspection_calls"),
        1,
        "{stats:?}"
    );
    assert_eq!(counter(&stats, "certbound.cache_misses"), 1, "{stats:?}");
    assert_eq!(counter(&stats, "certbound.cache_hits"), 0, "{stats:?}");
    assert_eq!(counter(&stats, "certbound.jwks_fetches"), 1, "{stats:?}");

    let again = f.get(CLIENT, "/api/transactions", Some(&token));
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(
        f.idp.calls(),
        1,
        "a cached token must not be introspected again"
    );
    assert_eq!(f.upstream.count(), 2);
    assert_eq!(
        f.upstream.last().header_all("authorization"),
        [format!("Bearer {jwt}")]
    );
    let stats = f.envoy.stats();
    assert_eq!(counter(&stats, "certbound.cache_hits"), 1, "{stats:?}");
    assert_eq!(counter(&stats, "certbound.cache_misses"), 1, "{stats:?}");
    assert_eq!(
        counter(&stats, "certbound.requests_allowed"),
        2,
        "{stats:?}"
    );
    assert_eq!(
        counter(&stats, "certbound.introspection_calls"),
        1,
        "{stats:?}"
    );
    f.assert_log_has_none_of(&[&token, &jwt, CLIENT_SECRET]);
}

#[test]
fn answer_with_max_age_zero_is_not_cached() {
    let f = Fixture::new(Format::Jwt);
    f.idp.set_max_age(Some(0));
    let token = f.bound_token(CLIENT, SCOPES);
    for _ in 0..2 {
        let reply = f.get(CLIENT, "/api/transactions", Some(&token));
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_eq!(
        f.idp.calls(),
        2,
        "Cache-Control: max-age=0 forbids caching the answer"
    );
    assert_eq!(f.counter("certbound.cache_hits"), 0);
}

#[test]
fn jwks_is_fetched_once_for_several_tokens() {
    let f = Fixture::new(Format::Jwt);
    for _ in 0..3 {
        let token = f.bound_token(CLIENT, SCOPES);
        let reply = f.get(CLIENT, "/api/transactions", Some(&token));
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_eq!(f.idp.calls(), 3);
    assert_eq!(f.idp.jwks_fetches(), 1);
    assert_eq!(f.counter("certbound.jwks_fetches"), 1);
    assert_eq!(f.counter("certbound.cache_misses"), 3);
}

#[test]
fn positive_cache_entry_expires_after_max_ttl() {
    let f = Fixture::with(Format::Jwt, |c| c["cache"] = json!({"max_ttl_seconds": 1}));
    let token = f.bound_token(CLIENT, SCOPES);
    assert_eq!(f.get(CLIENT, "/api/transactions", Some(&token)).status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(f.get(CLIENT, "/api/transactions", Some(&token)).status, 200);
    assert_eq!(
        f.idp.calls(),
        2,
        "an entry older than max_ttl_seconds must be introspected again"
    );
    assert_eq!(f.counter("certbound.cache_misses"), 2);
}

#[test]
fn concurrent_first_requests_share_one_introspection_per_worker() {
    const WORKERS: u32 = 2;
    const REQUESTS: usize = 100;
    let f = Fixture::with_opts(
        Format::Jwt,
        |c| c["introspection"]["timeout_ms"] = json!(10_000),
        |o| o.concurrency = WORKERS,
    );
    let token = opaque_token("burst");
    let claims = bound_claims(&thumbprint(CLIENT), SCOPES);
    // Slow enough that the burst arrives while the first call of each worker is out.
    f.idp
        .register(&token, Behaviour::Slow(Duration::from_millis(1500), claims));

    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..REQUESTS)
            .map(|_| s.spawn(|| f.get(CLIENT, "/api/transactions", Some(&token)).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(f.upstream.count(), REQUESTS);
    let calls = f.idp.calls();
    assert!(
        (1..=WORKERS as usize).contains(&calls),
        "{calls} introspection calls"
    );
    let stats = f.envoy.stats();
    assert_eq!(
        counter(&stats, "certbound.requests_allowed"),
        REQUESTS as u64
    );
    assert_eq!(
        counter(&stats, "certbound.introspection_calls"),
        calls as u64
    );
    // Requests that missed but made no call waited for another request's answer.
    assert!(
        counter(&stats, "certbound.cache_misses") > calls as u64,
        "{stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Certificate binding.

#[test]
fn request_without_client_certificate_is_401_when_tls_lets_it_through() {
    let f = Fixture::with_opts(
        Format::Jwt,
        |_| {},
        |o| o.require_client_certificate = false,
    );
    let token = f.bound_token(CLIENT, SCOPES);
    let reply = get(
        &f.envoy.client_without_cert(),
        &f.envoy,
        "/api/transactions",
        Some(&token),
    );
    assert_invalid_token(&reply);
    assert_eq!(f.upstream.count(), 0);
    assert_eq!(
        f.counter("certbound.requests_denied.no_client_certificate"),
        1
    );
    // Binding is required here: refused before any call to the identity server (issue 11, item 1).
    assert_eq!(f.idp.calls(), 0, "no call for a request refused anyway");
    // The same listener still serves the certificate's holder.
    assert_eq!(f.get(CLIENT, "/api/transactions", Some(&token)).status, 200);
}

#[test]
fn bound_token_presented_with_another_certificate_is_rejected() {
    let f = Fixture::new(Format::Jwt);
    let token = f.bound_token(CLIENT, SCOPES);
    let reply = f.get(CLIENT2, "/api/transactions", Some(&token));
    assert_invalid_token(&reply);
    assert_eq!(f.upstream.count(), 0);
    assert_eq!(
        f.counter("certbound.requests_denied.certificate_mismatch"),
        1
    );
    assert_eq!(f.counter("certbound.requests_allowed"), 0);
}

#[test]
fn cached_bound_token_presented_with_another_certificate_is_rejected() {
    let f = Fixture::new(Format::Jwt);
    let token = f.bound_token(CLIENT, SCOPES);
    assert_eq!(f.get(CLIENT, "/api/transactions", Some(&token)).status, 200);

    let reply = f.get(CLIENT2, "/api/transactions", Some(&token));
    assert_invalid_token(&reply);
    assert_eq!(
        f.upstream.count(),
        1,
        "the stolen-token request must not reach the upstream"
    );
    assert_eq!(
        f.idp.calls(),
        1,
        "the second request is decided from the cache"
    );
    assert_eq!(
        f.counter("certbound.requests_denied.certificate_mismatch"),
        1
    );
    assert_eq!(f.counter("certbound.cache_hits"), 1);

    // The mismatch did not spoil the entry for its rightful holder.
    assert_eq!(f.get(CLIENT, "/api/transactions", Some(&token)).status, 200);
    assert_eq!(f.upstream.count(), 2);
    assert_eq!(f.counter("certbound.requests_allowed"), 2);
}

// ---------------------------------------------------------------------------------------------
// 3. Inactive tokens, negatively cached, in each format.

fn inactive_token_is_rejected_and_negatively_cached(format: Format) {
    let f = Fixture::new(format);
    let token = opaque_token("inactive");
    f.idp.register(&token, Behaviour::Inactive);
    for attempt in 1..=2u64 {
        let reply = f.get(CLIENT, "/api/transactions", Some(&token));
        assert_invalid_token(&reply);
        assert_eq!(
            f.counter("certbound.requests_denied.inactive_token"),
            attempt
        );
    }
    assert_eq!(
        f.idp.calls(),
        1,
        "{format:?}: an inactive answer must be cached"
    );
    assert_eq!(f.upstream.count(), 0);
    assert_eq!(f.counter("certbound.introspection_calls"), 1);
    assert_eq!(f.counter("certbound.introspection_failures"), 0);
}

#[test]
fn inactive_token_is_rejected_and_negatively_cached_json() {
    inactive_token_is_rejected_and_negatively_cached(Format::Json);
}

#[test]
fn inactive_token_is_rejected_and_negatively_cached_jwt() {
    inactive_token_is_rejected_and_negatively_cached(Format::Jwt);
}

#[test]
fn inactive_token_is_rejected_and_negatively_cached_introspection_jwt() {
    inactive_token_is_rejected_and_negatively_cached(Format::IntrospectionJwt);
}

#[test]
fn negative_cache_entry_expires_after_negative_ttl() {
    let f = Fixture::with(Format::Json, |c| {
        c["cache"] = json!({"negative_ttl_seconds": 1})
    });
    let token = opaque_token("inactive");
    assert_invalid_token(&f.get(CLIENT, "/api/transactions", Some(&token)));
    std::thread::sleep(Duration::from_millis(2500));
    // Meanwhile the token became active (say, the identity server had been lagging).
    f.idp.register(
        &token,
        Behaviour::Active(bound_claims(&thumbprint(CLIENT), SCOPES)),
    );
    let reply = f.get(CLIENT, "/api/transactions", Some(&token));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(f.idp.calls(), 2);
}

// ---------------------------------------------------------------------------------------------
// 4. What the upstream receives in the other formats.

#[test]
fn json_format_forwards_the_original_token_and_claim_headers() {
    let f = Fixture::with(Format::Json, |c| {
        c["claim_headers"] = json!({
            "client_id": CLIENT_ID_HEADER,
            "sub": "x-certbound-subject",
            "cnf": "x-certbound-cnf"
        });
    });
    let token = f.bound_token(CLIENT, SCOPES);
    let reply = f.get(CLIENT, "/api/transactions", Some(&token));
    assert_eq!(reply.status, 200, "{reply:?}");
    let forwarded = f.upstream.last();
    assert_eq!(
        forwarded.header_all("authorization"),
        [format!("Bearer {token}")]
    );
    assert_eq!(forwarded.header_all(CLIENT_ID_HEADER), [PARTNER_CLIENT_ID]);
    assert_eq!(
        forwarded.header_all("x-certbound-subject"),
        ["partner-user"]
    );
    // A non-string claim is forwarded as JSON.
    let cnf: Value = serde_json::from_str(forwarded.header("x-certbound-cnf").unwrap_or("null"))
        .expect("x-certbound-cnf is JSON");
    assert_eq!(cnf, json!({"x5t#S256": thumbprint(CLIENT)}));
    let accept = f.idp.requests()[0]
        .request
        .header("accept")
        .unwrap_or_default()
        .to_string();
    assert!(!accept.contains("jwt"), "json format asked for {accept:?}");
    assert_eq!(f.idp.jwks_fetches(), 0);
    assert_eq!(f.counter("certbound.requests_allowed"), 1);
}

#[test]
fn introspection_jwt_format_forwards_the_introspection_jwt() {
    let f = Fixture::new(Format::IntrospectionJwt);
    let token = f.bound_token(CLIENT, SCOPES);
    let reply = f.get(CLIENT, "/api/transactions", Some(&token));
    assert_eq!(reply.status, 200, "{reply:?}");
    let jwt = f.idp.answered(&token).expect("answered");
    let forwarded = f.upstream.last();
    assert_eq!(
        forwarded.header_all("authorization"),
        [format!("Bearer {jwt}")]
    );
    assert_eq!(forwarded.header_all(CLIENT_ID_HEADER), [PARTNER_CLIENT_ID]);
    let accept = f.idp.requests()[0]
        .request
        .header("accept")
        .unwrap_or_default()
        .to_string();
    assert!(
        accept.contains("application/token-introspection+jwt"),
        "Accept {accept:?}"
    );
    assert_eq!(f.counter("certbound.requests_allowed"), 1);
    assert_eq!(f.counter("certbound.jwks_fetches"), 1);
}

// ---------------------------------------------------------------------------------------------
// 5. Introspection failures: fail closed, 503 / 502, never cached.

struct Failure {
    status: u16,
    error: &'static str,
    metric: &'static str,
}

const UNAVAILABLE: Failure = Failure {
    status: 503,
    error: "temporarily_unavailable",
    metric: "certbound.requests_denied.introspection_unavailable",
};
const BAD_RESPONSE: Failure = Failure {
    status: 502,
    error: "server_error",
    metric: "certbound.requests_denied.introspection_bad_response",
};

/// Two requests with a token whose introspection fails as `behaviour` (None: the introspection
/// cluster points at a closed port); both fail, and both try introspection again.
fn introspection_failure(
    format: Format,
    behaviour: Option<Behaviour>,
    tweak: impl FnOnce(&mut Value),
    expected: Failure,
) {
    let upstream = Upstream::start();
    let idp = Introspection::start(format);
    let mut config = filter_config(format);
    tweak(&mut config);
    let introspection_port = if behaviour.is_some() {
        idp.port()
    } else {
        free_port()
    };
    let envoy = Envoy::start(&EnvoyOpts::new(config, introspection_port, upstream.port()))
        .unwrap_or_else(|e| panic!("{e}"));
    let token = opaque_token("failing");
    idp.register(&token, behaviour.clone().unwrap_or(Behaviour::Inactive));
    let client = envoy.client(CLIENT);

    for attempt in 1..=2u64 {
        let reply = get(&client, &envoy, "/api/transactions", Some(&token));
        assert_eq!(
            reply.status, expected.status,
            "{behaviour:?} attempt {attempt}: {reply:?}"
        );
        assert_eq!(reply.json()["error"], expected.error, "{reply:?}");
        assert!(reply.header("www-authenticate").is_none(), "{reply:?}");
        let stats = envoy.stats();
        assert_eq!(
            counter(&stats, "certbound.introspection_failures"),
            attempt,
            "{stats:?}"
        );
        assert_eq!(counter(&stats, expected.metric), attempt, "{stats:?}");
        assert_eq!(
            counter(&stats, "certbound.requests_allowed"),
            0,
            "{stats:?}"
        );
        if behaviour.is_some() {
            assert_eq!(idp.calls() as u64, attempt, "a failure must not be cached");
        }
    }
    assert_eq!(upstream.count(), 0);
}

#[test]
fn introspection_connection_reset_is_503() {
    introspection_failure(Format::Jwt, Some(Behaviour::Reset), |_| {}, UNAVAILABLE);
}

#[test]
fn introspection_slower_than_timeout_is_503() {
    introspection_failure(
        Format::Jwt,
        Some(Behaviour::Hang(Duration::from_secs(3))),
        |c| c["introspection"]["timeout_ms"] = json!(500),
        UNAVAILABLE,
    );
}

#[test]
fn introspection_status_500_is_503() {
    introspection_failure(Format::Jwt, Some(Behaviour::Status500), |_| {}, UNAVAILABLE);
}

#[test]
fn introspection_rejecting_our_client_credentials_is_503() {
    let token_claims = bound_claims(&thumbprint(CLIENT), SCOPES);
    introspection_failure(
        Format::Jwt,
        Some(Behaviour::Active(token_claims)),
        |c| c["introspection"]["client_secret"] = json!("wrong-secret"),
        UNAVAILABLE,
    );
}

#[test]
fn introspection_cluster_unreachable_is_503() {
    introspection_failure(Format::Json, None, |_| {}, UNAVAILABLE);
}

#[test]
fn introspection_garbage_answer_is_502_json() {
    introspection_failure(Format::Json, Some(Behaviour::Garbage), |_| {}, BAD_RESPONSE);
}

#[test]
fn introspection_garbage_answer_is_502_jwt() {
    introspection_failure(Format::Jwt, Some(Behaviour::Garbage), |_| {}, BAD_RESPONSE);
}

#[test]
fn introspection_huge_answer_is_502() {
    introspection_failure(Format::Jwt, Some(Behaviour::Huge), |_| {}, BAD_RESPONSE);
}

#[test]
fn introspection_jwt_signed_by_unknown_key_is_502_jwt() {
    let claims = bound_claims(&thumbprint(CLIENT), SCOPES);
    introspection_failure(
        Format::Jwt,
        Some(Behaviour::SignedByOtherKey(claims)),
        |_| {},
        BAD_RESPONSE,
    );
}

#[test]
fn introspection_jwt_signed_by_unknown_key_is_502_introspection_jwt() {
    let claims = bound_claims(&thumbprint(CLIENT), SCOPES);
    introspection_failure(
        Format::IntrospectionJwt,
        Some(Behaviour::SignedByOtherKey(claims)),
        |_| {},
        BAD_RESPONSE,
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Claim headers cannot be spoofed.

#[test]
fn client_supplied_claim_headers_never_reach_the_upstream() {
    let f = Fixture::new(Format::Jwt);
    let client = f.envoy.client(CLIENT);

    let inactive = opaque_token("inactive");
    let denied = send(
        client
            .get(f.envoy.url("/api/transactions"))
            .bearer_auth(&inactive)
            .header(CLIENT_ID_HEADER, "evil"),
    );
    assert_invalid_token(&denied);
    assert_eq!(f.upstream.count(), 0, "a denied request reaches nothing");

    let token = f.bound_token(CLIENT, SCOPES);
    let allowed = send(
        client
            .get(f.envoy.url("/api/transactions"))
            .bearer_auth(&token)
            .header(CLIENT_ID_HEADER, "evil")
            .header(CLIENT_ID_HEADER, "evil-too"),
    );
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(
        f.upstream.last().header_all(CLIENT_ID_HEADER),
        [PARTNER_CLIENT_ID]
    );
}

/// HTTP/1 allows bytes above 0x7f in header values (obs-text); they are not UTF-8. Reading such a
/// header must neither crash the filter's VM (every later request would fail) nor let a
/// malformed Authorization through.
#[test]
fn header_values_that_are_not_utf8_are_handled() {
    use reqwest::header::HeaderValue;
    let f = Fixture::new(Format::Jwt);
    let client = f.envoy.client(CLIENT);
    let url = f.envoy.url("/api/transactions");
    let latin1 = || HeaderValue::from_bytes(b"caf\xe9").unwrap();
    let token = f.bound_token(CLIENT, SCOPES);

    let reply = send(
        client
            .get(&url)
            .bearer_auth(&token)
            .header("x-note", latin1()),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = send(
        client
            .get(&url)
            .bearer_auth(&token)
            .header(CLIENT_ID_HEADER, latin1()),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        f.upstream.last().header_all(CLIENT_ID_HEADER),
        [PARTNER_CLIENT_ID]
    );
    let bad_token = HeaderValue::from_bytes(b"Bearer tok\xe9n").unwrap();
    let reply = send(client.get(&url).header("authorization", bad_token));
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.json()["error"], "invalid_request", "{reply:?}");
    assert_eq!(f.upstream.count(), 2);

    // The filter still works afterwards.
    let reply = f.get(CLIENT, "/api/transactions", Some(&token));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(f.upstream.count(), 3);
}

// ---------------------------------------------------------------------------------------------
// 7. Route policy.

#[test]
fn missing_scope_is_403_insufficient_scope() {
    let f = Fixture::new(Format::Jwt);
    let token = f.bound_token(CLIENT, "other");
    let reply = f.get(CLIENT, "/api/transactions/42", Some(&token));
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_www_authenticate_contains(&reply, r#"error="insufficient_scope""#);
    assert_www_authenticate_contains(&reply, r#"scope="transactions""#);
    assert_eq!(reply.json()["error"], "insufficient_scope");
    assert_eq!(f.upstream.count(), 0);
    assert_eq!(f.counter("certbound.requests_denied.insufficient_scope"), 1);

    // The same token is fine where no scope is required.
    let elsewhere = f.get(CLIENT, "/api/accounts", Some(&token));
    assert_eq!(elsewhere.status, 200, "{elsewhere:?}");
    assert_eq!(f.upstream.count(), 1);
}

#[test]
fn client_id_not_allowed_on_route_is_401() {
    let f = Fixture::with(Format::Jwt, |c| {
        c["routes"][0]["allowed_client_ids"] = json!(["someone-else"]);
    });
    let token = f.bound_token(CLIENT, SCOPES);
    let reply = f.get(CLIENT, "/api/transactions", Some(&token));
    assert_invalid_token(&reply);
    assert_eq!(f.upstream.count(), 0);
    assert_eq!(f.counter("certbound.requests_denied.client_not_allowed"), 1);
}

#[test]
fn route_methods_select_the_policy() {
    let f = Fixture::with(Format::Jwt, |c| c["routes"][0]["methods"] = json!(["POST"]));
    let token = f.bound_token(CLIENT, "other");
    let client = f.envoy.client(CLIENT);
    let post = send(
        client
            .post(f.envoy.url("/api/transactions"))
            .bearer_auth(&token)
            .body("{}"),
    );
    assert_eq!(
        post.status, 403,
        "POST matches the route that requires the scope: {post:?}"
    );
    let get = send(
        client
            .get(f.envoy.url("/api/transactions"))
            .bearer_auth(&token),
    );
    assert_eq!(get.status, 200, "GET falls to the default policy: {get:?}");
    assert_eq!(f.upstream.count(), 1);
    assert_eq!(f.upstream.last().method, "GET");
}

// ---------------------------------------------------------------------------------------------
// 8. Request parsing (RFC 6750): decided before introspection.

#[test]
fn requests_without_a_bearer_token_get_a_bare_challenge() {
    let f = Fixture::new(Format::Jwt);
    let client = f.envoy.client(CLIENT);
    let cases = [
        (
            "no Authorization",
            client.get(f.envoy.url("/api/transactions")),
        ),
        (
            "token only in the query",
            client.get(f.envoy.url("/api/transactions?access_token=abcdef")),
        ),
        (
            "Basic scheme",
            client
                .get(f.envoy.url("/api/transactions"))
                .header("authorization", "Basic YTpi"),
        ),
    ];
    let total = cases.len() as u64;
    for (case, request) in cases {
        let reply = send(request);
        assert_eq!(reply.status, 401, "{case}: {reply:?}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some(r#"Bearer realm="certbound""#),
            "{case}"
        );
        assert_eq!(reply.json()["error"], "unauthorized", "{case}: {reply:?}");
    }
    assert_eq!(f.counter("certbound.requests_denied.missing_token"), total);
    assert_eq!(f.counter("certbound.introspection_calls"), 0);
    assert_eq!(f.idp.calls(), 0);
    assert_eq!(f.upstream.count(), 0);
}

#[test]
fn malformed_authorization_is_400_invalid_request() {
    let f = Fixture::with(Format::Jwt, |c| c["max_token_length"] = json!(100));
    let client = f.envoy.client(CLIENT);
    let url = f.envoy.url("/api/transactions");
    let cases = [
        (
            "two Authorization headers",
            client
                .get(&url)
                .header("authorization", "Bearer abc")
                .header("authorization", "Bearer def"),
        ),
        (
            "space inside the token",
            client.get(&url).header("authorization", "Bearer a b"),
        ),
        (
            "character outside b64token",
            client.get(&url).header("authorization", "Bearer t@ken"),
        ),
        (
            "token longer than max_token_length",
            client.get(&url).bearer_auth("a".repeat(101)),
        ),
    ];
    let total = cases.len() as u64;
    for (case, request) in cases {
        let reply = send(request);
        assert_eq!(reply.status, 400, "{case}: {reply:?}");
        assert_www_authenticate_contains(&reply, r#"error="invalid_request""#);
        assert_eq!(
            reply.json()["error"],
            "invalid_request",
            "{case}: {reply:?}"
        );
    }
    assert_eq!(
        f.counter("certbound.requests_denied.invalid_request"),
        total
    );
    assert_eq!(f.counter("certbound.introspection_calls"), 0);
    assert_eq!(f.idp.calls(), 0);
    assert_eq!(f.upstream.count(), 0);

    // Exactly max_token_length is accepted.
    let longest = "b".repeat(100);
    f.idp.register(
        &longest,
        Behaviour::Active(bound_claims(&thumbprint(CLIENT), SCOPES)),
    );
    let reply = f.get(CLIENT, "/api/transactions", Some(&longest));
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    // RFC 7235 section 2.1: the auth-scheme is case-insensitive.
    let f = Fixture::new(Format::Jwt);
    let token = f.bound_token(CLIENT, SCOPES);
    let client = f.envoy.client(CLIENT);
    for scheme in ["bearer", "BEARER"] {
        let reply = send(
            client
                .get(f.envoy.url("/api/transactions"))
                .header("authorization", format!("{scheme} {token}")),
        );
        assert_eq!(reply.status, 200, "{scheme}: {reply:?}");
    }
}

#[test]
fn configured_realm_is_used_in_challenges() {
    let f = Fixture::with(Format::Jwt, |c| c["realm"] = json!("partners"));
    let reply = f.get(CLIENT, "/api/transactions", None);
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="partners""#)
    );
    let inactive = f.get(CLIENT, "/api/transactions", Some("no-such-token"));
    assert_eq!(inactive.status, 401, "{inactive:?}");
    let challenge = inactive.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains(r#"realm="partners""#), "{challenge}");
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Binding required unless the policy says otherwise.

#[test]
fn token_without_cnf_is_rejected_where_binding_is_required() {
    let f = Fixture::new(Format::Jwt);
    let token = opaque_token("unbound");
    f.idp
        .register(&token, Behaviour::Active(unbound_claims(SCOPES)));
    for path in ["/api/transactions", "/api/accounts"] {
        let reply = f.get(CLIENT, path, Some(&token));
        assert_invalid_token(&reply);
    }
    assert_eq!(f.counter("certbound.requests_denied.token_not_bound"), 2);
    assert_eq!(f.upstream.count(), 0);
}

#[test]
fn token_without_cnf_is_allowed_where_binding_is_not_required() {
    let f = Fixture::with(Format::Jwt, |c| {
        c["default_policy"] = json!({"require_binding": false});
        c["routes"][0]["require_binding"] = json!(false);
    });
    let token = opaque_token("unbound");
    f.idp
        .register(&token, Behaviour::Active(unbound_claims(SCOPES)));
    for path in ["/api/transactions", "/api/accounts"] {
        let reply = f.get(CLIENT, path, Some(&token));
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
    }
    assert_eq!(f.upstream.count(), 2);
    assert_eq!(f.counter("certbound.requests_allowed"), 2);
}

// ---------------------------------------------------------------------------------------------
// 10. JWT validity.

#[test]
fn expired_phantom_jwt_is_rejected() {
    let f = Fixture::new(Format::Jwt);
    let token = opaque_token("expired");
    let mut claims = bound_claims(&thumbprint(CLIENT), SCOPES);
    let now = now();
    claims["iat"] = json!(now - 7200);
    claims["exp"] = json!(now - 3600);
    f.idp.register(&token, Behaviour::Active(claims));
    let reply = f.get(CLIENT, "/api/transactions", Some(&token));
    assert_invalid_token(&reply);
    assert_eq!(f.upstream.count(), 0);
    assert_eq!(f.counter("certbound.requests_denied.inactive_token"), 1);
    assert_eq!(f.counter("certbound.requests_allowed"), 0);
}

#[test]
fn phantom_jwt_expired_within_clock_skew_is_accepted() {
    let f = Fixture::new(Format::Jwt);
    let token = opaque_token("just-expired");
    let mut claims = bound_claims(&thumbprint(CLIENT), SCOPES);
    let now = now();
    claims["iat"] = json!(now - 300);
    claims["exp"] = json!(now - 10);
    f.idp.register(&token, Behaviour::Active(claims));
    let reply = f.get(CLIENT, "/api/transactions", Some(&token));
    assert_eq!(
        reply.status, 200,
        "exp 10 s ago is within the default 60 s skew: {reply:?}"
    );
}

type ClaimsChange = fn(&mut Value);

#[test]
fn phantom_jwt_failing_verification_is_502() {
    let f = Fixture::new(Format::Jwt);
    let cases: [(&str, ClaimsChange); 3] = [
        ("another issuer", |c| c["iss"] = json!("https://evil.test")),
        ("another audience", |c| {
            c["aud"] = json!("other-api.example.com")
        }),
        ("no exp", |c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
    ];
    for (n, (case, change)) in cases.into_iter().enumerate() {
        let token = opaque_token("unverifiable");
        let mut claims = bound_claims(&thumbprint(CLIENT), SCOPES);
        change(&mut claims);
        f.idp.register(&token, Behaviour::Active(claims));
        let reply = f.get(CLIENT, "/api/transactions", Some(&token));
        assert_eq!(reply.status, 502, "{case}: {reply:?}");
        assert_eq!(reply.json()["error"], "server_error", "{case}");
        let denied = f.counter("certbound.requests_denied.introspection_bad_response");
        assert_eq!(denied, n as u64 + 1, "{case}");
    }
    assert_eq!(f.upstream.count(), 0);
}

#[test]
fn phantom_jwt_not_yet_valid_is_rejected() {
    let f = Fixture::new(Format::Jwt);
    let token = opaque_token("future");
    let mut claims = bound_claims(&thumbprint(CLIENT), SCOPES);
    claims["nbf"] = json!(now() + 3600);
    f.idp.register(&token, Behaviour::Active(claims));
    assert_invalid_token(&f.get(CLIENT, "/api/transactions", Some(&token)));
    assert_eq!(f.upstream.count(), 0);
}

// ---------------------------------------------------------------------------------------------
// 11. mTLS is a precondition.

#[test]
fn client_without_certificate_cannot_complete_tls() {
    let f = Fixture::new(Format::Jwt);
    let token = f.bound_token(CLIENT, SCOPES);
    let result = f
        .envoy
        .client_without_cert()
        .get(f.envoy.url("/api/transactions"))
        .bearer_auth(&token)
        .send();
    assert!(
        result.is_err(),
        "a client without certificate got {result:?}"
    );
    assert_eq!(f.upstream.count(), 0);
    assert_eq!(f.idp.calls(), 0);
}

// ---------------------------------------------------------------------------------------------
// 12. Bad configuration.

/// Envoy 1.40 runs the plugin's `on_configure` while loading its bootstrap; a plugin that
/// refuses its configuration (with `fail_open: false`) makes Envoy exit with
/// "Unable to create Wasm plugin certbound". The filter's own log line must name the field.
fn bad_config_is_refused(tweak: impl FnOnce(&mut Value), field: &str) {
    let upstream = Upstream::start();
    let idp = Introspection::start(Format::Jwt);
    let mut config = filter_config(Format::Jwt);
    tweak(&mut config);
    match Envoy::start(&EnvoyOpts::new(config, idp.port(), upstream.port())) {
        Err(e) => {
            assert!(
                e.log.contains("Unable to create Wasm plugin certbound"),
                "{e}"
            );
            let named = e
                .log
                .lines()
                .any(|l| l.contains("wasm log certbound") && l.contains(field));
            assert!(named, "no filter log line names {field:?}:\n{e}");
            assert!(
                !e.log.contains(CLIENT_SECRET),
                "the log shows the client secret:\n{e}"
            );
        }
        Ok(envoy) => {
            let reply = get(
                &envoy.client(CLIENT),
                &envoy,
                "/api/transactions",
                Some("abc"),
            );
            panic!("Envoy started with a bad configuration ({field}); a request got {reply:?}");
        }
    }
    assert_eq!(upstream.count(), 0);
}

#[test]
fn the_client_secret_can_come_from_the_vm_environment() {
    let f = Fixture::with_opts(
        Format::Json,
        |c| {
            let i = c["introspection"].as_object_mut().unwrap();
            i.remove("client_secret");
            i.insert(
                "client_secret_env".into(),
                json!("CERTBOUND_INTROSPECT_SECRET"),
            );
        },
        |o| o.vm_env = vec![("CERTBOUND_INTROSPECT_SECRET".into(), CLIENT_SECRET.into())],
    );
    let token = f.bound_token(CLIENT, SCOPES);
    let reply = f.get(CLIENT, "/api/transactions", Some(&token));
    assert_eq!(reply.status, 200, "{reply:?}");
    // The identity server checks the credentials: the secret reached it from the environment.
    assert_eq!(f.idp.calls(), 1);
    f.assert_log_has_none_of(&[&token, CLIENT_SECRET]);
}

#[test]
fn with_tls_client_auth_the_introspection_names_the_client_and_sends_no_secret() {
    let f = Fixture::with(Format::Json, |c| {
        let i = c["introspection"].as_object_mut().unwrap();
        i.remove("client_secret");
        i.insert("client_auth".into(), json!("tls_client_auth"));
    });
    f.idp.expect_tls_client_auth(CLIENT_ID);
    let token = f.bound_token(CLIENT, SCOPES);
    let reply = f.get(CLIENT, "/api/transactions", Some(&token));
    assert_eq!(reply.status, 200, "{reply:?}");
    let calls = f.idp.requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].request.header("authorization"), None);
    assert_eq!(
        common::http::form_field(&calls[0].request.body, "client_id").as_deref(),
        Some(CLIENT_ID)
    );
}

#[test]
fn a_client_secret_variable_the_vm_does_not_have_is_refused() {
    bad_config_is_refused(
        |c| {
            let i = c["introspection"].as_object_mut().unwrap();
            i.remove("client_secret");
            i.insert("client_secret_env".into(), json!("CERTBOUND_UNSET_SECRET"));
        },
        "client_secret_env",
    );
}

#[test]
fn unknown_config_field_is_refused() {
    bad_config_is_refused(|c| c["bogus"] = json!(1), "bogus");
}

#[test]
fn unknown_introspection_format_is_refused() {
    bad_config_is_refused(|c| c["introspection"]["format"] = json!("xml"), "format");
}

#[test]
fn zero_introspection_timeout_is_refused() {
    bad_config_is_refused(
        |c| c["introspection"]["timeout_ms"] = json!(0),
        "timeout_ms",
    );
}

// ---------------------------------------------------------------------------------------------
// Faults of the identity server after its answer has started (issue 11, item 0).

/// Two requests with one token while `fault` breaks their call: both get 503 without hanging,
/// nothing reaches the upstream, no panic kills a VM, and afterwards requests with new tokens on
/// both workers are allowed again.
fn a_broken_answer_is_503_and_the_filter_lives(
    format: Format,
    fault: impl FnOnce(&Fixture, &str),
    heal: impl FnOnce(&Fixture),
) {
    let f = Fixture::with_opts(
        format,
        |c| {
            c["introspection"]["timeout_ms"] = json!(1000);
            if c.get("jwt").is_some() {
                c["jwt"]["jwks"]["timeout_ms"] = json!(1000);
            }
        },
        |o| o.concurrency = 2,
    );
    let token = opaque_token("fault");
    fault(&f, &token);
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| f.get(CLIENT, "/api/transactions", Some(&token)).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Not a speed goal: the defect was a 15 s hang, then a dead VM.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the fault hung the requests for {:?}",
        started.elapsed()
    );
    assert_eq!(statuses, [503, 503]);
    assert_eq!(f.upstream.count(), 0);
    heal(&f);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let token = f.bound_token(CLIENT, SCOPES);
                let f = &f;
                s.spawn(move || f.get(CLIENT, "/api/transactions", Some(&token)).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses, [200; 4], "the filter did not recover");
    let log = f.envoy.log();
    assert!(
        !log.contains("panicked") && !log.contains("Function: proxy_on"),
        "a callback failed:\n{log}"
    );
}

fn claims() -> Value {
    bound_claims(&thumbprint(CLIENT), SCOPES)
}

#[test]
fn an_introspection_answer_reset_mid_body_is_503_and_the_filter_lives() {
    a_broken_answer_is_503_and_the_filter_lives(
        Format::Jwt,
        |f, token| f.idp.register(token, Behaviour::ResetMidBody(claims())),
        |_| {},
    );
}

#[test]
fn an_introspection_answer_trickling_past_the_timeout_is_503_and_the_filter_lives() {
    a_broken_answer_is_503_and_the_filter_lives(
        Format::Json,
        |f, token| {
            let pause = Duration::from_millis(50);
            f.idp.register(token, Behaviour::Trickle(pause, claims()))
        },
        |_| {},
    );
}

#[test]
fn a_key_set_answer_reset_mid_body_is_503_and_the_filter_lives() {
    a_broken_answer_is_503_and_the_filter_lives(
        Format::Jwt,
        |f, token| {
            f.idp.register(token, Behaviour::Active(claims()));
            f.idp.fail_jwks(Some(JwksFault::ResetMidBody));
        },
        |f| {
            f.idp.fail_jwks(None);
            // A failed key set call is not retried for 5 s (KEY_SET_BACKOFF_SECONDS).
            std::thread::sleep(Duration::from_secs(6));
        },
    );
}

#[test]
fn a_key_set_answer_trickling_past_the_timeout_is_503_and_the_filter_lives() {
    a_broken_answer_is_503_and_the_filter_lives(
        Format::IntrospectionJwt,
        |f, token| {
            f.idp.register(token, Behaviour::Active(claims()));
            f.idp
                .fail_jwks(Some(JwksFault::Trickle(Duration::from_millis(50))));
        },
        |f| {
            f.idp.fail_jwks(None);
            // A failed key set call is not retried for 5 s (KEY_SET_BACKOFF_SECONDS).
            std::thread::sleep(Duration::from_secs(6));
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Requests the identity server need not see (issue 11, item 1).

#[test]
fn a_token_the_identity_server_refuses_is_401_and_asked_about_once() {
    let f = Fixture::new(Format::Json);
    let token = "e30.e30.e30";
    f.idp
        .register(token, Behaviour::Refuse("unsupported_token_type"));
    for _ in 0..3 {
        let reply = f.get(CLIENT, "/api/transactions", Some(token));
        assert_eq!(reply.status, 401, "{reply:?}");
        assert_invalid_token(&reply);
    }
    assert_eq!(f.idp.calls(), 1, "the refusal is cached");
    assert_eq!(f.upstream.count(), 0);
    assert_eq!(f.counter("certbound.introspection_failures"), 0);
}

// ---------------------------------------------------------------------------------------------
// Inputs an attacker controls (issue 11, items 2, 4, 5, 6).

#[test]
fn a_default_deny_refuses_what_no_route_allows() {
    let f = Fixture::with(Format::Json, |c| c["default_policy"] = json!("deny"));
    let token = f.bound_token(CLIENT, SCOPES);
    let reply = f.get(CLIENT, "/internal/admin", Some(&token));
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.json()["error"], "access_denied");
    assert_eq!(f.idp.calls(), 0);
    assert_eq!(f.get(CLIENT, "/api/transactions", Some(&token)).status, 200);
    assert_eq!(f.upstream.count(), 1);
}

#[test]
fn a_token_bound_to_a_key_is_refused_where_binding_is_optional() {
    let f = Fixture::with(Format::Jwt, |c| {
        c["routes"][0]["require_binding"] = json!(false);
    });
    let token = opaque_token("dpop");
    let mut claims = bound_claims(&thumbprint(CLIENT), SCOPES);
    claims["cnf"] = json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"});
    f.idp.register(&token, Behaviour::Active(claims));
    let reply = f.get(CLIENT, "/api/transactions", Some(&token));
    assert_invalid_token(&reply);
    assert_eq!(f.upstream.count(), 0);
    assert_eq!(
        f.counter("certbound.requests_denied.unverifiable_binding"),
        1
    );
}

#[test]
fn a_second_token_in_the_query_is_400() {
    let f = Fixture::new(Format::Json);
    let token = f.bound_token(CLIENT, SCOPES);
    let path = format!("/api/transactions?access_token={}", opaque_token("second"));
    let reply = f.get(CLIENT, &path, Some(&token));
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.json()["error"], "invalid_request");
    assert_eq!(f.upstream.count(), 0);
    assert_eq!(f.idp.calls(), 0);
}

#[test]
fn a_token_issued_for_another_api_is_refused_where_audiences_are_configured() {
    let f = Fixture::with(Format::Json, |c| {
        c["introspection"]["audiences"] = json!([AUDIENCE]);
    });
    let ours = f.bound_token(CLIENT, SCOPES);
    assert_eq!(f.get(CLIENT, "/api/transactions", Some(&ours)).status, 200);
    let theirs = opaque_token("billing");
    let mut claims = bound_claims(&thumbprint(CLIENT), SCOPES);
    claims["aud"] = json!("billing.example.com");
    f.idp.register(&theirs, Behaviour::Active(claims));
    let reply = f.get(CLIENT, "/api/transactions", Some(&theirs));
    assert_invalid_token(&reply);
    assert_eq!(f.upstream.count(), 1, "only our token reached the API");
}

#[test]
fn concurrent_checks_on_one_worker_share_one_key_set_call() {
    let f = Fixture::with(Format::Jwt, |c| {
        c["introspection"]["timeout_ms"] = json!(5000);
        c["jwt"]["jwks"]["timeout_ms"] = json!(5000);
    });
    f.idp
        .fail_jwks(Some(JwksFault::Slow(Duration::from_millis(800))));
    let tokens: Vec<String> = (0..8).map(|_| f.bound_token(CLIENT, SCOPES)).collect();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .iter()
            .map(|t| s.spawn(|| f.get(CLIENT, "/api/transactions", Some(t)).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses, [200; 8]);
    assert_eq!(f.idp.jwks_fetches(), 1, "one key set call for eight checks");
    assert_eq!(f.counter("certbound.jwks_fetches"), 1);
}

#[test]
fn a_second_token_in_a_form_body_never_reaches_the_api_whole() {
    let f = Fixture::new(Format::Json);
    let token = f.bound_token(CLIENT, SCOPES);
    let client = f.envoy.client(CLIENT);
    let post = |body: &'static str| {
        send(
            client
                .post(f.envoy.url("/api/transactions"))
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        )
    };
    let reply = post("amount=1&access_token=stolen-token");
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.json()["error"], "invalid_request");
    assert_eq!(f.upstream.count(), 0, "the API got no whole request");
    let reply = post("amount=1");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(f.upstream.last().body, b"amount=1");
}

// ---------------------------------------------------------------------------------------------
// Memory across reconfigurations (issue 11, item 7).

/// Envoy's heap after the cache is filled once, then reconfigured and filled again five times
/// (file-based LDS; each listener has another configuration, so another fingerprint): the slots of
/// the first fill are reused, so the five refills add less than the first fill did. With slot keys
/// that depended on the fingerprint (before issue 11) each refill added as much as the first.
#[test]
fn reconfigurations_do_not_grow_shared_data() {
    const TOKENS: usize = 300;
    const REFILLS: usize = 5;
    let upstream = Upstream::start();
    let idp = Introspection::start(Format::Jwt);
    let config = |realm: &str| {
        let mut config = filter_config(Format::Jwt);
        config["cache"] = json!({"max_entries": TOKENS});
        config["realm"] = json!(realm);
        config
    };
    let mut opts = EnvoyOpts::new(config("fill-0"), idp.port(), upstream.port());
    opts.listener_from_file = true;
    let envoy = Envoy::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    // Each entry holds the phantom JWT; 8 KiB of claims make the cache's share of the heap plain.
    let padding = "p".repeat(8 * 1024);
    let tokens: Vec<String> = (0..TOKENS)
        .map(|_| {
            let token = opaque_token("memory");
            let mut claims = bound_claims(&thumbprint(CLIENT), SCOPES);
            claims["padding"] = json!(padding);
            idp.register(&token, Behaviour::Active(claims));
            token
        })
        .collect();
    let fill = |round: usize| {
        // A new client per round: no connection keeps the previous listener's filter alive.
        let client = envoy.client(CLIENT);
        for token in &tokens {
            let reply = get(&client, &envoy, "/api/transactions", Some(token));
            assert_eq!(reply.status, 200, "round {round}: {reply:?}");
        }
        assert_eq!(
            idp.calls(),
            TOKENS * (round + 1),
            "round {round} missed every token"
        );
    };

    let before = envoy.allocated_bytes();
    fill(0);
    let first_fill = envoy.allocated_bytes().saturating_sub(before);
    assert!(
        first_fill > (TOKENS * padding.len()) as u64,
        "the first fill added only {first_fill} bytes: the measurement does not see the cache"
    );
    let after_first = envoy.allocated_bytes();
    for round in 1..=REFILLS {
        opts.filter = Some(config(&format!("fill-{round}")));
        envoy.reconfigure(&opts);
        fill(round);
    }
    let refills = envoy.allocated_bytes().saturating_sub(after_first);
    assert!(
        refills < first_fill,
        "{REFILLS} reconfigurations with a full cache added {refills} bytes, the first fill \
         {first_fill}: slots of old configurations are left behind"
    );
    assert_eq!(upstream.count(), TOKENS * (REFILLS + 1));
}

/// Stale-if-error in a real Envoy with two workers: an entry that expired moments ago decides
/// while the identity server answers 500 (binding still checked), until the bound; off, 503.
#[test]
fn an_expired_entry_is_served_stale_within_the_bound_while_the_identity_server_fails() {
    for stale in [4, 0] {
        let f = Fixture::with_opts(
            Format::Json,
            |c| c["cache"] = json!({"max_ttl_seconds": 1, "stale_if_error_seconds": stale}),
            |o| o.concurrency = 2,
        );
        let token = f.bound_token(CLIENT, SCOPES);
        assert_eq!(f.get(CLIENT, PROTECTED_PATH, Some(&token)).status, 200);
        f.idp.register(&token, Behaviour::Status500);
        std::thread::sleep(Duration::from_millis(2200));
        // A new client (and connection) per request: both workers are asked.
        for _ in 0..4 {
            let r = f.get(CLIENT, PROTECTED_PATH, Some(&token));
            let expected = if stale > 0 { 200 } else { 503 };
            assert_eq!(r.status, expected, "stale_if_error_seconds {stale}: {r:?}");
        }
        if stale == 0 {
            assert_eq!(f.counter("certbound.stale_answers"), 0);
            continue;
        }
        std::thread::sleep(Duration::from_millis(150));
        assert!(f.counter("certbound.stale_answers") >= 4);
        assert_invalid_token(&f.get(CLIENT2, PROTECTED_PATH, Some(&token)));
        // Past the bound (about 1 s of life and 4 s of staleness): 503.
        std::thread::sleep(Duration::from_millis(3500));
        assert_eq!(f.get(CLIENT, PROTECTED_PATH, Some(&token)).status, 503);
    }
}

/// The revocation feed in a real Envoy with two workers: forged events are ignored; a signed
/// event makes every worker refuse the token it names within 2 s while another token still
/// works; while the feed fails past `max_staleness_seconds` each request is introspected again,
/// and the cache decides again once the feed answers.
#[test]
fn revocation_events_reach_every_worker_and_a_stale_feed_means_introspection() {
    let f = Fixture::with_opts(
        Format::Jwt,
        |c| {
            c["revocation"] =
                json!({"path": "/events", "poll_interval_ms": 200, "max_staleness_seconds": 2})
        },
        |o| o.concurrency = 2,
    );
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    };
    wait_for("the feed is polled", &|| {
        f.counter("certbound.revocation_polls") >= 2
    });
    let revoked = f.bound_token(CLIENT, SCOPES);
    let kept = f.bound_token(CLIENT, SCOPES);
    // A new client (and connection) per request: both workers are asked.
    let statuses = |token: &str| -> Vec<u16> {
        (0..6)
            .map(|_| f.get(CLIENT, PROTECTED_PATH, Some(token)).status)
            .collect()
    };
    assert_eq!(statuses(&revoked), vec![200; 6]);
    assert_eq!(statuses(&kept), vec![200; 6]);
    let calls = f.idp.calls();
    assert_eq!(calls, 2, "then served from the cache");

    // Forged: signed by a key the key set lacks (same kid), and unsigned.
    use base64::Engine;
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let genuine = revocation_set(common::introspection::signing_key(), &revoked);
    let payload = genuine.split('.').nth(1).unwrap().to_string();
    f.idp
        .publish(revocation_set(common::introspection::other_key(), &revoked));
    f.idp.publish(format!(
        "{}.{payload}.",
        b64(r#"{"alg":"none","typ":"secevent+jwt"}"#)
    ));
    wait_for("the forged events are refused", &|| {
        f.counter("certbound.revocation_events_rejected") >= 2
    });
    assert_eq!(
        statuses(&revoked),
        vec![200; 6],
        "forged events change nothing"
    );
    assert_eq!(f.counter("certbound.revocations_applied"), 0);

    f.idp.publish(genuine);
    let took = wait_for("the revoked token is refused", &|| {
        statuses(&revoked) == vec![401; 6]
    });
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(statuses(&kept), vec![200; 6]);
    assert_eq!(f.idp.calls(), calls, "refused without introspection");
    assert_eq!(f.counter("certbound.revocations_applied"), 1);

    // The feed fails: within the staleness bound the cache decides, past it every request is
    // introspected (and allowed: the identity server still answers introspection).
    f.idp.feed_down(true);
    std::thread::sleep(Duration::from_millis(2600));
    assert_eq!(statuses(&kept), vec![200; 6]);
    assert_eq!(f.idp.calls(), calls + 6, "each request was introspected");
    assert!(f.counter("certbound.revocation_feed_lag_ms") >= 2000);
    assert!(f.counter("certbound.revocation_poll_failures") >= 2);
    assert_eq!(
        statuses(&revoked),
        vec![401; 6],
        "re-introspected as active, still refused by the recorded event"
    );
    f.idp.feed_down(false);
    wait_for("the feed answers again", &|| {
        f.counter("certbound.revocation_feed_lag_ms") < 1000
    });
    std::thread::sleep(Duration::from_millis(200));
    let calls = f.idp.calls();
    assert_eq!(statuses(&kept), vec![200; 6]);
    assert_eq!(f.idp.calls(), calls, "the cache decides again");
}

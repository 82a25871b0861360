//! The filter's contract on both proxies, from one table: every case below runs in a real Envoy
//! (`envoy::…`) and in a real NGINX with ngx_wasm_module (`nginx::…`), with the same shipped
//! module, the same identity-server double and the same upstream. What only one proxy has (Envoy's
//! `/stats`, single-flight) is asserted where it differs, and said so. docs/nginx.md is the
//! contract for NGINX.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proxy {
    Envoy,
    Nginx,
}

enum Gateway {
    Envoy(Envoy),
    Nginx(Nginx),
}

impl Gateway {
    fn start(
        proxy: Proxy,
        filter: Value,
        idp_port: u16,
        upstream_port: u16,
    ) -> Result<Gateway, StartError> {
        Self::start_with(proxy, filter, idp_port, upstream_port, 1)
    }

    fn start_with(
        proxy: Proxy,
        filter: Value,
        idp_port: u16,
        upstream_port: u16,
        workers: u32,
    ) -> Result<Gateway, StartError> {
        match proxy {
            Proxy::Envoy => {
                let mut opts = EnvoyOpts::new(filter, idp_port, upstream_port);
                opts.concurrency = workers;
                // As the NGINX server's `ssl_verify_client optional`: the filter decides.
                opts.require_client_certificate = false;
                Envoy::start(&opts).map(Gateway::Envoy)
            }
            Proxy::Nginx => {
                let mut opts = NginxOpts::new(for_nginx(filter, idp_port), upstream_port);
                opts.workers = workers;
                Nginx::start(&opts).map(Gateway::Nginx)
            }
        }
    }

    fn url(&self, path: &str) -> String {
        match self {
            Gateway::Envoy(e) => e.url(path),
            Gateway::Nginx(n) => n.url(path),
        }
    }

    fn port(&self) -> u16 {
        match self {
            Gateway::Envoy(e) => e.listener_port,
            Gateway::Nginx(n) => n.listener_port,
        }
    }

    /// A partner's client: header names in title case on the wire (`Authorization`), as curl and
    /// browsers send them (NGINX hands them to the filter as sent).
    fn client_as(&self, cert: Option<&str>) -> reqwest::blocking::Client {
        let dir = certs_dir();
        let files = cert.map(|n| (dir.join(format!("{n}.pem")), dir.join(format!("{n}.key"))));
        let identity = files.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        mtls_client_builder(&[("api.example.com", self.port())], identity)
            .http1_title_case_headers()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTPS client")
    }

    fn client(&self, cert: &str) -> reqwest::blocking::Client {
        self.client_as(Some(cert))
    }

    fn client_without_cert(&self) -> reqwest::blocking::Client {
        self.client_as(None)
    }

    fn log(&self) -> String {
        match self {
            Gateway::Envoy(e) => e.log(),
            Gateway::Nginx(n) => n.log(),
        }
    }
}

/// One case's world. Field order is drop order: the proxy goes first.
struct World {
    gw: Gateway,
    idp: Introspection,
    upstream: Upstream,
}

const CLIENT: &str = "example.client";
const CLIENT2: &str = "example.client2";
const SCOPES: &str = "transactions read";
const PATH: &str = "/api/transactions";

impl World {
    fn new(proxy: Proxy, format: Format) -> World {
        World::with(proxy, format, |_| {})
    }

    fn with(proxy: Proxy, format: Format, tweak: impl FnOnce(&mut Value)) -> World {
        Self::with_workers(proxy, format, tweak, 1)
    }

    fn with_workers(
        proxy: Proxy,
        format: Format,
        tweak: impl FnOnce(&mut Value),
        workers: u32,
    ) -> World {
        let upstream = Upstream::start();
        let idp = Introspection::start(format);
        let mut config = filter_config(format);
        tweak(&mut config);
        let gw = Gateway::start_with(proxy, config, idp.port(), upstream.port(), workers)
            .unwrap_or_else(|e| panic!("{e}"));
        World { gw, idp, upstream }
    }

    fn bound_token(&self, cert: &str, scope: &str) -> String {
        let token = opaque_token("bound");
        let claims = bound_claims(&thumbprint(cert), scope);
        self.idp.register(&token, Behaviour::Active(claims));
        token
    }

    /// GET `path` as `cert` with `Authorization: Bearer <token>` (the header name as curl and
    /// browsers spell it: NGINX keeps the client's letter case).
    fn get(&self, cert: &str, path: &str, token: &str) -> Reply {
        self.get_with(&self.gw.client(cert), path, token, &[])
    }

    fn get_with(
        &self,
        client: &reqwest::blocking::Client,
        path: &str,
        token: &str,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut request = client
            .get(self.gw.url(path))
            .header("Authorization", format!("Bearer {token}"));
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        send(request)
    }
}

fn assert_challenge(reply: &Reply, status: u16, error: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    let challenge = reply
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate in {reply:?}"));
    assert!(
        challenge.starts_with("Bearer realm=\"certbound\""),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!("error=\"{error}\"")),
        "{challenge}"
    );
    assert_eq!(reply.json()["error"], error, "{reply:?}");
}

// ---------------------------------------------------------------------------------------------
// The table: each case takes the proxy it runs in.

/// The flow in each format: a bound token is introspected once, the API gets the claim header
/// and (JWT formats) the verified JWT, and the next request is a hit (no second call).
fn flow_in_every_format(proxy: Proxy) {
    for format in [Format::Json, Format::Jwt, Format::IntrospectionJwt] {
        let w = World::new(proxy, format);
        let token = w.bound_token(CLIENT, SCOPES);
        let first = w.get(CLIENT, PATH, &token);
        assert_eq!(first.status, 200, "{format:?}: {first:?}");
        let seen = w.upstream.last();
        assert_eq!(
            seen.header(CLIENT_ID_HEADER),
            Some(PARTNER_CLIENT_ID),
            "{format:?}"
        );
        let forwarded = seen.header("authorization").unwrap_or_default().to_string();
        match format {
            Format::Json => assert_eq!(forwarded, format!("Bearer {token}")),
            _ => assert!(
                forwarded.starts_with("Bearer ey") && !forwarded.contains(&token),
                "{format:?}: the API gets the JWT, not the opaque token: {forwarded}"
            ),
        }
        let again = w.get(CLIENT, PATH, &token);
        assert_eq!(again.status, 200, "{format:?}: {again:?}");
        assert_eq!(
            w.idp.calls(),
            1,
            "{format:?}: the second request is a cache hit"
        );
        assert_eq!(w.upstream.count(), 2);
        let log = w.gw.log();
        assert!(!log.contains(&token), "{format:?}: the log shows the token");
    }
}

/// A token used with another partner's certificate, no certificate, no token, a token in the
/// query: each refused with its RFC 6750 answer, none reaching the API.
fn the_stolen_token_and_other_refusals_never_reach_the_api(proxy: Proxy) {
    let w = World::new(proxy, Format::Json);
    let token = w.bound_token(CLIENT, SCOPES);
    assert_challenge(&w.get(CLIENT2, PATH, &token), 401, "invalid_token");
    let no_cert = w.get_with(&w.gw.client_without_cert(), PATH, &token, &[]);
    assert_challenge(&no_cert, 401, "invalid_token");
    let none = send(w.gw.client(CLIENT).get(w.gw.url(PATH)));
    assert_eq!(none.status, 401, "{none:?}");
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"certbound\"")
    );
    let query = w.get(CLIENT, &format!("{PATH}?access_token={token}"), &token);
    assert_challenge(&query, 400, "invalid_request");
    let scope = w.get(CLIENT, PATH, &w.bound_token(CLIENT, "read"));
    assert_challenge(&scope, 403, "insufficient_scope");
    // Two Authorization headers: which one an upstream reads is not certbound's to guess.
    let two = w.get_with(
        &w.gw.client(CLIENT),
        PATH,
        &token,
        &[("authorization", "Bearer x")],
    );
    // NGINX refuses a second Authorization itself, with its own 400 page.
    match proxy {
        Proxy::Envoy => assert_challenge(&two, 400, "invalid_request"),
        Proxy::Nginx => assert_eq!(two.status, 400, "{two:?}"),
    }
    assert_eq!(w.upstream.count(), 0, "a refusal reached the API");
    // The owner still gets in.
    assert_eq!(w.get(CLIENT, PATH, &token).status, 200);
}

/// Every way the identity server can fail ends in 503 (unavailable), 502 (an answer that makes
/// no sense) or 401 (its negative answers), never in a request reaching the API, and nothing of
/// a failure is cached.
fn every_identity_server_failure(proxy: Proxy) {
    let w = World::with(proxy, Format::Json, |c| {
        c["introspection"]["timeout_ms"] = json!(500)
    });
    let claims = bound_claims(&thumbprint(CLIENT), SCOPES);
    let cases: Vec<(Behaviour, u16, &str)> = vec![
        (Behaviour::Status500, 503, "temporarily_unavailable"),
        (Behaviour::Garbage, 502, "server_error"),
        (Behaviour::Huge, 502, "server_error"),
        (Behaviour::Reset, 503, "temporarily_unavailable"),
        (
            Behaviour::Hang(Duration::from_secs(3)),
            503,
            "temporarily_unavailable",
        ),
        (
            Behaviour::ResetMidBody(claims.clone()),
            503,
            "temporarily_unavailable",
        ),
        (Behaviour::Inactive, 401, "invalid_token"),
        (Behaviour::Refuse("invalid_token"), 401, "invalid_token"),
    ];
    for (behaviour, status, error) in cases {
        let token = opaque_token("failing");
        w.idp.register(&token, behaviour.clone());
        let request =
            w.gw.client(CLIENT)
                .get(w.gw.url(PATH))
                .header("Authorization", format!("Bearer {token}"));
        let reply = match (proxy, &behaviour, request.send()) {
            (_, _, Ok(r)) => reply_of(r),
            // A known ngx_wasm_module fault: after a call that failed (reset, timeout), NGINX closes the client's connection instead of sending certbound's 503
            // ("zero size buf in writer" in its log). Still a refusal (the count below).
            (
                Proxy::Nginx,
                Behaviour::Reset | Behaviour::Hang(_) | Behaviour::ResetMidBody(_),
                Err(_),
            ) => continue,
            (_, _, Err(e)) => panic!("{behaviour:?}: {e}"),
        };
        assert_eq!(reply.status, status, "{behaviour:?}: {reply:?}");
        if status == 401 {
            assert_challenge(&reply, 401, error);
        } else {
            assert_eq!(reply.json()["error"], error, "{behaviour:?}: {reply:?}");
        }
    }
    assert_eq!(w.upstream.count(), 0, "a failure reached the API");
    // Nothing failed is cached: the same token works once the server answers.
    let token = opaque_token("recovers");
    w.idp.register(&token, Behaviour::Status500);
    assert_eq!(w.get(CLIENT, PATH, &token).status, 503);
    w.idp.register(&token, Behaviour::Active(claims));
    assert_eq!(w.get(CLIENT, PATH, &token).status, 200);
}

/// No identity server at all (the target refuses connections): 503.
fn an_unreachable_identity_server_is_503(proxy: Proxy) {
    let upstream = Upstream::start();
    let closed = free_port();
    let gw = Gateway::start(proxy, filter_config(Format::Json), closed, upstream.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let reply = send(
        gw.client(CLIENT)
            .get(gw.url(PATH))
            .header("Authorization", "Bearer some-token"),
    );
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.json()["error"], "temporarily_unavailable");
    assert_eq!(upstream.count(), 0);
}

/// Many first requests with one token at once, on two workers: every one decided on its own
/// certificate. Envoy makes at most one call per worker (single-flight); NGINX, which cannot
/// resume a request from another's context, one per request that missed the cache.
fn concurrent_first_requests(proxy: Proxy) {
    const REQUESTS: usize = 40;
    let w = World::with_workers(
        proxy,
        Format::Jwt,
        |c| c["introspection"]["timeout_ms"] = json!(10_000),
        2,
    );
    let token = opaque_token("burst");
    let claims = bound_claims(&thumbprint(CLIENT), SCOPES);
    w.idp
        .register(&token, Behaviour::Slow(Duration::from_millis(800), claims));
    let statuses: Vec<(bool, u16)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..REQUESTS)
            .map(|i| {
                let w = &w;
                let token = &token;
                s.spawn(move || {
                    let stolen = i % 4 == 3;
                    let cert = if stolen { CLIENT2 } else { CLIENT };
                    (stolen, w.get(cert, PATH, token).status)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (stolen, status) in &statuses {
        assert_eq!(*status, if *stolen { 401 } else { 200 }, "{statuses:?}");
    }
    let allowed = statuses.iter().filter(|(stolen, _)| !stolen).count();
    assert_eq!(w.upstream.count(), allowed);
    let calls = w.idp.calls();
    match proxy {
        Proxy::Envoy => assert!((1..=2).contains(&calls), "{calls} calls"),
        Proxy::Nginx => assert!((1..=REQUESTS).contains(&calls), "{calls} calls"),
    }
}

/// Claim headers are the filter's: a client's own (in any letter case) never reaches the API.
/// Envoy overwrites the client's copy; NGINX, where a second copy would still reach the API,
/// refuses the request (docs/nginx.md).
fn claim_headers_from_the_client_never_pass(proxy: Proxy) {
    let w = World::new(proxy, Format::Json);
    let token = w.bound_token(CLIENT, SCOPES);
    let spoof = [
        ("X-Certbound-Client-Id", "someone-else"),
        ("x-certbound-client-id", "admin"),
    ];
    let reply = w.get_with(&w.gw.client(CLIENT), PATH, &token, &spoof);
    match proxy {
        Proxy::Envoy => {
            assert_eq!(reply.status, 200, "{reply:?}");
            let seen = w.upstream.last();
            assert_eq!(seen.header_all(CLIENT_ID_HEADER), vec![PARTNER_CLIENT_ID]);
        }
        Proxy::Nginx => {
            assert_challenge(&reply, 400, "invalid_request");
            assert_eq!(w.upstream.count(), 0);
        }
    }
    assert_eq!(w.get(CLIENT, PATH, &token).status, 200);
    assert_eq!(
        w.upstream.last().header_all(CLIENT_ID_HEADER),
        vec![PARTNER_CLIENT_ID]
    );
}

/// A configuration the filter refuses: no request is ever let through.
fn a_bad_configuration_is_refused(proxy: Proxy) {
    let upstream = Upstream::start();
    let idp = Introspection::start(Format::Json);
    let mut config = filter_config(Format::Json);
    config["introspection"]["timeout_ms"] = json!(0);
    match Gateway::start(proxy, config, idp.port(), upstream.port()) {
        Err(e) => assert!(
            e.log.contains("timeout_ms"),
            "the refusal names the field: {e}"
        ),
        Ok(gw) => {
            let log = gw.log();
            assert!(
                log.contains("invalid configuration: introspection.timeout_ms"),
                "{log}"
            );
            let reply = send(
                gw.client(CLIENT)
                    .get(gw.url(PATH))
                    .header("Authorization", "Bearer t"),
            );
            assert!(
                reply.status >= 500,
                "an unconfigured filter let a request by: {reply:?}"
            );
            assert_eq!(upstream.count(), 0);
        }
    }
}

/// NGINX only (Envoy's clusters do TLS themselves): with `"scheme": "https"` the introspection
/// call goes over TLS and the identity server's certificate is checked; one the configured CA did
/// not sign, or for another name, is refused, and the request with it.
#[test]
fn nginx_calls_the_identity_server_over_https_and_checks_its_certificate() {
    let cases = [
        ("root.pem", "login.example.com", true),
        ("untrusted-ca.pem", "login.example.com", false),
        // The certificate is for *.example.com: another name is refused.
        ("root.pem", "idsvr.internal", false),
    ];
    for (ca, authority, trusted) in cases {
        let upstream = Upstream::start();
        let idp = Introspection::start(Format::Json);
        let tls_port = free_port();
        let certs = certs_dir();
        let file = |n: &str| certs.join(n).display().to_string();
        let mut filter = filter_config(Format::Json);
        filter["introspection"]["cluster"] = json!(format!("127.0.0.1:{tls_port}"));
        filter["introspection"]["scheme"] = json!("https");
        // The name the certificate is checked against (ngx_wasm_module: the call's authority).
        filter["introspection"]["authority"] = json!(authority);
        let mut opts = NginxOpts::new(filter, upstream.port());
        opts.wasm_directives = vec![
            format!("tls_trusted_certificate {};", file(ca)),
            "tls_verify_cert on;".into(),
            "tls_verify_host on;".into(),
        ];
        // The identity server behind TLS: NGINX terminates it and passes the call on.
        opts.servers = vec![format!(
            "server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {}; ssl_certificate_key {}; \
             location / {{ proxy_pass http://127.0.0.1:{}; }} }}",
            file("example.tls.pem"),
            file("example.tls.key"),
            idp.port()
        )];
        let nginx = Nginx::start(&opts).unwrap_or_else(|e| panic!("{e}"));
        let token = opaque_token("tls");
        let claims = bound_claims(&thumbprint(CLIENT), SCOPES);
        idp.register(&token, Behaviour::Active(claims));
        let sent = nginx
            .client(CLIENT)
            .get(nginx.url(PATH))
            .header("Authorization", format!("Bearer {token}"))
            .send();
        if trusted {
            let reply = reply_of(sent.expect("an answer"));
            assert_eq!(reply.status, 200, "{reply:?}");
            assert_eq!(idp.calls(), 1);
        } else {
            // 503, or the connection closed (docs/nginx.md: a failed call); never the API.
            if let Ok(r) = sent {
                assert_eq!(r.status().as_u16(), 503, "{ca} {authority}");
            }
            assert_eq!(
                idp.calls(),
                0,
                "the call went to a server it could not verify"
            );
            assert_eq!(upstream.count(), 0);
        }
    }
}

/// The revocation feed on two workers: a forged event changes nothing, a signed one makes the
/// token refused within 2 s on new connections (either worker) without introspection, another token
/// stays allowed; a feed down past `max_staleness_seconds` means every request is introspected.
/// (The root context's calls and shared data across workers, in both proxies.)
fn revocation_reaches_every_worker(proxy: Proxy) {
    let w = World::with_workers(
        proxy,
        Format::Jwt,
        |c| {
            c["revocation"] =
                json!({"path": "/events", "poll_interval_ms": 200, "max_staleness_seconds": 2})
        },
        2,
    );
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    };
    let revoked = w.bound_token(CLIENT, SCOPES);
    let kept = w.bound_token(CLIENT, SCOPES);
    // A new client (and connection) per request: both workers are asked.
    let statuses =
        |token: &str| -> Vec<u16> { (0..6).map(|_| w.get(CLIENT, PATH, token).status).collect() };
    // Until the feed has answered, entries are not trusted: wait for the cache to decide.
    wait_for("the cache decides once the feed answered", &|| {
        let before = w.idp.calls();
        statuses(&kept);
        w.idp.calls() == before
    });
    assert_eq!(statuses(&revoked), vec![200; 6]);
    let calls = w.idp.calls();
    assert_eq!(statuses(&revoked), vec![200; 6]);
    assert_eq!(w.idp.calls(), calls, "served from the cache");

    w.idp
        .publish(revocation_set(common::introspection::other_key(), &revoked));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        statuses(&revoked),
        vec![200; 6],
        "a forged event changes nothing"
    );

    w.idp.publish(revocation_set(
        common::introspection::signing_key(),
        &revoked,
    ));
    let took = wait_for("the revoked token is refused", &|| {
        statuses(&revoked) == vec![401; 6]
    });
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(statuses(&kept), vec![200; 6]);
    assert_eq!(w.idp.calls(), calls, "refused without introspection");

    w.idp.feed_down(true);
    std::thread::sleep(Duration::from_millis(2600));
    assert_eq!(statuses(&kept), vec![200; 6]);
    assert_eq!(
        w.idp.calls(),
        calls + 6,
        "past the staleness bound each request is introspected"
    );
    assert_eq!(
        statuses(&revoked),
        vec![401; 6],
        "still refused by the recorded event"
    );
}

/// Path spellings an upstream might read differently never skip the route's policy.
fn path_spellings_do_not_skip_the_routes_policy(proxy: Proxy) {
    let w = World::new(proxy, Format::Json);
    // Bound to the client, but without the route's scope.
    let token = w.bound_token(CLIENT, "other");
    assert_eq!(
        w.get(CLIENT, "/API/transactions", &token).status,
        403,
        "case does not escape the route"
    );
    for path in [
        "//api/transactions",
        "/api//transactions",
        "/api/%74ransactions",
        "/api%2ftransactions",
        "/api;x/transactions",
    ] {
        let reply = w.get(CLIENT, path, &token);
        assert_challenge(&reply, 400, "invalid_request");
    }
    assert_eq!(
        w.get(CLIENT, "/api/transactionsX", &token).status,
        200,
        "a prefix covers whole segments"
    );
    assert_eq!(
        w.upstream.count(),
        1,
        "only /api/transactionsX reached the API"
    );
}

/// A request body waits for the decision: none of it reaches the API for a refused token, and it
/// arrives whole, behind the JWT, for an allowed one.
fn a_body_waits_for_the_decision_and_arrives_whole(proxy: Proxy) {
    let w = World::with(proxy, Format::Jwt, |c| {
        c["introspection"]["timeout_ms"] = json!(5_000)
    });
    let body: String = (0..20_000).map(|i| format!("{i},")).collect();
    let post = |cert: &str, token: &str| {
        w.gw.client(cert)
            .post(w.gw.url(PATH))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "text/csv")
            .body(body.clone())
            .send()
    };
    let rejected = opaque_token("body-inactive");
    w.idp
        .register(&rejected, Behaviour::Hang(Duration::from_millis(300)));
    match (proxy, post(CLIENT, &rejected)) {
        (_, Ok(r)) => assert_eq!(r.status().as_u16(), 401),
        // A known ngx_wasm_module fault (docs/nginx.md): a deny made in a call's answer while the
        // request's body is pending closes the connection instead of sending the 401.
        (Proxy::Nginx, Err(_)) => {}
        (Proxy::Envoy, Err(e)) => panic!("{e}"),
    }
    assert_eq!(w.upstream.count(), 0, "a rejected request reached the API");
    let allowed = opaque_token("body-active");
    let claims = bound_claims(&thumbprint(CLIENT), SCOPES);
    w.idp.register(
        &allowed,
        Behaviour::Slow(Duration::from_millis(300), claims),
    );
    assert_eq!(
        post(CLIENT, &allowed).expect("an answer").status().as_u16(),
        200
    );
    let seen = w.upstream.last();
    assert_eq!(seen.method, "POST");
    let jwt = w
        .idp
        .answered(&allowed)
        .expect("the identity server answered");
    assert_eq!(seen.header_all("authorization"), [format!("Bearer {jwt}")]);
    assert!(seen.body == body.as_bytes(), "the body changed on its way");
    // Decided from the cache: the stolen token with its body is refused at once.
    let stolen = post(CLIENT2, &allowed).expect("an answer");
    assert_eq!(stolen.status().as_u16(), 401);
    assert_eq!(w.upstream.count(), 1);
}

/// A second token in a form body (RFC 6750 2.2) is refused; the API never gets that request whole.
fn a_second_token_in_a_form_body_never_reaches_the_api_whole(proxy: Proxy) {
    let w = World::new(proxy, Format::Json);
    let token = w.bound_token(CLIENT, SCOPES);
    let post = |body: &'static str| {
        send(
            w.gw.client(CLIENT)
                .post(w.gw.url(PATH))
                .header("Authorization", format!("Bearer {token}"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body),
        )
    };
    let reply = post("amount=1&access_token=stolen-token");
    assert_eq!(
        (reply.status, reply.json()["error"].clone()),
        (400, json!("invalid_request")),
        "{reply:?}"
    );
    assert!(
        w.upstream
            .requests()
            .iter()
            .all(|r| r.body != b"amount=1&access_token=stolen-token"),
        "the API got the whole request"
    );
    let reply = post("amount=1");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(w.upstream.last().body, b"amount=1");
}

/// Other spellings of the claim and certificate headers (any letter case, `_` for `-`) never
/// reach the API; values that are not UTF-8 are handled, a token that is not is 400.
fn header_spellings_and_bytes_an_attacker_chooses(proxy: Proxy) {
    use reqwest::header::HeaderValue;
    let w = World::new(proxy, Format::Json);
    let token = w.bound_token(CLIENT, SCOPES);
    let client = w.gw.client(CLIENT);
    let reply = send(
        client
            .get(w.gw.url(PATH))
            .header("Authorization", format!("Bearer {token}"))
            .header("x_certbound_client_id", "admin")
            .header("X-Certbound_Client-Id", "admin")
            .header("Client-Cert", ":MIIBAA==:")
            .header("client-cert-chain", ":MIIBAA==:")
            .header("X-Forwarded-Client-Cert", "Hash=00;Subject=\"CN=admin\""),
    );
    let seen = match proxy {
        Proxy::Envoy => {
            assert_eq!(reply.status, 200, "{reply:?}");
            w.upstream.last()
        }
        // NGINX would forward what certbound removes: the request is refused instead.
        Proxy::Nginx => {
            assert_challenge(&reply, 400, "invalid_request");
            assert_eq!(w.upstream.count(), 0);
            let reply = w.get(CLIENT, PATH, &token);
            assert_eq!(reply.status, 200, "{reply:?}");
            w.upstream.last()
        }
    };
    for name in [
        "x_certbound_client_id",
        "x-certbound_client-id",
        "client-cert",
        "client-cert-chain",
        "x-forwarded-client-cert",
    ] {
        assert!(
            seen.header_all(name).is_empty(),
            "{name} reached the API: {seen:?}"
        );
    }
    assert_eq!(seen.header_all(CLIENT_ID_HEADER), [PARTNER_CLIENT_ID]);
    let latin1 = || HeaderValue::from_bytes(b"caf\xe9").unwrap();
    let reply = send(
        client
            .get(w.gw.url(PATH))
            .bearer_auth(&token)
            .header("x-note", latin1()),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        w.upstream.last().header_all(CLIENT_ID_HEADER),
        [PARTNER_CLIENT_ID]
    );
    let bad = HeaderValue::from_bytes(b"Bearer tok\xe9n").unwrap();
    let reply = send(client.get(w.gw.url(PATH)).header("Authorization", bad));
    assert_challenge(&reply, 400, "invalid_request");
    for value in ["Bearer a b", "Bearer t@ken", "Basic dXNlcjpwYXNz"] {
        let reply = send(client.get(w.gw.url(PATH)).header("Authorization", value));
        assert!(matches!(reply.status, 400 | 401), "{value}: {reply:?}");
    }
    // The scheme's letter case does not matter (RFC 7235).
    let reply = send(
        client
            .get(w.gw.url(PATH))
            .header("Authorization", format!("bEARER {token}")),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(w.upstream.count(), 3);
    assert_eq!(w.idp.calls(), 1, "nothing malformed was introspected");
}

/// The policy: methods select a route, a default deny refuses what no route allows (before any
/// call), a route's client allow-list, a token without `cnf` where binding is required.
fn route_policies(proxy: Proxy) {
    let w = World::with(proxy, Format::Jwt, |c| {
        c["default_policy"] = json!("deny");
        c["routes"] = json!([
            {"path_prefix": PATH, "methods": ["POST"], "required_scopes": ["transactions"]},
            {"path_prefix": PATH, "methods": ["GET"], "required_scopes": ["read"]},
            {"path_prefix": "/api/partners", "allowed_client_ids": ["someone-else"]}
        ]);
    });
    let token = w.bound_token(CLIENT, "read");
    let post = send(
        w.gw.client(CLIENT)
            .post(w.gw.url(PATH))
            .header("Authorization", format!("Bearer {token}"))
            .body("{}"),
    );
    assert_challenge(&post, 403, "insufficient_scope");
    assert_eq!(
        w.get(CLIENT, PATH, &token).status,
        200,
        "GET has its own route"
    );
    let calls = w.idp.calls();
    let reply = w.get(CLIENT, "/internal/admin", &token);
    assert_eq!(
        (reply.status, reply.json()["error"].clone()),
        (403, json!("access_denied")),
        "{reply:?}"
    );
    assert_eq!(w.idp.calls(), calls, "a default deny makes no call");
    assert_challenge(
        &w.get(CLIENT, "/api/partners", &token),
        401,
        "invalid_token",
    );
    let unbound = opaque_token("unbound");
    w.idp
        .register(&unbound, Behaviour::Active(unbound_claims("read")));
    assert_challenge(&w.get(CLIENT, PATH, &unbound), 401, "invalid_token");
    assert_eq!(w.upstream.count(), 1);
}

/// What may be cached: an inactive answer (negative TTL), not a `max-age=0` one; an entry ends
/// with `max_ttl_seconds`. Counted by the identity server's calls.
fn what_is_cached_and_for_how_long(proxy: Proxy) {
    let w = World::with(proxy, Format::Json, |c| {
        c["cache"] = json!({"max_ttl_seconds": 2, "negative_ttl_seconds": 2});
    });
    let inactive = opaque_token("inactive");
    w.idp.register(&inactive, Behaviour::Inactive);
    for _ in 0..3 {
        assert_challenge(&w.get(CLIENT, PATH, &inactive), 401, "invalid_token");
    }
    assert_eq!(w.idp.calls(), 1, "the inactive answer is cached");
    let token = w.bound_token(CLIENT, SCOPES);
    for _ in 0..3 {
        assert_eq!(w.get(CLIENT, PATH, &token).status, 200);
    }
    assert_eq!(w.idp.calls(), 2, "the active answer is cached");
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(w.get(CLIENT, PATH, &token).status, 200);
    assert_challenge(&w.get(CLIENT, PATH, &inactive), 401, "invalid_token");
    assert_eq!(w.idp.calls(), 4, "both entries ended with their TTL");
    w.idp.set_max_age(Some(0));
    let uncached = w.bound_token(CLIENT, SCOPES);
    assert_eq!(w.get(CLIENT, PATH, &uncached).status, 200);
    assert_eq!(w.get(CLIENT, PATH, &uncached).status, 200);
    assert_eq!(w.idp.calls(), 6, "max-age=0 is not cached");
}

/// Phantom JWTs that fail: expired (401), signed by a key the key set lacks (502); the key set
/// is fetched once for several tokens.
fn phantom_jwts_that_fail(proxy: Proxy) {
    let w = World::new(proxy, Format::Jwt);
    for _ in 0..3 {
        let token = w.bound_token(CLIENT, SCOPES);
        assert_eq!(w.get(CLIENT, PATH, &token).status, 200);
    }
    assert_eq!(
        w.idp.jwks_fetches(),
        1,
        "one key set fetch for several tokens"
    );
    let mut expired = bound_claims(&thumbprint(CLIENT), SCOPES);
    expired["exp"] = json!(now() - 600);
    let token = opaque_token("expired");
    w.idp.register(&token, Behaviour::Active(expired));
    assert_challenge(&w.get(CLIENT, PATH, &token), 401, "invalid_token");
    let forged = opaque_token("forged");
    w.idp.register(
        &forged,
        Behaviour::SignedByOtherKey(bound_claims(&thumbprint(CLIENT), SCOPES)),
    );
    let reply = w.get(CLIENT, PATH, &forged);
    assert_eq!(
        (reply.status, reply.json()["error"].clone()),
        (502, json!("server_error")),
        "{reply:?}"
    );
    assert_eq!(w.upstream.count(), 3);
}

/// Stale-if-error on two workers: an entry that expired moments ago decides while the identity
/// server answers 500 (binding still checked), until the bound; with it off, 503. (The upstream's
/// count tells the stale answers, as NGINX's counters cannot be read here.)
fn stale_if_error_within_its_bound(proxy: Proxy) {
    for stale in [4, 0] {
        let w = World::with_workers(
            proxy,
            Format::Json,
            |c| c["cache"] = json!({"max_ttl_seconds": 1, "stale_if_error_seconds": stale}),
            2,
        );
        let token = w.bound_token(CLIENT, SCOPES);
        assert_eq!(w.get(CLIENT, PATH, &token).status, 200);
        w.idp.register(&token, Behaviour::Status500);
        std::thread::sleep(Duration::from_millis(2200));
        // A new client (and connection) per request: both workers are asked.
        for _ in 0..4 {
            let r = w.get(CLIENT, PATH, &token);
            let expected = if stale > 0 { 200 } else { 503 };
            assert_eq!(r.status, expected, "stale_if_error_seconds {stale}: {r:?}");
        }
        if stale == 0 {
            assert_eq!(w.upstream.count(), 1);
            continue;
        }
        assert_eq!(w.upstream.count(), 5, "served stale");
        assert_challenge(&w.get(CLIENT2, PATH, &token), 401, "invalid_token");
        // Past the bound (about 1 s of life and 4 s of staleness): 503.
        std::thread::sleep(Duration::from_millis(3500));
        assert_eq!(w.get(CLIENT, PATH, &token).status, 503);
        assert_eq!(w.upstream.count(), 5);
    }
}

/// A trusted hop's `Client-Cert` (RFC 9440): believed from the hop's address only, with the
/// certificate it names bound to the token; from anyone else it is no certificate (NGINX refuses
/// the request that carries it, Envoy removes the header) and never reaches the API.
fn a_trusted_hops_client_cert(proxy: Proxy) {
    use base64::Engine;
    let w = World::with(proxy, Format::Json, |c| {
        c["client_certificate"] = json!({
            "sources": ["client-cert"],
            "trusted_hop": {"cidrs": ["127.0.0.2/32"]},
            "forward_headers": true
        })
    });
    let pem = std::fs::read_to_string(certs_dir().join(format!("{CLIENT}.pem"))).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .unwrap();
    let header = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    let token = w.bound_token(CLIENT, SCOPES);
    let from = |ip: [u8; 4]| {
        let addr = std::net::IpAddr::from(ip);
        client_from(w.gw.port(), Some(CLIENT2), addr)
    };
    // The hop (127.0.0.2) presents its own certificate and the partner's in Client-Cert.
    let reply = w.get_with(
        &from([127, 0, 0, 2]),
        PATH,
        &token,
        &[("Client-Cert", &header)],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(w.upstream.count(), 1);
    // The same header from another address: not believed.
    let reply = w.get_with(
        &from([127, 0, 0, 1]),
        PATH,
        &token,
        &[("Client-Cert", &header)],
    );
    match proxy {
        Proxy::Envoy => assert_challenge(&reply, 401, "invalid_token"),
        Proxy::Nginx => assert_challenge(&reply, 400, "invalid_request"),
    }
    assert_eq!(w.upstream.count(), 1, "a refusal reached the API");
}

macro_rules! on_both_proxies {
    ($($case:ident),* $(,)?) => {
        mod envoy {
            $(#[test] fn $case() { super::$case(super::Proxy::Envoy) })*
        }
        mod nginx {
            $(#[test] fn $case() { super::$case(super::Proxy::Nginx) })*
        }
    };
}

on_both_proxies!(
    flow_in_every_format,
    the_stolen_token_and_other_refusals_never_reach_the_api,
    every_identity_server_failure,
    an_unreachable_identity_server_is_503,
    concurrent_first_requests,
    claim_headers_from_the_client_never_pass,
    a_bad_configuration_is_refused,
    keep_alive_requests_on_one_connection,
    revocation_reaches_every_worker,
    path_spellings_do_not_skip_the_routes_policy,
    a_body_waits_for_the_decision_and_arrives_whole,
    a_second_token_in_a_form_body_never_reaches_the_api_whole,
    header_spellings_and_bytes_an_attacker_chooses,
    route_policies,
    what_is_cached_and_for_how_long,
    phantom_jwts_that_fail,
    stale_if_error_within_its_bound,
    a_trusted_hops_client_cert,
);

/// Requests one after another on one keep-alive connection, a stolen token among them (each a
/// miss, decided in its call's answer): every one decided, the stolen ones never reach the API.
/// (In NGINX this holds with `proxy_wasm_request_headers_in_access on`, docs/nginx.md: without it
/// the deny of a later request on the connection was not carried out and the request reached the
/// upstream.)
fn keep_alive_requests_on_one_connection(proxy: Proxy) {
    let w = World::new(proxy, Format::Jwt);
    let client = w.gw.client(CLIENT);
    let token = w.bound_token(CLIENT, SCOPES);
    let stolen = w.bound_token(CLIENT2, SCOPES);
    for i in 0..30 {
        let t = if i % 5 == 4 { &stolen } else { &token };
        let reply = w.get_with(&client, PATH, t, &[]);
        assert_eq!(
            reply.status,
            if i % 5 == 4 { 401 } else { 200 },
            "request {i}: {reply:?}"
        );
    }
    assert_eq!(w.upstream.count(), 24);
}

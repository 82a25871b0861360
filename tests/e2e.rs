//! End to end: the real example system (identity server on Node, the example API, Envoy with the
//! built certbound.wasm and the configurations in envoy/), started by example/system.sh on free
//! ports, driven by a real client over real mutual TLS.
//!
//! One test starts the system once and runs the scenarios in order (they share the identity
//! server, whose restart is one of them). Needs what `make test` prepares: Envoy (ENVOY_BIN), the
//! wasm, the certificates (CERTS_DIR), the API binary (API_BIN), node and example/idsvr/node_modules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "e2e/partner.rs"]
mod partner;
#[path = "e2e/system.rs"]
mod system;
#[path = "e2e/terminators.rs"]
mod terminators;

use std::process::Command;
use std::time::{Duration, Instant};

use common::repo;
use partner::{assert_denied, Partner};
use system::{without_reaching_the_api, System};

const API: &str = "api.example.com";
const API_SELFSIGNED: &str = "api-selfsigned.example.com";

fn denied(reason: &str) -> String {
    format!("certbound.requests_denied.{reason}")
}

#[test]
fn example_system_end_to_end() {
    let started = Instant::now();
    let system = System::new();
    // The operator's offboarding endpoint (step 6b).
    let admin_port = common::free_port().to_string();
    let admin_token = format!("admin-{}", std::process::id());
    let admin_env = [
        ("IDSVR_ADMIN_PORT", admin_port.as_str()),
        ("IDSVR_ADMIN_TOKEN", admin_token.as_str()),
    ];
    system.start("idsvr", &admin_env);
    for service in ["api", "sidecar", "envoy", "envoy-formats"] {
        system.start(service, &[]);
    }
    let ports = system.ports;
    println!(
        "system up in {:?} (run directory {})",
        started.elapsed(),
        system.run_dir.display()
    );

    let partner = Partner::new("example.client", ports);
    // partner-client-2's certificate: a real partner, and the attacker who stole partner-client's token.
    let other_partner = Partner::new("example.client2", ports);

    // 1. The partner client of `make demo`, against this system.
    system.run_demo_client();

    // 2. The flow in each introspection format: what the filter forwards is verified by the API.
    for (host, formats, forwarded) in [
        (API, false, "at+jwt"),
        ("api-json.example.com", true, "opaque"),
        (
            "api-introspection-jwt.example.com",
            true,
            "token-introspection+jwt",
        ),
    ] {
        flow(&system, &partner, &other_partner, host, formats, forwarded);
    }

    // The API past the gateway: only the gateway's certificate gets in, and behind that the token
    // must be bound to the certificate the gateway forwards.
    the_api_accepts_only_the_gateway(&system, &partner);

    // Where the partner's TLS ends elsewhere: an Istio-style gateway, HAProxy, nginx.
    behind_other_terminators(&system, &partner, &other_partner);

    // 3. No client certificate: the TLS handshake is refused.
    let token = partner.token("partner-client", "transactions");
    let no_cert = system.envoy_counter(false, "ssl.fail_verify_no_cert");
    let r = without_reaching_the_api(&system, "no client certificate", || {
        Partner::without_certificate(ports).call(
            "POST",
            API,
            Some(&token),
            &[],
            Some("{\"amount\": 1}"),
        )
    });
    assert!(
        r.is_err(),
        "a connection without a client certificate was accepted: {r:?}"
    );
    assert_eq!(
        system.envoy_counter(false, "ssl.fail_verify_no_cert"),
        no_cert + 1
    );

    // 4. Certificates that do not chain to the example CA: refused on api.example.com.
    for stem in ["untrusted.client", "example.selfsigned"] {
        let failed = system.envoy_counter(false, "ssl.fail_verify_error");
        let r = without_reaching_the_api(&system, stem, || {
            Partner::new(stem, ports).call("POST", API, Some(&token), &[], Some("{\"amount\": 1}"))
        });
        assert!(
            r.is_err(),
            "{stem}: a certificate from outside the trusted chain was accepted: {r:?}"
        );
        assert_eq!(
            system.envoy_counter(false, "ssl.fail_verify_error"),
            failed + 1,
            "{stem}"
        );
    }

    // 5. A token without the route's scope: 403.
    let other_scope = other_partner.token("partner-client-2", "other");
    let a = without_reaching_the_api(&system, "scope other", || {
        other_partner.create(API, &other_scope, 3)
    });
    assert_denied(
        &a,
        403,
        "insufficient_scope",
        "a token for scope other on POST /api/transactions",
    );

    // 5b. What the front proxy refuses before certbound sees it (envoy/envoy.yaml's hardening).
    front_proxy_hardening(&system, &partner);

    // 6. Self-signed partners on their own host name.
    self_signed(&system, &partner, ports);

    // 6b. Revocation at the identity server reaches every worker within 2 s.
    let still_cached = revocation(&system, &partner, &other_partner, &admin_port, &admin_token);

    // 7. The identity server goes away: 503, nothing reaches the API; service resumes when it is back.
    let unused = partner.token("partner-client", "transactions"); // in no cache yet
    let stale = partner.token("partner-client", "transactions");
    for host in ["api-json.example.com", "api-introspection-jwt.example.com"] {
        let a = partner.call("GET", host, Some(&stale), &[], None).unwrap();
        assert_eq!(a.status, 200, "{host}: {a:?}");
    }
    let cached_at = Instant::now();
    system.stop("idsvr");
    let stopped = Instant::now();
    identity_server_down(&system, &partner, &still_cached, &stale, cached_at, stopped);
    let unavailable = system.envoy_counter(false, &denied("introspection_unavailable"));
    let a = without_reaching_the_api(&system, "identity server down", || {
        partner.create(API, &unused, 4)
    });
    assert_eq!(
        (a.status, a.error().as_str()),
        (503, "temporarily_unavailable"),
        "identity server down: {a:?}"
    );
    assert_eq!(
        system.envoy_counter(false, &denied("introspection_unavailable")),
        unavailable + 1
    );
    assert!(
        partner
            .request_token("partner-client", "transactions")
            .is_err(),
        "token endpoint while it is down"
    );

    // Back, with short-lived tokens for step 8. Its tokens lived in memory: the old one is gone.
    const TTL: u64 = 5;
    system.start("idsvr", &[("IDSVR_ACCESS_TOKEN_TTL", &TTL.to_string())]);
    let a = without_reaching_the_api(&system, "token from before the restart", || {
        partner.create(API, &unused, 4)
    });
    assert_denied(
        &a,
        401,
        "invalid_token",
        "a token the restarted identity server does not know",
    );
    let short = partner.token("partner-client", "transactions");
    let issued = Instant::now();
    let a = partner.create(API, &short, 5);
    assert_eq!(a.status, 201, "after the identity server came back: {a:?}");

    // 8. The token expires: 401, even though the filter cached it a moment ago.
    std::thread::sleep(
        (issued + Duration::from_secs(TTL + 1)).saturating_duration_since(Instant::now()),
    );
    let inactive = system.envoy_counter(false, &denied("inactive_token"));
    let a = without_reaching_the_api(&system, "expired token", || partner.create(API, &short, 6));
    assert_denied(&a, 401, "invalid_token", "an expired token");
    assert_eq!(
        system.envoy_counter(false, &denied("inactive_token")),
        inactive + 1
    );

    println!("end-to-end scenarios passed in {:?}", started.elapsed());
}

/// GET on the API with `token`, each on a new connection (Envoy's two workers take turns): every
/// status.
fn statuses(partner: &Partner, token: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            partner
                .call("GET", API, Some(token), &[], None)
                .unwrap()
                .status
        })
        .collect()
}

/// Polls until `n` requests in a row with `token` get 401, at most `within`; returns how long it
/// took. None of the refusals reaches the API.
fn refused_within(
    system: &System,
    partner: &Partner,
    token: &str,
    within: Duration,
    what: &str,
) -> Duration {
    let start = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 8 {
        assert!(
            start.elapsed() <= within,
            "{what}: still accepted after {:?}",
            start.elapsed()
        );
        let status = without_reaching_the_api_if(system, partner, token);
        in_a_row = if status == 401 { in_a_row + 1 } else { 0 };
    }
    start.elapsed()
}

/// One GET; a 401 must not have reached the API.
fn without_reaching_the_api_if(system: &System, partner: &Partner, token: &str) -> u16 {
    let before = system.api_requests();
    let status = partner
        .call("GET", API, Some(token), &[], None)
        .unwrap()
        .status;
    if status == 401 {
        assert_eq!(
            system.api_requests(),
            before,
            "a refused request reached the API"
        );
    }
    status
}

/// Tokens cached on both workers are revoked at the identity server (RFC 7009 by the partner, and
/// the operator offboarding the other partner): refused within 2 s on every worker; the tokens
/// not revoked still work. Returns a token still cached (for the outage step).
fn revocation(
    system: &System,
    partner: &Partner,
    other: &Partner,
    admin_port: &str,
    admin_token: &str,
) -> String {
    let revoked = partner.token("partner-client", "transactions");
    let kept = partner.token("partner-client", "transactions");
    let offboarded = [
        other.token("partner-client-2", "transactions"),
        other.token("partner-client-2", "transactions"),
    ];
    for (who, token) in [(partner, &revoked), (partner, &kept)]
        .into_iter()
        .chain(offboarded.iter().map(|t| (other, t)))
    {
        assert_eq!(
            statuses(who, token, 8),
            vec![200; 8],
            "cached on both workers"
        );
    }
    let applied = system.envoy_counter(false, "certbound.revocations_applied");
    let dropped = system.envoy_counter(false, "certbound.revocation_entries_dropped");

    let a = partner.revoke("partner-client", &revoked);
    assert_eq!(a.status, 200, "RFC 7009 revocation: {a:?}");
    let took = refused_within(
        system,
        partner,
        &revoked,
        Duration::from_secs(2),
        "revoked token",
    );
    println!("a revoked token was refused by every worker after {took:?}");
    assert_eq!(
        statuses(partner, &kept, 6),
        vec![200; 6],
        "the token not revoked"
    );
    assert!(system.envoy_counter(false, "certbound.revocations_applied") > applied);
    assert!(
        system.envoy_counter(false, "certbound.revocation_entries_dropped") >= dropped + 2,
        "both workers dropped the entry"
    );

    // The operator offboards partner-client-2: all its tokens go, partner-client's stay.
    let r = system::plain_client()
        .post(format!("http://127.0.0.1:{admin_port}/admin/offboard"))
        .header("authorization", format!("Bearer {admin_token}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("client_id=partner-client-2")
        .send()
        .expect("offboarding");
    assert_eq!(r.status(), 200, "offboarding");
    for token in &offboarded {
        let took = refused_within(system, other, token, Duration::from_secs(2), "offboarded");
        println!("an offboarded partner's token was refused after {took:?}");
    }
    assert_eq!(statuses(partner, &kept, 6), vec![200; 6], "another partner");
    kept
}

/// Step 7's first part: the identity server (and so the revocation feed) is down. The main API
/// (revocation on, `max_staleness_seconds` 10) keeps deciding from its cache for the staleness
/// bound, then re-introspects, and fails closed (503). envoy-formats' api-introspection-jwt has
/// stale-if-error on (entries live 3 s, 5 s more while the identity server is down); api-json
/// has it off: the same recently expired token gets 200 on the first, 503 on the second, and 503
/// on both past the budget.
fn identity_server_down(
    system: &System,
    partner: &Partner,
    cached: &str,
    stale: &str,
    cached_at: Instant,
    stopped: Instant,
) {
    assert_eq!(
        statuses(partner, cached, 4),
        vec![200; 4],
        "within the staleness bound"
    );
    let get = |host: &str| partner.call("GET", host, Some(stale), &[], None).unwrap();
    let served = system.envoy_counter(true, "certbound.stale_answers");
    std::thread::sleep(
        (cached_at + Duration::from_millis(3500)).saturating_duration_since(Instant::now()),
    );
    let a = get("api-introspection-jwt.example.com");
    assert_eq!(a.status, 200, "stale-if-error on, within the budget: {a:?}");
    assert_eq!(
        system.envoy_counter(true, "certbound.stale_answers"),
        served + 1
    );
    let a = get("api-json.example.com");
    assert_eq!(a.status, 503, "stale-if-error off (the default): {a:?}");
    std::thread::sleep(
        (cached_at + Duration::from_millis(9000)).saturating_duration_since(Instant::now()),
    );
    let a = get("api-introspection-jwt.example.com");
    assert_eq!(a.status, 503, "past the stale-if-error budget: {a:?}");
    // The feed has been down for more than its staleness bound: the cached token is checked
    // again, which fails while the identity server is down.
    std::thread::sleep(
        (stopped + Duration::from_millis(11_000)).saturating_duration_since(Instant::now()),
    );
    let calls = system.envoy_counter(false, "certbound.introspection_calls");
    let a = without_reaching_the_api(system, "a stale feed", || {
        partner.call("GET", API, Some(cached), &[], None).unwrap()
    });
    assert_eq!(a.status, 503, "past the feed's staleness bound: {a:?}");
    assert!(
        system.envoy_counter(false, "certbound.introspection_calls") > calls,
        "re-introspected"
    );
    let lag = system.envoy_counter(false, "certbound.revocation_feed_lag_ms");
    assert!(lag >= 10_000, "feed lag gauge: {lag} ms");
}

/// The three topologies where certbound is not where the partner's TLS ends, each with real
/// proxies: the front proxy as an Istio ingress gateway (api-mesh) before the sidecar, HAProxy
/// sending RFC 9440 Client-Cert, nginx sending a URL-encoded PEM. For each: the partner's call
/// succeeds; a stolen token with another partner's certificate is refused; that partner forging
/// the header through the terminator gains nothing; and going straight to the inner proxy with
/// forged headers gets nowhere. None of the refusals reaches the API.
fn behind_other_terminators(system: &System, partner: &Partner, thief: &Partner) {
    use base64::Engine;
    let ports = system.ports;
    let _haproxy = terminators::Terminator::haproxy(ports, &system.run_dir);
    let _nginx = terminators::Terminator::nginx(ports, &system.run_dir);
    let token = partner.token("partner-client", "transactions");
    let pem = std::fs::read_to_string(common::certs_dir().join("example.client.pem")).unwrap();
    let der = {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    };
    let victim_xfcc = format!("Hash={}", xfcc_hash("example.client"));
    let victim_client_cert = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    // As nginx's $ssl_client_escaped_cert sends it.
    let victim_pem =
        percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    for (host, header, forged) in [
        (
            "api-mesh.example.com",
            "x-forwarded-client-cert",
            victim_xfcc.as_str(),
        ),
        (
            "api-haproxy.example.com",
            "client-cert",
            victim_client_cert.as_str(),
        ),
        (
            "api-nginx.example.com",
            "x-client-cert",
            victim_pem.as_str(),
        ),
    ] {
        let r = partner.create(host, &token, 7);
        assert_eq!(r.status, 201, "{host}: the partner's call: {r:?}");
        let r = without_reaching_the_api(system, host, || thief.create(host, &token, 8));
        assert_denied(&r, 401, "invalid_token", &format!("{host}: a stolen token"));
        let r = without_reaching_the_api(system, host, || {
            thief
                .call(
                    "POST",
                    host,
                    Some(&token),
                    &[(header, forged)],
                    Some("{\"amount\": 9}"),
                )
                .unwrap()
        });
        assert_denied(
            &r,
            401,
            "invalid_token",
            &format!("{host}: a forged {header}"),
        );
    }
    // Straight to the inner proxy, past the terminators, with the victim's certificate forged.
    let direct = |port: u16, cert: Option<&str>| {
        let dir = common::certs_dir();
        let files = cert.map(|c| (dir.join(format!("{c}.pem")), dir.join(format!("{c}.key"))));
        let identity = files.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        common::mtls_client_builder(&[("api.example.com", port)], identity)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let post = |client: &reqwest::blocking::Client, url: String, header: &str, value: &str| {
        client
            .post(url)
            .header("authorization", format!("Bearer {token}"))
            .header(header, value)
            .header("content-type", "application/json")
            .body("{\"amount\": 10}")
            .send()
    };
    let mesh = format!("https://api.example.com:{}/api/transactions", ports.sidecar);
    for cert in [Some("example.client2"), Some("example.client"), None] {
        let r = without_reaching_the_api(system, "straight to the sidecar", || {
            post(
                &direct(ports.sidecar, cert),
                mesh.clone(),
                "x-forwarded-client-cert",
                &victim_xfcc,
            )
        });
        assert!(
            r.is_err(),
            "the sidecar takes the gateway's certificate only ({cert:?}): {r:?}"
        );
    }
    let r = without_reaching_the_api(system, "straight past HAProxy", || {
        let url = format!(
            "http://127.0.0.1:{}/api/transactions",
            ports.sidecar_haproxy
        );
        post(
            &system::plain_client(),
            url,
            "client-cert",
            &victim_client_cert,
        )
        .unwrap()
    });
    assert_eq!(r.status().as_u16(), 401, "{r:?}");
    let nginx_inner = format!(
        "https://api.example.com:{}/api/transactions",
        ports.sidecar_nginx
    );
    let r = without_reaching_the_api(system, "straight past nginx", || {
        post(
            &direct(ports.sidecar_nginx, Some("example.client2")),
            nginx_inner,
            "x-client-cert",
            &victim_pem,
        )
        .unwrap()
    });
    assert_eq!(r.status().as_u16(), 401, "{r:?}");
}

/// The SHA-256 of `CERTS_DIR/<stem>.pem` in hex, as Envoy writes it in x-forwarded-client-cert.
fn xfcc_hash(stem: &str) -> String {
    use base64::Engine;
    let digest = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(common::thumbprint(stem))
        .unwrap();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Straight at the API with a stolen token, as an attacker inside the network would try: plain
/// HTTP, HTTPS without a certificate, with a partner's own certificate (from the trusted CA), with
/// one from another CA: none gets an HTTP answer, none reaches the handler. With the gateway's
/// certificate (the second line), the token must still be bound to the certificate whose hash comes
/// in x-forwarded-client-cert, and opaque tokens carry the gateway's claims.
fn the_api_accepts_only_the_gateway(system: &System, partner: &Partner) {
    let ports = system.ports;
    let stolen = partner.token("partner-client", "transactions");
    let certs = common::certs_dir();
    let url = format!("https://{API}:{}/api/transactions", ports.api);
    let client = |stem: Option<&str>| {
        let files = stem.map(|s| {
            (
                certs.join(format!("{s}.pem")),
                certs.join(format!("{s}.key")),
            )
        });
        common::mtls_client_builder(
            &[(API, ports.api), ("login.example.com", ports.idsvr)],
            files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
    };
    let before = system.api_requests();
    let plain = system::plain_client()
        .post(format!("http://127.0.0.1:{}/api/transactions", ports.api))
        .bearer_auth(&stolen)
        .header("x-certbound-client-id", "partner-client")
        .body("{\"amount\": 1}")
        .send();
    assert!(plain.is_err(), "the API answered plain HTTP: {plain:?}");
    for stem in [
        None,
        Some("example.client"),
        Some("untrusted.client"),
        Some("example.selfsigned"),
    ] {
        let r = client(stem)
            .post(&url)
            .bearer_auth(&stolen)
            .header("x-certbound-client-id", "partner-client")
            .header(
                "x-forwarded-client-cert",
                format!("Hash={}", xfcc_hash("example.client")),
            )
            .body("{\"amount\": 1}")
            .send();
        assert!(
            r.is_err(),
            "{stem:?}: the API answered a peer that is not the gateway: {r:?}"
        );
    }
    assert_eq!(
        system.api_requests(),
        before,
        "a request from a peer other than the gateway reached the API's handler"
    );
    assert!(
        system.log("api").contains("is not the gateway"),
        "the API did not say why it refused the partner's certificate"
    );

    // The second line, with the gateway's certificate: the phantom JWT of the stolen token, as the
    // gateway gets it (tls_client_auth as certbound-gateway).
    let gateway = client(Some("example.gateway"));
    let jwt = gateway
        .post(format!(
            "https://login.example.com:{}/oauth/v2/oauth-introspect",
            ports.idsvr
        ))
        .header("accept", "application/jwt")
        .form(&[
            ("token", stolen.as_str()),
            ("client_id", "certbound-gateway"),
        ])
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(jwt.matches('.').count(), 2, "the phantom token: {jwt}");
    let call = |token: &str, headers: &[(&str, String)]| {
        let mut r = gateway
            .post(&url)
            .bearer_auth(token)
            .body("{\"amount\": 1}");
        for (name, value) in headers {
            r = r.header(*name, value);
        }
        let r = r.send().unwrap();
        (
            r.status().as_u16(),
            r.headers().contains_key("www-authenticate"),
        )
    };
    let partners = format!("Hash={}", xfcc_hash("example.client"));
    let others = format!("Hash={}", xfcc_hash("example.client2"));
    let cnf = format!(
        "{{\"x5t#S256\":\"{}\"}}",
        common::thumbprint("example.client")
    );
    let id = ("x-certbound-client-id", "partner-client".to_string());
    let fcc = |v: &str| ("x-forwarded-client-cert", v.to_string());
    for (what, token, headers, status) in [
        ("JWT without x-forwarded-client-cert", &jwt, vec![], 401),
        (
            "JWT with another certificate's hash",
            &jwt,
            vec![fcc(&others)],
            401,
        ),
        (
            "JWT with two certificates",
            &jwt,
            vec![fcc(&format!("{partners},{others}"))],
            401,
        ),
        (
            "JWT with the partner's certificate",
            &jwt,
            vec![fcc(&partners)],
            201,
        ),
        (
            "opaque without the gateway's claims",
            &stolen,
            vec![fcc(&partners)],
            401,
        ),
        (
            "opaque without cnf",
            &stolen,
            vec![fcc(&partners), id.clone()],
            401,
        ),
        (
            "opaque bound to another certificate",
            &stolen,
            vec![fcc(&others), id.clone(), ("x-certbound-cnf", cnf.clone())],
            401,
        ),
        (
            "opaque with the gateway's claims",
            &stolen,
            vec![
                fcc(&partners),
                id.clone(),
                ("x-certbound-scope", "transactions".into()),
                ("x-certbound-cnf", cnf.clone()),
            ],
            201,
        ),
    ] {
        let (got, challenge) = call(token, &headers);
        assert_eq!(got, status, "{what}");
        assert!(
            got != 401 || challenge,
            "{what}: 401 without WWW-Authenticate"
        );
    }
}

/// Token, transaction, list, stolen token, on one host name of a front proxy.
fn flow(
    system: &System,
    partner: &Partner,
    attacker: &Partner,
    host: &str,
    formats: bool,
    forwarded: &str,
) {
    let token = partner.token("partner-client", "transactions");
    let accepted = |s: &serde_json::Value| s["accepted"][forwarded].as_u64().unwrap_or(0);
    let before = system.api_stats();
    // A client-sent identity header is neither passed on by the filter nor believed by the API.
    let a = partner
        .call(
            "POST",
            host,
            Some(&token),
            &[("x-certbound-client-id", "someone-else")],
            Some("{\"amount\": 42}"),
        )
        .unwrap_or_else(|e| panic!("{host}: POST failed: {e:?}"));
    assert_eq!(a.status, 201, "{host}: create a transaction: {a:?}");
    let tx = a.json();
    assert_eq!(
        (tx["client_id"].as_str(), tx["amount"].as_u64()),
        (Some("partner-client"), Some(42)),
        "{host}: {tx}"
    );
    assert_eq!(
        accepted(&system.api_stats()),
        accepted(&before) + 1,
        "{host}: the API did not get a {forwarded} token"
    );
    // The reference system's client posts `Content-Type: application/json` and no body.
    let a = partner
        .call("POST", host, Some(&token), &[], Some(""))
        .unwrap_or_else(|e| panic!("{host}: POST failed: {e:?}"));
    assert_eq!(a.status, 201, "{host}: a POST without a body: {a:?}");

    // The same token again: the filter answers from its cache, no second introspection.
    let calls = system.envoy_counter(formats, "certbound.introspection_calls");
    let a = partner
        .call("GET", host, Some(&token), &[], None)
        .expect("GET");
    assert_eq!(a.status, 200, "{host}: list transactions: {a:?}");
    let list = a.json();
    let ids: Vec<&str> = list
        .as_array()
        .map(|l| l.iter().filter_map(|t| t["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        ids.contains(&tx["id"].as_str().unwrap_or_default()),
        "{host}: {ids:?} lacks {}",
        tx["id"]
    );
    assert_eq!(
        system.envoy_counter(formats, "certbound.introspection_calls"),
        calls,
        "{host}: the filter introspected the same token again instead of using its cache \
         (cache_misses, cache_hits: {:?})",
        system.envoy_stats(formats, "certbound.cache_")
    );

    // The stolen token with another partner's certificate.
    let mismatches = system.envoy_counter(formats, &denied("certificate_mismatch"));
    let a = without_reaching_the_api(system, host, || attacker.create(host, &token, 1_000_000));
    assert_denied(&a, 401, "invalid_token", &format!("{host}: stolen token"));
    assert_eq!(
        system.envoy_counter(formats, &denied("certificate_mismatch")),
        mismatches + 1,
        "{host}"
    );
}

fn self_signed(system: &System, pki_partner: &Partner, ports: system::Ports) {
    let partner = Partner::new("example.selfsigned", ports);
    let token = partner.token("partner-selfsigned", "transactions");
    let a = partner.create(API_SELFSIGNED, &token, 7);
    assert_eq!(a.status, 201, "self-signed partner: {a:?}");
    assert_eq!(a.json()["client_id"], "partner-selfsigned");

    // A PKI partner's (valid, bound) token is not for this host.
    let pki_token = pki_partner.token("partner-client", "transactions");
    let not_allowed = system.envoy_counter(false, &denied("client_not_allowed"));
    let a = without_reaching_the_api(system, "PKI partner on the self-signed host", || {
        pki_partner.create(API_SELFSIGNED, &pki_token, 8)
    });
    assert_denied(
        &a,
        401,
        "invalid_token",
        "a PKI partner's token on api-selfsigned.example.com",
    );
    assert_eq!(
        system.envoy_counter(false, &denied("client_not_allowed")),
        not_allowed + 1
    );

    // An unknown self-signed certificate: the TLS handshake passes (no chain is checked here), the
    // identity server gives it no token, and the self-signed partner's token is bound to another key.
    let intruder = Partner::from_dir("intruder", &self_signed_certificate(system), ports);
    let a = intruder
        .request_token("partner-selfsigned", "transactions")
        .expect("token request");
    assert_eq!(
        (a.status, a.error().as_str()),
        (401, "invalid_client"),
        "intruder at the token endpoint: {a:?}"
    );
    let mismatches = system.envoy_counter(false, &denied("certificate_mismatch"));
    let a = without_reaching_the_api(system, "unknown self-signed certificate", || {
        intruder.create(API_SELFSIGNED, &token, 9)
    });
    assert_denied(
        &a,
        401,
        "invalid_token",
        "the self-signed partner's token with an unknown self-signed certificate",
    );
    assert_eq!(
        system.envoy_counter(false, &denied("certificate_mismatch")),
        mismatches + 1
    );
}

/// A fresh self-signed client certificate nobody registered (intruder.pem/.key).
fn self_signed_certificate(system: &System) -> std::path::PathBuf {
    let dir = system.run_dir.join("intruder");
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=intruder/O=Nobody",
        ])
        .args(["-keyout", "intruder.key", "-out", "intruder.pem"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "keyUsage=critical,digitalSignature"])
        .args(["-addext", "extendedKeyUsage=clientAuth"])
        .args(["-addext", "subjectAltName=DNS:intruder.example.net"])
        .current_dir(&dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// envoy/envoy-compose.yaml is the generator's rendering of envoy/envoy.yaml for the containers.
#[test]
fn compose_envoy_config_is_the_rendering_of_envoy_yaml() {
    let read = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap();
    let rendered =
        envoy_config::front_proxy(&read("envoy/envoy.yaml"), &envoy_config::Target::Compose)
            .unwrap();
    assert!(rendered.contains("address: idsvr, port_value: 8444"));
    assert!(
        read("envoy/envoy-compose.yaml") == rendered,
        "envoy/envoy-compose.yaml is not envoy/envoy.yaml rendered for compose: run `make envoy-compose`"
    );
}

/// The identity server's own checks (`example/idsvr/test.sh`: the token endpoint over mutual TLS,
/// wrong DN, self-signed certificates, wrong secret, scope refusal, the three introspection forms,
/// the signing key kept across restarts), on a port of its own.
#[test]
fn identity_server_checks_pass() {
    let out = Command::new("bash")
        .arg(repo().join("example/idsvr/test.sh"))
        .env("CERTS_DIR", common::certs_dir())
        .output()
        .expect("run example/idsvr/test.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "example/idsvr/test.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count() >= 40,
        "{stdout}"
    );
}

/// No committed file holds an introspection client secret: each installation makes its own
/// (certs/make-certs.sh), and the shipped proxy configurations take it from the VM environment.
#[test]
fn no_committed_file_holds_the_introspection_secret() {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output()
        .expect("git ls-files");
    let files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    assert!(files.len() > 50, "git ls-files found {} files", files.len());
    for f in &files {
        let Ok(text) = std::fs::read_to_string(repo().join(f)) else {
            continue;
        };
        // (Spelled in two halves, so that this file does not hold it either.)
        assert!(
            !text.contains(concat!("change-me-", "introspect-secret")),
            "{f} holds the secret everyone knows"
        );
        let shipped =
            f.starts_with("envoy/") || f.starts_with("wasm/") || f == "docker-compose.yml";
        if shipped {
            assert!(
                !text.contains("\"client_secret\":") && !text.contains("INTROSPECT_CLIENT_SECRET:"),
                "{f} holds an introspection client secret"
            );
        }
    }
    assert!(
        !files.iter().any(|f| f.ends_with(".secret")),
        "a .secret file is committed"
    );
}

/// envoy/envoy.yaml's hardening, through the front proxy: a header name with an underscore is
/// refused (CGI and WSGI stacks read `x_certbound_client_id` as `x-certbound-client-id`), and TLS 1.2
/// without ECDHE is refused while ECDHE with AEAD is accepted.
fn front_proxy_hardening(system: &System, partner: &Partner) {
    let token = partner.token("partner-client", "transactions");
    let a = without_reaching_the_api(system, "a header name with an underscore", || {
        partner.call(
            "GET",
            API,
            Some(&token),
            &[("x_certbound_client_id", "partner-client")],
            None,
        )
    })
    .expect("GET");
    assert_eq!(a.status, 400, "a header name with an underscore: {a:?}");

    let certs = common::certs_dir();
    let handshake = |cipher: &str| {
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", system.ports.front),
            ])
            .args(["-servername", API, "-tls1_2", "-cipher", cipher])
            .arg("-cert")
            .arg(certs.join("example.client.pem"))
            .arg("-key")
            .arg(certs.join("example.client.key"))
            .arg("-CAfile")
            .arg(certs.join("root.pem"))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client")
            .status
            .success()
    };
    assert!(
        handshake("ECDHE-RSA-AES128-GCM-SHA256"),
        "TLS 1.2 with ECDHE and AES-GCM is refused"
    );
    for weak in ["AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA", "AES256-SHA256"] {
        assert!(!handshake(weak), "TLS 1.2 with {weak} is accepted");
    }
}

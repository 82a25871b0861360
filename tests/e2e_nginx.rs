//! End to end on NGINX: the example system as `make demo PROXY=nginx` runs it (the identity
//! server, the example API, nginx/gateway.conf in NGINX with ngx_wasm_module and the shipped
//! certbound.wasm, nginx/front.conf in Debian's nginx passing TLS through by SNI), started by
//! example/system.sh on free ports and driven by real partners over real mutual TLS.
//!
//! Needs what `make test` prepares beyond tests/e2e.rs: NGINX with ngx_wasm_module (NGINX_WASM,
//! `make nginx-wasm`) and Debian's nginx with its stream module (`make setup-nginx-front`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
// Shared with tests/e2e.rs, which uses what this file does not.
#[allow(dead_code)]
#[path = "e2e/partner.rs"]
mod partner;
#[allow(dead_code)]
#[path = "e2e/system.rs"]
mod system;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use partner::{assert_denied, Partner};
use system::{without_reaching_the_api, System};

const API: &str = "api.example.com";

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

#[test]
fn example_system_on_nginx_end_to_end() {
    let started = Instant::now();
    let system = System::new();
    for service in ["idsvr", "api", "nginx-gateway", "nginx-front"] {
        system.start(service, &[]);
    }
    let ports = system.ports;
    println!("system up on NGINX in {:?}", started.elapsed());
    let partner = Partner::new("example.client", ports);
    let thief = Partner::new("example.client2", ports);

    // 1. The partner client of `make demo`, through the NGINX front and gateway.
    system.run_demo_client();

    // 2. The flow: the API gets the verified JWT (it counts what it accepted) and the gateway's
    //    claim; a client's own claim header is refused in NGINX (it would reach the API beside the
    //    gateway's, docs/nginx.md); the stolen token, alone or with a forged certificate hash, is
    //    refused before the API.
    let token = partner.token("partner-client", "transactions");
    let spoofed = without_reaching_the_api(&system, "a client's claim header", || {
        partner
            .call(
                "POST",
                API,
                Some(&token),
                &[("X-Certbound-Client-Id", "someone-else")],
                Some("{\"amount\": 42}"),
            )
            .unwrap()
    });
    assert_denied(&spoofed, 400, "invalid_request", "a client's claim header");
    let before = system.api_stats();
    let a = partner.create(API, &token, 42);
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.json()["client_id"], "partner-client");
    let accepted = |s: &serde_json::Value| s["accepted"]["at+jwt"].as_u64().unwrap_or(0);
    assert_eq!(
        accepted(&system.api_stats()),
        accepted(&before) + 1,
        "the API got the JWT"
    );
    let mine = common::thumbprint_of(common::certs_dir().join("example.client.pem"));
    let forged_hash = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&mine)
            .unwrap();
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    // (With a forged hash the header alone refuses it: only the gateway sets that one.)
    for (extra, status, error) in [
        (vec![], 401, "invalid_token"),
        (
            vec![("x-forwarded-client-cert", format!("Hash={forged_hash}"))],
            400,
            "invalid_request",
        ),
    ] {
        let headers: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = without_reaching_the_api(&system, "stolen token", || {
            thief
                .call("POST", API, Some(&token), &headers, Some("{\"amount\": 1}"))
                .unwrap()
        });
        assert_denied(&a, status, error, "the stolen token");
    }

    // 3. No client certificate, or one from outside the example CA: refused by NGINX itself (its
    //    400 page for a missing certificate, a failed handshake for an untrusted one).
    for who in [
        Partner::without_certificate(ports),
        Partner::new("untrusted.client", ports),
    ] {
        let r = without_reaching_the_api(&system, &who.name, || {
            who.call("GET", API, Some(&token), &[], None)
        });
        if let Ok(a) = r {
            assert_eq!(a.status, 400, "{}: {a:?}", who.name);
        }
    }

    // 4. A name the front does not route is closed; the gateway's loopback hop is not reachable
    //    from the front at all (it serves certbound's calls on 127.0.0.1 only, and is no API).
    let unknown = common::mtls_client_builder(&[("other.example.com", ports.front)], None)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!(
            "https://other.example.com:{}/api/transactions",
            ports.front
        ))
        .send();
    assert!(
        unknown.is_err(),
        "an unrouted name got an answer: {unknown:?}"
    );

    // 5. Revocation: the partner revokes its token (RFC 7009); every worker refuses it within
    //    2 s, without the API; another token still works.
    let revoked = partner.token("partner-client", "transactions");
    let kept = partner.token("partner-client", "transactions");
    assert_eq!(
        statuses(&partner, &revoked, 8),
        vec![200; 8],
        "cached on both workers"
    );
    assert_eq!(statuses(&partner, &kept, 4), vec![200; 4]);
    let a = partner.revoke("partner-client", &revoked);
    assert_eq!(a.status, 200, "{a:?}");
    let start = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 8 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "still accepted after {:?}",
            start.elapsed()
        );
        let before = system.api_requests();
        let status = partner
            .call("GET", API, Some(&revoked), &[], None)
            .unwrap()
            .status;
        if status == 401 {
            assert_eq!(
                system.api_requests(),
                before,
                "a refused request reached the API"
            );
            in_a_row += 1;
        } else {
            in_a_row = 0;
        }
    }
    println!(
        "the revoked token was refused on NGINX after {:?}",
        start.elapsed()
    );
    assert_eq!(
        statuses(&partner, &kept, 6),
        vec![200; 6],
        "the token not revoked"
    );

    // 6. The identity server goes away: a token never seen gets 503, and nothing reaches the API.
    let unused = partner.token("partner-client", "transactions");
    system.stop("idsvr");
    let a = without_reaching_the_api(&system, "identity server down", || {
        partner.create(API, &unused, 4)
    });
    assert_eq!(
        (a.status, a.error().as_str()),
        (503, "temporarily_unavailable"),
        "{a:?}"
    );
    // The front passes nothing to the stopped identity server either.
    assert!(TcpStream::connect(("127.0.0.1", ports.idsvr)).is_err());
}

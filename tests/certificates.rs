//! The client certificate in a real Envoy: routes' certificate rules (required/optional, each kind
//! of allow-list) on the connection's certificate, and certificates in headers from a trusted hop
//! (`x-forwarded-client-cert` behind an Istio-style gateway, RFC 9440 `Client-Cert` from an
//! address), with the forgeries a partner can try. The whole topologies, with the front proxy,
//! HAProxy and nginx, are in `tests/e2e.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

const PARTNER: &str = "example.client";
const PARTNER2: &str = "example.client2";
const GATEWAY: &str = "example.gateway";

struct Fixture {
    envoy: Envoy,
    idp: Introspection,
    upstream: Upstream,
}

impl Fixture {
    /// The `json` format, with `edit` applied to the filter configuration and `hcm` merged into
    /// the connection manager.
    fn new(edit: impl FnOnce(&mut Value), hcm: Value) -> Fixture {
        let upstream = Upstream::start();
        let idp = Introspection::start(Format::Json);
        let mut config = filter_config(Format::Json);
        edit(&mut config);
        let mut opts = EnvoyOpts::new(config, idp.port(), upstream.port());
        opts.require_client_certificate = false;
        opts.hcm = hcm;
        let envoy = Envoy::start(&opts).unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            envoy,
            idp,
            upstream,
        }
    }

    /// A token bound to `cert`, or unbound.
    fn token(&self, cert: Option<&str>) -> String {
        let token = opaque_token("cert");
        let claims = match cert {
            Some(c) => bound_claims(&thumbprint(c), SCOPE),
            None => unbound_claims(SCOPE),
        };
        self.idp.register(&token, Behaviour::Active(claims));
        token
    }

    /// GET `path` as `cert` (none: no certificate) with `token` and `headers`.
    fn call(&self, cert: Option<&str>, path: &str, token: &str, headers: &[(&str, &str)]) -> Reply {
        let client = match cert {
            Some(c) => self.envoy.client(c),
            None => self.envoy.client_without_cert(),
        };
        let mut request = client
            .get(self.envoy.url(path))
            .header("authorization", format!("Bearer {token}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        send(request)
    }
}

const SCOPE: &str = "transactions";

fn hex_of(cert: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(thumbprint(cert))
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn routes_require_a_certificate_or_not_and_admit_only_their_allow_lists() {
    let partner = thumbprint(PARTNER);
    let route = |path: &str, extra: Value| {
        let mut r = json!({"path_prefix": path});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    let rules = |r: Value| json!({"allowed_certificates": r});
    let routes = json!([
        route("/required", json!({})),
        route("/optional", json!({"client_certificate": "optional"})),
        route("/thumbprint", rules(json!({"thumbprints": [partner]}))),
        route(
            "/subject",
            rules(json!({"subjects": ["CN=partner-client,O=Partner One"]}))
        ),
        route(
            "/issuer",
            rules(json!({"issuers": ["CN=certbound example intermediate CA"]}))
        ),
        route("/dns", rules(json!({"dns_sans": ["partner-client"]}))),
        route(
            "/uri",
            rules(json!({"uri_sans": ["spiffe://partners.example/partner-one"]}))
        ),
        route("/ip", rules(json!({"ip_sans": ["192.0.2.1"]}))),
        route(
            "/email",
            rules(json!({"email_sans": ["ops@partner-one.example"]}))
        ),
        route(
            "/issuer-and-dns",
            rules(
                json!({"issuers": ["CN=certbound example intermediate CA"], "dns_sans": ["partner-client-2"]})
            )
        ),
    ]);
    // Envoy hands a filter no certificate, only its digest: its connection manager puts it in
    // x-forwarded-client-cert, where certbound takes it under the connection's own hash.
    let hcm = json!({"forward_client_cert_details": "SANITIZE_SET",
                     "set_current_client_cert_details": {"cert": true}});
    let f = Fixture::new(|c| c["routes"] = routes, hcm);
    let mine = f.token(Some(PARTNER));
    let theirs = f.token(Some(PARTNER2));
    let unbound = f.token(None);

    let r = f.call(None, "/required", &unbound, &[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(f.envoy.counter("requests_denied.no_client_certificate"), 1);
    assert_eq!(f.call(Some(PARTNER), "/required", &mine, &[]).status, 200);
    // Optional: the unbound token alone decides; a bound one still needs its certificate.
    assert_eq!(f.call(None, "/optional", &unbound, &[]).status, 200);
    assert_eq!(f.call(None, "/optional", &mine, &[]).status, 401);
    assert_eq!(f.call(Some(PARTNER2), "/optional", &mine, &[]).status, 401);
    assert_eq!(f.call(Some(PARTNER), "/optional", &mine, &[]).status, 200);

    let upstream_before = f.upstream.count();
    for path in [
        "/thumbprint",
        "/subject",
        "/issuer",
        "/dns",
        "/uri",
        "/ip",
        "/email",
    ] {
        let r = f.call(Some(PARTNER), path, &mine, &[]);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        // partner-client-2 matches the issuer rule only.
        let r = f.call(Some(PARTNER2), path, &theirs, &[]);
        let expected = if path == "/issuer" { 200 } else { 403 };
        assert_eq!(r.status, expected, "{path} as partner-client-2: {r:?}");
        if expected == 403 {
            assert_eq!(r.json()["error"], "access_denied", "{r:?}");
        }
    }
    assert_eq!(
        f.call(Some(PARTNER2), "/issuer-and-dns", &theirs, &[])
            .status,
        200
    );
    assert_eq!(
        f.call(Some(PARTNER), "/issuer-and-dns", &mine, &[]).status,
        403
    );
    assert_eq!(f.upstream.count(), upstream_before + 9);
    assert_eq!(
        f.envoy.counter("requests_denied.certificate_not_allowed"),
        7
    );
    // The certificate headers never reach the API.
    assert!(f
        .upstream
        .requests()
        .iter()
        .all(|r| r.header("x-forwarded-client-cert").is_none()));
    // A forged Cert of another certificate does not change whose the connection is.
    let forged = format!("Hash={};Cert=\"x\"", hex_of(PARTNER));
    let r = f.call(
        Some(PARTNER2),
        "/dns",
        &theirs,
        &[("x-forwarded-client-cert", &forged)],
    );
    assert_eq!(r.status, 403, "{r:?}");
}

#[test]
fn an_xfcc_is_believed_from_the_gateway_only_and_istios_append_forward_is_read() {
    // The sidecar's connection manager as Istio sets it: APPEND_FORWARD (the gateway's element,
    // then the sidecar's own about the gateway); certbound trusts the gateway's SPIFFE ID.
    let hcm = json!({"forward_client_cert_details": "APPEND_FORWARD",
                     "set_current_client_cert_details": {"uri": true}});
    let f = Fixture::new(
        |c| {
            c["client_certificate"] = json!({"sources": ["xfcc"],
                "trusted_hop": {"uri_sans": ["spiffe://example.bank/ns/edge/sa/gateway"]}});
        },
        hcm,
    );
    let mine = f.token(Some(PARTNER));
    let partner = format!(
        "Hash={};Subject=\"CN=partner-client,O=Partner One\"",
        hex_of(PARTNER)
    );
    let victim = format!("Hash={}", hex_of(PARTNER));
    let r = f.call(
        Some(GATEWAY),
        PROTECTED_PATH,
        &mine,
        &[("x-forwarded-client-cert", &partner)],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(f
        .upstream
        .last()
        .header("x-forwarded-client-cert")
        .is_none());
    // Another partner's certificate through the gateway: the stolen token is refused.
    let other = format!("Hash={}", hex_of(PARTNER2));
    let r = f.call(
        Some(GATEWAY),
        PROTECTED_PATH,
        &mine,
        &[("x-forwarded-client-cert", &other)],
    );
    assert_eq!(r.status, 401, "{r:?}");
    // A thief straight to the inner proxy with the victim's hash: not the gateway, not believed.
    let before = f.upstream.count();
    for cert in [Some(PARTNER2), Some(PARTNER), None] {
        let r = f.call(
            cert,
            PROTECTED_PATH,
            &mine,
            &[("x-forwarded-client-cert", &victim)],
        );
        assert_eq!(r.status, 401, "{cert:?}: {r:?}");
    }
    assert_eq!(f.upstream.count(), before, "the API was not reached");
    assert_eq!(f.envoy.counter("requests_denied.no_client_certificate"), 3);
    // A malformed header from the gateway is the gateway's error: 400.
    let r = f.call(
        Some(GATEWAY),
        PROTECTED_PATH,
        &mine,
        &[("x-forwarded-client-cert", "Hash=\"")],
    );
    assert_eq!(r.status, 400, "{r:?}");
}

#[test]
fn a_client_cert_header_is_believed_from_the_trusted_address_only() {
    use base64::Engine;
    let der = {
        let pem = std::fs::read_to_string(certs_dir().join(format!("{PARTNER}.pem"))).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    };
    let client_cert = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    // Envoy's source.address is the connection's peer only with use_remote_address (else it is
    // taken from x-forwarded-for, which the client writes).
    let hcm = json!({"use_remote_address": true});
    let f = Fixture::new(
        |c| {
            c["client_certificate"] = json!({"sources": ["client-cert"],
                "trusted_hop": {"cidrs": ["127.0.0.2/32"]}});
        },
        hcm,
    );
    let mine = f.token(Some(PARTNER));
    let hop = client_from(f.envoy.listener_port, None, "127.0.0.2".parse().unwrap());
    let call = |client: &reqwest::blocking::Client, headers: &[(&str, &str)]| {
        let mut request = client
            .get(f.envoy.url(PROTECTED_PATH))
            .header("authorization", format!("Bearer {mine}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        send(request)
    };
    let r = call(&hop, &[("client-cert", &client_cert)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(f.upstream.last().header("client-cert").is_none());
    let before = f.upstream.count();
    let anyone = client_from(f.envoy.listener_port, None, "127.0.0.1".parse().unwrap());
    let r = call(
        &anyone,
        &[
            ("client-cert", &client_cert),
            ("x-forwarded-for", "127.0.0.2"),
        ],
    );
    assert_eq!(r.status, 401, "{r:?}");
    let r = call(
        &hop,
        &[("client-cert", &client_cert), ("client-cert", &client_cert)],
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(f.upstream.count(), before);
}

//! Every section's defaults and every bad configuration, as tables.

use crate::*;
use serde_json::{json, Value};

fn minimal(format: &str) -> Value {
    minimal_config(format)
}

fn parse_value(v: &Value) -> Result<Config, ConfigError> {
    parse(v.to_string().as_bytes())
}

#[test]
fn minimal_configs_get_the_documented_defaults() {
    let c = parse_value(&minimal("jwt")).unwrap();
    assert_eq!(c.realm, "certbound");
    assert_eq!(c.max_token_length, 4096);
    assert_eq!(c.introspection.timeout_ms, 2000);
    assert_eq!(c.introspection.max_body_bytes, 65536);
    let j = c.introspection.format.jwt_rules().unwrap();
    assert_eq!(j.algorithms, vec![Algorithm::PS256]);
    assert_eq!(j.clock_skew_seconds, 60);
    assert_eq!(j.typ, None);
    assert_eq!(j.jwks.max_age_seconds, 300);
    assert_eq!(c.cache.max_entries, 10_000);
    assert_eq!(c.cache.negative_ttl_seconds, 10);
    assert_eq!(
        c.cache.stale_if_error_seconds, 0,
        "stale-if-error is off by default"
    );
    assert!(c.default_policy.as_ref().unwrap().require_binding);
    assert_eq!(c.fingerprint.len(), 16);

    assert_eq!(j.jwks.timeout_ms, 2000);
    assert_eq!(j.jwks.max_body_bytes, 65536);
    let c = parse_value(&minimal("json")).unwrap();
    assert_eq!(c.introspection.format, Format::Json);

    let mut v = minimal("introspection-jwt");
    v["jwt"].as_object_mut().unwrap().remove("audiences");
    let c = parse_value(&v).unwrap();
    let j = c.introspection.format.jwt_rules().unwrap();
    assert_eq!(j.audiences, vec!["introspect-client".to_string()]);
    assert_eq!(j.typ.as_deref(), Some("token-introspection+jwt"));
}

#[test]
fn every_bad_configuration_names_its_field() {
    type Edit = fn(&mut Value);
    let table: Vec<(&str, Edit, &str)> = vec![
        (
            "json",
            |v| v["bogus"] = json!(1),
            "configuration: unknown field `bogus`",
        ),
        (
            "json",
            |v| v["introspection"]["bogus"] = json!(1),
            "introspection: unknown field `bogus`",
        ),
        (
            "json",
            |v| v["introspection"]["format"] = json!("xml"),
            "introspection.format: unknown format `xml`",
        ),
        (
            "json",
            |v| {
                v.as_object_mut().unwrap().remove("introspection");
            },
            "introspection: is required",
        ),
        (
            "json",
            |v| {
                v["introspection"].as_object_mut().unwrap().remove("format");
            },
            "introspection.format: is required",
        ),
        (
            "json",
            |v| {
                v["introspection"]
                    .as_object_mut()
                    .unwrap()
                    .remove("cluster");
            },
            "introspection.cluster: is required",
        ),
        (
            "json",
            |v| v["introspection"]["authority"] = json!(""),
            "introspection.authority: must not be empty",
        ),
        (
            "json",
            |v| v["introspection"]["path"] = json!("introspect"),
            "introspection.path: must start with '/'",
        ),
        (
            "json",
            |v| {
                v["introspection"]
                    .as_object_mut()
                    .unwrap()
                    .remove("client_id");
            },
            "introspection.client_id: is required",
        ),
        (
            "json",
            |v| {
                v["introspection"]
                    .as_object_mut()
                    .unwrap()
                    .remove("client_secret");
            },
            "introspection.client_secret: is required (or client_secret_env)",
        ),
        (
            "json",
            |v| v["introspection"]["timeout_ms"] = json!(0),
            "introspection.timeout_ms: must be greater than 0",
        ),
        (
            "json",
            |v| v["claim_headers"] = json!({"sub": "x_user"}),
            "claim_headers.sub: must not contain `_`",
        ),
        (
            "json",
            |v| v["claim_headers"] = json!({"sub": "Client-Cert-Chain"}),
            "claim_headers.sub: names a certificate header",
        ),
        (
            "json",
            |v| v["introspection"]["scheme"] = json!("HTTPS"),
            "introspection.scheme: must be http or https",
        ),
        (
            "jwt",
            |v| v["jwt"]["jwks"]["scheme"] = json!("tls"),
            "jwt.jwks.scheme: must be http or https",
        ),
        (
            "json",
            |v| v["introspection"]["audiences"] = json!([]),
            "introspection.audiences: must list non-empty audiences",
        ),
        (
            "json",
            |v| v["introspection"]["issuer"] = json!(""),
            "introspection.issuer: must not be empty",
        ),
        (
            "json",
            |v| v["introspection"]["max_body_bytes"] = json!(0),
            "introspection.max_body_bytes: must be greater than 0",
        ),
        (
            "json",
            |v| v["max_token_length"] = json!(0),
            "max_token_length: must be between",
        ),
        (
            "json",
            |v| v["jwt"] = json!({}),
            "jwt: is only used by the JWT formats",
        ),
        (
            "jwt",
            |v| {
                v.as_object_mut().unwrap().remove("jwt");
            },
            "jwt: is required for the JWT formats",
        ),
        (
            "jwt",
            |v| {
                v["jwt"].as_object_mut().unwrap().remove("issuer");
            },
            "jwt.issuer: is required",
        ),
        (
            "jwt",
            |v| {
                v["jwt"].as_object_mut().unwrap().remove("audiences");
            },
            "jwt.audiences: is required for format jwt",
        ),
        (
            "jwt",
            |v| v["jwt"]["audiences"] = json!([]),
            "jwt.audiences: must list non-empty audiences",
        ),
        (
            "jwt",
            |v| v["jwt"]["algorithms"] = json!([]),
            "jwt.algorithms: must list at least one",
        ),
        (
            "jwt",
            |v| v["jwt"]["algorithms"] = json!(["none"]),
            "jwt.algorithms: `none` is not allowed",
        ),
        (
            "jwt",
            |v| v["jwt"]["algorithms"] = json!(["HS256"]),
            "jwt.algorithms: `HS256` is not allowed",
        ),
        (
            "jwt",
            |v| v["jwt"]["clock_skew_seconds"] = json!(3600),
            "jwt.clock_skew_seconds: must be at most 600",
        ),
        (
            "jwt",
            |v| {
                v["jwt"].as_object_mut().unwrap().remove("jwks");
            },
            "jwt.jwks: is required",
        ),
        (
            "jwt",
            |v| {
                v["jwt"]["jwks"].as_object_mut().unwrap().remove("cluster");
            },
            "jwt.jwks.cluster: is required",
        ),
        (
            "jwt",
            |v| v["jwt"]["jwks"]["bogus"] = json!(1),
            "jwt.jwks: unknown field `bogus`",
        ),
        (
            "json",
            |v| v["introspection"]["timeout_ms"] = json!("fast"),
            "introspection: invalid type",
        ),
        (
            "jwt",
            |v| v["jwt"]["jwks"]["path"] = json!("jwks"),
            "jwt.jwks.path: must start with '/'",
        ),
        (
            "jwt",
            |v| v["jwt"]["jwks"]["timeout_ms"] = json!(0),
            "jwt.jwks.timeout_ms: must be greater than 0",
        ),
        (
            "jwt",
            |v| v["jwt"]["jwks"]["max_body_bytes"] = json!(17 * 1024 * 1024),
            "jwt.jwks.max_body_bytes: must be at most 16 MiB",
        ),
        (
            "introspection-jwt",
            |v| {
                v.as_object_mut().unwrap().remove("jwt");
            },
            "jwt: is required for the JWT formats",
        ),
        (
            "jwt",
            |v| v["jwt"]["jwks"]["max_age_seconds"] = json!(0),
            "jwt.jwks.max_age_seconds: must be greater than 0",
        ),
        (
            "jwt",
            |v| v["jwt"]["jwks"]["min_refetch_interval_seconds"] = json!(0),
            "jwt.jwks.min_refetch_interval_seconds: must be greater than 0",
        ),
        (
            "introspection-jwt",
            |v| v["jwt"]["typ"] = json!("JWT"),
            "jwt.typ: is fixed",
        ),
        (
            "json",
            |v| v["cache"] = json!({"max_entries": 0}),
            "cache.max_entries: must be between",
        ),
        (
            "json",
            |v| v["cache"] = json!({"namespace": "a/b"}),
            "cache.namespace: must be non-empty",
        ),
        (
            "json",
            |v| v["cache"] = json!({"max_ttl_seconds": 0}),
            "cache.max_ttl_seconds: must be greater than 0",
        ),
        (
            "json",
            |v| v["cache"] = json!({"negative_ttl_seconds": 0}),
            "cache.negative_ttl_seconds: must be greater than 0",
        ),
        (
            "json",
            |v| v["cache"] = json!({"size": 1}),
            "cache: unknown field `size`",
        ),
        (
            "json",
            |v| v["claim_headers"] = json!({"sub": "bad header"}),
            "claim_headers.sub: is not a valid HTTP header name",
        ),
        (
            "json",
            |v| v["claim_headers"] = json!({"sub": "Authorization"}),
            "claim_headers.sub: must not name a header the proxy owns",
        ),
        (
            "json",
            |v| v["claim_headers"] = json!({"sub": "x-a", "client_id": "X-A"}),
            "claim_headers.sub: names a header already used",
        ),
        (
            "json",
            |v| v["default_policy"] = json!({"required_scopes": ["a b"]}),
            "default_policy.required_scopes: scope values",
        ),
        (
            "json",
            |v| v["routes"] = json!([{"methods": ["GET"]}]),
            "routes[0].path_prefix: is required",
        ),
        (
            "json",
            |v| {
                v["routes"] =
                    json!([{"path_prefix": "/a"}, {"path_prefix": "/b", "methods": ["get"]}])
            },
            "routes[1].methods: methods are upper-case",
        ),
        (
            "json",
            |v| v["routes"] = json!([{"path_prefix": "/a", "scopes": []}]),
            "routes[0]: unknown field `scopes`",
        ),
        (
            "json",
            |v| v["cache"]["line\nbreak\u{1b}[31m"] = json!(1),
            "cache: unknown field `line\\nbreak\\u{1b}[31m`",
        ),
        (
            "json",
            |v| v["realm"] = json!("a\"b"),
            "realm: must be non-empty",
        ),
        (
            "json",
            |v| v["realm"] = json!("api\r\nSet-Cookie: x=1"),
            "realm: must be non-empty printable ASCII",
        ),
        (
            "json",
            |v| v["realm"] = json!("tab\there"),
            "realm: must be non-empty printable ASCII",
        ),
        (
            "json",
            |v| v["realm"] = json!("bank\u{7f}"),
            "realm: must be non-empty printable ASCII",
        ),
        (
            "json",
            |v| v["realm"] = json!("bänk"),
            "realm: must be non-empty printable ASCII",
        ),
        (
            "json",
            |v| v["cache"] = json!({"stale_if_error_seconds": 3601}),
            "cache.stale_if_error_seconds: must be at most 3600",
        ),
        (
            "json",
            |v| v["realm"] = json!(""),
            "realm: must be non-empty printable ASCII",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": []}),
            "client_certificate.sources: must list at least one source",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["header"]}),
            "client_certificate.sources: sources are connection, xfcc",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["xfcc", "xfcc"], "trusted_hop": {"cidrs": ["10.0.0.0/8"]}}),
            "client_certificate.sources: names a source twice",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["xfcc", "client-cert"], "trusted_hop": {"cidrs": ["10.0.0.0/8"]}}),
            "client_certificate.sources: names more than one header source",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["pem-header"], "pem_header": "x_client_cert", "trusted_hop": {"cidrs": ["10.0.0.0/8"]}}),
            "client_certificate.pem_header: must not contain `_`",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["xfcc"], "trusted_hop": {"cidrs": ["0.0.0.0/0"]}}),
            "client_certificate.trusted_hop.cidrs: entries must be CIDR blocks",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["xfcc"]}),
            "client_certificate.trusted_hop: is required with a header source",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["client-cert"], "trusted_hop": {}}),
            "client_certificate.trusted_hop: must name the hop",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"trusted_hop": {"cidrs": ["10.0.0.0/8"]}}),
            "client_certificate.trusted_hop: is only used with a header source",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"forward_headers": true}),
            "client_certificate.forward_headers: is only used with a header source",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["pem-header"], "trusted_hop": {"cidrs": ["10.0.0.0/8"]}}),
            "client_certificate.pem_header: is required with the pem-header source",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"pem_header": "x-cert"}),
            "client_certificate.pem_header: is only used by the pem-header source",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["pem-header"], "pem_header": "Client-Cert", "trusted_hop": {"cidrs": ["10.0.0.0/8"]}}),
            "client_certificate.pem_header: names a header of another source",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["pem-header"], "pem_header": "bad header", "trusted_hop": {"cidrs": ["10.0.0.0/8"]}}),
            "client_certificate.pem_header: is not a valid HTTP header name",
        ),
        (
            "json",
            |v| { v["claim_headers"] = json!({"sub": "x-cert"}); v["client_certificate"] = json!({"sources": ["pem-header"], "pem_header": "x-cert", "trusted_hop": {"cidrs": ["10.0.0.0/8"]}}) },
            "client_certificate.pem_header: names a header certbound sets",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["xfcc"], "trusted_hop": {"cidrs": ["10.0.0.1/8"]}}),
            "client_certificate.trusted_hop.cidrs: entries must be CIDR blocks",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["xfcc"], "trusted_hop": {"cidrs": ["10.0.0.0"]}}),
            "client_certificate.trusted_hop.cidrs: entries must be CIDR blocks",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["xfcc"], "trusted_hop": {"thumbprints": ["abc"]}}),
            "client_certificate.trusted_hop.thumbprints: entries must be x5t#S256 values",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["xfcc"], "trusted_hop": {"uri_sans": [""]}}),
            "client_certificate.trusted_hop.uri_sans: entries must be non-empty",
        ),
        (
            "json",
            |v| v["client_certificate"] = json!({"sources": ["xfcc"], "trusted_hop": {"spiffe": ["x"]}}),
            "client_certificate.trusted_hop: unknown field `spiffe`",
        ),
        (
            "json",
            |v| v["routes"] = json!([{"path_prefix": "/a", "client_certificate": "maybe"}]),
            "routes[0].client_certificate: must be required or optional",
        ),
        (
            "json",
            |v| v["routes"] = json!([{"path_prefix": "/a", "client_certificate": "optional", "require_binding": true}]),
            "routes[0].client_certificate: optional contradicts require_binding true",
        ),
        (
            "json",
            |v| v["routes"] = json!([{"path_prefix": "/a", "allowed_certificates": {}}]),
            "routes[0].allowed_certificates: must list at least one rule",
        ),
        (
            "json",
            |v| v["routes"] = json!([{"path_prefix": "/a", "allowed_certificates": {"sans": ["x"]}}]),
            "routes[0].allowed_certificates: unknown field `sans`",
        ),
        (
            "json",
            |v| v["routes"] = json!([{"path_prefix": "/a", "allowed_certificates": {"ip_sans": ["10.0.0.0/8"]}}]),
            "routes[0].allowed_certificates.ip_sans: entries must be IP addresses",
        ),
        (
            "json",
            |v| v["routes"] = json!([{"path_prefix": "/a", "allowed_certificates": {"thumbprints": ["ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0"]}}]),
            "routes[0].allowed_certificates.thumbprints: entries must be x5t#S256",
        ),
        (
            "json",
            |v| v["revocation"] = json!({"path": "/events"}),
            "revocation.jwks: is required with format json",
        ),
        (
            "jwt",
            |v| v["revocation"] = json!({"path": "/events", "jwks": {}}),
            "revocation.jwks: is the JWT format's",
        ),
        (
            "json",
            |v| v["revocation"] = json!({"path": "/events", "jwks": {"cluster": "idsvr", "authority": "a", "path": "/jwks"}}),
            "revocation.issuer: is required with format json",
        ),
        (
            "json",
            |v| v["revocation"] = json!({"path": "/events", "issuer": "i", "jwks": {"cluster": "idsvr", "authority": "a"}}),
            "revocation.jwks.path: is required",
        ),
        (
            "jwt",
            |v| v["revocation"] = json!({}),
            "revocation.path: is required",
        ),
        (
            "jwt",
            |v| v["revocation"] = json!({"path": "/events", "poll_interval_ms": 50}),
            "revocation.poll_interval_ms: must be between 100 and 60000",
        ),
        (
            "jwt",
            |v| v["revocation"] = json!({"path": "/events", "poll_interval_ms": 2000, "max_staleness_seconds": 2}),
            "revocation.max_staleness_seconds: must be longer than poll_interval_ms",
        ),
        (
            "jwt",
            |v| v["revocation"] = json!({"path": "/events", "max_staleness_seconds": 0}),
            "revocation.max_staleness_seconds: must be greater than 0",
        ),
        (
            "jwt",
            |v| v["revocation"] = json!({"path": "/events", "max_events": 0}),
            "revocation.max_events: must be between 1 and 100000",
        ),
        (
            "jwt",
            |v| v["revocation"] = json!({"path": "/events", "algorithms": ["HS256"]}),
            "revocation.algorithms: `HS256` is not allowed",
        ),
        (
            "jwt",
            |v| v["revocation"] = json!({"path": "/events", "audience": ""}),
            "revocation.audience: must not be empty",
        ),
        (
            "jwt",
            |v| v["revocation"] = json!({"path": "/events", "bogus": 1}),
            "revocation: unknown field `bogus`",
        ),
        (
            "json",
            |v| v["default_policy"] = json!({"allowed_certificates": {"subjects": ["CN=a\u{7}"]}}),
            "default_policy.allowed_certificates.subjects: entries must be non-empty, without control characters",
        ),
    ];
    for (format, edit, expected) in table {
        let mut v = minimal(format);
        edit(&mut v);
        let e = parse_value(&v).expect_err(expected);
        assert!(
            e.0.contains(expected),
            "expected `{expected}`, got `{}`",
            e.0
        );
    }
    assert!(parse(b"not json").is_err());
}

#[test]
fn a_scheme_is_sent_only_where_configured_and_the_feed_inherits_the_introspections() {
    let plain = parse_value(&minimal("json")).unwrap();
    let headers = plain
        .introspection
        .endpoint
        .pseudo_headers("POST", "/p".into());
    assert!(headers.iter().all(|(k, _)| *k != ":scheme"), "{headers:?}");
    let mut v = minimal("jwt");
    v["introspection"]["scheme"] = json!("https");
    v["revocation"] = json!({"path": "/events"});
    let c = parse_value(&v).unwrap();
    let headers = c.introspection.endpoint.pseudo_headers("POST", "/p".into());
    assert!(
        headers.contains(&(":scheme", "https".to_string())),
        "{headers:?}"
    );
    assert_eq!(c.revocation.unwrap().feed.scheme, Some("https"));
}

#[test]
fn the_revocation_feed_defaults_to_the_introspection_and_jwt_sections() {
    let c = parse_value(&minimal("jwt")).unwrap();
    assert_eq!(c.revocation, None, "no feed unless configured");
    let mut v = minimal("jwt");
    v["revocation"] = json!({"path": "/events"});
    let c = parse_value(&v).unwrap();
    let r = c.revocation.unwrap();
    let j = c.introspection.format.jwt_rules().unwrap();
    assert_eq!(r.feed.cluster, c.introspection.endpoint.cluster);
    assert_eq!(r.feed.authority, c.introspection.endpoint.authority);
    assert_eq!(r.feed.path, "/events");
    assert_eq!(r.rules.issuer, j.issuer);
    assert_eq!(r.rules.jwks, j.jwks);
    assert_eq!(r.rules.audiences, vec![c.introspection.client_id.clone()]);
    assert_eq!(r.rules.typ.as_deref(), Some("secevent+jwt"));
    assert_eq!((r.poll_interval_ms, r.timeout_ms), (500, 1000));
    assert_eq!((r.max_staleness_ms, r.max_events), (10_000, 10_000));

    let mut v = minimal("json");
    v["revocation"] = json!({
        "path": "/events", "issuer": "https://idsvr", "audience": "gw", "algorithms": ["ES256"],
        "jwks": {"cluster": "keys", "authority": "k", "path": "/jwks"}
    });
    let r = parse_value(&v).unwrap().revocation.unwrap();
    assert_eq!(r.rules.issuer, "https://idsvr");
    assert_eq!(r.rules.audiences, vec!["gw".to_string()]);
    assert_eq!(r.rules.algorithms, vec![Algorithm::ES256]);
    assert_eq!(r.rules.jwks.endpoint.cluster, "keys");
}

#[test]
fn client_certificate_sections_and_certificate_policies_get_their_defaults() {
    let c = parse_value(&minimal("json")).unwrap();
    assert_eq!(
        c.client_certificate.sources,
        [CertificateSource::Connection]
    );
    assert!(c.client_certificate.connection_only());
    assert!(!c.client_certificate.forward_headers);
    let mut v = minimal("json");
    v["client_certificate"] = json!({"sources": ["xfcc", "connection"],
        "trusted_hop": {"dns_sans": ["GateWay"], "cidrs": ["10.0.0.0/8", "::1/128"]}, "forward_headers": true});
    v["routes"] = json!([
        {"path_prefix": "/a"},
        {"path_prefix": "/b", "require_binding": false},
        {"path_prefix": "/c", "client_certificate": "optional"},
        {"path_prefix": "/d", "client_certificate": "required", "require_binding": false,
         "allowed_certificates": {"dns_sans": ["Partner.Example"], "ip_sans": ["::1"]}}
    ]);
    let c = parse_value(&v).unwrap();
    let cc = &c.client_certificate;
    assert_eq!(
        cc.sources,
        [CertificateSource::Xfcc, CertificateSource::Connection]
    );
    assert_eq!(cc.trusted_hop.dns_sans, ["gateway"]);
    assert_eq!(cc.trusted_hop.cidrs.len(), 2);
    assert!(cc.forward_headers);
    let p = |i: usize| &c.routes[i].policy;
    assert!(p(0).certificate_required && p(0).require_binding);
    // Unset, a certificate is required where binding is: a route without binding takes none.
    assert!(!p(1).certificate_required && !p(1).require_binding);
    assert!(!p(2).certificate_required && !p(2).require_binding);
    assert!(p(3).certificate_required && !p(3).require_binding);
    let rules = p(3).certificate_rules.as_ref().unwrap();
    assert_eq!(rules.dns_sans, ["partner.example"]);
    assert!(rules.need_certificate());
}

#[test]
fn the_default_policy_is_a_policy_or_deny() {
    let c = parse_value(&minimal("json")).unwrap();
    assert!(c.default_policy.as_ref().unwrap().require_binding);
    let mut v = minimal("json");
    v["default_policy"] = json!("deny");
    assert_eq!(parse_value(&v).unwrap().default_policy, None);
    v["default_policy"] = json!("allow");
    assert!(parse_value(&v)
        .unwrap_err()
        .0
        .contains("default_policy: must be \"deny\" or a policy object"));
    for prefix in ["/api?x", "/api;v", "/api/%74", "/a//b", "/a\\b"] {
        v["default_policy"] = json!("deny");
        v["routes"] = json!([{ "path_prefix": prefix }]);
        let e = parse_value(&v).unwrap_err().0;
        assert!(
            e.contains("routes[0].path_prefix: must be a plain path"),
            "{prefix}: {e}"
        );
    }
}

#[test]
fn no_error_echoes_a_value() {
    let mut v = minimal("json");
    v["introspection"]["timeout_ms"] = json!("s3cret-in-the-wrong-field");
    let e = parse_value(&v).unwrap_err().0;
    assert!(
        e.starts_with("introspection: invalid type, expected u64"),
        "{e}"
    );
    v = minimal("json");
    v["introspection"]["client_secret"] = json!(12345678);
    let e = parse_value(&v).unwrap_err().0;
    assert!(!e.contains("12345678"), "{e}");
    let mut v = minimal("json");
    v["introspection"]["timeout_ms"] = json!(60_001);
    let e = parse_value(&v).unwrap_err().0;
    assert!(
        e.contains("introspection.timeout_ms: must be at most 60000"),
        "{e}"
    );
    for (section, field, value) in [
        ("cache", "max_ttl_seconds", 86_401),
        ("cache", "negative_ttl_seconds", 3601),
    ] {
        let mut v = minimal("json");
        v[section] = json!({ field: value });
        let e = parse_value(&v).unwrap_err().0;
        assert!(
            e.contains(&format!("{section}.{field}: must be at most")),
            "{e}"
        );
    }
}

#[test]
fn the_fingerprint_does_not_depend_on_the_secret() {
    let a = parse_value(&minimal("json")).unwrap().fingerprint;
    let mut v = minimal("json");
    v["introspection"]["client_secret"] = json!("another secret");
    assert_eq!(parse_value(&v).unwrap().fingerprint, a);
}

#[test]
fn fingerprint_changes_with_the_configuration() {
    let a = parse_value(&minimal("json")).unwrap().fingerprint;
    let mut v = minimal("json");
    v["realm"] = json!("other");
    assert_ne!(a, parse_value(&v).unwrap().fingerprint);
}

#[test]
fn the_secret_may_come_from_a_vm_environment_variable() {
    let env = |name: &str| match name {
        "CERTBOUND_SECRET" => Some("from-the-environment".to_string()),
        "EMPTY" => Some("".to_string()),
        "NEWLINE" => Some("from-a-file\n".to_string()),
        _ => None,
    };
    let with = |variable: Value| {
        let mut v = minimal("json");
        let i = v["introspection"].as_object_mut().unwrap();
        i.remove("client_secret");
        i.insert("client_secret_env".into(), variable);
        parse_with_env(v.to_string().as_bytes(), &env)
    };
    let c = with(json!("CERTBOUND_SECRET")).unwrap();
    assert_eq!(c.introspection.client_secret, "from-the-environment");
    for (variable, expected) in [
        (json!("UNSET"), "names a variable the VM does not have"),
        (
            json!("EMPTY"),
            "names a variable the VM does not have or that is empty",
        ),
        (json!("lower"), "must be an environment variable name"),
        (json!("1ST"), "must be an environment variable name"),
        (json!(""), "must be an environment variable name"),
    ] {
        let e = with(variable.clone()).unwrap_err().0;
        assert!(
            e.starts_with("introspection.client_secret_env: ") && e.contains(expected),
            "{variable}: {e}"
        );
    }
    // Both at once is a mistake, not a choice.
    let mut v = minimal("json");
    v["introspection"]["client_secret_env"] = json!("CERTBOUND_SECRET");
    let e = parse_with_env(v.to_string().as_bytes(), &env)
        .unwrap_err()
        .0;
    assert!(e.contains("replaces client_secret"), "{e}");
    // The secret from the environment keys the seal but not the fingerprint, like an inline one.
    let inline = parse_value(&minimal("json")).unwrap();
    assert_ne!(
        c.fingerprint, inline.fingerprint,
        "the configurations differ"
    );
}

#[test]
fn tls_client_auth_names_the_client_and_takes_no_secret() {
    let mut v = minimal("introspection-jwt");
    let i = v["introspection"].as_object_mut().unwrap();
    i.remove("client_secret");
    i.insert("client_auth".into(), json!("tls_client_auth"));
    v["jwt"].as_object_mut().unwrap().remove("audiences");
    let c = parse_value(&v).unwrap();
    assert_eq!(c.introspection.client_auth, ClientAuth::TlsClientAuth);
    assert_eq!(c.introspection.client_secret, "");
    // RFC 9701: the answer is addressed to the introspecting client, whatever its authentication.
    assert_eq!(
        c.introspection.format.jwt_rules().unwrap().audiences,
        ["introspect-client"]
    );
    // A secret beside it is a mistake; an unknown method is refused.
    let mut both = v.clone();
    both["introspection"]["client_secret"] = json!("s3cret");
    let e = parse_value(&both).unwrap_err().0;
    assert!(
        e.starts_with("introspection.client_secret: is not used with client_auth tls_client_auth"),
        "{e}"
    );
    let mut other = minimal("json");
    other["introspection"]["client_auth"] = json!("private_key_jwt");
    let e = parse_value(&other).unwrap_err().0;
    assert!(e.starts_with("introspection.client_auth: must be"), "{e}");
    // The default stays client_secret_basic.
    assert_eq!(
        parse_value(&minimal("json"))
            .unwrap()
            .introspection
            .client_auth,
        ClientAuth::ClientSecretBasic
    );
}

/// Found by the `config` fuzz target: a claim name with NUL bytes came back in the error as is.
#[test]
fn errors_naming_a_chosen_name_escape_its_control_characters() {
    let mut v = minimal("json");
    v["claim_headers"] = json!({"a": "x-h", "~\u{0}\u{0}m\nm": "x-h"});
    let e = parse_value(&v).unwrap_err().0;
    assert!(!e.chars().any(char::is_control), "{e:?}");
    assert!(e.contains(r"\u{0}\u{0}m\nm"), "{e:?}");
    assert!(
        e.contains("names a header already used by another claim"),
        "{e:?}"
    );
}

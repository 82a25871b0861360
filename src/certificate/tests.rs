//! The certificate sources, the trust rule and the allow-lists, natively, with certificates made
//! by rcgen (every SAN kind, issued by a CA).

use super::*;
use crate::config::{parse, ClientCertificates};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use serde_json::{json, Value};
use std::cell::Cell;

/// A partner certificate with every SAN kind, issued by "Partner CA", and its DER.
pub(crate) fn partner() -> Vec<u8> {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::OrganizationName, "Example Bank");
    ca.distinguished_name.push(DnType::CommonName, "Partner CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["Partner.Example.com".to_string()]).unwrap();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::OrganizationName, "Partner One");
    leaf.distinguished_name
        .push(DnType::CommonName, "partner-client");
    leaf.subject_alt_names.extend([
        SanType::URI("spiffe://partners.example/one".try_into().unwrap()),
        SanType::IpAddress("192.0.2.7".parse().unwrap()),
        SanType::IpAddress("2001:db8::7".parse().unwrap()),
        SanType::Rfc822Name("ops@partner.example".try_into().unwrap()),
    ]);
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    cert.der().to_vec()
}

fn pem_of(der: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD;
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

pub(crate) fn url_encoded_pem(der: &[u8]) -> String {
    utf8_percent_encode(&pem_of(der), NON_ALPHANUMERIC).to_string()
}

pub(crate) fn hex(t: &Thumbprint) -> String {
    t.to_hex()
}

/// A connection, counting the host calls made to read it.
#[derive(Default)]
struct FakePeer {
    thumbprint: Option<Thumbprint>,
    uri: Option<String>,
    dns: Option<String>,
    address: Option<IpAddr>,
    reads: Cell<u32>,
}

impl Peer for FakePeer {
    fn thumbprint(&self) -> Option<Thumbprint> {
        self.reads.set(self.reads.get() + 1);
        self.thumbprint
    }
    fn der(&self) -> Option<Vec<u8>> {
        self.reads.set(self.reads.get() + 1);
        None
    }
    fn uri_san(&self) -> Option<String> {
        self.reads.set(self.reads.get() + 1);
        self.uri.clone()
    }
    fn dns_san(&self) -> Option<String> {
        self.reads.set(self.reads.get() + 1);
        self.dns.clone()
    }
    fn address(&self) -> Option<IpAddr> {
        self.reads.set(self.reads.get() + 1);
        self.address
    }
}

const GATEWAY: Thumbprint = Thumbprint([7; 32]);
const PARTNER_HASH: Thumbprint = Thumbprint([1; 32]);

fn sources(section: Value) -> ClientCertificates {
    let mut v = crate::config::minimal_config("json");
    v["client_certificate"] = section;
    parse(v.to_string().as_bytes()).unwrap().client_certificate
}

fn xfcc(value: &str) -> Vec<(HeaderKind, Cow<'static, str>)> {
    vec![(HeaderKind::Xfcc, Cow::Owned(value.to_string()))]
}

#[test]
fn xfcc_values_split_into_elements_and_pairs() {
    let pairs = |v: &str| -> Option<Vec<Vec<(String, String)>>> { xfcc_elements(v) };
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(pairs("Hash=ab"), Some(vec![vec![kv("Hash", "ab")]]));
    assert_eq!(
        pairs(r#"By=spiffe://a;Hash=ab;Subject="CN=x, O=y;z";URI=spiffe://b,Hash=cd"#),
        Some(vec![
            vec![
                kv("By", "spiffe://a"),
                kv("Hash", "ab"),
                kv("Subject", "CN=x, O=y;z"),
                kv("URI", "spiffe://b")
            ],
            vec![kv("Hash", "cd")]
        ])
    );
    assert_eq!(
        pairs(r#"Subject="a \"quoted\" name""#),
        Some(vec![vec![kv("Subject", r#"a "quoted" name"#)]])
    );
    for bad in [
        "",
        "Hash",
        "=ab",
        "Hash=ab,",
        "Hash=ab;;",
        r#"Subject="unterminated"#,
        "Hash=a\nb",
        r#"Subject="x\"#,
        // A stray quote may not swallow what a hop appended.
        r#"Hash=ab;Subject=",By=gw;Hash=cd;Cert="x""#,
        r#"Hash=ab;Subject="x"y"#,
        r#"Hash=a"b"#,
        // Only Envoy's keys.
        "Hash=ab;X=1",
    ] {
        assert_eq!(pairs(bad), None, "{bad:?}");
    }
}

#[test]
fn the_xfcc_element_is_the_trusted_hops_own() {
    let der = partner();
    let partner = Thumbprint::from_der(&der);
    let cert = url_encoded_pem(&der);
    let table: Vec<(String, Result<Option<Thumbprint>, ()>)> = vec![
        (format!("Hash={}", hex(&partner)), Ok(Some(partner))),
        (
            format!("Hash={}", hex(&partner).to_uppercase()),
            Ok(Some(partner)),
        ),
        (format!("Cert=\"{cert}\""), Ok(Some(partner))),
        (
            format!("Hash={};Cert=\"{cert}\"", hex(&partner)),
            Ok(Some(partner)),
        ),
        // This proxy's own APPEND_FORWARD element about the hop comes last, and is passed over.
        (
            format!(
                "Hash={},By=spiffe://sidecar;Hash={}",
                hex(&partner),
                hex(&GATEWAY)
            ),
            Ok(Some(partner)),
        ),
        // Only the element about the hop itself: no client certificate.
        (format!("Hash={}", hex(&GATEWAY)), Ok(None)),
        // Anything else is refused: the element a client slipped in before the hop's...
        (
            format!("Hash={},Hash={}", hex(&PARTNER_HASH), hex(&partner)),
            Err(()),
        ),
        // ...or one an unquoted URI SAN holding `,Hash=` adds (Envoy does not quote URI or DNS).
        (
            format!(
                "Hash={};URI=https://p.example/x,Hash={}",
                hex(&partner),
                hex(&PARTNER_HASH)
            ),
            Err(()),
        ),
        (
            format!(
                "Hash={};URI=https://p.example/x,Hash={},Hash={}",
                hex(&partner),
                hex(&PARTNER_HASH),
                hex(&GATEWAY)
            ),
            Err(()),
        ),
        (
            format!("Hash={};Cert=\"{cert}\"", hex(&PARTNER_HASH)),
            Err(()),
        ),
        ("By=spiffe://x;Subject=\"CN=x\"".to_string(), Err(())),
        ("Hash=00".to_string(), Err(())),
        (
            format!("Hash={};Hash={}", hex(&partner), hex(&partner)),
            Err(()),
        ),
        ("Cert=\"not%20a%20pem\"".to_string(), Err(())),
    ];
    for (value, expected) in table {
        let got = from_xfcc(&value, Some(GATEWAY))
            .map(|found| found.map(|(t, _)| t))
            .map_err(|_| ());
        assert_eq!(got, expected, "{value}");
    }
    let (_, with_der) = from_xfcc(&format!("Cert=\"{cert}\""), None)
        .unwrap()
        .unwrap();
    assert_eq!(with_der.as_deref(), Some(&der[..]));
}

#[test]
fn client_cert_is_one_structured_byte_sequence() {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    let der = partner();
    let good = format!(":{}:", STANDARD.encode(&der));
    assert_eq!(from_client_cert(&good).unwrap(), der);
    assert_eq!(from_client_cert(&format!(" {good}\t")).unwrap(), der);
    assert_eq!(
        from_client_cert(&format!(":{}:", STANDARD_NO_PAD.encode(&der))).unwrap(),
        der
    );
    for bad in [
        STANDARD.encode(&der),
        format!(":{}", STANDARD.encode(&der)),
        format!(":{}:", STANDARD.encode(&der[..der.len() - 1])),
        // The URL-safe alphabet (the certificate's base64 holds a `+` or a `/`, almost surely).
        format!(
            ":{}:",
            STANDARD.encode(&der).replace('+', "-").replace('/', "_")
        ),
        format!("{good}, {good}"),
        "::".to_string(),
    ] {
        assert!(from_client_cert(&bad).is_err(), "{bad}");
    }
}

#[test]
fn a_pem_header_is_url_decoded_and_keeps_its_plus_signs() {
    let der = partner();
    assert_eq!(from_pem_header(&url_encoded_pem(&der)).unwrap(), der);
    // AWS ALB leaves `+`, `/` and `=` as they are.
    let alb = pem_of(&der).replace('\n', "%0A").replace(' ', "%20");
    assert_eq!(from_pem_header(&alb).unwrap(), der);
    for bad in [
        "",
        "%ZZ",
        "-----BEGIN CERTIFICATE-----%0AAAAA%0A-----END CERTIFICATE-----",
        "%FF%FE",
    ] {
        assert!(from_pem_header(bad).is_err(), "{bad}");
    }
}

#[test]
fn only_a_trusted_hops_header_is_read_and_in_the_configured_order() {
    let forged = xfcc(&format!("Hash={}", hex(&PARTNER_HASH)));
    let mine = Thumbprint([9; 32]);
    let peer = |t: Option<Thumbprint>, uri: Option<&str>, dns: Option<&str>, ip: &str| FakePeer {
        thumbprint: t,
        uri: uri.map(str::to_string),
        dns: dns.map(str::to_string),
        address: Some(ip.parse().unwrap()),
        ..FakePeer::default()
    };
    let by_thumbprint =
        json!({"sources": ["xfcc"], "trusted_hop": {"thumbprints": [GATEWAY.to_x5t()]}});
    let by_uri =
        json!({"sources": ["xfcc"], "trusted_hop": {"uri_sans": ["spiffe://mesh/gateway"]}});
    let by_dns = json!({"sources": ["xfcc"], "trusted_hop": {"dns_sans": ["certbound-gateway"]}});
    let by_cidr = json!({"sources": ["xfcc"], "trusted_hop": {"cidrs": ["10.1.0.0/16"]}});
    let both = json!({"sources": ["xfcc"], "trusted_hop": {"dns_sans": ["certbound-gateway"], "cidrs": ["10.1.0.0/16"]}});
    let then_connection =
        json!({"sources": ["xfcc", "connection"], "trusted_hop": {"cidrs": ["10.1.0.0/16"]}});
    type Case = (Value, FakePeer, Option<Thumbprint>);
    let table: Vec<Case> = vec![
        (
            by_thumbprint.clone(),
            peer(Some(GATEWAY), None, None, "10.9.9.9"),
            Some(PARTNER_HASH),
        ),
        (
            by_thumbprint.clone(),
            peer(Some(mine), None, None, "10.9.9.9"),
            None,
        ),
        (by_thumbprint, peer(None, None, None, "10.9.9.9"), None),
        (
            by_uri.clone(),
            peer(Some(mine), Some("spiffe://mesh/gateway"), None, "10.9.9.9"),
            Some(PARTNER_HASH),
        ),
        (
            by_uri.clone(),
            peer(
                Some(mine),
                Some("spiffe://mesh/gateway/x"),
                None,
                "10.9.9.9",
            ),
            None,
        ),
        // A SAN without a certificate is no identity.
        (
            by_uri,
            peer(None, Some("spiffe://mesh/gateway"), None, "10.9.9.9"),
            None,
        ),
        (
            by_dns.clone(),
            peer(Some(mine), None, Some("Certbound-Gateway"), "10.9.9.9"),
            Some(PARTNER_HASH),
        ),
        (
            by_dns,
            peer(Some(mine), None, Some("certbound-gateway.evil"), "10.9.9.9"),
            None,
        ),
        (
            by_cidr.clone(),
            peer(None, None, None, "10.1.2.3"),
            Some(PARTNER_HASH),
        ),
        (by_cidr.clone(), peer(None, None, None, "10.2.0.1"), None),
        (
            by_cidr.clone(),
            peer(None, None, None, "::ffff:10.1.2.3"),
            Some(PARTNER_HASH),
        ),
        (by_cidr, peer(None, None, None, "::ffff:10.2.0.1"), None),
        (
            both.clone(),
            peer(Some(mine), None, Some("certbound-gateway"), "10.1.0.9"),
            Some(PARTNER_HASH),
        ),
        (
            both.clone(),
            peer(Some(mine), None, Some("certbound-gateway"), "10.3.0.9"),
            None,
        ),
        (
            both,
            peer(Some(mine), None, Some("other"), "10.1.0.9"),
            None,
        ),
        // Untrusted: the header is passed over and the connection's own certificate is used.
        (
            then_connection.clone(),
            peer(Some(mine), None, None, "10.2.0.1"),
            Some(mine),
        ),
        (
            then_connection,
            peer(Some(mine), None, None, "10.1.0.1"),
            Some(PARTNER_HASH),
        ),
    ];
    for (section, peer, expected) in table {
        let cfg = sources(section.clone());
        let got = present(&cfg, &forged, &peer).unwrap();
        assert_eq!(got.thumbprint, expected, "{section} {:?}", peer.address);
        assert_eq!(
            got.trusted_headers,
            expected == Some(PARTNER_HASH),
            "{section}"
        );
    }
}

#[test]
fn without_header_sources_no_header_is_read_and_only_the_digest_is_asked() {
    let cfg = sources(json!({"sources": ["connection"]}));
    let peer = FakePeer {
        thumbprint: Some(GATEWAY),
        ..FakePeer::default()
    };
    let got = present(&cfg, &xfcc(&format!("Hash={}", hex(&PARTNER_HASH))), &peer).unwrap();
    assert_eq!(got.thumbprint, Some(GATEWAY));
    assert!(!got.trusted_headers);
    assert_eq!(peer.reads.get(), 1);
    // A header source with no header present asks nothing of the trust rule.
    let cfg =
        sources(json!({"sources": ["client-cert"], "trusted_hop": {"cidrs": ["10.0.0.0/8"]}}));
    let peer = FakePeer::default();
    assert_eq!(present(&cfg, &[], &peer).unwrap().thumbprint, None);
    assert_eq!(peer.reads.get(), 0);
}

#[test]
fn a_trusted_hops_header_must_be_there_once_and_well_formed() {
    use base64::engine::general_purpose::STANDARD;
    let der = partner();
    let trusted = FakePeer {
        address: Some("10.0.0.1".parse().unwrap()),
        ..FakePeer::default()
    };
    let hop = json!({"cidrs": ["10.0.0.0/8"]});
    let cc_cfg = sources(json!({"sources": ["client-cert"], "trusted_hop": hop}));
    let pem_cfg = sources(
        json!({"sources": ["pem-header"], "pem_header": "X-Client-PEM", "trusted_hop": hop}),
    );
    let cc = |v: String| (HeaderKind::ClientCert, Cow::Owned(v));
    let pem = |v: String| (HeaderKind::Pem, Cow::Owned(v));
    let good_cc = format!(":{}:", STANDARD.encode(&der));
    let got = present(&cc_cfg, &[cc(good_cc.clone())], &trusted).unwrap();
    assert_eq!(got.thumbprint, Some(Thumbprint::from_der(&der)));
    assert_eq!(got.der.as_deref(), Some(&der[..]));
    let got = present(&pem_cfg, &[pem(url_encoded_pem(&der))], &trusted).unwrap();
    assert_eq!(got.thumbprint, Some(Thumbprint::from_der(&der)));
    // Another source's header, even from the trusted hop, is not read: the hop did not set it.
    let other = xfcc(&format!("Hash={}", hex(&PARTNER_HASH)));
    assert_eq!(present(&cc_cfg, &other, &trusted).unwrap().thumbprint, None);
    for (cfg, bad) in [
        (&cc_cfg, vec![cc(good_cc.clone()), cc(good_cc.clone())]),
        (&cc_cfg, vec![cc("garbage".to_string())]),
        (&pem_cfg, vec![pem("garbage".to_string())]),
    ] {
        assert!(present(cfg, &bad, &trusted).is_err(), "{bad:?}");
    }
    // From an untrusted peer the same garbage is simply not read.
    let untrusted = FakePeer {
        address: Some("192.0.2.1".parse().unwrap()),
        ..FakePeer::default()
    };
    let got = present(&cc_cfg, &[cc("garbage".to_string())], &untrusted).unwrap();
    assert_eq!(got.thumbprint, None);
}

#[test]
fn only_the_header_sources_own_headers_are_forwarded() {
    let cfg = sources(
        json!({"sources": ["client-cert"], "trusted_hop": {"cidrs": ["10.0.0.0/8"]},
                             "forward_headers": true}),
    );
    let trusted = Presented {
        trusted_headers: true,
        ..Presented::default()
    };
    let untrusted = Presented::default();
    assert!(HeaderKind::ClientCert.forwarded(&cfg, &trusted));
    assert!(HeaderKind::ClientCertChain.forwarded(&cfg, &trusted));
    assert!(
        !HeaderKind::Xfcc.forwarded(&cfg, &trusted),
        "the client's, passed on by the hop"
    );
    assert!(!HeaderKind::ClientCert.forwarded(&cfg, &untrusted));
    let cfg =
        sources(json!({"sources": ["client-cert"], "trusted_hop": {"cidrs": ["10.0.0.0/8"]}}));
    assert!(
        !HeaderKind::ClientCert.forwarded(&cfg, &trusted),
        "forward_headers is off"
    );
}

#[test]
fn a_certificate_is_parsed_for_its_names() {
    let facts = CertificateFacts::parse(&partner()).unwrap();
    assert_eq!(facts.subject, "CN=partner-client,O=Partner One");
    assert_eq!(facts.issuer, "CN=Partner CA,O=Example Bank");
    assert_eq!(facts.dns_sans, ["Partner.Example.com"]);
    assert_eq!(facts.uri_sans, ["spiffe://partners.example/one"]);
    assert_eq!(
        facts.ip_sans,
        [
            "192.0.2.7".parse::<IpAddr>().unwrap(),
            "2001:db8::7".parse().unwrap()
        ]
    );
    assert_eq!(facts.email_sans, ["ops@partner.example"]);
    assert_eq!(CertificateFacts::parse(b"\x30\x00"), None);
}

#[test]
fn every_kind_of_allow_list() {
    let der = partner();
    let t = Thumbprint::from_der(&der);
    let facts = CertificateFacts::parse(&der).unwrap();
    let rules = |r: Value| -> CertificateRules {
        let mut v = crate::config::minimal_config("json");
        v["routes"] = json!([{"path_prefix": "/", "allowed_certificates": r}]);
        let c = parse(v.to_string().as_bytes()).unwrap();
        (*c.routes[0].policy.certificate_rules.clone().unwrap()).clone()
    };
    let table: Vec<(Value, bool)> = vec![
        (json!({"thumbprints": [t.to_x5t()]}), true),
        (json!({"thumbprints": [GATEWAY.to_x5t(), t.to_x5t()]}), true),
        (json!({"thumbprints": [GATEWAY.to_x5t()]}), false),
        (
            json!({"subjects": ["CN=partner-client,O=Partner One"]}),
            true,
        ),
        (json!({"subjects": ["CN=partner-client"]}), false),
        (
            json!({"subjects": ["cn=partner-client,o=partner one"]}),
            false,
        ),
        (json!({"issuers": ["CN=Partner CA,O=Example Bank"]}), true),
        (
            json!({"issuers": ["CN=partner-client,O=Partner One"]}),
            false,
        ),
        (json!({"dns_sans": ["partner.example.com"]}), true),
        (json!({"dns_sans": ["example.com"]}), false),
        (json!({"uri_sans": ["spiffe://partners.example/one"]}), true),
        (json!({"uri_sans": ["spiffe://partners.example/"]}), false),
        (json!({"ip_sans": ["2001:db8:0::7"]}), true),
        (json!({"ip_sans": ["192.0.2.8"]}), false),
        (json!({"email_sans": ["OPS@partner.example"]}), true),
        (json!({"email_sans": ["ops@other.example"]}), false),
        // Every list given must hold; within a list, any entry.
        (
            json!({"issuers": ["CN=Partner CA,O=Example Bank"], "dns_sans": ["x.example", "partner.example.com"]}),
            true,
        ),
        (
            json!({"issuers": ["CN=Partner CA,O=Example Bank"], "dns_sans": ["x.example"]}),
            false,
        ),
        (
            json!({"thumbprints": [GATEWAY.to_x5t()], "dns_sans": ["partner.example.com"]}),
            false,
        ),
    ];
    for (r, expected) in table {
        assert_eq!(
            allowed(&rules(r.clone()), &t, Some(&facts)),
            expected,
            "{r}"
        );
    }
    // Known by its hash only: thumbprint rules can be judged, name rules cannot pass.
    assert!(allowed(
        &rules(json!({"thumbprints": [t.to_x5t()]})),
        &t,
        None
    ));
    assert!(!allowed(
        &rules(json!({"dns_sans": ["partner.example.com"]})),
        &t,
        None
    ));
}

#[test]
fn a_certificate_is_parsed_once_and_only_with_its_own_der() {
    let der = partner();
    let t = Thumbprint::from_der(&der);
    let mut parsed = ParsedCertificates::default();
    assert_eq!(parsed.get(&t, || None), None, "not known, no DER");
    assert_eq!(
        parsed.get(&t, || Some(b"\x30\x00".to_vec())),
        None,
        "another DER"
    );
    let first = parsed.get(&t, || Some(der.clone())).unwrap().unwrap();
    assert_eq!(first.subject, "CN=partner-client,O=Partner One");
    let asked = Cell::new(false);
    let again = parsed.get(&t, || {
        asked.set(true);
        None
    });
    assert_eq!(again, Some(Some(first)));
    assert!(!asked.get(), "a known certificate is not looked for again");
    let junk = b"\x30\x03\x02\x01\x01".to_vec();
    let jt = Thumbprint::from_der(&junk);
    assert_eq!(
        parsed.get(&jt, || Some(junk.clone())),
        Some(None),
        "not a certificate"
    );
}

#[test]
fn the_connections_der_is_found_only_under_its_own_hash() {
    let der = partner();
    let t = Thumbprint::from_der(&der);
    let own = xfcc(&format!(
        "Hash={};Cert=\"{}\",Hash={}",
        hex(&t),
        url_encoded_pem(&der),
        hex(&GATEWAY)
    ));
    assert_eq!(der_in_xfcc(&own, &t).as_deref(), Some(&der[..]));
    assert_eq!(der_in_xfcc(&own, &GATEWAY), None);
    assert_eq!(der_in_xfcc(&[], &t), None);
}

//! The client certificate a trusted hop's headers carry (`x-forwarded-client-cert`, RFC 9440
//! `Client-Cert`, a URL-encoded PEM) and the X.509 parser of routes' allow-lists. The first byte
//! picks the header; the rest is its value, and also DER for the parser.
#![no_main]
use certbound::binding::Thumbprint;
use certbound::certificate::{self, CertificateFacts, HeaderKind, Peer};
use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;
use std::net::IpAddr;

struct Hop;

impl Peer for Hop {
    fn thumbprint(&self) -> Option<Thumbprint> {
        Some(Thumbprint([7; 32]))
    }
    fn der(&self) -> Option<Vec<u8>> {
        None
    }
    fn uri_san(&self) -> Option<String> {
        None
    }
    fn dns_san(&self) -> Option<String> {
        None
    }
    fn address(&self) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, 1]))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, value)) = data.split_first() else {
        return;
    };
    let _ = CertificateFacts::parse(value);
    let config = certbound_fuzz::certificate_sources(kind % 3);
    let kind = match kind % 3 {
        0 => HeaderKind::Xfcc,
        1 => HeaderKind::ClientCert,
        _ => HeaderKind::Pem,
    };
    let headers = [(
        kind,
        Cow::Owned(String::from_utf8_lossy(value).into_owned()),
    )];
    if let Ok(presented) = certificate::present(&config, &headers, &Hop) {
        // The DER a header carried is the certificate whose thumbprint is used.
        if let (Some(t), Some(der)) = (presented.thumbprint, &presented.der) {
            assert!(t.matches(&Thumbprint::from_der(der)));
        }
        if let Some(t) = presented.thumbprint {
            if let Some(der) = certificate::der_in_xfcc(&headers, &t) {
                assert!(t.matches(&Thumbprint::from_der(&der)));
            }
        }
    }
});

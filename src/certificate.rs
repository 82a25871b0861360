//! The client's certificate: which one a request presents (its own TLS connection, or a header a
//! trusted hop set: `x-forwarded-client-cert`, RFC 9440 `Client-Cert`, a URL-encoded PEM), and
//! whether a route's allow-lists admit it (`x509-cert`, parsed once per certificate).

use crate::binding::{self, Thumbprint};
use crate::config::{CertificateRules, CertificateSource, ClientCertificates};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

/// A certificate header a request carries, under its exact (lower-case) name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Xfcc,
    ClientCert,
    ClientCertChain,
    /// The `pem-header` source's configured header.
    Pem,
}

impl HeaderKind {
    /// The kind of a header named `name` (lower case, as Envoy gives them), if it is one.
    #[inline]
    /// The kind of header `name` is, in any letter case (NGINX keeps the client's).
    pub fn of(cfg: &ClientCertificates, name: &[u8]) -> Option<HeaderKind> {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("x-forwarded-client-cert") {
            Some(HeaderKind::Xfcc)
        } else if is("client-cert") {
            Some(HeaderKind::ClientCert)
        } else if is("client-cert-chain") {
            Some(HeaderKind::ClientCertChain)
        } else if cfg.pem_header.as_deref().is_some_and(is) {
            Some(HeaderKind::Pem)
        } else {
            None
        }
    }

    /// The header's name (lower case).
    pub fn name(self, cfg: &ClientCertificates) -> &str {
        match self {
            HeaderKind::Xfcc => "x-forwarded-client-cert",
            HeaderKind::ClientCert => "client-cert",
            HeaderKind::ClientCertChain => "client-cert-chain",
            HeaderKind::Pem => cfg.pem_header.as_deref().unwrap_or(""),
        }
    }

    /// The source whose certificate a header of this kind carries.
    fn source(self) -> Option<CertificateSource> {
        match self {
            HeaderKind::Xfcc => Some(CertificateSource::Xfcc),
            HeaderKind::ClientCert => Some(CertificateSource::ClientCert),
            HeaderKind::Pem => Some(CertificateSource::PemHeader),
            HeaderKind::ClientCertChain => None,
        }
    }

    /// Whether a header of this kind goes on to the upstream: only the configured header
    /// source's own headers (`Client-Cert-Chain` with `Client-Cert`), only from the trusted hop,
    /// only with `forward_headers`. A hop overwrites the header it sets, not the others: those
    /// came from the client.
    pub fn forwarded(self, cfg: &ClientCertificates, presented: &Presented) -> bool {
        let source = match self {
            HeaderKind::ClientCertChain => CertificateSource::ClientCert,
            other => match other.source() {
                Some(s) => s,
                None => return false,
            },
        };
        cfg.forward_headers && presented.trusted_headers && cfg.header_source() == Some(source)
    }
}

/// What the proxy knows of the request's own connection. Each is a host call: read only when
/// needed, and at most once per request.
pub trait Peer {
    /// SHA-256 of the peer's certificate, when the connection is mutual TLS.
    fn thumbprint(&self) -> Option<Thumbprint>;
    /// The peer's certificate itself, where the proxy hands it over (NGINX; Envoy gives its
    /// digest only). Read only for rules that need its names, once per certificate.
    fn der(&self) -> Option<Vec<u8>>;
    /// The first URI SAN of the peer's certificate.
    fn uri_san(&self) -> Option<String>;
    /// The first DNS SAN of the peer's certificate.
    fn dns_san(&self) -> Option<String>;
    /// The address the connection comes from.
    fn address(&self) -> Option<IpAddr>;
}

/// The certificate a request presents.
#[derive(Debug, Default)]
pub struct Presented {
    pub thumbprint: Option<Thumbprint>,
    /// Its DER, when the source carried it.
    pub der: Option<Vec<u8>>,
    /// The request's certificate headers are a trusted hop's (they may be passed on).
    pub trusted_headers: bool,
}

/// The certificate of the first source that yields one. A header from anyone but a trusted hop
/// is not read (and is removed before the upstream, `flow::read_headers`). Err: a trusted hop's
/// header is malformed (400), or is there more than once.
pub fn present(
    cfg: &ClientCertificates,
    headers: &[(HeaderKind, Cow<'_, str>)],
    peer: &dyn Peer,
) -> Result<Presented, &'static str> {
    // Today's configuration: the connection, and no header is read.
    if cfg.connection_only() {
        return Ok(Presented {
            thumbprint: peer.thumbprint(),
            ..Presented::default()
        });
    }
    let trusted = headers.iter().any(|(k, _)| k.source().is_some()) && is_trusted(cfg, peer);
    for source in &cfg.sources {
        if *source == CertificateSource::Connection {
            if let Some(t) = peer.thumbprint() {
                return Ok(Presented {
                    thumbprint: Some(t),
                    der: None,
                    trusted_headers: trusted,
                });
            }
            continue;
        }
        if !trusted {
            continue;
        }
        let mut values = headers.iter().filter(|(k, _)| k.source() == Some(*source));
        let Some((_, value)) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return Err("the trusted hop sent a certificate header more than once");
        }
        let (thumbprint, der) = match source {
            CertificateSource::Xfcc => match from_xfcc(value, peer.thumbprint())? {
                Some(found) => found,
                // Only this proxy's own element about the hop: the hop sent no certificate.
                None => continue,
            },
            CertificateSource::ClientCert => {
                let der = from_client_cert(value)?;
                (Thumbprint::from_der(&der), Some(der))
            }
            _ => {
                let der = from_pem_header(value)?;
                (Thumbprint::from_der(&der), Some(der))
            }
        };
        return Ok(Presented {
            thumbprint: Some(thumbprint),
            der,
            trusted_headers: true,
        });
    }
    Ok(Presented {
        trusted_headers: trusted,
        ..Presented::default()
    })
}

/// Whether the connection is the trusted hop: every rule given holds (one of the identities, and
/// an address in one of the blocks).
fn is_trusted(cfg: &ClientCertificates, peer: &dyn Peer) -> bool {
    let hop = &cfg.trusted_hop;
    let identity = !hop.has_identities()
        || peer.thumbprint().is_some_and(|t| {
            hop.thumbprints.iter().any(|h| t.matches(&Thumbprint(*h)))
                || (!hop.uri_sans.is_empty()
                    && peer.uri_san().is_some_and(|u| hop.uri_sans.contains(&u)))
                || (!hop.dns_sans.is_empty()
                    && peer
                        .dns_san()
                        .is_some_and(|d| hop.dns_sans.contains(&d.to_ascii_lowercase())))
        });
    identity
        && (hop.cidrs.is_empty()
            || peer
                .address()
                // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
                .map(|a| a.to_canonical())
                .is_some_and(|a| hop.cidrs.iter().any(|c| c.contains(&a))))
}

/// A certificate a header named: its thumbprint, and its DER when the header carried it.
type Found = (Thumbprint, Option<Vec<u8>>);

/// `x-forwarded-client-cert`: the element the trusted hop added. The value must be that one
/// element, or that element and one more after it describing this connection's own peer (its
/// `Hash` is the connection's certificate: what this proxy's own `APPEND_FORWARD` adds, as an
/// Istio sidecar does). Anything else is refused: Envoy writes `URI=` and `DNS=` unquoted, so a SAN
/// holding `,Hash=...` would otherwise add an element of the client's choosing. An element that
/// only describes this connection's peer is no client certificate (`Ok(None)`). The element must
/// carry `Hash` or `Cert`; with both they must agree.
fn from_xfcc(value: &str, connection: Option<Thumbprint>) -> Result<Option<Found>, &'static str> {
    const BAD: &str = "the trusted hop's x-forwarded-client-cert is malformed";
    let elements = xfcc_elements(value).ok_or(BAD)?;
    let mut read = Vec::new();
    for element in &elements {
        read.push(xfcc_certificate(element).ok_or(BAD)?);
    }
    let own = |(hash, _): &XfccCertificate| {
        hash.is_some_and(|h| connection.is_some_and(|c| c.matches(&h)))
    };
    let chosen = match read.as_mut_slice() {
        [hop] => std::mem::take(hop),
        [hop, last] if own(last) => std::mem::take(hop),
        _ => {
            return Err("the trusted hop's x-forwarded-client-cert names more than one certificate")
        }
    };
    if own(&chosen) {
        return Ok(None);
    }
    match chosen {
        (None, None) => Err("the trusted hop's x-forwarded-client-cert names no certificate"),
        (Some(hash), None) => Ok(Some((hash, None))),
        (hash, Some(der)) => {
            let t = Thumbprint::from_der(&der);
            if hash.is_some_and(|h| !h.matches(&t)) {
                return Err("the trusted hop's x-forwarded-client-cert Hash is not its Cert's");
            }
            Ok(Some((t, Some(der))))
        }
    }
}

/// One XFCC element's `Hash` and `Cert` (the DER); `None` when malformed or repeated.
type XfccCertificate = (Option<Thumbprint>, Option<Vec<u8>>);

fn xfcc_certificate(element: &[(String, String)]) -> Option<XfccCertificate> {
    let (mut hash, mut cert) = (None, None);
    for (key, value) in element {
        if key.eq_ignore_ascii_case("hash") {
            if hash.is_some() {
                return None;
            }
            hash = Some(Thumbprint::from_hex_digest(&value.to_ascii_lowercase())?);
        } else if key.eq_ignore_ascii_case("cert") {
            if cert.is_some() {
                return None;
            }
            cert = Some(from_pem_header(value).ok()?);
        }
    }
    Some((hash, cert))
}

/// The keys Envoy writes in an XFCC element.
const XFCC_KEYS: [&str; 7] = ["by", "hash", "cert", "chain", "subject", "uri", "dns"];

/// The elements of an XFCC value, each its `key=value` pairs, values unquoted. Written here: no
/// maintained crate parses Envoy's format. Elements are split on `,` and pairs on `;` outside
/// double quotes; inside quotes `\"` is a quote. Strict, so that a client's stray quote cannot
/// swallow what a hop appended: only Envoy's keys; a quote only opens a value and closes it,
/// followed by `;`, `,` or the end; no control character anywhere.
fn xfcc_elements(value: &str) -> Option<Vec<Vec<(String, String)>>> {
    let mut elements = vec![Vec::new()];
    let mut chars = value.chars().peekable();
    loop {
        let mut key = String::new();
        loop {
            match chars.next()? {
                '=' => break,
                c if c.is_control() || matches!(c, '"' | ',' | ';') => return None,
                c => key.push(c),
            }
        }
        let key = key.trim();
        if !XFCC_KEYS.iter().any(|k| key.eq_ignore_ascii_case(k)) {
            return None;
        }
        let mut v = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => v.push(chars.next()?),
                    '"' => break,
                    c if c.is_control() => return None,
                    c => v.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                match c {
                    ';' | ',' => break,
                    '"' => return None,
                    c if c.is_control() => return None,
                    c => v.push(c),
                }
                chars.next();
            }
        }
        elements.last_mut()?.push((key.to_string(), v));
        match chars.next() {
            None => return Some(elements),
            Some(';') => {}
            Some(',') => elements.push(Vec::new()),
            Some(_) => return None,
        }
    }
}

/// RFC 9440 `Client-Cert`: one Structured Field Byte Sequence (`:base64:`), the DER.
fn from_client_cert(value: &str) -> Result<Vec<u8>, &'static str> {
    const BAD: &str = "the trusted hop's Client-Cert is not one certificate as :base64:";
    // RFC 8941 section 4.2.7: base64 with padding and zero pad bits, neither of which parsers
    // should insist on (the DER, and so the thumbprint, is the same).
    const SF_BINARY: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let inner = value
        .trim_matches([' ', '\t'])
        .strip_prefix(':')
        .and_then(|v| v.strip_suffix(':'))
        .ok_or(BAD)?;
    let der = SF_BINARY.decode(inner).map_err(|_| BAD)?;
    binding::is_der_sequence(&der).then_some(der).ok_or(BAD)
}

/// A URL-encoded PEM (nginx `$ssl_client_escaped_cert`, AWS ALB `X-Amzn-Mtls-Clientcert`, XFCC
/// `Cert`): the first certificate's DER. `+` stays `+` (it is base64, not a space).
fn from_pem_header(value: &str) -> Result<Vec<u8>, &'static str> {
    const BAD: &str = "the trusted hop's certificate header is not a URL-encoded PEM certificate";
    let pem = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map_err(|_| BAD)?;
    binding::der_from_pem(&pem).ok_or(BAD)
}

/// What a route's allow-lists read of a certificate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CertificateFacts {
    /// RFC 4514, as `x509-cert` writes a name (the last RDN first).
    pub subject: String,
    pub issuer: String,
    pub dns_sans: Vec<String>,
    pub uri_sans: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub email_sans: Vec<String>,
}

impl CertificateFacts {
    /// Parses an X.509 certificate; `None` if it is not one.
    pub fn parse(der: &[u8]) -> Option<CertificateFacts> {
        use x509_cert::der::Decode;
        use x509_cert::ext::pkix::name::GeneralName;
        use x509_cert::ext::pkix::SubjectAltName;
        let cert = x509_cert::Certificate::from_der(der).ok()?;
        let tbs = &cert.tbs_certificate;
        let mut facts = CertificateFacts {
            subject: rfc4514(&tbs.subject)?,
            issuer: rfc4514(&tbs.issuer)?,
            ..CertificateFacts::default()
        };
        // A certificate whose extensions do not decode is not one to judge by its names.
        if let Some((_, san)) = tbs.get::<SubjectAltName>().ok()? {
            for name in san.0 {
                match name {
                    GeneralName::DnsName(d) => facts.dns_sans.push(d.to_string()),
                    GeneralName::UniformResourceIdentifier(u) => facts.uri_sans.push(u.to_string()),
                    GeneralName::Rfc822Name(e) => facts.email_sans.push(e.to_string()),
                    GeneralName::IpAddress(ip) => match ip.as_bytes().len() {
                        4 => facts
                            .ip_sans
                            .push(IpAddr::from(<[u8; 4]>::try_from(ip.as_bytes()).ok()?)),
                        16 => facts
                            .ip_sans
                            .push(IpAddr::from(<[u8; 16]>::try_from(ip.as_bytes()).ok()?)),
                        _ => return None,
                    },
                    _ => {}
                }
            }
        }
        Some(facts)
    }
}

/// A name as an RFC 4514 string, the last RDN first, escaped as RFC 4514 says (as `x509-cert`'s
/// `Display` does). Written here because that `Display` looks the attribute names up in
/// const-oid's whole OID database, 47 KB of the module: the names RFC 4514 section 3 lists, and
/// SERIALNUMBER, EMAILADDRESS, SN, GN, TITLE and ORGANIZATIONIDENTIFIER, are written by name (docs/config.md),
/// any other attribute as `<dotted OID>=#<hex of its DER>`.
fn rfc4514(name: &x509_cert::name::Name) -> Option<String> {
    use std::fmt::Write;
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
    use x509_cert::der::{Encode, Tag, Tagged};
    const NAMES: [(&str, &str); 15] = [
        ("2.5.4.3", "CN"),
        ("2.5.4.7", "L"),
        ("2.5.4.8", "ST"),
        ("2.5.4.10", "O"),
        ("2.5.4.11", "OU"),
        ("2.5.4.6", "C"),
        ("2.5.4.9", "STREET"),
        ("2.5.4.5", "SERIALNUMBER"),
        ("0.9.2342.19200300.100.1.25", "DC"),
        ("0.9.2342.19200300.100.1.1", "UID"),
        ("1.2.840.113549.1.9.1", "EMAILADDRESS"),
        ("2.5.4.4", "SN"),
        ("2.5.4.42", "GN"),
        ("2.5.4.12", "TITLE"),
        // eIDAS/PSD2 certificates name the organisation by it (PSDDE-BAFIN-123456).
        ("2.5.4.97", "ORGANIZATIONIDENTIFIER"),
    ];
    let mut out = String::new();
    for (i, rdn) in name.0.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.0.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.oid.to_string();
            let v = &atv.value;
            let text = match v.tag() {
                Tag::PrintableString => PrintableStringRef::try_from(v).ok().map(|s| s.as_str()),
                Tag::Utf8String => Utf8StringRef::try_from(v).ok().map(|s| s.as_str()),
                Tag::Ia5String => Ia5StringRef::try_from(v).ok().map(|s| s.as_str()),
                Tag::TeletexString => TeletexStringRef::try_from(v).ok().map(|s| s.as_str()),
                _ => None,
            };
            match (NAMES.iter().find(|(o, _)| *o == oid), text) {
                (Some((_, short)), Some(text)) => {
                    out.push_str(short);
                    out.push('=');
                    let mut chars = text.char_indices().peekable();
                    while let Some((k, c)) = chars.next() {
                        match c {
                            '#' if k == 0 => out.push_str("\\#"),
                            ' ' if k == 0 || chars.peek().is_none() => out.push_str("\\ "),
                            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                                out.push('\\');
                                out.push(c);
                            }
                            '\x00'..='\x1f' | '\x7f' => write!(out, "\\{:02x}", c as u8).ok()?,
                            _ => out.push(c),
                        }
                    }
                }
                _ => {
                    write!(out, "{oid}=#").ok()?;
                    for b in v.to_der().ok()? {
                        write!(out, "{b:02x}").ok()?;
                    }
                }
            }
        }
    }
    Some(out)
}

/// Whether the certificate satisfies every allow-list of `rules`. `facts` is `None` when the
/// certificate itself is not known (only its hash was presented): then only thumbprint rules can
/// pass.
pub fn allowed(
    rules: &CertificateRules,
    thumbprint: &Thumbprint,
    facts: Option<&CertificateFacts>,
) -> bool {
    if !rules.thumbprints.is_empty()
        && !rules
            .thumbprints
            .iter()
            .any(|t| thumbprint.matches(&Thumbprint(*t)))
    {
        return false;
    }
    if !rules.need_certificate() {
        return true;
    }
    let Some(f) = facts else {
        return false;
    };
    let any = |list: &[String], have: &[String], fold: bool| {
        list.is_empty()
            || have.iter().any(|h| {
                list.iter().any(|l| match fold {
                    true => l.eq_ignore_ascii_case(h),
                    false => l == h,
                })
            })
    };
    any(&rules.subjects, std::slice::from_ref(&f.subject), false)
        && any(&rules.issuers, std::slice::from_ref(&f.issuer), false)
        && any(&rules.dns_sans, &f.dns_sans, true)
        && any(&rules.uri_sans, &f.uri_sans, false)
        && any(&rules.email_sans, &f.email_sans, true)
        && (rules.ip_sans.is_empty() || f.ip_sans.iter().any(|ip| rules.ip_sans.contains(ip)))
}

/// Parsed certificates by thumbprint, so a certificate is parsed once, not on every request.
/// Bounded: when full it starts again (a worker sees a few partners' certificates).
#[derive(Default)]
pub struct ParsedCertificates(HashMap<Thumbprint, Option<Rc<CertificateFacts>>>);

const MAX_PARSED: usize = 1024;

impl ParsedCertificates {
    /// The facts of the certificate `thumbprint`: known, else parsed from `der` (whose thumbprint
    /// it must be). `None` inside: `der` is not a certificate. Outer `None`: not known, no DER.
    pub fn get(
        &mut self,
        thumbprint: &Thumbprint,
        der: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<Option<Rc<CertificateFacts>>> {
        if let Some(known) = self.0.get(thumbprint) {
            return Some(known.clone());
        }
        let der = der().filter(|d| Thumbprint::from_der(d).matches(thumbprint))?;
        let facts = CertificateFacts::parse(&der).map(Rc::new);
        if self.0.len() >= MAX_PARSED {
            self.0.clear();
        }
        self.0.insert(*thumbprint, facts.clone());
        Some(facts)
    }
}

/// The DER of the certificate `connection`, from an `x-forwarded-client-cert` element whose `Cert`
/// hashes to it: for the connection's own certificate, what this proxy's own connection manager
/// sets with `SANITIZE_SET` and `set_current_client_cert_details.cert` (Envoy gives a filter no
/// other way to the certificate). Any element, from anyone, will do: only the certificate with
/// that hash can match.
pub fn der_in_xfcc(
    headers: &[(HeaderKind, Cow<'_, str>)],
    connection: &Thumbprint,
) -> Option<Vec<u8>> {
    headers
        .iter()
        .filter(|(k, _)| *k == HeaderKind::Xfcc)
        .filter_map(|(_, v)| xfcc_elements(v))
        .flatten()
        .filter_map(|element| xfcc_certificate(&element))
        .filter_map(|(_, der)| der)
        .find(|der| Thumbprint::from_der(der).matches(connection))
}

#[cfg(test)]
pub(crate) mod tests;

//! RFC 8705 certificate thumbprints (`x5t#S256`): from Envoy's digest, from a PEM, from a token.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Thumbprint(pub [u8; 32]);

impl std::fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Thumbprint({})", self.to_x5t())
    }
}

/// The thumbprint of the connection's client certificate: Envoy's
/// `connection.sha256_peer_certificate_digest` (lower-case hex). Nothing else is believed: a
/// fallback to `connection.peer_certificate` was never seen to work in Envoy, so it is not read.
pub fn client_thumbprint(property: impl Fn(&str) -> Option<Vec<u8>>) -> Option<Thumbprint> {
    let digest = property("sha256_peer_certificate_digest")?;
    std::str::from_utf8(&digest)
        .ok()
        .and_then(Thumbprint::from_hex_digest)
}

/// NGINX (ngx_wasm_module), which has no digest property: the thumbprint of the PEM in
/// `ngx.ssl_client_raw_cert`, only if NGINX verified the certificate (`ngx.ssl_client_verify` is
/// `SUCCESS`; `ssl_verify_client optional_no_ca` would let an unverified one through).
pub fn nginx_client_thumbprint(property: impl Fn(&str) -> Option<Vec<u8>>) -> Option<Thumbprint> {
    nginx_client_der(property).map(|der| Thumbprint::from_der(&der))
}

/// NGINX: the DER of the client certificate NGINX verified (`nginx_client_thumbprint`).
pub fn nginx_client_der(property: impl Fn(&str) -> Option<Vec<u8>>) -> Option<Vec<u8>> {
    if property("ssl_client_verify")?.as_slice() != b"SUCCESS" {
        return None;
    }
    let pem = property("ssl_client_raw_cert")?;
    der_from_pem(std::str::from_utf8(&pem).ok()?)
}

/// How many connections' thumbprints a worker remembers (`ConnectionThumbprints`).
pub const REMEMBERED_CONNECTIONS: usize = 64;

/// The thumbprints of the last connections a worker saw, by the proxy's `connection.id`, so that a
/// certificate the proxy hands over as PEM (NGINX) is decoded and hashed once per connection, not
/// once per request. NGINX numbers connections with one counter per server and never reuses a
/// number, so an id names one connection and one certificate. A short list searched from the
/// newest: keep-alive requests come on the connections seen last.
#[derive(Debug, Default)]
pub struct ConnectionThumbprints {
    seen: std::collections::VecDeque<(Vec<u8>, Option<Thumbprint>)>,
}

impl ConnectionThumbprints {
    /// The thumbprint of connection `id`, from `read` the first time it is asked for.
    pub fn get_or_read(
        &mut self,
        id: &[u8],
        read: impl FnOnce() -> Option<Thumbprint>,
    ) -> Option<Thumbprint> {
        if let Some((_, t)) = self.seen.iter().rev().find(|(c, _)| c.as_slice() == id) {
            return *t;
        }
        let t = read();
        if self.seen.len() == REMEMBERED_CONNECTIONS {
            self.seen.pop_front();
        }
        self.seen.push_back((id.to_vec(), t));
        t
    }
}

impl Thumbprint {
    /// From Envoy's `connection.sha256_peer_certificate_digest`: 64 lower-case hex digits.
    #[inline]
    pub fn from_hex_digest(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (lower_hex(pair[0])? << 4) | lower_hex(pair[1])?;
        }
        Some(Thumbprint(out))
    }

    /// From the PEM of a client certificate (the first, if a chain follows), as headers from a TLS
    /// terminator carry it.
    pub fn from_pem(pem: &str) -> Option<Self> {
        der_from_pem(pem).map(|der| Self::from_der(&der))
    }

    pub fn from_der(der: &[u8]) -> Self {
        Thumbprint(Sha256::digest(der).into())
    }

    /// From a token's `cnf.x5t#S256`. Only the canonical form is accepted: 43 characters of
    /// base64url without padding, whose unused trailing bits are zero.
    pub fn from_x5t(x5t: &str) -> Option<Self> {
        if x5t.len() != 43 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(x5t).ok()?;
        let arr: [u8; 32] = bytes.try_into().ok()?;
        let t = Thumbprint(arr);
        // The decoder tolerates non-zero trailing bits; a re-encoding that differs is not canonical.
        (t.to_x5t() == x5t).then_some(t)
    }

    /// Lower-case hex, as Envoy writes a digest (and XFCC's `Hash`).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn to_x5t(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Compares in constant time, so the comparison leaks nothing of the expected value.
    #[inline]
    pub fn matches(&self, other: &Thumbprint) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// The DER of the first certificate of a PEM, checked to be one whole SEQUENCE (the thumbprint
/// covers the exact bytes; what it holds is parsed only where a rule needs it, `certificate`).
pub fn der_from_pem(pem: &str) -> Option<Vec<u8>> {
    let (_, rest) = pem.split_once("-----BEGIN CERTIFICATE-----")?;
    let (body, _) = rest.split_once("-----END CERTIFICATE-----")?;
    let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = STANDARD.decode(compact).ok()?;
    is_der_sequence(&der).then_some(der)
}

/// A DER SEQUENCE whose definite length covers exactly the rest of `d`.
pub fn is_der_sequence(d: &[u8]) -> bool {
    let (len, header) = match d.get(1).copied() {
        Some(l) if l < 0x80 => (usize::from(l), 2),
        Some(n @ 0x81..=0x83) => {
            let n = usize::from(n - 0x80);
            let Some(bytes) = d.get(2..2 + n) else {
                return false;
            };
            (
                bytes
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
                2 + n,
            )
        }
        _ => return false,
    };
    d.first() == Some(&0x30) && header + len == d.len()
}

fn lower_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_read_once_until_it_is_one_of_the_oldest_past_the_limit() {
        let mut seen = ConnectionThumbprints::default();
        let reads = std::cell::Cell::new(0);
        let read = |n: u8| {
            reads.set(reads.get() + 1);
            Some(Thumbprint([n; 32]))
        };
        for n in 0..=u8::try_from(REMEMBERED_CONNECTIONS).unwrap() {
            assert_eq!(
                seen.get_or_read(&[n], || read(n)),
                Some(Thumbprint([n; 32]))
            );
        }
        let first_reads = reads.get();
        // The newest are remembered, each with its own certificate, however often asked.
        for n in 1..=u8::try_from(REMEMBERED_CONNECTIONS).unwrap() {
            assert_eq!(
                seen.get_or_read(&[n], || read(0xff)),
                Some(Thumbprint([n; 32]))
            );
        }
        assert_eq!(reads.get(), first_reads);
        // The oldest was dropped: read again.
        assert_eq!(
            seen.get_or_read(&[0], || read(0)),
            Some(Thumbprint([0; 32]))
        );
        assert_eq!(reads.get(), first_reads + 1);
        // A connection without a certificate is remembered as such.
        assert_eq!(seen.get_or_read(b"x", || None), None);
        assert_eq!(seen.get_or_read(b"x", || read(9)), None);
    }

    // SHA-256("abc"), a value everyone can check.
    const HEX: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const X5T: &str = "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0";

    #[test]
    fn hex_digest_converts_to_base64url_without_padding() {
        let t = Thumbprint::from_hex_digest(HEX).unwrap();
        assert_eq!(t.to_x5t(), X5T);
        assert_eq!(t, Thumbprint::from_der(b"abc"));
        assert!(t.matches(&Thumbprint::from_x5t(X5T).unwrap()));
    }

    #[test]
    fn malformed_hex_digests_are_rejected() {
        let upper = HEX.to_uppercase();
        let colons = HEX
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        for bad in [
            &HEX[..62],
            &upper,
            &colons,
            "",
            &format!("{HEX}00"),
            &HEX.replace('b', "g"),
        ] {
            assert!(Thumbprint::from_hex_digest(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn only_the_canonical_x5t_form_is_accepted() {
        let std_b64 = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0";
        let padded = format!("{X5T}=");
        // Same 32 bytes but the last character carries non-zero unused bits.
        let non_canonical = "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa1";
        let table = [
            (X5T, true),
            (std_b64, false),
            (padded.as_str(), false),
            (&X5T[..42], false),
            (non_canonical, false),
            ("", false),
            (HEX, false),
        ];
        for (input, ok) in table {
            assert_eq!(Thumbprint::from_x5t(input).is_some(), ok, "{input}");
        }
    }

    #[test]
    fn different_thumbprints_do_not_match() {
        let a = Thumbprint::from_der(b"a");
        let b = Thumbprint::from_der(b"b");
        assert!(!a.matches(&b));
        assert!(a.matches(&a));
    }

    #[test]
    fn pem_thumbprint_is_the_sha256_of_the_der() {
        // A tiny self-signed certificate (ed25519), made once with `openssl req -x509 -newkey ed25519`.
        let pem = "-----BEGIN CERTIFICATE-----
MIIBfTCCAS+gAwIBAgIUZb6ILj12NGWQ750+aoyLcQhpjo4wBQYDK2VwMDQxFzAV
BgNVBAMMDnBhcnRuZXItY2xpZW50MRkwFwYDVQQKDBBQYXJ0bmVyIE9uZSBUZXN0
MB4XDTI2MTEyMzE4MDIxMVoXDTM2MTEyMDE4MDIxMVowNDEXMBUGA1UEAwwOcGFy
dG5lci1jbGllbnQxGTAXBgNVBAoMEFBhcnRuZXIgT25lIFRlc3QwKjAFBgMrZXAD
IQCRURvnUIRBeVrxCe5Nv170274Wm8JoNcTCWhw8IEEKgaNTMFEwHQYDVR0OBBYE
FOze745hBgeZ/o75zGV2thb8jWtZMB8GA1UdIwQYMBaAFOze745hBgeZ/o75zGV2
thb8jWtZMA8GA1UdEwEB/wQFMAMBAf8wBQYDK2VwA0EA5kh5gCiDIyqryNMG6wiX
NFKqMD9VCE2i2sfucDL3zNEChusYnI27HQPaw0fyqNqD6aL1QjQRgLRH6/nSMOp9
Ag==
-----END CERTIFICATE-----
";
        let der: Vec<u8> = {
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            STANDARD.decode(body).unwrap()
        };
        let from_pem = Thumbprint::from_pem(pem);
        assert_eq!(from_pem, Some(Thumbprint::from_der(&der)));
        // What `openssl x509 -outform DER | openssl dgst -sha256 -binary | base64url` prints.
        assert_eq!(
            from_pem.unwrap().to_x5t(),
            "wrl7Ls-BvGwSkRW9ti9YRePwLDjKlP1R-4KPWGXjDow"
        );
        assert!(Thumbprint::from_pem(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        .is_none());
        assert!(Thumbprint::from_pem("not a pem").is_none());
        // A truncated certificate is not one whole DER SEQUENCE.
        let truncated = pem.replace("Ag==\n", "");
        assert!(Thumbprint::from_pem(&truncated).is_none());
    }
}

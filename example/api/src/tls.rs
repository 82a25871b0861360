//! The API's TLS: it serves HTTPS to one peer only, the gateway. The client certificate must chain
//! to the configured CA and carry the gateway's subject; partners' certificates chain to the same CA
//! and are refused in the handshake, as is a connection with no certificate. So a stolen token sent
//! to the API directly, past the gateway and its certificate check, never reaches the handler.

use std::sync::Arc;

use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig,
    SignatureScheme,
};
use x509_cert::der::Decode;
use x509_cert::Certificate;

/// Where the API's TLS material is, and whom it accepts.
pub struct Settings {
    /// The API's own certificate chain and key (PEM).
    pub cert_file: String,
    pub key_file: String,
    /// The CAs a client certificate must chain to (PEM).
    pub client_ca_file: String,
    /// The one subject accepted, as RFC 4514 writes it (`CN=certbound-gateway,O=Example Bank`).
    pub gateway_subject: String,
}

/// The subject of a DER certificate, as RFC 4514 writes it (most specific RDN first).
pub fn subject_of(der: &[u8]) -> Result<String, String> {
    let cert = Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(cert.tbs_certificate.subject.to_string())
}

/// Every certificate of a PEM file.
fn read_certificates(path: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {what} {path}: {e}"))
}

/// The rustls server configuration: TLS 1.2 and 1.3 (rustls offers only ECDHE with AEAD ciphers),
/// HTTP/1.1, a client certificate required and checked by `GatewayOnly`.
pub fn server_config(s: &Settings) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(ring::default_provider());
    let certs = read_certificates(&s.cert_file, "the certificate")?;
    let key = PrivateKeyDer::from_pem_file(&s.key_file)
        .map_err(|e| format!("cannot read the key {}: {e}", s.key_file))?;
    let mut roots = RootCertStore::empty();
    let (added, _) =
        roots.add_parsable_certificates(read_certificates(&s.client_ca_file, "the client CA")?);
    if added == 0 {
        return Err(format!("no CA certificate in {}", s.client_ca_file));
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let verifier = Arc::new(GatewayOnly {
        inner: webpki,
        subject: s.gateway_subject.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("the API's certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The WebPKI client-certificate check, and then: the leaf's subject is the gateway's.
#[derive(Debug)]
struct GatewayOnly {
    inner: Arc<dyn ClientCertVerifier>,
    subject: String,
}

impl ClientCertVerifier for GatewayOnly {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let subject = subject_of(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if subject != self.subject {
            // Debug formatting: the subject is the peer's, and may hold control characters.
            eprintln!("api: TLS peer refused: {subject:?} is not the gateway");
            return Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate of the example PKI (`make test` runs `certs/make-certs.sh` first).
    fn example_cert(name: &str) -> Vec<u8> {
        let dir = std::env::var("CERTS_DIR")
            .unwrap_or_else(|_| format!("{}/../../certs/out", env!("CARGO_MANIFEST_DIR")));
        let path = format!("{dir}/{name}");
        let cert = CertificateDer::from_pem_file(&path)
            .unwrap_or_else(|e| panic!("{path}: {e} (run certs/make-certs.sh)"));
        cert.to_vec()
    }

    #[test]
    fn subjects_are_written_as_rfc_4514_does() {
        // make-certs.sh: `-subj "/O=Example Bank/CN=certbound-gateway"`; the identity server's
        // tls_client_auth_subject_dn for the same certificate is this string too.
        assert_eq!(
            subject_of(&example_cert("example.gateway.pem")).unwrap(),
            "CN=certbound-gateway,O=Example Bank"
        );
        assert_eq!(
            subject_of(&example_cert("example.client.pem")).unwrap(),
            "CN=partner-client,O=Partner One"
        );
        assert!(subject_of(b"not DER").is_err());
    }
}

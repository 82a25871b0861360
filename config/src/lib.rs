//! certbound's configuration as validated types: a `Config` can only hold what `parse` accepted,
//! and what a format needs comes with it (the JWT rules live in the JWT formats). `parse.rs` reads
//! the plugin's JSON into these types; `docs/config.md` is the reference.

mod parse;

pub use parse::{parse, parse_with_env, ConfigError};
use std::rc::Rc;

/// How the identity server answers an introspection request, with what that answer needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// RFC 7662 JSON.
    Json,
    /// The phantom-token answer: the body is the JWT access token.
    Jwt(Rc<JwtRules>),
    /// RFC 9701: a signed JWT whose `token_introspection` claim holds the RFC 7662 members.
    IntrospectionJwt(Rc<JwtRules>),
}

impl Format {
    /// The name in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Jwt(_) => "jwt",
            Format::IntrospectionJwt(_) => "introspection-jwt",
        }
    }

    /// The `Accept` header of the introspection request.
    pub fn accept(&self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Jwt(_) => "application/jwt",
            Format::IntrospectionJwt(_) => "application/token-introspection+jwt",
        }
    }

    /// How returned JWTs are verified; `None` for `json`, which returns none.
    pub fn jwt_rules(&self) -> Option<&Rc<JwtRules>> {
        match self {
            Format::Json => None,
            Format::Jwt(rules) | Format::IntrospectionJwt(rules) => Some(rules),
        }
    }
}

/// Signature algorithms a returned JWT may use. `none` and HMAC are not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    PS256,
    RS256,
    ES256,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::PS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::PS256 => "PS256",
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

/// An upstream endpoint reached with a dispatched call: an Envoy cluster (in NGINX `host:port`),
/// authority and path.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    /// The `:scheme` the calls carry, if configured (NGINX uses TLS for `https`).
    pub scheme: Option<&'static str>,
}

impl Endpoint {
    /// The pseudo-headers of a call with `method` to `path` (this endpoint's, with a query
    /// perhaps) of this endpoint.
    pub fn pseudo_headers(
        &self,
        method: &'static str,
        path: String,
    ) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (":method", method.to_string()),
            (":path", path),
            (":authority", self.authority.clone()),
        ];
        if let Some(scheme) = self.scheme {
            headers.push((":scheme", scheme.to_string()));
        }
        headers
    }
}

/// How the introspecting client authenticates to the identity server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic` with `client_id` and `client_secret` (RFC 6749 section 2.3.1).
    ClientSecretBasic,
    /// RFC 8705 `tls_client_auth`: the proxy's TLS connection to the identity server presents the
    /// gateway's certificate (configured on the cluster); the request names `client_id` only.
    TlsClientAuth,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Introspection {
    pub format: Format,
    pub endpoint: Endpoint,
    pub client_id: String,
    pub client_auth: ClientAuth,
    /// Empty with `tls_client_auth`.
    pub client_secret: String,
    pub timeout_ms: u64,
    pub max_body_bytes: usize,
    /// The introspected token's `aud` must name one of these (empty: not checked).
    pub audiences: Vec<String>,
    /// The introspected token's `iss` must be this, when set.
    pub issuer: Option<String>,
}

/// Where the key set is fetched, and how its call is bounded.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwks {
    pub endpoint: Endpoint,
    pub timeout_ms: u64,
    pub max_body_bytes: usize,
    pub max_age_seconds: u64,
    pub min_refetch_interval_seconds: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JwtRules {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub clock_skew_seconds: u64,
    pub typ: Option<String>,
    pub jwks: Jwks,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub namespace: String,
    pub max_entries: u32,
    pub max_ttl_seconds: u64,
    pub negative_ttl_seconds: u64,
    /// How long past its expiry a positive entry may still decide a request while the identity
    /// server is unavailable (never past the token's `exp`); 0: never.
    pub stale_if_error_seconds: u64,
}

/// The feed of revocation events (Security Event Tokens, RFC 8417) the root context polls.
#[derive(Debug, Clone, PartialEq)]
pub struct Revocation {
    pub feed: Endpoint,
    /// How each event is verified: issuer, audience, algorithms, `typ` `secevent+jwt`, and the key
    /// set (the JWT format's, or the section's own `jwks` with format `json`).
    pub rules: Rc<JwtRules>,
    pub poll_interval_ms: u64,
    pub timeout_ms: u64,
    pub max_body_bytes: usize,
    /// Without a successful poll for this long, cached entries are not used (each request is
    /// introspected) until the feed answers again.
    pub max_staleness_ms: u64,
    /// Events kept at most; past it the oldest go and every entry cached before is re-checked.
    pub max_events: usize,
}

/// What a request must satisfy once its token is known to be active.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub required_scopes: Vec<String>,
    pub require_binding: bool,
    pub allowed_client_ids: Vec<String>,
    /// `client_certificate: required`: a request without a certificate is refused before its
    /// token is looked at. `optional`: it is judged by its token alone (which must be unbound).
    pub certificate_required: bool,
    /// `allowed_certificates`: what a presented certificate must be, when set.
    pub certificate_rules: Option<Rc<CertificateRules>>,
}

/// A route's allow-lists for the client certificate. Each list that is not empty must be
/// satisfied (by any of its entries); a certificate must satisfy every such list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CertificateRules {
    /// SHA-256 of the DER (`x5t#S256`).
    pub thumbprints: Vec<[u8; 32]>,
    /// RFC 4514 strings, as `x509-cert` writes a name: the last RDN first (`CN=a,O=b`).
    pub subjects: Vec<String>,
    pub issuers: Vec<String>,
    /// Lower case: DNS names and e-mail addresses compare ASCII case-insensitively.
    pub dns_sans: Vec<String>,
    pub uri_sans: Vec<String>,
    pub ip_sans: Vec<std::net::IpAddr>,
    pub email_sans: Vec<String>,
}

impl CertificateRules {
    /// Whether a rule needs more than the thumbprint: the certificate itself, parsed.
    pub fn need_certificate(&self) -> bool {
        !(self.subjects.is_empty()
            && self.issuers.is_empty()
            && self.dns_sans.is_empty()
            && self.uri_sans.is_empty()
            && self.ip_sans.is_empty()
            && self.email_sans.is_empty())
    }
}

/// Where the client's certificate is read from, tried in the configured order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateSource {
    /// The request's own TLS connection (`connection.sha256_peer_certificate_digest`).
    Connection,
    /// Envoy's `x-forwarded-client-cert`, from a trusted hop.
    Xfcc,
    /// RFC 9440 `Client-Cert`, from a trusted hop.
    ClientCert,
    /// A URL-encoded PEM in the header `ClientCertificates::pem_header`, from a trusted hop.
    PemHeader,
}

impl CertificateSource {
    pub fn name(self) -> &'static str {
        match self {
            CertificateSource::Connection => "connection",
            CertificateSource::Xfcc => "xfcc",
            CertificateSource::ClientCert => "client-cert",
            CertificateSource::PemHeader => "pem-header",
        }
    }
}

/// Who may hand certbound a client certificate in a header: every rule given must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrustedHop {
    /// The connection's peer certificate must have one of these as its first URI SAN (Envoy's
    /// `connection.uri_san_peer_certificate`), e.g. a SPIFFE ID...
    pub uri_sans: Vec<String>,
    /// ...or one of these as its first DNS SAN (lower case)...
    pub dns_sans: Vec<String>,
    /// ...or one of these thumbprints. (Any of the three identities, when any is given.)
    pub thumbprints: Vec<[u8; 32]>,
    /// The connection's peer address (`source.address`) must be in one of these.
    pub cidrs: Vec<ipnet::IpNet>,
}

impl TrustedHop {
    pub fn has_identities(&self) -> bool {
        !(self.uri_sans.is_empty() && self.dns_sans.is_empty() && self.thumbprints.is_empty())
    }
}

/// `client_certificate`: where a request's client certificate comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCertificates {
    pub sources: Vec<CertificateSource>,
    /// The header of the `pem-header` source (lower case).
    pub pem_header: Option<String>,
    pub trusted_hop: TrustedHop,
    /// Pass a trusted hop's certificate headers on to the upstream (else they are removed).
    pub forward_headers: bool,
    /// On allow, set `x-forwarded-client-cert: Hash=<hex>` to the certificate the request was
    /// checked with (whatever its source), replacing any other.
    pub forward_xfcc_hash: bool,
}

impl ClientCertificates {
    /// Only the connection: today's behaviour, and the default.
    pub fn connection_only(&self) -> bool {
        self.sources == [CertificateSource::Connection]
    }

    /// The one header source, if any (the configuration allows at most one).
    pub fn header_source(&self) -> Option<CertificateSource> {
        self.sources
            .iter()
            .copied()
            .find(|s| *s != CertificateSource::Connection)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Matched on whole segments, ASCII case-insensitively (`certbound::path`).
    pub path_prefix: String,
    pub methods: Vec<String>,
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub realm: String,
    pub max_token_length: usize,
    pub introspection: Introspection,
    pub cache: CacheSettings,
    pub client_certificate: ClientCertificates,
    /// The identity server's feed of revocation events (`None`: not followed).
    pub revocation: Option<Revocation>,
    /// (claim name, lower-case header name), in a stable order.
    pub claim_headers: Vec<(String, String)>,
    /// The policy of requests that match no route; `None` refuses them (`"deny"`).
    pub default_policy: Option<Policy>,
    pub routes: Vec<Route>,
    /// Hex SHA-256 prefix of the raw configuration: keys in shared data include it, so a new
    /// configuration never reads entries made under an old one.
    pub fingerprint: String,
}

impl Config {
    /// The policy of a route (an index into `routes`), or of a request no route matches (`None`):
    /// `None` when such requests are refused (`default_policy: "deny"`).
    // Inline: this runs on every request, and this crate is built for size.
    #[inline]
    pub fn policy(&self, route: Option<usize>) -> Option<&Policy> {
        match route {
            Some(i) => self.routes.get(i).map(|r| &r.policy),
            None => self.default_policy.as_ref(),
        }
    }
}

/// The smallest valid configuration of each format (`json`, `jwt`, `introspection-jwt`), as the
/// filter's tests start from it.
#[cfg(any(test, feature = "test-support"))]
pub fn minimal_config(format: &str) -> serde_json::Value {
    let mut v = serde_json::json!({
        "introspection": {
            "format": format, "cluster": "idsvr", "authority": "login.example.com",
            "path": "/introspect", "client_id": "introspect-client", "client_secret": "s3cret"
        }
    });
    if format != "json" {
        v["jwt"] = serde_json::json!({
            "issuer": "https://login.example.com",
            "audiences": ["api.example.com"],
            "jwks": {"cluster": "idsvr", "authority": "login.example.com", "path": "/jwks"}
        });
    }
    v
}

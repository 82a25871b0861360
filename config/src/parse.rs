//! Reading the plugin's JSON into the validated types: one function per section, each error
//! naming its field and never echoing a value.

use crate::*;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

// ---- the wire shape: serde structs that reject unknown fields ----
// Sections are kept as `Value` first and read one by one, so that an error names its section
// (`jwt.jwks: unknown field ...`) without a path-tracking deserializer.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    realm: Option<String>,
    max_token_length: Option<usize>,
    introspection: Option<Value>,
    jwt: Option<Value>,
    cache: Option<Value>,
    client_certificate: Option<Value>,
    revocation: Option<Value>,
    #[serde(default)]
    claim_headers: BTreeMap<String, String>,
    default_policy: Option<Value>,
    #[serde(default)]
    routes: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    format: Option<String>,
    cluster: Option<String>,
    scheme: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    client_id: Option<String>,
    client_auth: Option<String>,
    client_secret: Option<String>,
    client_secret_env: Option<String>,
    timeout_ms: Option<u64>,
    max_body_bytes: Option<usize>,
    audiences: Option<Vec<String>>,
    issuer: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    algorithms: Option<Vec<String>>,
    clock_skew_seconds: Option<u64>,
    typ: Option<String>,
    jwks: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwks {
    cluster: Option<String>,
    scheme: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    timeout_ms: Option<u64>,
    max_body_bytes: Option<usize>,
    max_age_seconds: Option<u64>,
    min_refetch_interval_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    cluster: Option<String>,
    scheme: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    algorithms: Option<Vec<String>>,
    jwks: Option<Value>,
    poll_interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    max_body_bytes: Option<usize>,
    max_staleness_seconds: Option<u64>,
    max_events: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    namespace: Option<String>,
    max_entries: Option<u32>,
    max_ttl_seconds: Option<u64>,
    negative_ttl_seconds: Option<u64>,
    stale_if_error_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    required_scopes: Vec<String>,
    require_binding: Option<bool>,
    #[serde(default)]
    allowed_client_ids: Vec<String>,
    client_certificate: Option<String>,
    allowed_certificates: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path_prefix: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    // The fields of `RawPolicy` (serde's `flatten` does not work with `deny_unknown_fields`).
    #[serde(default)]
    required_scopes: Vec<String>,
    require_binding: Option<bool>,
    #[serde(default)]
    allowed_client_ids: Vec<String>,
    client_certificate: Option<String>,
    allowed_certificates: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClientCertificate {
    sources: Option<Vec<String>>,
    pem_header: Option<String>,
    trusted_hop: Option<Value>,
    forward_headers: Option<bool>,
    forward_xfcc_hash: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrustedHop {
    #[serde(default)]
    uri_sans: Vec<String>,
    #[serde(default)]
    dns_sans: Vec<String>,
    #[serde(default)]
    thumbprints: Vec<String>,
    #[serde(default)]
    cidrs: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCertificateRules {
    #[serde(default)]
    thumbprints: Vec<String>,
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    issuers: Vec<String>,
    #[serde(default)]
    dns_sans: Vec<String>,
    #[serde(default)]
    uri_sans: Vec<String>,
    #[serde(default)]
    ip_sans: Vec<String>,
    #[serde(default)]
    email_sans: Vec<String>,
}

/// A configuration error; the message starts with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, ConfigError>;

/// An error naming `field` (which may hold a name the configuration chose, such as a claim's):
/// its control characters are escaped, as the message goes into a log line.
fn err<T>(field: &str, why: &str) -> Result<T> {
    let message = format!("{field}: {why}");
    if !message.chars().any(char::is_control) {
        return Err(ConfigError(message));
    }
    let escaped = message
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    Err(ConfigError(escaped))
}

/// Parses and validates the plugin configuration; `client_secret_env` is read from the process's
/// (the wasm VM's) environment.
pub fn parse(raw: &[u8]) -> Result<Config> {
    parse_with_env(raw, &|name| std::env::var(name).ok())
}

/// `parse`, with `env` in place of the process's environment.
pub fn parse_with_env(raw: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
    let c: RawConfig = serde_json::from_slice(raw)
        .map_err(|e| ConfigError(format!("configuration: {}", without_values(&e))))?;
    let Some(i) = section::<RawIntrospection>(c.introspection, "introspection")? else {
        return err("introspection", "is required");
    };
    let introspection = introspection(i, c.jwt, env)?;
    let fingerprint = fingerprint(raw, &introspection.client_secret);
    let claim_headers = claim_headers(c.claim_headers)?;
    let revocation = match section::<RawRevocation>(c.revocation, "revocation")? {
        Some(r) => Some(revocation(r, &introspection)?),
        None => None,
    };
    Ok(Config {
        realm: realm(c.realm)?,
        max_token_length: max_token_length(c.max_token_length)?,
        introspection,
        cache: cache(section(c.cache, "cache")?.unwrap_or_default())?,
        client_certificate: client_certificate(
            section(c.client_certificate, "client_certificate")?.unwrap_or_default(),
            &claim_headers,
        )?,
        revocation,
        claim_headers,
        default_policy: default_policy(c.default_policy)?,
        routes: routes(c.routes)?,
        fingerprint,
    })
}

/// The fingerprint: SHA-256 over the configuration's text with every occurrence of the
/// introspection client's secret cut out, so that the fingerprint, which is logged and is part of
/// every token key, says nothing about the secret (the secret still keys the shared-data seal). A
/// secret written with JSON escapes is not recognised in the text: write it plainly.
fn fingerprint(raw: &[u8], secret: &str) -> String {
    let mut h = Sha256::new();
    let secret = secret.as_bytes();
    let mut rest = raw;
    // No secret (tls_client_auth, or one from the environment) leaves nothing to cut; `windows(0)`
    // would panic.
    while let Some(at) = (!secret.is_empty())
        .then(|| rest.windows(secret.len()).position(|w| w == secret))
        .flatten()
    {
        h.update(&rest[..at]);
        h.update(b"\0secret\0");
        rest = &rest[at + secret.len()..];
    }
    h.update(rest);
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn realm(value: Option<String>) -> Result<String> {
    match value {
        // It goes into `WWW-Authenticate` as a quoted string: printable ASCII, no quote or
        // backslash (no CR/LF to split the header with).
        Some(r)
            if r.is_empty()
                || r.bytes()
                    .any(|b| !(b' '..=b'~').contains(&b) || b == b'"' || b == b'\\') =>
        {
            err(
                "realm",
                "must be non-empty printable ASCII without quote or backslash",
            )
        }
        Some(r) => Ok(r),
        None => Ok("certbound".to_string()),
    }
}

fn max_token_length(value: Option<usize>) -> Result<usize> {
    match value.unwrap_or(4096) {
        n @ 1..=65536 => Ok(n),
        _ => err("max_token_length", "must be between 1 and 65536"),
    }
}

/// The introspection client's secret: written in the configuration, or (better: the plugin
/// configuration is readable by whoever can read the proxy's configuration) the value of the VM's
/// environment variable `client_secret_env` names (Envoy `vm_config.environment_variables`, Istio
/// `vmConfig.env`), read once, at configuration.
fn client_secret(
    inline: Option<String>,
    variable: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String> {
    const FIELD: &str = "introspection.client_secret_env";
    match (inline, variable) {
        (Some(_), Some(_)) => err(FIELD, "replaces client_secret: set one of them"),
        (Some(secret), None) => required(Some(secret), "introspection.client_secret"),
        (None, Some(name)) => {
            let valid = name
                .bytes()
                .enumerate()
                .all(|(i, b)| b == b'_' || b.is_ascii_uppercase() || (i > 0 && b.is_ascii_digit()));
            if name.is_empty() || !valid {
                return err(FIELD, "must be an environment variable name (A-Z, 0-9, _)");
            }
            match env(&name) {
                // A trailing newline from a secret file would make every introspection a 401.
                Some(secret) if secret.trim() != secret => err(
                    FIELD,
                    "names a variable whose value has leading or trailing whitespace",
                ),
                Some(secret) if !secret.is_empty() => Ok(secret),
                _ => err(
                    FIELD,
                    "names a variable the VM does not have or that is empty (Envoy: \
                     vm_config.environment_variables; Istio: vmConfig.env)",
                ),
            }
        }
        (None, None) => err(
            "introspection.client_secret",
            "is required (or client_secret_env)",
        ),
    }
}

/// `introspection`, and with a JWT format the `jwt` section it needs.
fn introspection(
    i: RawIntrospection,
    jwt: Option<Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Introspection> {
    let client_id = required(i.client_id, "introspection.client_id")?;
    let client_auth = match i.client_auth.as_deref() {
        None | Some("client_secret_basic") => ClientAuth::ClientSecretBasic,
        Some("tls_client_auth") => ClientAuth::TlsClientAuth,
        Some(_) => {
            return err(
                "introspection.client_auth",
                "must be client_secret_basic or tls_client_auth",
            )
        }
    };
    let format = match (i.format.as_deref(), jwt) {
        (None, _) => return err("introspection.format", "is required"),
        (Some("json"), None) => Format::Json,
        (Some("json"), Some(_)) => return err("jwt", "is only used by the JWT formats"),
        (Some("jwt" | "introspection-jwt"), None) => {
            return err("jwt", "is required for the JWT formats")
        }
        (Some("jwt"), Some(j)) => Format::Jwt(jwt_rules(j, None)?.into()),
        (Some("introspection-jwt"), Some(j)) => {
            Format::IntrospectionJwt(jwt_rules(j, Some(&client_id))?.into())
        }
        (Some(other), _) => {
            return err(
                "introspection.format",
                &format!("unknown format `{other}`, expected json, jwt or introspection-jwt"),
            )
        }
    };
    Ok(Introspection {
        format,
        endpoint: Endpoint {
            cluster: required(i.cluster, "introspection.cluster")?,
            authority: required(i.authority, "introspection.authority")?,
            path: path(i.path, "introspection.path")?,
            scheme: scheme(i.scheme, "introspection.scheme")?,
        },
        client_id,
        client_auth,
        client_secret: match client_auth {
            ClientAuth::ClientSecretBasic => {
                client_secret(i.client_secret, i.client_secret_env, env)?
            }
            ClientAuth::TlsClientAuth
                if i.client_secret.is_some() || i.client_secret_env.is_some() =>
            {
                let field = match i.client_secret {
                    Some(_) => "introspection.client_secret",
                    None => "introspection.client_secret_env",
                };
                return err(
                    field,
                    "is not used with client_auth tls_client_auth (the cluster's TLS certificate authenticates)",
                );
            }
            ClientAuth::TlsClientAuth => String::new(),
        },
        timeout_ms: bounded(i.timeout_ms, 2000, 60_000, "introspection.timeout_ms")?,
        max_body_bytes: body_limit(i.max_body_bytes, "introspection.max_body_bytes")?,
        audiences: match i.audiences {
            Some(a) if a.is_empty() || a.iter().any(|s| s.is_empty()) => {
                return err("introspection.audiences", "must list non-empty audiences")
            }
            a => a.unwrap_or_default(),
        },
        issuer: match i.issuer {
            Some(iss) => Some(required(Some(iss), "introspection.issuer")?),
            None => None,
        },
    })
}

/// `jwt`. `introspecting_client` is given for RFC 9701, whose answers are addressed to the
/// introspecting client (the default audience) and always typed `token-introspection+jwt`.
fn jwt_rules(value: Value, introspecting_client: Option<&str>) -> Result<JwtRules> {
    let j: RawJwt = section(Some(value), "jwt")?.unwrap_or_default();
    let audiences = match (j.audiences, introspecting_client) {
        (Some(a), _) if a.is_empty() || a.iter().any(|s| s.is_empty()) => {
            return err("jwt.audiences", "must list non-empty audiences")
        }
        (Some(a), _) => a,
        (None, Some(client)) => vec![client.to_string()],
        (None, None) => return err("jwt.audiences", "is required for format jwt"),
    };
    let algorithms = algorithms(j.algorithms, "jwt.algorithms")?;
    let typ = match (introspecting_client, j.typ) {
        (Some(_), Some(_)) => {
            return err(
                "jwt.typ",
                "is fixed to token-introspection+jwt for introspection-jwt",
            )
        }
        (Some(_), None) => Some("token-introspection+jwt".to_string()),
        (None, typ) => typ,
    };
    let clock_skew_seconds = j.clock_skew_seconds.unwrap_or(60);
    if clock_skew_seconds > 600 {
        return err("jwt.clock_skew_seconds", "must be at most 600");
    }
    let Some(k) = section::<RawJwks>(j.jwks, "jwt.jwks")? else {
        return err("jwt.jwks", "is required");
    };
    Ok(JwtRules {
        issuer: required(j.issuer, "jwt.issuer")?,
        audiences,
        algorithms,
        clock_skew_seconds,
        typ,
        jwks: jwks(k, "jwt.jwks")?,
    })
}

fn algorithms(names: Option<Vec<String>>, field: &str) -> Result<Vec<Algorithm>> {
    let mut algorithms = Vec::new();
    for name in names.unwrap_or_else(|| vec!["PS256".into()]) {
        let Some(alg) = Algorithm::ALL.into_iter().find(|a| a.name() == name) else {
            return err(
                field,
                &format!("`{name}` is not allowed, expected PS256, RS256, ES256 or EdDSA"),
            );
        };
        algorithms.push(alg);
    }
    if algorithms.is_empty() {
        return err(field, "must list at least one algorithm");
    }
    Ok(algorithms)
}

/// `revocation`: where the feed is (by default on the introspection's cluster and authority) and
/// how its events are verified (by default as the JWT format's answers are: its issuer, algorithms
/// and key set; with format `json` the section names its own issuer and `jwks`).
fn revocation(r: RawRevocation, i: &Introspection) -> Result<Revocation> {
    let format_rules = i.format.jwt_rules();
    let jwks = match (r.jwks, format_rules) {
        (Some(_), Some(_)) => {
            return err(
                "revocation.jwks",
                "is the JWT format's (jwt.jwks); it is given only with format json",
            )
        }
        (Some(v), None) => match section::<RawJwks>(Some(v), "revocation.jwks")? {
            Some(k) => jwks(k, "revocation.jwks")?,
            None => return err("revocation.jwks", "is required with format json"),
        },
        (None, Some(rules)) => rules.jwks.clone(),
        (None, None) => return err("revocation.jwks", "is required with format json"),
    };
    let issuer = match (r.issuer, format_rules) {
        (Some(iss), _) => required(Some(iss), "revocation.issuer")?,
        (None, Some(rules)) => rules.issuer.clone(),
        (None, None) => return err("revocation.issuer", "is required with format json"),
    };
    let algorithms = match (r.algorithms, format_rules) {
        (None, Some(rules)) => rules.algorithms.clone(),
        (names, _) => algorithms(names, "revocation.algorithms")?,
    };
    let audience = match r.audience {
        Some(a) => required(Some(a), "revocation.audience")?,
        None => i.client_id.clone(),
    };
    let poll_interval_ms = match r.poll_interval_ms.unwrap_or(500) {
        ms @ 100..=60_000 => ms,
        _ => {
            return err(
                "revocation.poll_interval_ms",
                "must be between 100 and 60000",
            )
        }
    };
    let max_staleness_ms = bounded(
        r.max_staleness_seconds,
        10,
        3600,
        "revocation.max_staleness_seconds",
    )? * 1000;
    if max_staleness_ms <= poll_interval_ms {
        return err(
            "revocation.max_staleness_seconds",
            "must be longer than poll_interval_ms",
        );
    }
    let max_events = match r.max_events.unwrap_or(10_000) {
        n @ 1..=100_000 => n as usize,
        _ => return err("revocation.max_events", "must be between 1 and 100000"),
    };
    Ok(Revocation {
        feed: Endpoint {
            cluster: match r.cluster {
                Some(c) => required(Some(c), "revocation.cluster")?,
                None => i.endpoint.cluster.clone(),
            },
            authority: match r.authority {
                Some(a) => required(Some(a), "revocation.authority")?,
                None => i.endpoint.authority.clone(),
            },
            path: path(r.path, "revocation.path")?,
            scheme: match r.scheme {
                Some(v) => scheme(Some(v), "revocation.scheme")?,
                None => i.endpoint.scheme,
            },
        },
        rules: Rc::new(JwtRules {
            issuer,
            audiences: vec![audience],
            algorithms,
            clock_skew_seconds: format_rules.map_or(60, |rules| rules.clock_skew_seconds),
            typ: Some("secevent+jwt".to_string()),
            jwks,
        }),
        poll_interval_ms,
        timeout_ms: bounded(r.timeout_ms, 1000, 60_000, "revocation.timeout_ms")?,
        max_body_bytes: body_limit(r.max_body_bytes, "revocation.max_body_bytes")?,
        max_staleness_ms,
        max_events,
    })
}

/// An endpoint's `scheme`: the `:scheme` its calls carry, which is what makes ngx_wasm_module
/// use TLS (Envoy's cluster decides that itself). None: the calls carry no `:scheme`.
fn scheme(v: Option<String>, field: &str) -> Result<Option<&'static str>> {
    match v.as_deref() {
        None => Ok(None),
        Some("https") => Ok(Some("https")),
        Some("http") => Ok(Some("http")),
        Some(_) => err(field, "must be http or https"),
    }
}

fn jwks(k: RawJwks, field: &str) -> Result<Jwks> {
    let f = |name: &str| format!("{field}.{name}");
    Ok(Jwks {
        endpoint: Endpoint {
            cluster: required(k.cluster, &f("cluster"))?,
            authority: required(k.authority, &f("authority"))?,
            path: path(k.path, &f("path"))?,
            scheme: scheme(k.scheme, &f("scheme"))?,
        },
        timeout_ms: bounded(k.timeout_ms, 2000, 60_000, &f("timeout_ms"))?,
        max_body_bytes: body_limit(k.max_body_bytes, &f("max_body_bytes"))?,
        max_age_seconds: bounded(k.max_age_seconds, 300, 86_400, &f("max_age_seconds"))?,
        min_refetch_interval_seconds: bounded(
            k.min_refetch_interval_seconds,
            30,
            3600,
            &f("min_refetch_interval_seconds"),
        )?,
    })
}

fn cache(rc: RawCache) -> Result<CacheSettings> {
    let namespace = rc.namespace.unwrap_or_else(|| "certbound".to_string());
    if namespace.is_empty() || namespace.contains('/') {
        return err("cache.namespace", "must be non-empty and contain no '/'");
    }
    let max_entries = rc.max_entries.unwrap_or(10_000);
    if !(1..=1_000_000).contains(&max_entries) {
        return err("cache.max_entries", "must be between 1 and 1000000");
    }
    Ok(CacheSettings {
        namespace,
        max_entries,
        max_ttl_seconds: bounded(rc.max_ttl_seconds, 300, 86_400, "cache.max_ttl_seconds")?,
        negative_ttl_seconds: bounded(
            rc.negative_ttl_seconds,
            10,
            3600,
            "cache.negative_ttl_seconds",
        )?,
        stale_if_error_seconds: match rc.stale_if_error_seconds.unwrap_or(0) {
            s @ 0..=3600 => s,
            _ => return err("cache.stale_if_error_seconds", "must be at most 3600"),
        },
    })
}

fn claim_headers(map: BTreeMap<String, String>) -> Result<Vec<(String, String)>> {
    let mut claim_headers: Vec<(String, String)> = Vec::new();
    for (claim, header) in map {
        let field = format!("claim_headers.{claim}");
        if claim.is_empty() {
            return err("claim_headers", "claim names must not be empty");
        }
        let h = header_name(&header, &field)?;
        // CGI and WSGI read `-` and `_` alike: a client's `x-user` would pass for `x_user`.
        if h.contains('_') {
            return err(
                &field,
                "must not contain `_` (upstreams read it as `-`): name it with `-`",
            );
        }
        if CERTIFICATE_HEADERS.contains(&h.as_str()) {
            return err(&field, "names a certificate header (xfcc, client-cert)");
        }
        if claim_headers.iter().any(|(_, existing)| existing == &h) {
            return err(&field, "names a header already used by another claim");
        }
        claim_headers.push((claim, h));
    }
    Ok(claim_headers)
}

/// `"deny"` (requests that match no route are refused), or a policy (binding required, no
/// scopes when absent).
fn default_policy(value: Option<Value>) -> Result<Option<Policy>> {
    if let Some(Value::String(s)) = &value {
        return match s.as_str() {
            "deny" => Ok(None),
            _ => err("default_policy", "must be \"deny\" or a policy object"),
        };
    }
    let dp: RawPolicy = section(value, "default_policy")?.unwrap_or_default();
    policy(dp, "default_policy").map(Some)
}

fn routes(list: Vec<Value>) -> Result<Vec<Route>> {
    let mut routes = Vec::new();
    for (n, r) in list.into_iter().enumerate() {
        let field = format!("routes[{n}]");
        let Some(r) = section::<RawRoute>(Some(r), &field)? else {
            continue;
        };
        let path_prefix = path(r.path_prefix, &format!("{field}.path_prefix"))?;
        if path_prefix.contains(['?', '#', ';', '%', '\\']) || path_prefix.contains("//") {
            return err(
                &format!("{field}.path_prefix"),
                "must be a plain path: no query, fragment, `;`, `%`, backslash or empty segment",
            );
        }
        for m in &r.methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return err(
                    &format!("{field}.methods"),
                    "methods are upper-case tokens like GET",
                );
            }
        }
        let p = RawPolicy {
            required_scopes: r.required_scopes,
            require_binding: r.require_binding,
            allowed_client_ids: r.allowed_client_ids,
            client_certificate: r.client_certificate,
            allowed_certificates: r.allowed_certificates,
        };
        routes.push(Route {
            path_prefix,
            methods: r.methods,
            policy: policy(p, &field)?,
        });
    }
    Ok(routes)
}

// ---- the checks the sections share ----

/// Deserializes one section, so that its errors name it.
fn section<T: DeserializeOwned>(value: Option<Value>, field: &str) -> Result<Option<T>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| ConfigError(format!("{field}: {}", without_values(&e)))),
    }
}

/// serde's message without the value it quotes: `invalid type: string "s3cret", expected u64`
/// would echo a secret given in the wrong field. Field names (`unknown field `x``) stay.
fn without_values(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.split_once(": ") {
        Some((kind @ ("invalid type" | "invalid value" | "invalid length"), rest)) => {
            let expected = rest.rsplit_once(", expected ").map_or("", |(_, e)| e);
            format!("{kind}, expected {expected}")
        }
        // A name the configuration has and certbound does not know is named, escaped and cut: it
        // goes into a log line.
        _ => match message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.rsplit_once("`, expected "))
        {
            Some((name, expected)) => {
                let name: String = name.chars().take(64).collect();
                format!(
                    "unknown field `{}`, expected {expected}",
                    name.escape_debug()
                )
            }
            None => message.chars().filter(|c| !c.is_control()).collect(),
        },
    }
}

fn required(value: Option<String>, field: &str) -> Result<String> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        Some(_) => err(field, "must not be empty"),
        None => err(field, "is required"),
    }
}

fn path(value: Option<String>, field: &str) -> Result<String> {
    let p = required(value, field)?;
    if !p.starts_with('/') {
        return err(field, "must start with '/'");
    }
    Ok(p)
}

fn positive(value: Option<u64>, default: u64, field: &str) -> Result<u64> {
    match value.unwrap_or(default) {
        0 => err(field, "must be greater than 0"),
        v => Ok(v),
    }
}

/// `positive`, and at most `max`: every lifetime and timeout is bounded.
fn bounded(value: Option<u64>, default: u64, max: u64, field: &str) -> Result<u64> {
    match positive(value, default, field)? {
        v if v > max => err(field, &format!("must be at most {max}")),
        v => Ok(v),
    }
}

/// The largest answer body read from a call: 64 KiB unless configured, at most 16 MiB.
fn body_limit(value: Option<usize>, field: &str) -> Result<usize> {
    match value.unwrap_or(65536) {
        0 => err(field, "must be greater than 0"),
        n if n > 16 * 1024 * 1024 => err(field, "must be at most 16 MiB"),
        n => Ok(n),
    }
}

/// An HTTP header name as RFC 9110 token characters, returned lower-case.
fn header_name(name: &str, field: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        return err(field, "is not a valid HTTP header name");
    }
    let lower = name.to_ascii_lowercase();
    if lower == "authorization" || lower == "host" {
        return err(field, "must not name a header the proxy owns");
    }
    Ok(lower)
}

fn scopes(list: Vec<String>, field: &str) -> Result<Vec<String>> {
    for s in &list {
        if s.is_empty()
            || s.bytes()
                .any(|b| b <= b' ' || b == b'"' || b == b'\\' || b >= 0x7f)
        {
            return err(field, "scope values must be RFC 6749 scope tokens");
        }
    }
    Ok(list)
}

fn policy(p: RawPolicy, field: &str) -> Result<Policy> {
    let require_binding = p.require_binding.unwrap_or(true);
    // Unset, a certificate is required where the token must be bound to one, as before.
    let certificate_required = match (p.client_certificate.as_deref(), p.require_binding) {
        (None, _) => require_binding,
        (Some("required"), _) => true,
        (Some("optional"), Some(true)) => {
            return err(
                &format!("{field}.client_certificate"),
                "optional contradicts require_binding true (a request without a certificate \
                 could never pass): set require_binding false",
            )
        }
        (Some("optional"), _) => false,
        (Some(_), _) => {
            return err(
                &format!("{field}.client_certificate"),
                "must be required or optional",
            )
        }
    };
    let require_binding = require_binding && certificate_required;
    let rules_field = format!("{field}.allowed_certificates");
    let certificate_rules =
        match section::<RawCertificateRules>(p.allowed_certificates, &rules_field)? {
            Some(r) => Some(Rc::new(certificate_rules(r, &rules_field)?)),
            None => None,
        };
    Ok(Policy {
        required_scopes: scopes(p.required_scopes, &format!("{field}.required_scopes"))?,
        require_binding,
        allowed_client_ids: p.allowed_client_ids,
        certificate_required,
        certificate_rules,
    })
}

/// `allowed_certificates`: at least one list, every entry well formed.
fn certificate_rules(r: RawCertificateRules, field: &str) -> Result<CertificateRules> {
    let names = |list: Vec<String>, name: &str, lower: bool| -> Result<Vec<String>> {
        plain_names(&list, &format!("{field}.{name}"))?;
        Ok(match lower {
            true => list.iter().map(|s| s.to_ascii_lowercase()).collect(),
            false => list,
        })
    };
    let mut ip_sans = Vec::new();
    for ip in &r.ip_sans {
        match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => ip_sans.push(ip),
            Err(_) => return err(&format!("{field}.ip_sans"), "entries must be IP addresses"),
        }
    }
    let rules = CertificateRules {
        thumbprints: thumbprints(&r.thumbprints, &format!("{field}.thumbprints"))?,
        subjects: names(r.subjects, "subjects", false)?,
        issuers: names(r.issuers, "issuers", false)?,
        dns_sans: names(r.dns_sans, "dns_sans", true)?,
        uri_sans: names(r.uri_sans, "uri_sans", false)?,
        ip_sans,
        email_sans: names(r.email_sans, "email_sans", true)?,
    };
    if rules.thumbprints.is_empty() && !rules.need_certificate() {
        return err(field, "must list at least one rule (thumbprints, subjects, issuers, dns_sans, uri_sans, ip_sans, email_sans)");
    }
    Ok(rules)
}

/// `x5t#S256` values: 43 characters of base64url without padding, canonical.
fn thumbprints(list: &[String], field: &str) -> Result<Vec<[u8; 32]>> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let mut out = Vec::new();
    for t in list {
        let decoded = URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .filter(|b| URL_SAFE_NO_PAD.encode(b) == *t);
        match decoded {
            Some(b) => out.push(b),
            None => return err(
                field,
                "entries must be x5t#S256 values (SHA-256 of the DER, 43 characters of base64url)",
            ),
        }
    }
    Ok(out)
}

/// The certificate headers certbound reads; a `pem_header` may not be one of them.
const CERTIFICATE_HEADERS: [&str; 3] = [
    "x-forwarded-client-cert",
    "client-cert",
    "client-cert-chain",
];

/// `client_certificate`: the sources in order, and for a header source who is believed.
fn client_certificate(
    c: RawClientCertificate,
    claim_headers: &[(String, String)],
) -> Result<ClientCertificates> {
    const FIELD: &str = "client_certificate";
    let mut sources = Vec::new();
    for name in c.sources.unwrap_or_else(|| vec!["connection".to_string()]) {
        let source = match name.as_str() {
            "connection" => CertificateSource::Connection,
            "xfcc" => CertificateSource::Xfcc,
            "client-cert" => CertificateSource::ClientCert,
            "pem-header" => CertificateSource::PemHeader,
            _ => {
                return err(
                    "client_certificate.sources",
                    "sources are connection, xfcc, client-cert and pem-header",
                )
            }
        };
        if sources.contains(&source) {
            return err("client_certificate.sources", "names a source twice");
        }
        sources.push(source);
    }
    if sources.is_empty() {
        return err(
            "client_certificate.sources",
            "must list at least one source",
        );
    }
    // A hop overwrites the header it sets, never the others: with two header sources, one would
    // be the client's, believed because the hop is trusted.
    if sources
        .iter()
        .filter(|s| **s != CertificateSource::Connection)
        .count()
        > 1
    {
        return err(
            "client_certificate.sources",
            "names more than one header source: a trusted hop sets one header and passes the client's others on",
        );
    }
    let from_headers = sources.iter().any(|s| *s != CertificateSource::Connection);
    let pem_header = match (
        c.pem_header,
        sources.contains(&CertificateSource::PemHeader),
    ) {
        (None, true) => {
            return err(
                "client_certificate.pem_header",
                "is required with the pem-header source",
            )
        }
        (Some(_), false) => {
            return err(
                "client_certificate.pem_header",
                "is only used by the pem-header source",
            )
        }
        (Some(h), true) => {
            let h = header_name(&h, "client_certificate.pem_header")?;
            // CGI and WSGI read `-` and `_` alike: the header is named with `-` only.
            if h.contains('_') {
                return err(
                    "client_certificate.pem_header",
                    "must not contain `_` (upstreams read it as `-`): name it with `-`",
                );
            }
            if CERTIFICATE_HEADERS.contains(&h.as_str()) {
                return err(
                    "client_certificate.pem_header",
                    "names a header of another source (xfcc, client-cert)",
                );
            }
            if claim_headers.iter().any(|(_, c)| *c == h) {
                return err(
                    "client_certificate.pem_header",
                    "names a header certbound sets (claim_headers)",
                );
            }
            Some(h)
        }
        (None, false) => None,
    };
    let trusted_hop =
        match (
            section::<RawTrustedHop>(c.trusted_hop, "client_certificate.trusted_hop")?,
            from_headers,
        ) {
            (Some(_), false) => {
                return err(
                    "client_certificate.trusted_hop",
                    "is only used with a header source (xfcc, client-cert, pem-header)",
                )
            }
            (None, true) => return err(
                "client_certificate.trusted_hop",
                "is required with a header source: a certificate header is believed only from a \
                 trusted hop (uri_sans, dns_sans, thumbprints and/or cidrs)",
            ),
            (Some(t), true) => trusted_hop(t)?,
            (None, false) => TrustedHop::default(),
        };
    if from_headers && !trusted_hop.has_identities() && trusted_hop.cidrs.is_empty() {
        return err(
            "client_certificate.trusted_hop",
            "must name the hop: uri_sans, dns_sans, thumbprints and/or cidrs",
        );
    }
    let forward_headers = match (c.forward_headers, from_headers) {
        (Some(_), false) => {
            return err(
                &format!("{FIELD}.forward_headers"),
                "is only used with a header source",
            )
        }
        (f, _) => f.unwrap_or(false),
    };
    Ok(ClientCertificates {
        sources,
        pem_header,
        trusted_hop,
        forward_headers,
        forward_xfcc_hash: c.forward_xfcc_hash.unwrap_or(false),
    })
}

/// Names a rule compares with a certificate's: non-empty, no control characters (they go into logs).
fn plain_names(list: &[String], field: &str) -> Result<()> {
    if list
        .iter()
        .any(|s| s.is_empty() || s.chars().any(char::is_control))
    {
        return err(
            field,
            "entries must be non-empty, without control characters",
        );
    }
    Ok(())
}

fn trusted_hop(t: RawTrustedHop) -> Result<TrustedHop> {
    const FIELD: &str = "client_certificate.trusted_hop";
    plain_names(&t.uri_sans, &format!("{FIELD}.uri_sans"))?;
    plain_names(&t.dns_sans, &format!("{FIELD}.dns_sans"))?;
    let mut cidrs = Vec::new();
    for c in &t.cidrs {
        match c.parse::<ipnet::IpNet>() {
            // A block written with host bits (10.0.0.1/8) is refused: it reads like one address.
            // So is a /0, which trusts every client.
            Ok(net) if net.trunc() == net && net.prefix_len() > 0 => cidrs.push(net),
            _ => return err(
                &format!("{FIELD}.cidrs"),
                "entries must be CIDR blocks without host bits, like 10.0.0.0/8 or 127.0.0.2/32",
            ),
        }
    }
    Ok(TrustedHop {
        uri_sans: t.uri_sans,
        dns_sans: t.dns_sans.iter().map(|s| s.to_ascii_lowercase()).collect(),
        thumbprints: thumbprints(&t.thumbprints, &format!("{FIELD}.thumbprints"))?,
        cidrs,
    })
}

#[cfg(test)]
mod tests;

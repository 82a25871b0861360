//! The filter's configuration: parsed and validated once, at configure time.

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How the identity server answers an introspection request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RFC 7662 JSON.
    Json,
    /// The phantom-token answer: the body is the JWT access token.
    Jwt,
    /// RFC 9701: a signed JWT whose `token_introspection` claim holds the RFC 7662 members.
    IntrospectionJwt,
}

impl Format {
    /// The `Accept` header of the introspection request.
    pub fn accept(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Jwt => "application/jwt",
            Format::IntrospectionJwt => "application/token-introspection+jwt",
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

/// An upstream endpoint reached with a dispatched call: an Envoy cluster, authority and path.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub cluster: String,
    pub authority: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Introspection {
    pub format: Format,
    pub endpoint: Endpoint,
    pub client_id: String,
    pub client_secret: String,
    pub timeout_ms: u64,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Jwks {
    pub endpoint: Endpoint,
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
}

/// What a request must satisfy once its token is known to be active.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub required_scopes: Vec<String>,
    pub require_binding: bool,
    pub allowed_client_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub path_prefix: String,
    pub methods: Vec<String>,
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub realm: String,
    pub max_token_length: usize,
    pub introspection: Introspection,
    /// Present exactly when the format returns JWTs.
    pub jwt: Option<JwtRules>,
    pub cache: CacheSettings,
    /// (claim name, lower-case header name), in a stable order.
    pub claim_headers: Vec<(String, String)>,
    pub default_policy: Policy,
    pub routes: Vec<Route>,
    /// Hex SHA-256 prefix of the raw configuration: keys in shared data include it, so a new
    /// configuration never reads entries made under an old one.
    pub fingerprint: String,
}

impl Config {
    /// The route a request falls under: the first whose prefix and method match.
    pub fn route_for(&self, method: &str, path: &str) -> Option<usize> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        self.routes.iter().position(|r| {
            path.starts_with(&r.path_prefix)
                && (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
        })
    }

    /// The policy of a route from `route_for`, or the default policy.
    pub fn policy(&self, route: Option<usize>) -> &Policy {
        route
            .and_then(|i| self.routes.get(i))
            .map_or(&self.default_policy, |r| &r.policy)
    }
}

// ---- the wire shape: serde structs that reject unknown fields ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    realm: Option<String>,
    max_token_length: Option<usize>,
    introspection: Option<Value>,
    jwt: Option<Value>,
    cache: Option<Value>,
    #[serde(default)]
    claim_headers: std::collections::BTreeMap<String, String>,
    default_policy: Option<Value>,
    #[serde(default)]
    routes: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    format: Option<String>,
    cluster: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    timeout_ms: Option<u64>,
    max_body_bytes: Option<usize>,
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
    authority: Option<String>,
    path: Option<String>,
    max_age_seconds: Option<u64>,
    min_refetch_interval_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    namespace: Option<String>,
    max_entries: Option<u32>,
    max_ttl_seconds: Option<u64>,
    negative_ttl_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    required_scopes: Vec<String>,
    require_binding: Option<bool>,
    #[serde(default)]
    allowed_client_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path_prefix: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    required_scopes: Vec<String>,
    require_binding: Option<bool>,
    #[serde(default)]
    allowed_client_ids: Vec<String>,
}

/// A configuration error; the message starts with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(field: &str, why: &str) -> Result<T, ConfigError> {
    Err(ConfigError(format!("{field}: {why}")))
}

/// Deserializes one section, so that its errors name it (`jwt.jwks: unknown field ...`).
fn section<T: serde::de::DeserializeOwned>(
    value: Option<Value>,
    field: &str,
) -> Result<Option<T>, ConfigError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| ConfigError(format!("{field}: {e}"))),
    }
}

fn required(value: Option<String>, field: &str) -> Result<String, ConfigError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        Some(_) => err(field, "must not be empty"),
        None => err(field, "is required"),
    }
}

fn path(value: Option<String>, field: &str) -> Result<String, ConfigError> {
    let p = required(value, field)?;
    if !p.starts_with('/') {
        return err(field, "must start with '/'");
    }
    Ok(p)
}

fn positive(value: Option<u64>, default: u64, field: &str) -> Result<u64, ConfigError> {
    match value.unwrap_or(default) {
        0 => err(field, "must be greater than 0"),
        v => Ok(v),
    }
}

/// An HTTP header name as RFC 9110 token characters, returned lower-case.
fn header_name(name: &str, field: &str) -> Result<String, ConfigError> {
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

fn scopes(list: Vec<String>, field: &str) -> Result<Vec<String>, ConfigError> {
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

fn policy(
    required_scopes: Vec<String>,
    require_binding: Option<bool>,
    allowed_client_ids: Vec<String>,
    field: &str,
) -> Result<Policy, ConfigError> {
    Ok(Policy {
        required_scopes: scopes(required_scopes, &format!("{field}.required_scopes"))?,
        require_binding: require_binding.unwrap_or(true),
        allowed_client_ids,
    })
}

/// Parses and validates the plugin configuration.
pub fn parse(raw: &[u8]) -> Result<Config, ConfigError> {
    let c: RawConfig =
        serde_json::from_slice(raw).map_err(|e| ConfigError(format!("configuration: {e}")))?;

    let max_token_length = c.max_token_length.unwrap_or(4096);
    if max_token_length == 0 || max_token_length > 65536 {
        return err("max_token_length", "must be between 1 and 65536");
    }

    let Some(i) = section::<RawIntrospection>(c.introspection, "introspection")? else {
        return err("introspection", "is required");
    };
    let format = match i.format.as_deref() {
        None => return err("introspection.format", "is required"),
        Some("json") => Format::Json,
        Some("jwt") => Format::Jwt,
        Some("introspection-jwt") => Format::IntrospectionJwt,
        Some(other) => {
            return err(
                "introspection.format",
                &format!("unknown format `{other}`, expected json, jwt or introspection-jwt"),
            )
        }
    };
    let introspection = Introspection {
        format,
        endpoint: Endpoint {
            cluster: required(i.cluster, "introspection.cluster")?,
            authority: required(i.authority, "introspection.authority")?,
            path: path(i.path, "introspection.path")?,
        },
        client_id: required(i.client_id, "introspection.client_id")?,
        client_secret: required(i.client_secret, "introspection.client_secret")?,
        timeout_ms: positive(i.timeout_ms, 2000, "introspection.timeout_ms")?,
        max_body_bytes: match i.max_body_bytes.unwrap_or(65536) {
            0 => return err("introspection.max_body_bytes", "must be greater than 0"),
            n if n > 16 * 1024 * 1024 => {
                return err("introspection.max_body_bytes", "must be at most 16 MiB")
            }
            n => n,
        },
    };

    let jwt = match (format, c.jwt) {
        (Format::Json, Some(_)) => return err("jwt", "is only used by the JWT formats"),
        (Format::Json, None) => None,
        (_, None) => return err("jwt", "is required for the JWT formats"),
        (_, Some(j)) => {
            let j: RawJwt = section(Some(j), "jwt")?.unwrap_or_default();
            let audiences = match (j.audiences, format) {
                (Some(a), _) if a.is_empty() || a.iter().any(|s| s.is_empty()) => {
                    return err("jwt.audiences", "must list non-empty audiences")
                }
                (Some(a), _) => a,
                (None, Format::IntrospectionJwt) => vec![introspection.client_id.clone()],
                (None, _) => return err("jwt.audiences", "is required for format jwt"),
            };
            let mut algorithms = Vec::new();
            for name in j.algorithms.unwrap_or_else(|| vec!["PS256".into()]) {
                let Some(alg) = Algorithm::ALL.into_iter().find(|a| a.name() == name) else {
                    return err(
                        "jwt.algorithms",
                        &format!("`{name}` is not allowed, expected PS256, RS256, ES256 or EdDSA"),
                    );
                };
                algorithms.push(alg);
            }
            if algorithms.is_empty() {
                return err("jwt.algorithms", "must list at least one algorithm");
            }
            if format == Format::IntrospectionJwt && j.typ.is_some() {
                return err(
                    "jwt.typ",
                    "is fixed to token-introspection+jwt for introspection-jwt",
                );
            }
            let typ = match format {
                Format::IntrospectionJwt => Some("token-introspection+jwt".to_string()),
                _ => j.typ,
            };
            let Some(k) = section::<RawJwks>(j.jwks, "jwt.jwks")? else {
                return err("jwt.jwks", "is required");
            };
            let clock_skew_seconds = j.clock_skew_seconds.unwrap_or(60);
            if clock_skew_seconds > 600 {
                return err("jwt.clock_skew_seconds", "must be at most 600");
            }
            Some(JwtRules {
                issuer: required(j.issuer, "jwt.issuer")?,
                audiences,
                algorithms,
                clock_skew_seconds,
                typ,
                jwks: Jwks {
                    endpoint: Endpoint {
                        cluster: required(k.cluster, "jwt.jwks.cluster")?,
                        authority: required(k.authority, "jwt.jwks.authority")?,
                        path: path(k.path, "jwt.jwks.path")?,
                    },
                    max_age_seconds: positive(k.max_age_seconds, 300, "jwt.jwks.max_age_seconds")?,
                    min_refetch_interval_seconds: positive(
                        k.min_refetch_interval_seconds,
                        30,
                        "jwt.jwks.min_refetch_interval_seconds",
                    )?,
                },
            })
        }
    };

    let rc: RawCache = section(c.cache, "cache")?.unwrap_or_default();
    let namespace = rc.namespace.unwrap_or_else(|| "certbound".to_string());
    if namespace.is_empty() || namespace.contains('/') {
        return err("cache.namespace", "must be non-empty and contain no '/'");
    }
    let max_entries = rc.max_entries.unwrap_or(10_000);
    if !(1..=1_000_000).contains(&max_entries) {
        return err("cache.max_entries", "must be between 1 and 1000000");
    }
    let cache = CacheSettings {
        namespace,
        max_entries,
        max_ttl_seconds: positive(rc.max_ttl_seconds, 300, "cache.max_ttl_seconds")?,
        negative_ttl_seconds: positive(rc.negative_ttl_seconds, 10, "cache.negative_ttl_seconds")?,
    };

    let mut claim_headers = Vec::new();
    for (claim, header) in c.claim_headers {
        let field = format!("claim_headers.{claim}");
        if claim.is_empty() {
            return err("claim_headers", "claim names must not be empty");
        }
        let h = header_name(&header, &field)?;
        if claim_headers.iter().any(|(_, existing)| existing == &h) {
            return err(&field, "names a header already used by another claim");
        }
        claim_headers.push((claim, h));
    }

    let dp: RawPolicy = section(c.default_policy, "default_policy")?.unwrap_or_default();
    let default_policy = policy(
        dp.required_scopes,
        dp.require_binding,
        dp.allowed_client_ids,
        "default_policy",
    )?;

    let mut routes = Vec::new();
    for (n, r) in c.routes.into_iter().enumerate() {
        let field = format!("routes[{n}]");
        let Some(r) = section::<RawRoute>(Some(r), &field)? else {
            continue;
        };
        let path_prefix = path(r.path_prefix, &format!("{field}.path_prefix"))?;
        for m in &r.methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return err(
                    &format!("{field}.methods"),
                    "methods are upper-case tokens like GET",
                );
            }
        }
        routes.push(Route {
            path_prefix,
            methods: r.methods,
            policy: policy(
                r.required_scopes,
                r.require_binding,
                r.allowed_client_ids,
                &field,
            )?,
        });
    }

    let digest = Sha256::digest(raw);
    let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();

    Ok(Config {
        realm: match c.realm {
            Some(r) if r.is_empty() || r.contains(['"', '\\']) => {
                return err(
                    "realm",
                    "must be non-empty and contain no quote or backslash",
                )
            }
            Some(r) => r,
            None => "certbound".to_string(),
        },
        max_token_length,
        introspection,
        jwt,
        cache,
        claim_headers,
        default_policy,
        routes,
        fingerprint,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::{json, Value};

    pub(crate) fn minimal(format: &str) -> Value {
        let mut v = json!({
            "introspection": {
                "format": format, "cluster": "idsvr", "authority": "login.example.com",
                "path": "/introspect", "client_id": "introspect-client", "client_secret": "s3cret"
            }
        });
        if format != "json" {
            v["jwt"] = json!({
                "issuer": "https://login.example.com",
                "audiences": ["api.example.com"],
                "jwks": {"cluster": "idsvr", "authority": "login.example.com", "path": "/jwks"}
            });
        }
        v
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
        let j = c.jwt.unwrap();
        assert_eq!(j.algorithms, vec![Algorithm::PS256]);
        assert_eq!(j.clock_skew_seconds, 60);
        assert_eq!(j.typ, None);
        assert_eq!(j.jwks.max_age_seconds, 300);
        assert_eq!(c.cache.max_entries, 10_000);
        assert_eq!(c.cache.negative_ttl_seconds, 10);
        assert!(c.default_policy.require_binding);
        assert_eq!(c.fingerprint.len(), 16);

        let c = parse_value(&minimal("json")).unwrap();
        assert!(c.jwt.is_none());

        let mut v = minimal("introspection-jwt");
        v["jwt"].as_object_mut().unwrap().remove("audiences");
        let c = parse_value(&v).unwrap();
        let j = c.jwt.unwrap();
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
                "introspection.client_secret: is required",
            ),
            (
                "json",
                |v| v["introspection"]["timeout_ms"] = json!(0),
                "introspection.timeout_ms: must be greater than 0",
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
                |v| v["realm"] = json!("a\"b"),
                "realm: must be non-empty",
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
    fn routes_match_by_prefix_then_method_else_default() {
        let mut v = minimal("json");
        v["routes"] = json!([
            {"path_prefix": "/api/transactions", "methods": ["POST"], "required_scopes": ["write"]},
            {"path_prefix": "/api/", "required_scopes": ["read"], "require_binding": false}
        ]);
        let c = parse_value(&v).unwrap();
        let policy_for = |m, p| c.policy(c.route_for(m, p));
        assert_eq!(
            policy_for("POST", "/api/transactions?x=1").required_scopes,
            ["write"]
        );
        assert_eq!(
            policy_for("GET", "/api/transactions").required_scopes,
            ["read"]
        );
        assert!(!policy_for("GET", "/api/transactions").require_binding);
        assert!(policy_for("GET", "/health").required_scopes.is_empty());
        assert!(policy_for("GET", "/health").require_binding);
    }

    #[test]
    fn fingerprint_changes_with_the_configuration() {
        let a = parse_value(&minimal("json")).unwrap().fingerprint;
        let mut v = minimal("json");
        v["realm"] = json!("other");
        assert_ne!(a, parse_value(&v).unwrap().fingerprint);
    }
}

//! The introspection call: building the request, classifying the answer in each of the three
//! formats, and turning trusted RFC 7662 members into a cache entry.

use crate::binding::Thumbprint;
use crate::cache::{positive_expiry, ActiveToken, Binding, Entry, TokenKey, TokenState};
use crate::config::{ClientAuth, Config, Format, Introspection, JwtRules};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};
use std::rc::Rc;

/// Headers and body of the introspection request (RFC 7662 section 2.1): with
/// `client_secret_basic` the client's credentials in `Authorization`; with `tls_client_auth` its
/// `client_id` in the body (the proxy's TLS connection carries the certificate, RFC 8705 2.1).
pub fn request(cfg: &Introspection, token: &str) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let mut headers = cfg
        .endpoint
        .pseudo_headers("POST", cfg.endpoint.path.clone());
    headers.extend([
        (
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("accept", cfg.format.accept().to_string()),
    ]);
    let mut body = format!(
        "token={}&token_type_hint=access_token",
        form_urlencode(token)
    );
    match cfg.client_auth {
        ClientAuth::ClientSecretBasic => {
            // RFC 6749 section 2.3.1: id and secret are form-urlencoded before the Basic encoding.
            let credentials = format!(
                "{}:{}",
                form_urlencode(&cfg.client_id),
                form_urlencode(&cfg.client_secret)
            );
            headers.push((
                "authorization",
                format!("Basic {}", STANDARD.encode(credentials)),
            ));
        }
        ClientAuth::TlsClientAuth => {
            body.push_str("&client_id=");
            body.push_str(&form_urlencode(&cfg.client_id));
        }
    }
    (headers, body.into_bytes())
}

fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What the identity server said, before any JWT in it is verified.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Inactive,
    /// RFC 7662 members of an active token, received over the trusted channel (`json`).
    Members(Map<String, Value>),
    /// A JWT that must be verified, with these rules, before anything in it is read.
    Jwt(String, Rc<JwtRules>),
}

/// Why no answer can be used. Never cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The identity server could not answer: 503 (or a stale answer, `cache.stale_if_error_seconds`).
    Unavailable(&'static str),
    /// The check was given up on this side (the request that made its call went away): 503,
    /// never a stale answer (nothing was unavailable, and the answer may have been "inactive").
    Cancelled(&'static str),
    /// It answered something unusable: 502.
    Bad(&'static str),
}

/// Classifies an introspection answer. `status` is `None` when the call itself failed.
pub fn classify(format: &Format, status: Option<u16>, body: &[u8]) -> Result<Answer, Failure> {
    match status {
        None => {
            return Err(Failure::Unavailable(
                "the identity server could not be reached",
            ))
        }
        Some(401 | 403) => {
            return Err(Failure::Unavailable(
                "the identity server refused the introspection client",
            ))
        }
        Some(500..=599) => return Err(Failure::Unavailable("the identity server failed")),
        Some(204) if matches!(format, Format::Jwt(_)) => return Ok(Answer::Inactive),
        // The identity server refuses the token itself: it is not an active token (a JWT-shaped
        // string is `unsupported_token_type` to oidc-provider). Cached as inactive, so that
        // repeating it does not reach the identity server again.
        Some(400) if refuses_the_token(body) => return Ok(Answer::Inactive),
        Some(200) => {}
        Some(_) => {
            return Err(Failure::Bad(
                "the introspection answer has an unexpected status",
            ))
        }
    }
    match format {
        Format::Json => {
            let members = certbound_jose::json::object(body).ok_or(Failure::Bad(
                "the introspection answer is not a JSON object",
            ))?;
            active_members(members)
        }
        Format::Jwt(_) if body.iter().all(u8::is_ascii_whitespace) => Ok(Answer::Inactive),
        Format::Jwt(rules) | Format::IntrospectionJwt(rules) => {
            let text = std::str::from_utf8(body)
                .map_err(|_| Failure::Bad("the introspection answer is not a JWT"))?
                .trim();
            if text.split('.').count() != 3 || text.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(Failure::Bad("the introspection answer is not a JWT"));
            }
            Ok(Answer::Jwt(text.to_string(), rules.clone()))
        }
    }
}

/// A 400 whose OAuth `error` says the token, not the request of the filter, is at fault.
fn refuses_the_token(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct OAuthError<'a> {
        #[serde(borrow)]
        error: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<OAuthError>(body).is_ok_and(|e| {
        matches!(
            e.error.as_ref(),
            "invalid_request" | "unsupported_token_type" | "invalid_token"
        )
    })
}

/// RFC 7662: the token is active only if `active` is the boolean `true`.
pub fn active_members(members: Map<String, Value>) -> Result<Answer, Failure> {
    match members.get("active") {
        Some(Value::Bool(true)) => Ok(Answer::Members(members)),
        Some(Value::Bool(false)) => Ok(Answer::Inactive),
        _ => Err(Failure::Bad(
            "the introspection answer has no boolean active",
        )),
    }
}

/// The RFC 7662 members inside a verified JWT: the JWT's own claims for the phantom token,
/// the `token_introspection` claim for RFC 9701.
pub fn members_of_verified_jwt(
    format: &Format,
    claims: Map<String, Value>,
) -> Result<Answer, Failure> {
    match format {
        Format::IntrospectionJwt(_) => match claims.get("token_introspection") {
            Some(Value::Object(m)) => active_members(m.clone()),
            _ => Err(Failure::Bad(
                "the introspection JWT has no token_introspection object",
            )),
        },
        _ => {
            if !claims.get("exp").is_some_and(Value::is_u64) {
                return Err(Failure::Bad("the access token JWT has no exp"));
            }
            Ok(Answer::Members(claims))
        }
    }
}

/// `max-age` of a `Cache-Control` header. Only `max-age` bounds the entry: `no-store`, which
/// identity servers send on every OAuth answer (oidc-provider does), is about HTTP caches and
/// would otherwise turn the filter's cache off.
pub fn max_age(cache_control: Option<&str>) -> Option<u64> {
    let mut age = None;
    for directive in cache_control?.split(',') {
        let d = directive.trim().to_ascii_lowercase();
        if let Some(v) = d.strip_prefix("max-age=") {
            age = v.trim_matches('"').parse().ok();
        }
    }
    age
}

/// The negative entry for an inactive token.
pub fn inactive_entry(key: TokenKey, now: u64, cfg: &Config) -> Entry {
    let expires_at = now.saturating_add(cfg.cache.negative_ttl_seconds);
    Entry {
        key,
        expires_at,
        // Never served itself (a miss once expired), it is kept in shared data as long as an
        // older positive entry could be served stale, so that it never is (`flow::stale_entry`).
        stale_until: expires_at.saturating_add(cfg.cache.stale_if_error_seconds),
        state: TokenState::Inactive,
    }
}

/// Whether an active token's members say it is an access token for this API: its `token_type` (if
/// given) an access token's, its `aud` one of `introspection.audiences` and its `iss`
/// `introspection.issuer` (each where configured). A token for another API of the same identity
/// server, or a refresh token, is not active here.
fn for_this_api(members: &Map<String, Value>, cfg: &Config) -> bool {
    let i = &cfg.introspection;
    let access_token = match members.get("token_type") {
        None => true,
        Some(Value::String(t)) => [
            "bearer",
            "access_token",
            "urn:ietf:params:oauth:token-type:access_token",
        ]
        .iter()
        .any(|a| t.eq_ignore_ascii_case(a)),
        Some(_) => false,
    };
    let audience = i.audiences.is_empty()
        || match members.get("aud") {
            Some(Value::String(a)) => i.audiences.contains(a),
            Some(Value::Array(list)) => list.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| i.audiences.iter().any(|c| c == a))
            }),
            _ => false,
        };
    let issuer = i
        .issuer
        .as_ref()
        .is_none_or(|iss| members.get("iss").and_then(Value::as_str) == Some(iss.as_str()));
    access_token && audience && issuer
}

/// The cache entry for an active token's trusted members. An `exp` in the past makes it inactive.
/// When the entry must not be cached (`max-age=0`), `expires_at` is `now`.
pub fn entry_from_members(
    members: &Map<String, Value>,
    key: TokenKey,
    now: u64,
    forward_jwt: Option<&str>,
    max_age: Option<u64>,
    cfg: &Config,
) -> Result<Entry, Failure> {
    let exp = match members.get("exp") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or(Failure::Bad("exp is not a number"))?),
    };
    // The same leeway as the JWT checks: a token within it is allowed, though not cached.
    let skew = cfg
        .introspection
        .format
        .jwt_rules()
        .map_or(0, |j| j.clock_skew_seconds);
    if exp.is_some_and(|e| e.saturating_add(skew) <= now) || !for_this_api(members, cfg) {
        return Ok(inactive_entry(key, now, cfg));
    }
    let cnf = match members.get("cnf") {
        None | Some(Value::Null) => Binding::Unbound,
        Some(Value::Object(methods)) => match methods.get("x5t#S256") {
            // Only the certificate thumbprint can be checked here; any other method (DPoP's
            // `jkt`, `jwk`, …) would go unproven, so the token is refused rather than believed.
            // So is a `cnf` that names no method: a confirmation that confirms nothing.
            None => Binding::Unverifiable,
            Some(Value::String(x5t)) => {
                let t = Thumbprint::from_x5t(x5t)
                    .ok_or(Failure::Bad("cnf.x5t#S256 is not canonical"))?;
                if methods.len() == 1 {
                    Binding::Certificate(t)
                } else {
                    Binding::Unverifiable
                }
            }
            Some(_) => return Err(Failure::Bad("cnf.x5t#S256 is not a string")),
        },
        Some(_) => return Err(Failure::Bad("cnf is not an object")),
    };
    let text = |name: &str| {
        members
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let headers = cfg
        .claim_headers
        .iter()
        .filter_map(|(claim, header)| {
            let value = match members.get(claim)? {
                Value::Null => return None,
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            // A value a header cannot carry is left out rather than mangled.
            let printable = value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
            printable.then(|| (header.clone(), value))
        })
        .collect();
    let expires_at = positive_expiry(now, exp, max_age, cfg.cache.max_ttl_seconds).unwrap_or(now);
    // Stale-if-error: some time past the entry's expiry, never past the token's own `exp`.
    let stale = cfg.cache.stale_if_error_seconds;
    let stale_until = match exp {
        _ if stale == 0 => expires_at,
        Some(exp) => expires_at.saturating_add(stale).min(exp).max(expires_at),
        None => expires_at.saturating_add(stale),
    };
    Ok(Entry {
        key,
        expires_at,
        stale_until,
        state: TokenState::Active(ActiveToken {
            cnf,
            scope: text("scope").unwrap_or_default(),
            client_id: text("client_id"),
            jti: text("jti"),
            forward_authorization: forward_jwt.map(|jwt| format!("Bearer {jwt}")),
            headers,
            // The token's hash is the flow's to fill in: only it has seen the token.
            token_hash: [0; 24],
            issued_at: members.get("iat").and_then(Value::as_u64),
            checked_at: now,
        }),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::type_complexity)]
    use super::*;
    use serde_json::json;

    fn jwt_format() -> Format {
        config("jwt").introspection.format
    }

    fn rfc9701_format() -> Format {
        config("introspection-jwt").introspection.format
    }

    fn rules(format: &str) -> Rc<JwtRules> {
        config(format)
            .introspection
            .format
            .jwt_rules()
            .unwrap()
            .clone()
    }

    fn config(format: &str) -> Config {
        let mut v = crate::config::minimal_config(format);
        v["claim_headers"] =
            json!({"client_id": "x-client-id", "sub": "x-subject", "n": "x-n", "bad": "x-bad"});
        crate::config::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn the_request_is_form_encoded_with_basic_client_authentication() {
        let mut cfg = config("jwt").introspection;
        cfg.client_secret = "p@ss word:1".into();
        let (headers, body) = request(&cfg, "abc+/=");
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(":method"), Some("POST"));
        assert_eq!(get(":path"), Some("/introspect"));
        assert_eq!(get(":authority"), Some("login.example.com"));
        assert_eq!(
            get("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(get("accept"), Some("application/jwt"));
        // base64("introspect-client:p%40ss+word%3A1")
        assert_eq!(
            get("authorization"),
            Some("Basic aW50cm9zcGVjdC1jbGllbnQ6cCU0MHNzK3dvcmQlM0Ex")
        );
        assert_eq!(body, b"token=abc%2B%2F%3D&token_type_hint=access_token");
    }

    #[test]
    fn with_tls_client_auth_the_request_names_the_client_and_carries_no_secret() {
        let mut cfg = config("json").introspection;
        cfg.client_auth = ClientAuth::TlsClientAuth;
        cfg.client_id = "certbound gateway".into();
        cfg.client_secret = String::new();
        let (headers, body) = request(&cfg, "abc");
        assert!(
            headers.iter().all(|(k, _)| *k != "authorization"),
            "{headers:?}"
        );
        assert_eq!(
            body,
            b"token=abc&token_type_hint=access_token&client_id=certbound+gateway"
        );
    }

    #[test]
    fn answers_are_classified_per_format() {
        use Answer::*;
        use Failure::*;
        let active = br#"{"active":true,"scope":"a"}"#;
        let jwt = b"aaa.bbb.ccc";
        let table: Vec<(Format, Option<u16>, &[u8], Result<Answer, Failure>)> = vec![
            (
                Format::Json,
                Some(200),
                active,
                Ok(Members(serde_json::from_slice(active).unwrap())),
            ),
            (
                Format::Json,
                Some(200),
                br#"{"active":false}"#,
                Ok(Inactive),
            ),
            (
                Format::Json,
                Some(200),
                br#"{"active":"true"}"#,
                Err(Bad("the introspection answer has no boolean active")),
            ),
            (
                Format::Json,
                Some(200),
                br#"{"scope":"a"}"#,
                Err(Bad("the introspection answer has no boolean active")),
            ),
            (
                Format::Json,
                Some(200),
                b"<html>",
                Err(Bad("the introspection answer is not a JSON object")),
            ),
            (
                Format::Json,
                Some(200),
                b"[true]",
                Err(Bad("the introspection answer is not a JSON object")),
            ),
            (
                Format::Json,
                Some(204),
                b"",
                Err(Bad("the introspection answer has an unexpected status")),
            ),
            (
                Format::Json,
                None,
                b"",
                Err(Unavailable("the identity server could not be reached")),
            ),
            (
                Format::Json,
                Some(401),
                b"",
                Err(Unavailable(
                    "the identity server refused the introspection client",
                )),
            ),
            (
                Format::Json,
                Some(403),
                b"",
                Err(Unavailable(
                    "the identity server refused the introspection client",
                )),
            ),
            (
                Format::Json,
                Some(500),
                b"",
                Err(Unavailable("the identity server failed")),
            ),
            (
                Format::Json,
                Some(504),
                b"",
                Err(Unavailable("the identity server failed")),
            ),
            (
                Format::Json,
                Some(400),
                br#"{"error":"unsupported_token_type"}"#,
                Ok(Inactive),
            ),
            (
                jwt_format(),
                Some(400),
                br#"{"error":"invalid_token","error_description":"x"}"#,
                Ok(Inactive),
            ),
            (
                rfc9701_format(),
                Some(400),
                br#"{"error":"invalid_request"}"#,
                Ok(Inactive),
            ),
            (
                Format::Json,
                Some(400),
                br#"{"error":"invalid_client"}"#,
                Err(Bad("the introspection answer has an unexpected status")),
            ),
            (
                Format::Json,
                Some(400),
                b"<html>",
                Err(Bad("the introspection answer has an unexpected status")),
            ),
            (
                Format::Json,
                Some(404),
                b"",
                Err(Bad("the introspection answer has an unexpected status")),
            ),
            (
                jwt_format(),
                Some(200),
                jwt,
                Ok(Jwt("aaa.bbb.ccc".into(), rules("jwt"))),
            ),
            (
                jwt_format(),
                Some(200),
                b"aaa.bbb.ccc\n",
                Ok(Jwt("aaa.bbb.ccc".into(), rules("jwt"))),
            ),
            (jwt_format(), Some(204), b"", Ok(Inactive)),
            (jwt_format(), Some(200), b"", Ok(Inactive)),
            (
                jwt_format(),
                Some(200),
                b"garbage",
                Err(Bad("the introspection answer is not a JWT")),
            ),
            (
                jwt_format(),
                Some(200),
                b"a.b c.d",
                Err(Bad("the introspection answer is not a JWT")),
            ),
            (
                jwt_format(),
                Some(200),
                &[0xff, b'.', b'.'],
                Err(Bad("the introspection answer is not a JWT")),
            ),
            (
                rfc9701_format(),
                Some(200),
                jwt,
                Ok(Jwt("aaa.bbb.ccc".into(), rules("introspection-jwt"))),
            ),
            (
                rfc9701_format(),
                Some(204),
                b"",
                Err(Bad("the introspection answer has an unexpected status")),
            ),
            (
                rfc9701_format(),
                Some(200),
                b"",
                Err(Bad("the introspection answer is not a JWT")),
            ),
        ];
        for (format, status, body, expected) in table {
            assert_eq!(
                classify(&format, status, body),
                expected,
                "{format:?} {status:?} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn verified_jwt_claims_yield_members_per_format() {
        let m = |v: Value| v.as_object().unwrap().clone();
        let rfc9701 = m(json!({"iss": "x", "token_introspection": {"active": true, "scope": "s"}}));
        assert_eq!(
            members_of_verified_jwt(&rfc9701_format(), rfc9701),
            Ok(Answer::Members(m(json!({"active": true, "scope": "s"}))))
        );
        let inactive = m(json!({"token_introspection": {"active": false}}));
        assert_eq!(
            members_of_verified_jwt(&rfc9701_format(), inactive),
            Ok(Answer::Inactive)
        );
        assert!(members_of_verified_jwt(&rfc9701_format(), m(json!({"active": true}))).is_err());
        let at = m(json!({"exp": 5, "scope": "s"}));
        assert_eq!(
            members_of_verified_jwt(&jwt_format(), at.clone()),
            Ok(Answer::Members(at))
        );
        assert_eq!(
            members_of_verified_jwt(&jwt_format(), m(json!({"scope": "s"}))),
            Err(Failure::Bad("the access token JWT has no exp"))
        );
    }

    #[test]
    fn cache_control_max_age() {
        let table = [
            (None, None),
            (Some("max-age=30"), Some(30)),
            (Some("public, Max-Age=12"), Some(12)),
            (Some("no-store"), None),
            (Some("no-store, max-age=0"), Some(0)),
            (Some("max-age=30, no-cache"), Some(30)),
            (Some("max-age=x"), None),
            (Some("private"), None),
        ];
        for (header, expected) in table {
            assert_eq!(max_age(header), expected, "{header:?}");
        }
    }

    #[test]
    fn members_become_an_entry() {
        let cfg = config("json");
        let key = TokenKey([1; 32]);
        let x5t = "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0";
        let members = json!({"active": true, "exp": 1300, "scope": "transactions read", "client_id": "partner-client",
            "sub": "s1", "n": 5, "bad": "a\r\nb", "jti": "j", "cnf": {"x5t#S256": x5t}});
        let e = entry_from_members(
            members.as_object().unwrap(),
            key,
            1000,
            Some("jwt"),
            None,
            &cfg,
        )
        .unwrap();
        assert_eq!(e.expires_at, 1300);
        let TokenState::Active(t) = e.state else {
            panic!("inactive")
        };
        assert_eq!(
            Some(t.cnf),
            Thumbprint::from_x5t(x5t).map(Binding::Certificate)
        );
        assert_eq!(t.scope, "transactions read");
        assert_eq!(t.client_id.as_deref(), Some("partner-client"));
        assert_eq!(t.jti.as_deref(), Some("j"));
        assert_eq!(t.forward_authorization.as_deref(), Some("Bearer jwt"));
        assert_eq!(
            t.headers,
            vec![
                ("x-client-id".to_string(), "partner-client".to_string()),
                ("x-n".into(), "5".into()),
                ("x-subject".into(), "s1".into())
            ]
        );
    }

    #[test]
    fn entry_lifetime_and_bad_members() {
        let cfg = config("json");
        let key = TokenKey([1; 32]);
        let entry = |v: Value, age: Option<u64>| {
            entry_from_members(v.as_object().unwrap(), key, 1000, None, age, &cfg)
        };
        // Capped by max_ttl (300), by max-age, expired → inactive, no-store → not cacheable.
        assert_eq!(entry(json!({"exp": 99999}), None).unwrap().expires_at, 1300);
        assert_eq!(
            entry(json!({"exp": 99999}), Some(20)).unwrap().expires_at,
            1020
        );
        assert_eq!(
            entry(json!({"exp": 1000}), None).unwrap().state,
            TokenState::Inactive
        );
        assert_eq!(entry(json!({"exp": 1000}), None).unwrap().expires_at, 1010);
        assert_eq!(
            entry(json!({"exp": 99999}), Some(0)).unwrap().expires_at,
            1000
        );
        // With a JWT format's skew (60 s), a token 10 s past exp is still active, never cached.
        let jwt_cfg = config("jwt");
        let late = |exp: u64| {
            let m = json!({ "exp": exp });
            entry_from_members(m.as_object().unwrap(), key, 1000, None, None, &jwt_cfg).unwrap()
        };
        assert!(matches!(late(990).state, TokenState::Active(_)));
        assert_eq!(late(990).expires_at, 1000);
        assert_eq!(late(940).state, TokenState::Inactive);
        assert_eq!(
            entry(json!({"exp": "soon"}), None),
            Err(Failure::Bad("exp is not a number"))
        );
        let padded = json!({"cnf": {"x5t#S256": "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0="}});
        assert_eq!(
            entry(padded, None),
            Err(Failure::Bad("cnf.x5t#S256 is not canonical"))
        );
        assert_eq!(
            entry(json!({"cnf": {"x5t#S256": 5}}), None),
            Err(Failure::Bad("cnf.x5t#S256 is not a string"))
        );
        for methods in [
            json!({}),
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
            json!({"x5t#S256": "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0", "jkt": "x"}),
        ] {
            let TokenState::Active(t) = entry(json!({ "cnf": methods }), None).unwrap().state
            else {
                panic!("active")
            };
            assert_eq!(t.cnf, Binding::Unverifiable, "{methods}");
        }
        assert_eq!(
            entry(json!({"cnf": "x"}), None),
            Err(Failure::Bad("cnf is not an object"))
        );
    }
}

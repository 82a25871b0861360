//! What the API accepts in `Authorization`, checked without I/O: time and keys are passed in.
//!
//! The gateway forwards one of three things, depending on its introspection format:
//! - `jwt` (phantom token): an RFC 9068 access token, `typ: at+jwt`, `aud` = this API;
//! - `introspection-jwt`: the RFC 9701 introspection response, `typ: token-introspection+jwt`,
//!   `aud` = the gateway's introspecting client, the token's claims under `token_introspection`;
//! - `json`: the original opaque token. The API does not introspect it: only the gateway reaches the
//!   API (mutual TLS, see `tls`), and the gateway vouches for it with the introspected claims in
//!   `x-certbound-client-id`, `x-certbound-scope` and `x-certbound-cnf` (its `claim_headers`).
//!
//! Every JWT must be PS256, signed by a key of the identity server's JWKS, from the configured issuer.
//!
//! Whatever the format, the token must be bound to a certificate (`cnf.x5t#S256`), and that must be
//! the certificate of this request's partner, whose SHA-256 the gateway forwards in
//! `x-forwarded-client-cert` (`Hash=`): a second line behind the gateway's own check.

use std::collections::{HashMap, HashSet};

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder, Hex};
use serde::Deserialize;

/// Longest token accepted, bytes (the filter's default `max_token_length` is 4096).
pub const MAX_TOKEN_LENGTH: usize = 8192;

/// What a token must satisfy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub issuer: String,
    /// `aud` of access tokens (`at+jwt`).
    pub audience: String,
    /// `aud` of RFC 9701 introspection responses (the gateway's introspecting client);
    /// `None`: they are not accepted.
    pub introspection_audience: Option<String>,
    pub clock_skew_seconds: u64,
}

/// How a request's token was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// RFC 9068 JWT access token (the phantom token).
    AccessTokenJwt,
    /// RFC 9701 signed introspection response.
    IntrospectionJwt,
    /// Opaque token, vouched for by the gateway (its claim headers).
    Opaque,
}

impl TokenKind {
    pub fn name(self) -> &'static str {
        match self {
            TokenKind::AccessTokenJwt => "at+jwt",
            TokenKind::IntrospectionJwt => "token-introspection+jwt",
            TokenKind::Opaque => "opaque",
        }
    }
}

/// The verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub client_id: String,
    pub scopes: Vec<String>,
    pub kind: TokenKind,
    /// The token's `cnf.x5t#S256` (RFC 8705): base64url of the bound certificate's SHA-256.
    pub x5t_s256: Option<String>,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// No `Authorization`, or not the `Bearer` scheme.
    MissingToken,
    /// Several `Authorization` headers, or a malformed bearer token.
    InvalidRequest(&'static str),
    /// The JWT names a key (`kid`) the key set does not hold: refresh the key set, then retry.
    UnknownKey,
    /// Anything else wrong with the token: the reason, for the log (never the token).
    InvalidToken(String),
}

fn invalid(reason: impl Into<String>) -> Reject {
    Reject::InvalidToken(reason.into())
}

/// The bearer token of a request, given all its `Authorization` header values (RFC 6750 2.1).
pub fn bearer_token<'a>(values: &[&'a str]) -> Result<&'a str, Reject> {
    let value = match values {
        [] => return Err(Reject::MissingToken),
        [one] => *one,
        _ => return Err(Reject::InvalidRequest("several Authorization headers")),
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err(Reject::MissingToken);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Reject::MissingToken);
    }
    if token.is_empty() || token.len() > MAX_TOKEN_LENGTH {
        return Err(Reject::InvalidRequest("empty or too long bearer token"));
    }
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    let b64token = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if !b64token {
        return Err(Reject::InvalidRequest("malformed bearer token"));
    }
    Ok(token)
}

/// A compact JWS has exactly three dot-separated parts; opaque tokens have none.
pub fn is_jwt(token: &str) -> bool {
    token.matches('.').count() == 2
}

/// The identity server's signing keys by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, PS256PublicKey>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    #[cfg(test)]
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    #[cfg(test)]
    pub fn insert(&mut self, kid: &str, key: PS256PublicKey) {
        self.keys.insert(kid.to_string(), key);
    }
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// Parses a JWKS document, keeping the RSA signing keys usable for PS256 that have a `kid`.
pub fn parse_jwks(json: &str) -> Result<KeySet, String> {
    let jwks: Jwks = serde_json::from_str(json).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in jwks.keys {
        let usable = jwk.kty == "RSA"
            && jwk.alg.as_deref().is_none_or(|a| a == "PS256")
            && jwk.use_.as_deref().is_none_or(|u| u == "sig");
        let (Some(kid), Some(n), Some(e), true) = (jwk.kid, jwk.n, jwk.e, usable) else {
            continue;
        };
        let n = Base64UrlSafeNoPadding::decode_to_vec(&n, None)
            .map_err(|e| format!("key {kid}: bad n: {e}"))?;
        let e = Base64UrlSafeNoPadding::decode_to_vec(&e, None)
            .map_err(|e| format!("key {kid}: bad e: {e}"))?;
        let key = PS256PublicKey::from_components(&n, &e).map_err(|e| format!("key {kid}: {e}"))?;
        keys.insert(kid, key);
    }
    Ok(KeySet { keys })
}

/// RFC 8705 confirmation: the certificate a token is bound to.
#[derive(Deserialize)]
struct Confirmation {
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

#[derive(Deserialize)]
struct AccessTokenClaims {
    client_id: Option<String>,
    scope: Option<String>,
    cnf: Option<Confirmation>,
}

/// RFC 7662 fields the API reads, in an introspection answer or RFC 9701's `token_introspection`.
#[derive(Deserialize)]
struct Introspection {
    #[serde(default)]
    active: bool,
    client_id: Option<String>,
    scope: Option<String>,
    exp: Option<u64>,
    iss: Option<String>,
    /// A string or an array of strings (RFC 7662 section 2.2).
    aud: Option<serde_json::Value>,
    cnf: Option<Confirmation>,
}

#[derive(Deserialize)]
struct IntrospectionJwtClaims {
    token_introspection: Introspection,
}

fn scopes(scope: Option<&str>) -> Vec<String> {
    scope
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn options(policy: &Policy, audience: &str, now: u64) -> VerificationOptions {
    VerificationOptions {
        allowed_issuers: Some(HashSet::from([policy.issuer.clone()])),
        allowed_audiences: Some(HashSet::from([audience.to_string()])),
        time_tolerance: Some(Duration::from_secs(policy.clock_skew_seconds)),
        artificial_time: Some(Duration::from_secs(now)),
        max_token_length: Some(MAX_TOKEN_LENGTH),
        ..VerificationOptions::default()
    }
}

/// Verifies a JWT the gateway forwarded: PS256, a known key, issuer, audience, expiry, explicit type.
pub fn verify_jwt(
    token: &str,
    keys: &KeySet,
    policy: &Policy,
    now: u64,
) -> Result<Principal, Reject> {
    let meta = Token::decode_metadata(token).map_err(|_| invalid("malformed JWT"))?;
    if meta.algorithm() != "PS256" {
        return Err(invalid(format!(
            "algorithm {} not accepted",
            meta.algorithm()
        )));
    }
    let kid = meta.key_id().ok_or_else(|| invalid("JWT without kid"))?;
    let key = keys.keys.get(kid).ok_or(Reject::UnknownKey)?;
    let typ = meta
        .signature_type()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match typ.strip_prefix("application/").unwrap_or(&typ) {
        "at+jwt" => {
            let claims = key
                .verify_token::<AccessTokenClaims>(
                    token,
                    Some(options(policy, &policy.audience, now)),
                )
                .map_err(|e| invalid(format!("access token: {e}")))?;
            if claims.expires_at.is_none() {
                return Err(invalid("access token without exp"));
            }
            let client_id = claims
                .custom
                .client_id
                .or(claims.subject)
                .ok_or_else(|| invalid("access token without client_id"))?;
            Ok(Principal {
                client_id,
                scopes: scopes(claims.custom.scope.as_deref()),
                kind: TokenKind::AccessTokenJwt,
                x5t_s256: claims.custom.cnf.and_then(|c| c.x5t_s256),
            })
        }
        "token-introspection+jwt" => {
            let audience = policy
                .introspection_audience
                .as_deref()
                .ok_or_else(|| invalid("introspection responses are not accepted"))?;
            let claims = key
                .verify_token::<IntrospectionJwtClaims>(token, Some(options(policy, audience, now)))
                .map_err(|e| invalid(format!("introspection response: {e}")))?;
            introspected(
                claims.custom.token_introspection,
                policy,
                now,
                TokenKind::IntrospectionJwt,
            )
        }
        other => Err(invalid(format!("JWT type {other:?} not accepted"))),
    }
}

/// The caller of an opaque token, as the gateway vouches for it: its claim headers (each given as
/// all the values of that header). The gateway removes these headers from every client request
/// and sets them from the introspection answer, so only its word arrives here.
pub fn principal_from_gateway(
    client_id: &[&str],
    scope: &[&str],
    cnf: &[&str],
) -> Result<Principal, Reject> {
    let client_id = match client_id {
        [one] if !one.is_empty() => one.to_string(),
        _ => return Err(invalid("opaque token without the gateway's client id")),
    };
    let scope = match scope {
        [] => None,
        [one] => Some(*one),
        _ => return Err(invalid("several scope headers")),
    };
    let x5t_s256 = match cnf {
        [] => None,
        [one] => {
            serde_json::from_str::<Confirmation>(one)
                .map_err(|_| invalid("malformed cnf header"))?
                .x5t_s256
        }
        _ => return Err(invalid("several cnf headers")),
    };
    Ok(Principal {
        client_id,
        scopes: scopes(scope),
        kind: TokenKind::Opaque,
        x5t_s256,
    })
}

/// The partner certificate's SHA-256 that the gateway forwards, given every value of
/// `x-forwarded-client-cert`. Envoy's `SANITIZE_SET` replaces whatever the client sent with one
/// element for this connection's certificate; `Hash` is its SHA-256 in hex. Anything else (no
/// header, several, several elements, no or several hashes) is refused.
pub fn forwarded_certificate_hash(values: &[&str]) -> Result<Vec<u8>, Reject> {
    let [value] = values else {
        return Err(invalid(
            "not exactly one x-forwarded-client-cert from the gateway",
        ));
    };
    let elements = split_unquoted(value, ',');
    let [element] = elements.as_slice() else {
        return Err(invalid(
            "x-forwarded-client-cert names several certificates",
        ));
    };
    let hashes: Vec<&str> = split_unquoted(element, ';')
        .into_iter()
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| key.trim().eq_ignore_ascii_case("hash"))
        .map(|(_, value)| value.trim())
        .collect();
    let [hash] = hashes.as_slice() else {
        return Err(invalid("x-forwarded-client-cert without exactly one Hash"));
    };
    let digest = Hex::decode_to_vec(hash, None).map_err(|_| invalid("Hash is not hex"))?;
    if digest.len() != 32 {
        return Err(invalid("Hash is not a SHA-256"));
    }
    Ok(digest)
}

/// `value` split at `separator` where it is not inside a double-quoted string (XFCC quotes values
/// that hold `,` `;` or `=`, with `\"` inside). Written here: no maintained crate parses XFCC.
fn split_unquoted(value: &str, separator: char) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&value[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// The second line of RFC 8705: the token is bound, and to the certificate the gateway saw.
pub fn check_binding(principal: &Principal, forwarded_hash: &[u8]) -> Result<(), Reject> {
    let bound = principal
        .x5t_s256
        .as_deref()
        .ok_or_else(|| invalid("token not bound to a certificate (no cnf.x5t#S256)"))?;
    let bound = Base64UrlSafeNoPadding::decode_to_vec(bound, None)
        .map_err(|_| invalid("cnf.x5t#S256 is not base64url"))?;
    if bound != forwarded_hash {
        return Err(invalid(
            "token bound to another certificate than the partner's",
        ));
    }
    Ok(())
}

fn introspected(
    info: Introspection,
    policy: &Policy,
    now: u64,
    kind: TokenKind,
) -> Result<Principal, Reject> {
    if !info.active {
        return Err(invalid("token is not active"));
    }
    let exp = info
        .exp
        .ok_or_else(|| invalid("introspected token without exp"))?;
    if now > exp.saturating_add(policy.clock_skew_seconds) {
        return Err(invalid("token has expired"));
    }
    if info.iss.as_deref().is_some_and(|iss| iss != policy.issuer) {
        return Err(invalid("introspected token from another issuer"));
    }
    // Issued for this API (RFC 8707 resource indicators): a token for another API is refused here.
    let for_this_api = match &info.aud {
        Some(serde_json::Value::String(aud)) => *aud == policy.audience,
        Some(serde_json::Value::Array(auds)) => {
            auds.iter().any(|a| a.as_str() == Some(&policy.audience))
        }
        _ => false,
    };
    if !for_this_api {
        return Err(invalid("introspected token not issued for this API (aud)"));
    }
    let client_id = info
        .client_id
        .ok_or_else(|| invalid("introspected token without client_id"))?;
    Ok(Principal {
        client_id,
        scopes: scopes(info.scope.as_deref()),
        kind,
        x5t_s256: info.cnf.and_then(|c| c.x5t_s256),
    })
}

#[cfg(test)]
mod tests {

    use super::*;
    use jwt_simple::reexports::ct_codecs::Encoder;
    use serde_json::json;
    use std::sync::OnceLock;

    const ISSUER: &str = "https://login.example.com:8443/oauth/v2/oauth-anonymous";
    const AUDIENCE: &str = "api.example.com";
    const GATEWAY: &str = "introspect-client";
    const KID: &str = "test-key";
    const NOW: u64 = 1_800_000_000;

    fn key_pair() -> &'static PS256KeyPair {
        static KEY: OnceLock<PS256KeyPair> = OnceLock::new();
        KEY.get_or_init(|| PS256KeyPair::generate(2048).unwrap().with_key_id(KID))
    }

    fn other_key_pair() -> &'static PS256KeyPair {
        static KEY: OnceLock<PS256KeyPair> = OnceLock::new();
        KEY.get_or_init(|| PS256KeyPair::generate(2048).unwrap().with_key_id(KID))
    }

    fn policy() -> Policy {
        Policy {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            introspection_audience: Some(GATEWAY.into()),
            clock_skew_seconds: 60,
        }
    }

    fn keys() -> KeySet {
        let mut k = KeySet::default();
        k.insert(KID, key_pair().public_key());
        k
    }

    fn claims(custom: serde_json::Value) -> JWTClaims<serde_json::Value> {
        let mut c = Claims::with_custom_claims(custom, Duration::from_secs(600));
        c.issued_at = Some(Duration::from_secs(NOW - 10));
        c.invalid_before = None;
        c.expires_at = Some(Duration::from_secs(NOW + 600));
        c.with_issuer(ISSUER)
            .with_audience(AUDIENCE)
            .with_subject("partner-client")
    }

    fn sign(c: JWTClaims<serde_json::Value>, typ: &str) -> String {
        sign_with(key_pair(), c, typ)
    }

    fn sign_with<K: RSAKeyPairLike>(key: &K, c: JWTClaims<serde_json::Value>, typ: &str) -> String {
        key.sign_with_options(
            c,
            &HeaderOptions {
                signature_type: Some(typ.into()),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn phantom() -> JWTClaims<serde_json::Value> {
        claims(json!({ "client_id": "partner-client", "scope": "transactions other" }))
    }

    fn reason<T: std::fmt::Debug>(r: Result<T, Reject>) -> String {
        match r {
            Err(Reject::InvalidToken(reason)) => reason,
            other => panic!("expected InvalidToken, got {other:?}"),
        }
    }

    #[test]
    fn a_phantom_token_is_accepted() {
        let p = verify_jwt(&sign(phantom(), "at+jwt"), &keys(), &policy(), NOW).unwrap();
        assert_eq!(p.client_id, "partner-client");
        assert_eq!(p.kind, TokenKind::AccessTokenJwt);
        assert!(p.has_scope("transactions") && p.has_scope("other") && !p.has_scope("trans"));
        // The media-type form of typ is the same type.
        verify_jwt(
            &sign(phantom(), "application/at+jwt"),
            &keys(),
            &policy(),
            NOW,
        )
        .unwrap();
    }

    #[test]
    fn the_client_id_falls_back_to_sub() {
        let t = sign(claims(json!({ "scope": "transactions" })), "at+jwt");
        assert_eq!(
            verify_jwt(&t, &keys(), &policy(), NOW).unwrap().client_id,
            "partner-client"
        );
    }

    #[test]
    fn wrong_issuer_audience_or_expiry_is_refused() {
        let t = sign(phantom().with_issuer("https://evil.example.com"), "at+jwt");
        assert!(reason(verify_jwt(&t, &keys(), &policy(), NOW)).contains("access token"));
        let t = sign(phantom().with_audience("other-api"), "at+jwt");
        reason(verify_jwt(&t, &keys(), &policy(), NOW));
        let t = sign(phantom(), "at+jwt");
        reason(verify_jwt(&t, &keys(), &policy(), NOW + 600 + 61));
        // Within the clock skew it still passes.
        verify_jwt(&t, &keys(), &policy(), NOW + 600 + 59).unwrap();
        let mut c = phantom();
        c.expires_at = None;
        assert_eq!(
            reason(verify_jwt(&sign(c, "at+jwt"), &keys(), &policy(), NOW)),
            "access token without exp"
        );
    }

    #[test]
    fn only_ps256_from_a_known_key_with_a_valid_signature() {
        // RS256 with the same key material.
        let rs = RS256KeyPair::from_der(&key_pair().to_der().unwrap())
            .unwrap()
            .with_key_id(KID);
        let t = sign_with(&rs, phantom(), "at+jwt");
        assert_eq!(
            reason(verify_jwt(&t, &keys(), &policy(), NOW)),
            "algorithm RS256 not accepted"
        );
        // HS256 (a classic confusion attack).
        let hs = HS256Key::generate().with_key_id(KID);
        let t = hs.authenticate(phantom()).unwrap();
        reason(verify_jwt(&t, &keys(), &policy(), NOW));
        // Signed by another key claiming the same kid.
        let t = sign_with(other_key_pair(), phantom(), "at+jwt");
        reason(verify_jwt(&t, &keys(), &policy(), NOW));
        // A kid the key set does not hold asks for a refresh.
        let t = sign(phantom(), "at+jwt");
        assert_eq!(
            verify_jwt(&t, &KeySet::default(), &policy(), NOW),
            Err(Reject::UnknownKey)
        );
        // A tampered payload.
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        let forged = json!({ "client_id": "admin", "scope": "transactions", "iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 600 });
        parts[1] = Base64UrlSafeNoPadding::encode_to_string(forged.to_string()).unwrap();
        reason(verify_jwt(&parts.join("."), &keys(), &policy(), NOW));
        assert_eq!(
            reason(verify_jwt("a.b.c", &keys(), &policy(), NOW)),
            "malformed JWT"
        );
    }

    #[test]
    fn untyped_or_other_jwts_are_refused() {
        for typ in ["JWT", "id_token+jwt", "token-introspection+jwt-ish"] {
            assert!(
                reason(verify_jwt(&sign(phantom(), typ), &keys(), &policy(), NOW))
                    .contains("not accepted"),
                "{typ}"
            );
        }
    }

    fn introspection_jwt(active: bool, exp: u64) -> String {
        let mut c = claims(json!({ "token_introspection": {
            "active": active, "client_id": "partner-client", "scope": "transactions",
            "exp": exp, "iss": ISSUER, "aud": AUDIENCE, "cnf": { "x5t#S256": "abc" } } }));
        c.expires_at = None; // RFC 9701 responses carry no top-level exp
        sign(c.with_audience(GATEWAY), "token-introspection+jwt")
    }

    #[test]
    fn an_rfc9701_introspection_response_is_accepted_when_configured() {
        let p = verify_jwt(&introspection_jwt(true, NOW + 100), &keys(), &policy(), NOW).unwrap();
        assert_eq!(
            (p.client_id.as_str(), p.kind),
            ("partner-client", TokenKind::IntrospectionJwt)
        );
        assert_eq!(
            reason(verify_jwt(
                &introspection_jwt(false, NOW + 100),
                &keys(),
                &policy(),
                NOW
            )),
            "token is not active"
        );
        assert_eq!(
            reason(verify_jwt(
                &introspection_jwt(true, NOW - 100),
                &keys(),
                &policy(),
                NOW
            )),
            "token has expired"
        );
        let off = Policy {
            introspection_audience: None,
            ..policy()
        };
        assert_eq!(
            reason(verify_jwt(
                &introspection_jwt(true, NOW + 100),
                &keys(),
                &off,
                NOW
            )),
            "introspection responses are not accepted"
        );
        // An access token is not an introspection response, whatever its typ says.
        reason(verify_jwt(
            &sign(phantom(), "token-introspection+jwt"),
            &keys(),
            &policy(),
            NOW,
        ));
    }

    fn from_answer(answer: &serde_json::Value) -> Result<Principal, Reject> {
        let info = serde_json::from_value(answer.clone()).map_err(|e| invalid(e.to_string()))?;
        introspected(info, &policy(), NOW, TokenKind::IntrospectionJwt)
    }

    #[test]
    fn introspection_answers_are_checked() {
        let ok = json!({ "active": true, "client_id": "partner-client", "scope": "transactions", "exp": NOW + 5, "iss": ISSUER, "aud": AUDIENCE, "cnf": { "x5t#S256": "abc" } });
        let p = from_answer(&ok).unwrap();
        assert_eq!(
            (p.client_id.as_str(), p.x5t_s256.as_deref()),
            ("partner-client", Some("abc"))
        );
        assert_eq!(
            reason(from_answer(&json!({ "active": false }))),
            "token is not active"
        );
        let other =
            json!({ "active": true, "client_id": "c", "exp": NOW + 5, "iss": "https://evil" });
        reason(from_answer(&other));
        // Only a token issued for this API.
        for aud in [
            json!("other-api"),
            json!(["other-api"]),
            json!(null),
            json!(5),
        ] {
            let mut t = ok.clone();
            t["aud"] = aud.clone();
            assert_eq!(
                reason(from_answer(&t)),
                "introspected token not issued for this API (aud)",
                "{aud}"
            );
        }
        let mut listed = ok.clone();
        listed["aud"] = json!(["other-api", AUDIENCE]);
        assert!(from_answer(&listed).is_ok());
    }

    #[test]
    fn opaque_tokens_carry_the_gateways_claims() {
        let cnf = r#"{"x5t#S256":"abc"}"#;
        let p =
            principal_from_gateway(&["partner-client"], &["transactions other"], &[cnf]).unwrap();
        assert_eq!(p.kind, TokenKind::Opaque);
        assert_eq!(p.x5t_s256.as_deref(), Some("abc"));
        assert!(p.has_scope("transactions") && p.has_scope("other"));
        assert!(principal_from_gateway(&["c"], &[], &[])
            .unwrap()
            .x5t_s256
            .is_none());
        for (id, scope, cnf) in [
            (&[][..], &[][..], &[cnf][..]),
            (&[""], &[], &[cnf]),
            (&["a", "b"], &[], &[cnf]),
            (&["c"], &["x", "y"], &[cnf]),
            (&["c"], &[], &[cnf, cnf]),
            (&["c"], &[], &["not json"]),
        ] {
            reason(principal_from_gateway(id, scope, cnf));
        }
    }

    #[test]
    fn the_forwarded_certificate_hash() {
        let hex = "a".repeat(64);
        let one = format!("Hash={hex}");
        assert_eq!(forwarded_certificate_hash(&[&one]).unwrap(), vec![0xaa; 32]);
        // Other keys, quoted values holding separators, any case of the key.
        let rich = format!(r#"By=spiffe://gw;hash={hex};Subject="CN=a,O=b;c=\"d\"";URI="#);
        assert_eq!(
            forwarded_certificate_hash(&[&rich]).unwrap(),
            vec![0xaa; 32]
        );
        for bad in [
            String::new(),
            "Hash=".into(),
            format!("Hash={hex},Hash={hex}"),
            format!("Hash={hex};Hash={hex}"),
            format!("Hash={}", "a".repeat(62)),
            format!("Hash={}", "g".repeat(64)),
            format!(r#"Subject="x;Hash={hex}""#),
            format!("By=x;Cert={hex}"),
        ] {
            reason(forwarded_certificate_hash(&[&bad]));
        }
        reason(forwarded_certificate_hash(&[]));
        reason(forwarded_certificate_hash(&[&one, &one]));
    }

    #[test]
    fn the_binding_is_checked() {
        let digest = [7u8; 32];
        let x5t =
            jwt_simple::reexports::ct_codecs::Base64UrlSafeNoPadding::encode_to_string(digest)
                .unwrap();
        let mut p = principal_from_gateway(&["c"], &[], &[]).unwrap();
        assert_eq!(
            reason(check_binding(&p, &digest)),
            "token not bound to a certificate (no cnf.x5t#S256)"
        );
        p.x5t_s256 = Some(x5t);
        check_binding(&p, &digest).unwrap();
        assert_eq!(
            reason(check_binding(&p, &[8u8; 32])),
            "token bound to another certificate than the partner's"
        );
        p.x5t_s256 = Some("*".into());
        reason(check_binding(&p, &digest));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(
            bearer_token(&["Bearer abc.def-_~+/=="]),
            Ok("abc.def-_~+/==")
        );
        assert_eq!(bearer_token(&["bearer abc"]), Ok("abc"));
        assert_eq!(bearer_token(&[]), Err(Reject::MissingToken));
        assert_eq!(bearer_token(&["Basic abc"]), Err(Reject::MissingToken));
        assert_eq!(bearer_token(&["Bearer"]), Err(Reject::MissingToken));
        assert!(matches!(
            bearer_token(&["Bearer a", "Bearer b"]),
            Err(Reject::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_token(&["Bearer a b"]),
            Err(Reject::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_token(&["Bearer "]),
            Err(Reject::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_token(&["Bearer ==="]),
            Err(Reject::InvalidRequest(_))
        ));
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LENGTH + 1));
        assert!(matches!(
            bearer_token(&[long.as_str()]),
            Err(Reject::InvalidRequest(_))
        ));
        assert!(is_jwt("a.b.c") && !is_jwt("opaque-token") && !is_jwt("a.b"));
    }

    #[test]
    fn jwks_parsing_keeps_rsa_signing_keys() {
        let c = key_pair().public_key().to_components();
        let b64 = |v: &[u8]| Base64UrlSafeNoPadding::encode_to_string(v).unwrap();
        let doc = json!({ "keys": [
            { "kty": "RSA", "kid": "k1", "alg": "PS256", "use": "sig", "n": b64(&c.n), "e": b64(&c.e) },
            { "kty": "RSA", "kid": "k2", "n": b64(&c.n), "e": b64(&c.e) },
            { "kty": "RSA", "kid": "enc", "use": "enc", "n": b64(&c.n), "e": b64(&c.e) },
            { "kty": "RSA", "kid": "rs", "alg": "RS256", "n": b64(&c.n), "e": b64(&c.e) },
            { "kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA" },
            { "kty": "RSA", "n": b64(&c.n), "e": b64(&c.e) }
        ]});
        let set = parse_jwks(&doc.to_string()).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains("k1") && set.contains("k2"));
        let t = key_pair()
            .clone()
            .with_key_id("k1")
            .sign_with_options(
                phantom(),
                &HeaderOptions {
                    signature_type: Some("at+jwt".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        verify_jwt(&t, &set, &policy(), NOW).unwrap();
        assert!(parse_jwks("{}").is_err());
        assert!(parse_jwks(r#"{"keys":[{"kty":"RSA","kid":"x","n":"!!","e":"AQAB"}]}"#).is_err());
    }
}

//! The request flow, pure: from the facts of a request or of a call's answer to what happens next
//! (allow with header writes, deny with a reply, send a call, wait for another request's call).
//!
//! A hit is decided at once. A miss sends one introspection call per token per worker; requests
//! with the same token wait for it and are each decided with their own certificate and route. A
//! JWT answer is verified against the key set (this worker's copy, else shared data, else fetched;
//! an unknown `kid` refetches it at most once per interval). A request that goes away while its
//! call is out releases its waiters. No host call is made here: the adapters (`crate::http`) read
//! the facts and carry out what these functions return; shared data comes in as a `SharedStore`.

use crate::binding::Thumbprint;
use crate::cache::{Entry, JwksStore, Seal, SharedStore, TokenCache, TokenState};
use crate::certificate::{self, HeaderKind, Peer, Presented};
use crate::config::{CertificateRules, Config, Jwks, JwtRules};
use crate::decision;
use crate::deny::{self, DenyReason, Reply};
use crate::headers::Headers;
use crate::introspection::{self, Answer, Failure};
use crate::jwks::{self, KeySet};
use crate::jwt;
use crate::metrics::Metric;
use crate::path;
use crate::revocation::{self, Standing};
use crate::token;
use crate::worker::{
    CheckId, Inflight, JwtCheck, KeySetFetch, Stage, State, Waiter, KEY_SET_BACKOFF_SECONDS,
};
use std::borrow::Cow;
use std::rc::Rc;

/// What the adapter read of a request.
pub struct RequestFacts<'a> {
    pub context_id: u32,
    pub headers: &'a Headers,
    /// The path as the client sent it, where `:path` is not that (NGINX hands over its decoded,
    /// normalized URI, and `proxy_pass` forwards the client's): routes and checks read this one.
    pub sent_path: Option<&'a str>,
    /// The connection the request came on (its certificate, its peer), read when needed.
    pub peer: &'a dyn Peer,
    pub now: u64,
}

/// A call to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub kind: CallKind,
    pub cluster: String,
    /// Pseudo-headers first, then the others.
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Introspection,
    KeySet,
    /// The root context's poll of the revocation feed (`crate::revocation`).
    RevocationFeed,
}

impl CallKind {
    /// The counter of a call that went out.
    pub fn metric(self) -> Metric {
        match self {
            CallKind::Introspection => Metric::IntrospectionCall,
            CallKind::KeySet => Metric::JwksFetch,
            CallKind::RevocationFeed => Metric::RevocationPoll,
        }
    }
}

/// What came back from a call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallAnswer {
    /// `None` when the call failed (reset, timeout, unreachable).
    pub status: Option<u16>,
    pub cache_control: Option<String>,
    /// `None` when the body is larger than allowed; it is then never read.
    pub body: Option<Vec<u8>>,
}

impl CallAnswer {
    pub fn failed() -> CallAnswer {
        CallAnswer {
            status: None,
            cache_control: None,
            body: Some(Vec::new()),
        }
    }
}

/// The end of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Forward it, with `header_writes` of this entry (always an active token), without the
    /// request headers named in the list (spellings of headers the upstream believes), and with
    /// `x-forwarded-client-cert` set to this value (`client_certificate.forward_xfcc_hash`).
    Allow(Rc<Entry>, Vec<String>, Option<String>),
    /// Reply locally; nothing more is done for the request.
    Deny(Denial),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub reason: DenyReason,
    pub reply: Reply,
    /// The warning to log: the reason, the certificate's thumbprint and the token's `jti`, never
    /// the token.
    pub log: String,
}

/// What a new request leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    Decided(Verdict),
    /// Send `Call` for this token from this request's context and pause it.
    Dispatch(CheckId, Call),
    /// Pause it: another request's call for this token is out.
    Wait(CheckId),
}

/// What a call's answer (or its failure) leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Send another call from the same context (the key set); everyone keeps waiting.
    Dispatch(Call),
    /// Keep waiting, without a call of this context's own: another check's key set call is out.
    Wait,
    /// Every request that waited for the token, by context id, the caller included.
    Decided(Vec<(u32, Verdict)>),
}

/// How a check ended: a token state (cached if it may be), or a failure (never cached).
enum Outcome {
    Known(Rc<Entry>),
    Failed(Failure),
}

/// A new request.
pub fn on_request(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    facts: RequestFacts,
) -> Start {
    let read = read_headers(cfg, facts.headers);
    let path = facts.sent_path.map_or(read.path, Cow::Borrowed);
    let mut me = Waiter {
        context_id: facts.context_id,
        thumbprint: None,
        route: None,
        strip: read.strip,
    };
    // A fragment is never sent by a client that means it; NGINX forwards one as it came.
    if facts.sent_path.is_some_and(|p| p.contains('#')) {
        let why = "the request target carries a fragment";
        return Start::Decided(deny(cfg, st, DenyReason::InvalidRequest(why), &me, None));
    }
    // With routes, the path decides the policy: it must be one an upstream reads the same way.
    if !cfg.routes.is_empty() {
        match path::route(cfg, &read.method, &path) {
            Ok(route) => me.route = route,
            Err(why) => {
                let reason = DenyReason::InvalidRequest(why);
                return Start::Decided(deny(cfg, st, reason, &me, None));
            }
        }
    }
    let Some(policy) = cfg.policy(me.route) else {
        return Start::Decided(deny(cfg, st, DenyReason::NoRoute, &me, None));
    };
    let values = read.authorization;
    let token = match token::bearer_token(&values, cfg.max_token_length) {
        Ok(t) => t,
        Err(e) => return Start::Decided(deny(cfg, st, e.into(), &me, None)),
    };
    // RFC 6750 section 2: one method per request. (A token in the query alone is no token: 401.)
    if token::in_query(&path) {
        let why = "the access token must be sent in Authorization only";
        return Start::Decided(deny(cfg, st, DenyReason::InvalidRequest(why), &me, None));
    }
    let presented =
        match certificate::present(&cfg.client_certificate, &read.certificates, facts.peer) {
            Ok(p) => p,
            Err(why) => {
                let reason = DenyReason::InvalidRequest(why);
                return Start::Decided(deny(cfg, st, reason, &me, None));
            }
        };
    me.thumbprint = presented.thumbprint;
    // A certificate header goes on only from the trusted hop, its source's, if configured so.
    let cc = &cfg.client_certificate;
    for (kind, _) in &read.certificates {
        if !kind.forwarded(cc, &presented) {
            me.strip.push(kind.name(cc).to_string());
        }
    }
    for (kind, spelling) in read.respelled {
        if !kind.forwarded(cc, &presented) {
            me.strip.push(spelling);
        }
    }
    // Where a removed header still reaches the upstream (NGINX), a request that carries one
    // certbound would remove or overwrite is refused rather than let through with it; so is a
    // second copy of a certificate header (setting a header there changes the first copy only).
    let twice = |(i, (kind, _)): (usize, &(HeaderKind, Cow<'_, str>))| {
        read.certificates[..i].iter().any(|(k, _)| k == kind)
    };
    if !st.host.removes_headers
        && (read.claim_sent
            || !me.strip.is_empty()
            || read.certificates.iter().enumerate().any(twice))
    {
        let why = "the request carries a header that only the gateway sets";
        return Start::Decided(deny(cfg, st, DenyReason::InvalidRequest(why), &me, None));
    }
    match (&me.thumbprint, &policy.certificate_rules) {
        (None, _) if policy.certificate_required => {
            let reason = DenyReason::NoClientCertificate;
            return Start::Decided(deny(cfg, st, reason, &me, None));
        }
        (Some(t), Some(rules)) => {
            let headers = read.certificates.as_slice();
            if let Err(why) = check_certificate(st, rules, t, &presented, headers, facts.peer) {
                let reason = DenyReason::CertificateNotAllowed(why);
                return Start::Decided(deny(cfg, st, reason, &me, None));
            }
        }
        _ => {}
    }
    let token_key = st.key_deriver.key(token);
    let key = st.check_id(token_key, facts.context_id);
    let now = facts.now;
    // Without a fresh revocation feed no cached entry decides (`revocation.max_staleness_seconds`).
    let entry = st.revocations.trusted.then(|| {
        st.local.get(&token_key, now).or_else(|| {
            let mut entry = token_cache(cfg, &st.seal).lookup(store, &token_key, now)?;
            // Another worker cached it; this worker may know of its revocation already.
            match st.revocations.standing(&entry) {
                Standing::Good => {}
                Standing::Revoked => entry = revocation::revoked_entry(&entry, now, cfg),
                Standing::Unsure => return None,
            }
            let entry = Rc::new(entry);
            st.local.put(entry.clone());
            Some(entry)
        })
    });
    if let Some(entry) = entry.flatten() {
        st.tally.count(Metric::CacheHit);
        return Start::Decided(decide(cfg, st, &entry, &me));
    }
    st.tally.count(Metric::CacheMiss);
    if let Some(inflight) = st.inflight.get_mut(&key) {
        inflight.waiters.push(me);
        return Start::Wait(key);
    }
    let i = &cfg.introspection;
    let (headers, body) = introspection::request(i, token);
    let call = Call {
        kind: CallKind::Introspection,
        cluster: i.endpoint.cluster.clone(),
        headers,
        body: Some(body),
        timeout_ms: i.timeout_ms,
    };
    st.inflight.insert(
        key,
        Inflight {
            caller: me,
            token_hash: revocation::token_hash(token),
            stage: Stage::Introspection,
            waiters: Vec::new(),
        },
    );
    Start::Dispatch(key, call)
}

/// The whole `application/x-www-form-urlencoded` body of an allowed request, before it goes on:
/// a deny if it carries a second token (RFC 6750 section 2: one method per request). In Envoy a
/// proxy-wasm filter sees the body only once the headers have gone on (a paused request pauses
/// its body too), so the upstream has the headers by then; the deny resets its request before the
/// body, so the API never gets a whole request.
pub fn on_form_body(
    cfg: &Config,
    st: &mut State,
    context_id: u32,
    thumbprint: Option<Thumbprint>,
    body: &[u8],
) -> Option<Verdict> {
    if !token::in_form(body) {
        return None;
    }
    let w = Waiter {
        context_id,
        thumbprint,
        route: None,
        strip: Vec::new(),
    };
    let why = "the access token must be sent in Authorization only";
    Some(deny(cfg, st, DenyReason::InvalidRequest(why), &w, None))
}

/// The answer to the call that the request in `caller` sent for `key`.
pub fn on_answer(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    key: CheckId,
    caller: u32,
    answer: CallAnswer,
    now: u64,
) -> Next {
    let stage = match st.inflight.get_mut(&key) {
        Some(inflight) if inflight.caller.context_id == caller => {
            std::mem::replace(&mut inflight.stage, Stage::Introspection)
        }
        // Not this context's call (it went away and another request took the token over).
        _ => return Next::Decided(Vec::new()),
    };
    match stage {
        Stage::Introspection => on_introspection(cfg, st, store, key, answer, now),
        Stage::KeySet(check) => on_key_set(cfg, st, store, key, check, answer, now),
        // This context has no call out while it waits for another's key set: not its answer.
        Stage::AwaitingKeySet(check) => {
            if let Some(inflight) = st.inflight.get_mut(&key) {
                inflight.stage = Stage::AwaitingKeySet(check);
            }
            Next::Wait
        }
    }
}

/// The call for `key` could not be sent.
pub fn on_dispatch_failed(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    key: CheckId,
    now: u64,
) -> Vec<(u32, Verdict)> {
    let key_set = matches!(
        st.inflight.get(&key).map(|i| &i.stage),
        Some(Stage::KeySet(_))
    );
    if !key_set {
        let why = "the introspection call could not be dispatched";
        return fail(cfg, st, store, now, key, Failure::Unavailable(why));
    }
    st.key_set_failed_at = Some(now);
    let failure = Failure::Unavailable("the key set call could not be dispatched");
    let waiting = st
        .key_set_fetch
        .take()
        .map(|f| f.waiting)
        .unwrap_or_default();
    let mut verdicts = fail(cfg, st, store, now, key, failure);
    for other in waiting {
        verdicts.extend(fail(cfg, st, store, now, other, failure));
    }
    verdicts
}

/// The request in `context_id`, paused for `key`, went away. If its call was out, those waiting
/// on it are answered (503: they may retry) rather than left hanging.
pub fn on_gone(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    key: CheckId,
    context_id: u32,
    now: u64,
) -> Vec<(u32, Verdict)> {
    let Some(inflight) = st.inflight.get_mut(&key) else {
        return Vec::new();
    };
    if inflight.caller.context_id != context_id {
        inflight.waiters.retain(|w| w.context_id != context_id);
        return Vec::new();
    }
    let waiters = st
        .inflight
        .remove(&key)
        .map(|i| i.waiters)
        .unwrap_or_default();
    let why = "the request checking this token went away; retry";
    let reason = DenyReason::from(Failure::Cancelled(why));
    let mut verdicts: Vec<(u32, Verdict)> = waiters
        .iter()
        .map(|w| (w.context_id, deny(cfg, st, reason, w, None)))
        .collect();
    // Its key set call went with it: the checks waiting for that key set fail too (503).
    match st.key_set_fetch.take() {
        Some(fetch) if fetch.by == key => {
            for other in fetch.waiting {
                verdicts.extend(fail(cfg, st, store, now, other, Failure::Cancelled(why)));
            }
        }
        Some(mut fetch) => {
            fetch.waiting.retain(|k| *k != key);
            st.key_set_fetch = Some(fetch);
        }
        None => {}
    }
    verdicts
}

/// The largest answer body read for the call that is out for `key`.
pub fn answer_limit(cfg: &Config, st: &State, key: &CheckId) -> usize {
    match st.inflight.get(key).map(|i| &i.stage) {
        Some(Stage::KeySet(check)) => check.rules.jwks.max_body_bytes,
        _ => cfg.introspection.max_body_bytes,
    }
}

/// Whether the route's allow-lists admit the presented certificate. The certificate is parsed
/// only for rules that read its names, once per certificate (`State::parsed`).
fn check_certificate(
    st: &mut State,
    rules: &CertificateRules,
    thumbprint: &Thumbprint,
    presented: &Presented,
    headers: &[(HeaderKind, Cow<'_, str>)],
    peer: &dyn Peer,
) -> Result<(), &'static str> {
    let facts = match rules.need_certificate() {
        false => None,
        true => {
            // The presented certificate's DER: from its header, the connection's own XFCC
            // (Envoy), or the connection itself (NGINX); only ever the one with this thumbprint.
            let der = || {
                presented
                    .der
                    .clone()
                    .or_else(|| certificate::der_in_xfcc(headers, thumbprint))
                    .or_else(|| {
                        peer.der()
                            .filter(|d| Thumbprint::from_der(d).matches(thumbprint))
                    })
            };
            match st.parsed.get(thumbprint, der) {
                Some(Some(facts)) => Some(facts),
                Some(None) => return Err("the client certificate is not an X.509 certificate"),
                None => {
                    return Err(
                        "the route's rules read the certificate, and only its hash was \
                                presented (Envoy: set_current_client_cert_details.cert)",
                    )
                }
            }
        }
    };
    match certificate::allowed(rules, thumbprint, facts.as_deref()) {
        true => Ok(()),
        false => Err("the client certificate is not on the route's allow-lists"),
    }
}

/// What the flow reads of a request's headers, taken in one pass over them.
struct ReadHeaders<'a> {
    path: Cow<'a, str>,
    method: Cow<'a, str>,
    /// Every `Authorization` value, in order.
    authorization: Vec<Cow<'a, str>>,
    /// The certificate headers under their names in any letter case (`HeaderKind`), in order.
    certificates: Vec<(HeaderKind, Cow<'a, str>)>,
    /// Those of them spelled other than in lower case (NGINX keeps the client's case), so that
    /// removing one removes the spelling it came in.
    respelled: Vec<(HeaderKind, String)>,
    /// The spoofable headers it carries (`is_spoofable`), to remove if it is allowed.
    strip: Vec<String>,
    /// It carries a claim header under its own name (which an allow sets or removes).
    claim_sent: bool,
}

fn read_headers<'a>(cfg: &Config, headers: &'a Headers) -> ReadHeaders<'a> {
    let mut read = ReadHeaders {
        path: Cow::Borrowed(""),
        method: Cow::Borrowed(""),
        authorization: Vec::new(),
        certificates: Vec::new(),
        respelled: Vec::new(),
        strip: Vec::new(),
        claim_sent: false,
    };
    // Names in any letter case: Envoy hands them over in lower case, NGINX as the client sent
    // them (`Authorization`).
    for (name, value) in headers.pairs() {
        if name.eq_ignore_ascii_case(b":path") {
            if read.path.is_empty() {
                read.path = String::from_utf8_lossy(value);
            }
        } else if name.eq_ignore_ascii_case(b":method") {
            if read.method.is_empty() {
                read.method = String::from_utf8_lossy(value);
            }
        } else if name.eq_ignore_ascii_case(b"authorization") {
            // A value that is not UTF-8 comes with U+FFFD, which no token grammar accepts.
            read.authorization.push(String::from_utf8_lossy(value));
        } else if let Some(kind) = HeaderKind::of(&cfg.client_certificate, name) {
            read.certificates
                .push((kind, String::from_utf8_lossy(value)));
            if name.iter().any(u8::is_ascii_uppercase) {
                if let Ok(spelling) = std::str::from_utf8(name) {
                    read.respelled.push((kind, spelling.to_string()));
                }
            }
        } else if is_spoofable(cfg, name) {
            if let Ok(name) = std::str::from_utf8(name) {
                read.strip.push(name.to_string());
            }
        } else if cfg.claim_headers.iter().any(|(_, h)| h.as_bytes() == name) {
            read.claim_sent = true;
        }
    }
    read
}

/// A header the client sent that an upstream could take for one certbound sets or a TLS
/// terminator would: another spelling of a claim header (`x_certbound_client_id`, which CGI and
/// WSGI read as `x-certbound-client-id`), or of a certificate header (`client-cert`,
/// `client-cert-chain`, `x-forwarded-client-cert`, the `pem-header` source's). A claim header
/// under its exact name is not one: `header_writes` sets or removes it anyway; nor is a
/// certificate header under its exact name, which `on_request` removes unless it is forwarded.
fn is_spoofable(cfg: &Config, name: &[u8]) -> bool {
    const CERTIFICATE_HEADERS: [&str; 3] = [
        "client-cert",
        "client-cert-chain",
        "x-forwarded-client-cert",
    ];
    let spells = |c: &str| {
        name.len() == c.len()
            && name.iter().zip(c.bytes()).all(|(a, b)| {
                let a = if *a == b'_' {
                    b'-'
                } else {
                    a.to_ascii_lowercase()
                };
                a == b
            })
    };
    let claims = || cfg.claim_headers.iter().map(|(_, h)| h.as_str());
    // (A certificate header in another letter case is that header: `HeaderKind::of`. A claim
    // header in another case is another spelling, removed: certbound writes it in lower case.)
    CERTIFICATE_HEADERS.iter().any(|c| spells(c))
        || cfg
            .client_certificate
            .pem_header
            .as_deref()
            .is_some_and(spells)
        || (claims().any(spells) && !claims().any(|h| h.as_bytes() == name))
}

/// The request headers an allow writes: `Authorization` (when the format forwards a JWT), then
/// every claim header, set from the token or removed (a client's copy never passes), then the
/// removal of every spoofable header the client sent, then `x-forwarded-client-cert` when set.
pub fn header_writes<'a>(
    cfg: &'a Config,
    entry: &'a Entry,
    strip: &'a [String],
    xfcc: Option<&'a str>,
) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
    let token = match &entry.state {
        TokenState::Active(t) => Some(t),
        TokenState::Inactive => None,
    };
    let authorization = token
        .and_then(|t| t.forward_authorization.as_deref())
        .map(|v| ("authorization", Some(v)));
    let claims = cfg.claim_headers.iter().map(move |(_, name)| {
        let value = token.and_then(|t| {
            t.headers
                .iter()
                .find(|(h, _)| h == name)
                .map(|(_, v)| v.as_str())
        });
        (name.as_str(), value)
    });
    let stripped = strip.iter().map(|name| (name.as_str(), None));
    let xfcc = xfcc.map(|v| ("x-forwarded-client-cert", Some(v)));
    authorization
        .into_iter()
        .chain(claims)
        .chain(stripped)
        .chain(xfcc)
}

fn on_introspection(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    key: CheckId,
    answer: CallAnswer,
    now: u64,
) -> Next {
    let Some(body) = answer.body else {
        let f = Failure::Bad("the introspection answer is too large");
        return Next::Decided(conclude(cfg, st, store, key, Outcome::Failed(f), now));
    };
    let max_age = introspection::max_age(answer.cache_control.as_deref());
    let outcome = match introspection::classify(&cfg.introspection.format, answer.status, &body) {
        Err(f) => Outcome::Failed(f),
        Ok(Answer::Inactive) => {
            Outcome::Known(Rc::new(introspection::inactive_entry(key.token, now, cfg)))
        }
        Ok(Answer::Members(m)) => {
            match introspection::entry_from_members(&m, key.token, now, None, max_age, cfg) {
                Ok(entry) => Outcome::Known(Rc::new(entry)),
                Err(f) => Outcome::Failed(f),
            }
        }
        Ok(Answer::Jwt(jwt, rules)) => {
            let check = JwtCheck {
                jwt,
                max_age,
                rules,
            };
            return match key_set(cfg, st, store, &check.rules, now) {
                Some((at, keys)) => verify(cfg, st, store, key, check, &keys, Some(at), now),
                None => need_key_set(cfg, st, store, key, check, now),
            };
        }
    };
    Next::Decided(conclude(cfg, st, store, key, outcome, now))
}

/// The key set answer, for the check of `key` and every check waiting for the same key set.
fn on_key_set(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    key: CheckId,
    check: JwtCheck,
    answer: CallAnswer,
    now: u64,
) -> Next {
    let waiting = match st.key_set_fetch.take() {
        Some(f) if f.by == key => f.waiting,
        other => {
            st.key_set_fetch = other;
            Vec::new()
        }
    };
    let failure = match (answer.status, answer.body) {
        (Some(200), Some(body)) => match KeySet::parse(&body) {
            Ok(keys) => {
                jwks_store(cfg, &st.seal).save(store, now, &body);
                if !keys.skipped.is_empty() {
                    let skipped = keys.skipped.join("; ");
                    st.notices.push(format!(
                        "the key set's unusable keys were left out: {skipped}"
                    ));
                }
                st.key_set_failed_at = None;
                let keys = Rc::new(keys);
                st.keys = Some((now, keys.clone()));
                let mut verdicts = Vec::new();
                for other in waiting {
                    if let Some(check) = awaiting_check(st, &other) {
                        verdicts.extend(verify_fresh(cfg, st, store, other, check, &keys, now));
                    }
                }
                verdicts.extend(verify_fresh(cfg, st, store, key, check, &keys, now));
                return Next::Decided(verdicts);
            }
            Err(why) => Failure::Bad(why),
        },
        (None | Some(500..=599), _) => Failure::Unavailable("the key set could not be fetched"),
        _ => Failure::Bad("the key set answer is unusable"),
    };
    st.key_set_failed_at = Some(now);
    let mut verdicts = fail(cfg, st, store, now, key, failure);
    for other in waiting {
        verdicts.extend(fail(cfg, st, store, now, other, failure));
    }
    Next::Decided(verdicts)
}

/// The JWT check of `key` if it waits for another check's key set call.
fn awaiting_check(st: &mut State, key: &CheckId) -> Option<JwtCheck> {
    let inflight = st.inflight.get_mut(key)?;
    match std::mem::replace(&mut inflight.stage, Stage::Introspection) {
        Stage::AwaitingKeySet(check) => Some(check),
        other => {
            inflight.stage = other;
            None
        }
    }
}

/// The check of `key` needs the key set: wait for the worker's call if one is out (single-flight
/// only), fail at once within the backoff after a failed call, else make the call.
fn need_key_set(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    key: CheckId,
    check: JwtCheck,
    now: u64,
) -> Next {
    let backing_off = st
        .key_set_failed_at
        .is_some_and(|t| now < t.saturating_add(KEY_SET_BACKOFF_SECONDS));
    if backing_off {
        let f = Failure::Unavailable("the key set call failed a moment ago; not retried yet");
        return Next::Decided(fail(cfg, st, store, now, key, f));
    }
    // A check that cannot be resumed from another's context makes its own key set call.
    if !st.host.single_flight {
        return fetch_key_set(st, key, check);
    }
    if let Some(fetch) = &mut st.key_set_fetch {
        fetch.waiting.push(key);
        if let Some(inflight) = st.inflight.get_mut(&key) {
            inflight.stage = Stage::AwaitingKeySet(check);
        }
        return Next::Wait;
    }
    st.key_set_fetch = Some(KeySetFetch {
        by: key,
        waiting: Vec::new(),
    });
    fetch_key_set(st, key, check)
}

/// The call that fetches the key set.
pub(crate) fn key_set_call(j: &Jwks) -> Call {
    Call {
        kind: CallKind::KeySet,
        cluster: j.endpoint.cluster.clone(),
        headers: {
            let mut headers = j.endpoint.pseudo_headers("GET", j.endpoint.path.clone());
            headers.push(("accept", "application/json".to_string()));
            headers
        },
        body: None,
        timeout_ms: j.timeout_ms,
    }
}

/// Asks for the key set; the check of `key` goes on when it arrives.
fn fetch_key_set(st: &mut State, key: CheckId, check: JwtCheck) -> Next {
    let call = key_set_call(&check.rules.jwks);
    match st.inflight.get_mut(&key) {
        Some(inflight) => {
            inflight.stage = Stage::KeySet(check);
            Next::Dispatch(call)
        }
        None => Next::Decided(Vec::new()),
    }
}

/// Verifies the returned JWT. `fetched_at` is the age of a cached key set, which may be
/// refetched once for an unknown `kid`; `None` means the set is fresh from the server.
#[allow(clippy::too_many_arguments)]
fn verify(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    key: CheckId,
    check: JwtCheck,
    keys: &KeySet,
    fetched_at: Option<u64>,
    now: u64,
) -> Next {
    let rules = &check.rules;
    let verified = jwt::verify(
        &check.jwt,
        keys,
        rules,
        now,
        cfg.introspection.max_body_bytes,
    );
    let entry = match verified {
        Err(jwt::JwtError::UnknownKey)
            if fetched_at.is_some_and(|t| {
                jwks::may_refetch(t, now, rules.jwks.min_refetch_interval_seconds)
            }) =>
        {
            return need_key_set(cfg, st, store, key, check, now);
        }
        Err(e) if e.is_time() => Ok(introspection::inactive_entry(key.token, now, cfg)),
        Err(e) => Err(Failure::Bad(e.describe())),
        Ok(claims) => {
            match introspection::members_of_verified_jwt(&cfg.introspection.format, claims) {
                Ok(Answer::Members(m)) => introspection::entry_from_members(
                    &m,
                    key.token,
                    now,
                    Some(&check.jwt),
                    check.max_age,
                    cfg,
                ),
                Ok(_) => Ok(introspection::inactive_entry(key.token, now, cfg)),
                Err(f) => Err(f),
            }
        }
    };
    let outcome = match entry {
        Ok(entry) => Outcome::Known(Rc::new(entry)),
        Err(f) => Outcome::Failed(f),
    };
    Next::Decided(conclude(cfg, st, store, key, outcome, now))
}

/// `verify` with a key set fresh from the server, which is never fetched again for this check.
fn verify_fresh(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    key: CheckId,
    check: JwtCheck,
    keys: &KeySet,
    now: u64,
) -> Vec<(u32, Verdict)> {
    match verify(cfg, st, store, key, check, keys, None, now) {
        Next::Decided(verdicts) => verdicts,
        // Without `fetched_at` verify neither refetches nor waits; fail closed if it ever did.
        Next::Dispatch(_) | Next::Wait => {
            let f = Failure::Bad("the key set was refetched for a fresh key set");
            fail(cfg, st, store, now, key, f)
        }
    }
}

/// Ends a check that failed: nothing is cached, and every request that waited for it is denied.
/// With `cache.stale_if_error_seconds`, a request whose token had a positive entry that expired
/// within that bound (and before the token's `exp`) is decided on it instead, when the identity
/// server is unavailable: binding, scopes and the rest are checked as on a hit.
fn fail(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    now: u64,
    key: CheckId,
    failure: Failure,
) -> Vec<(u32, Verdict)> {
    let Some(inflight) = st.inflight.remove(&key) else {
        return Vec::new();
    };
    st.tally.count(Metric::IntrospectionFailure);
    let stale = match failure {
        Failure::Unavailable(_) if cfg.cache.stale_if_error_seconds > 0 => {
            stale_entry(cfg, st, store, &key, now)
        }
        _ => None,
    };
    let reason = DenyReason::from(failure);
    let requests = inflight
        .waiters
        .iter()
        .chain(std::iter::once(&inflight.caller));
    requests
        .map(|w| {
            let verdict = match &stale {
                Some(entry) => {
                    let verdict = decide(cfg, st, entry, w);
                    if matches!(verdict, Verdict::Allow(..)) {
                        st.tally.count(Metric::StaleAnswer);
                    }
                    verdict
                }
                None => deny(cfg, st, reason, w, None),
            };
            (w.context_id, verdict)
        })
        .collect()
}

/// The expired positive entry of `key` that may still decide (`Entry::stale_until`), from shared
/// data only, and only if no entry there says the token is inactive (an inactive answer is kept
/// as long as a positive one could be served stale: `introspection::inactive_entry`). This
/// worker's own copy is not used: another worker may have learnt since that the token is inactive.
fn stale_entry(
    cfg: &Config,
    st: &State,
    store: &dyn SharedStore,
    key: &CheckId,
    now: u64,
) -> Option<Rc<Entry>> {
    let known = token_cache(cfg, &st.seal).stale_entries(store, &key.token, now);
    if known
        .iter()
        .any(|e| matches!(e.state, TokenState::Inactive))
    {
        return None;
    }
    known
        .into_iter()
        .find(|e| {
            matches!(e.state, TokenState::Active(_)) && st.revocations.standing(e) == Standing::Good
        })
        .map(Rc::new)
}

/// Ends a check: caches what may be cached, then decides every request that waited for it.
fn conclude(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    key: CheckId,
    outcome: Outcome,
    now: u64,
) -> Vec<(u32, Verdict)> {
    let entry = match outcome {
        Outcome::Failed(f) => return fail(cfg, st, store, now, key, f),
        Outcome::Known(entry) => entry,
    };
    let Some(inflight) = st.inflight.remove(&key) else {
        return Vec::new();
    };
    let mut entry = Rc::unwrap_or_clone(entry);
    if let TokenState::Active(t) = &mut entry.state {
        t.token_hash = inflight.token_hash;
    }
    // An answer given before a revocation this worker already knows of (it crossed the event).
    if st.revocations.standing(&entry) == Standing::Revoked {
        entry = revocation::revoked_entry(&entry, now, cfg);
    }
    let entry = Rc::new(entry);
    // An answer that may not be cached (max-age=0, exp within the leeway) still decides.
    if entry.expires_at > now {
        token_cache(cfg, &st.seal).insert(store, &entry, now);
        st.local.put(entry.clone());
    }
    let requests = inflight
        .waiters
        .iter()
        .chain(std::iter::once(&inflight.caller));
    requests
        .map(|w| (w.context_id, decide(cfg, st, &entry, w)))
        .collect()
}

/// Allows or denies one request on a known token.
fn decide(cfg: &Config, st: &mut State, entry: &Rc<Entry>, w: &Waiter) -> Verdict {
    let Some(policy) = cfg.policy(w.route) else {
        return deny(cfg, st, DenyReason::NoRoute, w, None);
    };
    match decision::decide(&entry.state, w.thumbprint.as_ref(), policy) {
        Ok(_) => {
            st.tally.count(Metric::Allowed);
            let xfcc = match (cfg.client_certificate.forward_xfcc_hash, &w.thumbprint) {
                (true, Some(t)) => Some(format!("Hash={}", t.to_hex())),
                _ => None,
            };
            Verdict::Allow(entry.clone(), w.strip.clone(), xfcc)
        }
        Err(reason) => {
            let jti = match &entry.state {
                TokenState::Active(t) => t.jti.as_deref(),
                TokenState::Inactive => None,
            };
            deny(cfg, st, reason, w, jti)
        }
    }
}

fn deny(
    cfg: &Config,
    st: &mut State,
    reason: DenyReason,
    w: &Waiter,
    jti: Option<&str>,
) -> Verdict {
    let x5t = w.thumbprint.as_ref().map(Thumbprint::to_x5t);
    let log = format!(
        "denied {} ({}): client certificate x5t#S256={} jti={}",
        reason.metric(),
        reason.detail(),
        x5t.as_deref().unwrap_or("none"),
        jti.unwrap_or("-")
    );
    st.tally.count(Metric::Denied(reason));
    let scopes = cfg.policy(w.route).map_or(&[][..], |p| &p.required_scopes);
    let reply = deny::reply(reason, &cfg.realm, scopes);
    Verdict::Deny(Denial { reason, reply, log })
}

pub(crate) fn token_cache<'a>(cfg: &'a Config, seal: &'a Seal) -> TokenCache<'a> {
    TokenCache {
        namespace: &cfg.cache.namespace,
        seal,
        max_entries: cfg.cache.max_entries,
    }
}

pub(crate) fn jwks_store<'a>(cfg: &'a Config, seal: &'a Seal) -> JwksStore<'a> {
    JwksStore {
        namespace: &cfg.cache.namespace,
        seal,
    }
}

/// A fresh key set and when it was fetched: this worker's parsed copy, else the one in shared
/// data (another worker may have fetched it). `None` when it must be fetched.
pub(crate) fn key_set(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    rules: &JwtRules,
    now: u64,
) -> Option<(u64, Rc<KeySet>)> {
    let max_age = rules.jwks.max_age_seconds;
    let fresh = |(fetched_at, _): &(u64, Rc<KeySet>)| jwks::is_fresh(*fetched_at, now, max_age);
    if let Some(local) = st.keys.clone().filter(fresh) {
        return Some(local);
    }
    let (fetched_at, keys) = jwks_store(cfg, &st.seal).load(store)?;
    let stored = (fetched_at, Rc::new(keys));
    if !fresh(&stored) {
        return None;
    }
    st.keys = Some(stored.clone());
    Some(stored)
}

#[cfg(test)]
mod tests;

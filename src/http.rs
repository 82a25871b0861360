//! The HTTP context: a thin adapter from host callbacks to the pure logic of the other modules.

use crate::binding::Thumbprint;
use crate::cache::{Entry, TokenCache, TokenKey, TokenState};
use crate::config::Config;
use crate::decision::{self, DenyReason};
use crate::host::{self, HostStore, Metric};
use crate::introspection::{self, Answer, Failure};
use crate::jwks::{self, JwksStore, KeySet};
use crate::jwt;
use crate::response;
use crate::root::Shared;
use crate::token;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::borrow::Cow;
use std::rc::Rc;

/// A request waiting for another request's introspection of the same token.
pub struct Waiter {
    context_id: u32,
    thumbprint: Option<Thumbprint>,
    route: Option<usize>,
}

/// What the context waits for while the request is paused.
enum Pending {
    Nothing,
    Introspection {
        key: TokenKey,
    },
    Jwks {
        key: TokenKey,
        jwt: String,
        max_age: Option<u64>,
    },
}

/// How a miss ended: a token state (cached if it may be), or a failure (never cached).
enum Outcome {
    Known(Rc<Entry>),
    Failed(Failure),
}

pub struct Http {
    id: u32,
    shared: Option<Rc<Shared>>,
    pending: Pending,
    route: Option<usize>,
    thumbprint: Option<Thumbprint>,
}

/// Replies locally: the request never reaches the upstream.
fn deny(
    sh: &Shared,
    reason: DenyReason,
    thumbprint: Option<&Thumbprint>,
    route: Option<usize>,
    jti: Option<&str>,
) -> Action {
    let x5t = thumbprint.map(Thumbprint::to_x5t);
    log::warn!(
        "denied {} ({}): client certificate x5t#S256={} jti={}",
        reason.metric(),
        reason.detail(),
        x5t.as_deref().unwrap_or("none"),
        jti.unwrap_or("-")
    );
    sh.metrics.count(Metric::Denied(reason));
    let cfg = &sh.config;
    host::send_reply(&response::deny(
        reason,
        &cfg.realm,
        &cfg.policy(route).required_scopes,
    ));
    Action::Pause
}

/// Decides on a known token for one request of the current context: allow (rewriting its
/// headers) or deny.
fn decide_and_apply(
    sh: &Shared,
    state: &TokenState,
    thumbprint: Option<&Thumbprint>,
    route: Option<usize>,
) -> Action {
    let cfg = &sh.config;
    match decision::decide(state, thumbprint, cfg.policy(route)) {
        Err(reason) => {
            let jti = match state {
                TokenState::Active(t) => t.jti.as_deref(),
                TokenState::Inactive => None,
            };
            deny(sh, reason, thumbprint, route, jti)
        }
        Ok(token) => {
            if let Some(value) = &token.forward_authorization {
                host::set_request_header("authorization", Some(value));
            }
            // Setting replaces the client's copy; a claim the token lacks removes it.
            for (_, name) in &cfg.claim_headers {
                let value = token
                    .headers
                    .iter()
                    .find(|(h, _)| h == name)
                    .map(|(_, v)| v.as_str());
                host::set_request_header(name, value);
            }
            sh.metrics.count(Metric::Allowed);
            Action::Continue
        }
    }
}

fn apply(
    sh: &Shared,
    outcome: &Outcome,
    thumbprint: Option<&Thumbprint>,
    route: Option<usize>,
) -> Action {
    match outcome {
        Outcome::Known(entry) => decide_and_apply(sh, &entry.state, thumbprint, route),
        Outcome::Failed(failure) => deny(sh, (*failure).into(), thumbprint, route, None),
    }
}

/// Answers every request that waited for `key`, each in its own context.
fn release_waiters(sh: &Shared, key: &TokenKey, outcome: &Outcome) -> bool {
    let waiters = sh.inflight.borrow_mut().remove(key).unwrap_or_default();
    for w in &waiters {
        // A waiter whose stream has gone is simply skipped.
        if host::set_effective_context(w.context_id)
            && matches!(
                apply(sh, outcome, w.thumbprint.as_ref(), w.route),
                Action::Continue
            )
        {
            host::resume_request();
        }
    }
    !waiters.is_empty()
}

fn token_cache(cfg: &Config) -> TokenCache<'_> {
    TokenCache {
        namespace: &cfg.cache.namespace,
        fingerprint: &cfg.fingerprint,
        max_entries: cfg.cache.max_entries,
    }
}

/// A fresh key set and when it was fetched: this worker's parsed copy, else the one in shared
/// data (another worker may have fetched it). `None` when it must be fetched.
fn key_set(sh: &Shared, now: u64) -> Option<(u64, Rc<KeySet>)> {
    let max_age = sh.config.jwt.as_ref().map_or(0, |r| r.jwks.max_age_seconds);
    let fresh = |(fetched_at, _): &(u64, Rc<KeySet>)| jwks::is_fresh(*fetched_at, now, max_age);
    if let Some(local) = sh.keys.borrow().clone().filter(fresh) {
        return Some(local);
    }
    let (fetched_at, keys) = jwks_store(&sh.config).load(&HostStore)?;
    let stored = (fetched_at, Rc::new(keys));
    if !fresh(&stored) {
        return None;
    }
    *sh.keys.borrow_mut() = Some(stored.clone());
    Some(stored)
}

fn jwks_store(cfg: &Config) -> JwksStore<'_> {
    JwksStore {
        namespace: &cfg.cache.namespace,
        fingerprint: &cfg.fingerprint,
    }
}

impl Http {
    pub fn new(id: u32, shared: Option<Rc<Shared>>) -> Self {
        Http {
            id,
            shared,
            pending: Pending::Nothing,
            route: None,
            thumbprint: None,
        }
    }

    fn on_request(&mut self, sh: &Shared) -> Action {
        let cfg = &sh.config;
        // One host call for every header: each call crosses into the host and back.
        let headers = host::request_headers();
        if !cfg.routes.is_empty() {
            let method = headers.get(":method").unwrap_or_default();
            let path = headers.get(":path").unwrap_or_default();
            self.route = cfg.route_for(&method, &path);
        }
        self.thumbprint = host::client_thumbprint();
        let values: Vec<Cow<str>> = headers.values("authorization").collect();
        let token = match token::bearer_token(&values, cfg.max_token_length) {
            Ok(t) => t,
            Err(e) => return deny(sh, e.into(), self.thumbprint.as_ref(), self.route, None),
        };
        let key = sh.key_deriver.key(token);
        let now = host::now();
        let local = sh.local.borrow().get(&key, now);
        let entry = local.or_else(|| {
            let entry = Rc::new(token_cache(cfg).lookup(&HostStore, &key, now)?);
            sh.local.borrow_mut().put(entry.clone());
            Some(entry)
        });
        if let Some(entry) = entry {
            sh.metrics.count(Metric::CacheHit);
            return decide_and_apply(sh, &entry.state, self.thumbprint.as_ref(), self.route);
        }
        sh.metrics.count(Metric::CacheMiss);

        if let Some(waiters) = sh.inflight.borrow_mut().get_mut(&key) {
            waiters.push(Waiter {
                context_id: self.id,
                thumbprint: self.thumbprint,
                route: self.route,
            });
            return Action::Pause;
        }
        let (headers, body) = introspection::request(&cfg.introspection, token);
        let i = &cfg.introspection;
        match host::dispatch(&i.endpoint, "POST", &headers, Some(&body), i.timeout_ms) {
            Ok(_) => {
                sh.metrics.count(Metric::IntrospectionCall);
                sh.inflight.borrow_mut().insert(key, Vec::new());
                self.pending = Pending::Introspection { key };
                Action::Pause
            }
            Err(status) => {
                log::warn!("introspection dispatch failed: {status:?}");
                sh.metrics.count(Metric::IntrospectionFailure);
                let why = "the introspection call could not be dispatched";
                apply(
                    sh,
                    &Outcome::Failed(Failure::Unavailable(why)),
                    self.thumbprint.as_ref(),
                    self.route,
                )
            }
        }
    }

    /// Ends a miss: caches what may be cached, answers the waiters, then this request.
    fn conclude(&mut self, sh: &Shared, key: TokenKey, outcome: Outcome, now: u64) -> Action {
        match &outcome {
            Outcome::Known(entry) if entry.expires_at > now => {
                token_cache(&sh.config).insert(&HostStore, entry, now);
                sh.local.borrow_mut().put(entry.clone());
            }
            Outcome::Known(_) => {}
            Outcome::Failed(_) => sh.metrics.count(Metric::IntrospectionFailure),
        }
        if release_waiters(sh, &key, &outcome) {
            host::set_effective_context(self.id);
        }
        apply(sh, &outcome, self.thumbprint.as_ref(), self.route)
    }

    fn on_introspection(&mut self, sh: &Shared, key: TokenKey, body_size: usize) -> Action {
        let cfg = &sh.config;
        let now = host::now();
        let r = host::call_response(body_size, cfg.introspection.max_body_bytes);
        let Some(body) = r.body else {
            return self.conclude(
                sh,
                key,
                Outcome::Failed(Failure::Bad("the introspection answer is too large")),
                now,
            );
        };
        let max_age = introspection::max_age(r.cache_control.as_deref());
        let outcome = match introspection::classify(cfg.introspection.format, r.status, &body) {
            Err(f) => Outcome::Failed(f),
            Ok(Answer::Inactive) => {
                Outcome::Known(Rc::new(introspection::inactive_entry(key, now, cfg)))
            }
            Ok(Answer::Members(m)) => {
                match introspection::entry_from_members(&m, key, now, None, max_age, cfg) {
                    Ok(entry) => Outcome::Known(Rc::new(entry)),
                    Err(f) => Outcome::Failed(f),
                }
            }
            Ok(Answer::Jwt(jwt)) => {
                return match key_set(sh, now) {
                    Some((fetched_at, keys)) => {
                        self.verify(sh, key, jwt, max_age, &keys, Some(fetched_at))
                    }
                    None => self.fetch_jwks(sh, key, jwt, max_age),
                };
            }
        };
        self.conclude(sh, key, outcome, now)
    }

    fn fetch_jwks(
        &mut self,
        sh: &Shared,
        key: TokenKey,
        jwt: String,
        max_age: Option<u64>,
    ) -> Action {
        let cfg = &sh.config;
        let Some(rules) = &cfg.jwt else {
            return self.conclude(
                sh,
                key,
                Outcome::Failed(Failure::Bad("no JWT rules are configured")),
                host::now(),
            );
        };
        let accept = [("accept", "application/json".to_string())];
        match host::dispatch(
            &rules.jwks.endpoint,
            "GET",
            &accept,
            None,
            cfg.introspection.timeout_ms,
        ) {
            Ok(_) => {
                sh.metrics.count(Metric::JwksFetch);
                self.pending = Pending::Jwks { key, jwt, max_age };
                Action::Pause
            }
            Err(status) => {
                log::warn!("key set dispatch failed: {status:?}");
                let why = "the key set call could not be dispatched";
                self.conclude(
                    sh,
                    key,
                    Outcome::Failed(Failure::Unavailable(why)),
                    host::now(),
                )
            }
        }
    }

    fn on_jwks(
        &mut self,
        sh: &Shared,
        key: TokenKey,
        jwt: String,
        max_age: Option<u64>,
        body_size: usize,
    ) -> Action {
        let now = host::now();
        let r = host::call_response(body_size, sh.config.introspection.max_body_bytes);
        let failure = match (r.status, r.body) {
            (Some(200), Some(body)) => match KeySet::parse(&body) {
                Ok(keys) => {
                    jwks_store(&sh.config).save(&HostStore, now, &body);
                    let keys = Rc::new(keys);
                    *sh.keys.borrow_mut() = Some((now, keys.clone()));
                    return self.verify(sh, key, jwt, max_age, &keys, None);
                }
                Err(why) => Failure::Bad(why),
            },
            (None | Some(500..=599), _) => Failure::Unavailable("the key set could not be fetched"),
            _ => Failure::Bad("the key set answer is unusable"),
        };
        self.conclude(sh, key, Outcome::Failed(failure), now)
    }

    /// Verifies the returned JWT. `fetched_at` is the age of a cached key set, which may be
    /// refetched once for an unknown `kid`; `None` means the set is fresh from the server.
    fn verify(
        &mut self,
        sh: &Shared,
        key: TokenKey,
        jwt: String,
        max_age: Option<u64>,
        keys: &KeySet,
        fetched_at: Option<u64>,
    ) -> Action {
        let cfg = &sh.config;
        let now = host::now();
        let Some(rules) = &cfg.jwt else {
            return self.conclude(
                sh,
                key,
                Outcome::Failed(Failure::Bad("no JWT rules are configured")),
                now,
            );
        };
        let verified = jwt::verify(&jwt, keys, rules, now, cfg.introspection.max_body_bytes);
        let entry = match verified {
            Err(jwt::JwtError::UnknownKey)
                if fetched_at.is_some_and(|t| {
                    jwks::may_refetch(t, now, rules.jwks.min_refetch_interval_seconds)
                }) =>
            {
                return self.fetch_jwks(sh, key, jwt, max_age);
            }
            Err(e) if e.is_time() => Ok(introspection::inactive_entry(key, now, cfg)),
            Err(e) => Err(Failure::Bad(e.describe())),
            Ok(claims) => {
                match introspection::members_of_verified_jwt(cfg.introspection.format, claims) {
                    Ok(Answer::Members(m)) => {
                        introspection::entry_from_members(&m, key, now, Some(&jwt), max_age, cfg)
                    }
                    Ok(_) => Ok(introspection::inactive_entry(key, now, cfg)),
                    Err(f) => Err(f),
                }
            }
        };
        let outcome = match entry {
            Ok(entry) => Outcome::Known(Rc::new(entry)),
            Err(f) => Outcome::Failed(f),
        };
        self.conclude(sh, key, outcome, now)
    }
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(sh) = self.shared.clone() else {
            return;
        };
        let action = match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Nothing => return,
            Pending::Introspection { key } => self.on_introspection(&sh, key, body_size),
            Pending::Jwks { key, jwt, max_age } => self.on_jwks(&sh, key, jwt, max_age, body_size),
        };
        // Continue means allowed; a deny has already replied, and a new call keeps waiting.
        if matches!(action, Action::Continue) {
            host::resume_request();
        }
    }

    fn on_done(&mut self) -> bool {
        // The stream went away while its call was out: those waiting on it must not hang.
        let key = match &self.pending {
            Pending::Introspection { key } | Pending::Jwks { key, .. } => *key,
            Pending::Nothing => return true,
        };
        if let Some(sh) = &self.shared {
            let why = "the request checking this token went away; retry";
            release_waiters(sh, &key, &Outcome::Failed(Failure::Unavailable(why)));
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        match self.shared.clone() {
            Some(sh) => self.on_request(&sh),
            None => {
                // Unconfigured: fail closed.
                let reason = DenyReason::IntrospectionUnavailable("the filter is not configured");
                host::send_reply(&response::deny(reason, "certbound", &[]));
                Action::Pause
            }
        }
    }
}

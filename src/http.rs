//! The HTTP context: a thin adapter from host callbacks to the pure logic of the other modules.

use crate::binding::Thumbprint;
use crate::cache::{Entry, TokenCache, TokenKey, TokenState};
use crate::config::Config;
use crate::decision::{self, DenyReason};
use crate::host::{self, HostStore, Metric, Metrics};
use crate::introspection::{self, Answer, Failure};
use crate::jwks::{self, JwksStore, KeySet};
use crate::jwt;
use crate::response;
use crate::token::{self, TokenError};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

/// What the context waits for while the request is paused.
enum Pending {
    Nothing,
    Introspection { key: TokenKey },
    Jwks { key: TokenKey, jwt: String, max_age: Option<u64> },
}

pub struct Http {
    config: Option<Rc<Config>>,
    metrics: Option<Rc<Metrics>>,
    pending: Pending,
    route: Option<usize>,
    thumbprint: Option<Thumbprint>,
}

impl Http {
    pub fn new(config: Option<Rc<Config>>, metrics: Option<Rc<Metrics>>) -> Self {
        Http { config, metrics, pending: Pending::Nothing, route: None, thumbprint: None }
    }

    fn count(&self, metric: Metric) {
        if let Some(m) = &self.metrics {
            m.count(metric);
        }
    }

    /// Replies locally and stops: the request never reaches the upstream.
    fn deny(&self, cfg: &Config, reason: DenyReason, jti: Option<&str>) -> Action {
        let thumbprint = self.thumbprint.map(|t| t.to_x5t());
        log::warn!(
            "certbound: denied {} ({}): client certificate x5t#S256={} jti={}",
            reason.metric(),
            reason.detail(),
            thumbprint.as_deref().unwrap_or("none"),
            jti.unwrap_or("-")
        );
        self.count(Metric::Denied(reason));
        let policy = cfg.policy(self.route);
        host::send_reply(&response::deny(reason, &cfg.realm, &policy.required_scopes));
        Action::Pause
    }

    fn fail(&self, cfg: &Config, failure: Failure) -> Action {
        self.count(Metric::IntrospectionFailure);
        let reason = match failure {
            Failure::Unavailable(why) => DenyReason::IntrospectionUnavailable(why),
            Failure::Bad(why) => DenyReason::IntrospectionBadResponse(why),
        };
        self.deny(cfg, reason, None)
    }

    /// Decides on a known token state: allow (rewriting headers) or deny.
    fn finish(&self, cfg: &Config, state: &TokenState) -> Action {
        match decision::decide(state, self.thumbprint.as_ref(), cfg.policy(self.route)) {
            Err(reason) => {
                let jti = match state {
                    TokenState::Active(t) => t.jti.as_deref(),
                    TokenState::Inactive => None,
                };
                self.deny(cfg, reason, jti)
            }
            Ok(token) => {
                if let Some(jwt) = &token.forward_jwt {
                    host::set_request_header("authorization", Some(&format!("Bearer {jwt}")));
                }
                for (name, value) in &token.headers {
                    host::set_request_header(name, Some(value));
                }
                self.count(Metric::Allowed);
                Action::Continue
            }
        }
    }

    fn cache<'a>(&self, cfg: &'a Config) -> TokenCache<'a> {
        TokenCache {
            namespace: &cfg.cache.namespace,
            fingerprint: &cfg.fingerprint,
            max_entries: cfg.cache.max_entries,
        }
    }

    /// Caches a new entry when it may live, then decides on it.
    fn store_and_finish(&self, cfg: &Config, entry: Entry, now: u64) -> Action {
        if entry.expires_at > now {
            self.cache(cfg).insert(&HostStore, &entry, now);
        }
        self.finish(cfg, &entry.state)
    }

    fn on_request(&mut self, cfg: &Config) -> Action {
        // A client's copy of a header this filter sets never reaches the upstream.
        for (_, name) in &cfg.claim_headers {
            host::set_request_header(name, None);
        }
        let headers = host::request_headers();
        let value = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        self.route = cfg.route_for(value(":method").unwrap_or(""), value(":path").unwrap_or(""));
        self.thumbprint = host::client_thumbprint();

        let authorization: Vec<&str> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str())
            .collect();
        let token = match token::bearer_token(&authorization, cfg.max_token_length) {
            Ok(t) => t,
            Err(TokenError::Missing) => return self.deny(cfg, DenyReason::MissingToken, None),
            Err(TokenError::Malformed(why)) => {
                return self.deny(cfg, DenyReason::InvalidRequest(why), None)
            }
        };
        let key = TokenKey::new(&cfg.cache.namespace, &cfg.fingerprint, token);
        if let Some(entry) = self.cache(cfg).lookup(&HostStore, &key, host::now()) {
            self.count(Metric::CacheHit);
            return self.finish(cfg, &entry.state);
        }
        self.count(Metric::CacheMiss);

        let (headers, body) = introspection::request(&cfg.introspection, token);
        let i = &cfg.introspection;
        match host::dispatch(&i.endpoint, "POST", &headers, Some(&body), i.timeout_ms) {
            Ok(_) => {
                self.count(Metric::IntrospectionCall);
                self.pending = Pending::Introspection { key };
                Action::Pause
            }
            Err(status) => {
                log::warn!("certbound: introspection dispatch failed: {status:?}");
                self.fail(cfg, Failure::Unavailable("the introspection call could not be dispatched"))
            }
        }
    }

    fn on_introspection(&mut self, cfg: &Config, key: TokenKey, body_size: usize) -> Action {
        let now = host::now();
        let r = host::call_response(body_size, cfg.introspection.max_body_bytes);
        let Some(body) = r.body else {
            return self.fail(cfg, Failure::Bad("the introspection answer is too large"));
        };
        let max_age = introspection::max_age(r.cache_control.as_deref());
        match introspection::classify(cfg.introspection.format, r.status, &body) {
            Err(f) => self.fail(cfg, f),
            Ok(Answer::Inactive) => {
                self.store_and_finish(cfg, introspection::inactive_entry(key, now, cfg), now)
            }
            Ok(Answer::Members(m)) => {
                match introspection::entry_from_members(&m, key, now, None, max_age, cfg) {
                    Ok(entry) => self.store_and_finish(cfg, entry, now),
                    Err(f) => self.fail(cfg, f),
                }
            }
            Ok(Answer::Jwt(jwt)) => {
                let Some(rules) = &cfg.jwt else {
                    return self.fail(cfg, Failure::Bad("no JWT rules are configured"));
                };
                match self.jwks_store(cfg).load(&HostStore) {
                    Some((fetched_at, keys))
                        if jwks::is_fresh(fetched_at, now, rules.jwks.max_age_seconds) =>
                    {
                        self.verify(cfg, key, jwt, max_age, &keys, Some(fetched_at))
                    }
                    _ => self.fetch_jwks(cfg, key, jwt, max_age),
                }
            }
        }
    }

    fn jwks_store<'a>(&self, cfg: &'a Config) -> JwksStore<'a> {
        JwksStore { namespace: &cfg.cache.namespace, fingerprint: &cfg.fingerprint }
    }

    fn fetch_jwks(&mut self, cfg: &Config, key: TokenKey, jwt: String, max_age: Option<u64>) -> Action {
        let Some(rules) = &cfg.jwt else {
            return self.fail(cfg, Failure::Bad("no JWT rules are configured"));
        };
        let accept = [("accept", "application/json".to_string())];
        match host::dispatch(&rules.jwks.endpoint, "GET", &accept, None, cfg.introspection.timeout_ms) {
            Ok(_) => {
                self.count(Metric::JwksFetch);
                self.pending = Pending::Jwks { key, jwt, max_age };
                Action::Pause
            }
            Err(status) => {
                log::warn!("certbound: key set dispatch failed: {status:?}");
                self.fail(cfg, Failure::Unavailable("the key set call could not be dispatched"))
            }
        }
    }

    fn on_jwks(&mut self, cfg: &Config, key: TokenKey, jwt: String, max_age: Option<u64>, body_size: usize) -> Action {
        let now = host::now();
        let r = host::call_response(body_size, cfg.introspection.max_body_bytes);
        let keys = match (r.status, r.body) {
            (Some(200), Some(body)) => match KeySet::parse(&body) {
                Ok(keys) => {
                    self.jwks_store(cfg).save(&HostStore, now, &body);
                    keys
                }
                Err(why) => return self.fail(cfg, Failure::Bad(why)),
            },
            (None | Some(500..=599), _) => {
                return self.fail(cfg, Failure::Unavailable("the key set could not be fetched"))
            }
            _ => return self.fail(cfg, Failure::Bad("the key set answer is unusable")),
        };
        self.verify(cfg, key, jwt, max_age, &keys, None)
    }

    /// Verifies the returned JWT. `fetched_at` is the age of a cached key set, which may be
    /// refetched once for an unknown `kid`; `None` means the set is fresh from the server.
    fn verify(
        &mut self,
        cfg: &Config,
        key: TokenKey,
        jwt: String,
        max_age: Option<u64>,
        keys: &KeySet,
        fetched_at: Option<u64>,
    ) -> Action {
        let now = host::now();
        let Some(rules) = &cfg.jwt else {
            return self.fail(cfg, Failure::Bad("no JWT rules are configured"));
        };
        let claims = match jwt::verify(&jwt, keys, rules, now, cfg.introspection.max_body_bytes) {
            Ok(claims) => claims,
            Err(jwt::JwtError::UnknownKey)
                if fetched_at.is_some_and(|t| {
                    jwks::may_refetch(t, now, rules.jwks.min_refetch_interval_seconds)
                }) =>
            {
                return self.fetch_jwks(cfg, key, jwt, max_age)
            }
            Err(e) if e.is_time() => {
                return self.store_and_finish(cfg, introspection::inactive_entry(key, now, cfg), now)
            }
            Err(e) => return self.fail(cfg, Failure::Bad(e.describe())),
        };
        let entry = match introspection::members_of_verified_jwt(cfg.introspection.format, claims) {
            Ok(Answer::Members(m)) => {
                introspection::entry_from_members(&m, key, now, Some(jwt), max_age, cfg)
            }
            Ok(_) => Ok(introspection::inactive_entry(key, now, cfg)),
            Err(f) => Err(f),
        };
        match entry {
            Ok(entry) => self.store_and_finish(cfg, entry, now),
            Err(f) => self.fail(cfg, f),
        }
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let Some(cfg) = self.config.clone() else { return };
        let action = match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Nothing => return,
            Pending::Introspection { key } => self.on_introspection(&cfg, key, body_size),
            Pending::Jwks { key, jwt, max_age } => self.on_jwks(&cfg, key, jwt, max_age, body_size),
        };
        // Continue means allowed; a deny has already replied, and a new call keeps waiting.
        if matches!(action, Action::Continue) {
            host::resume_request();
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        match self.config.clone() {
            Some(cfg) => self.on_request(&cfg),
            None => {
                // Unconfigured: fail closed.
                host::send_reply(&response::deny(
                    DenyReason::IntrospectionUnavailable("the filter is not configured"),
                    "certbound",
                    &[],
                ));
                Action::Pause
            }
        }
    }
}

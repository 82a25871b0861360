//! Revocation: the identity server's feed of signed revocation events (Security Event Tokens,
//! RFC 8417), polled by one worker's root context at a time, recorded in shared data, and applied
//! by every worker to its own cache on its timer.
//!
//! Shared data holds two values per namespace, both sealed (`crate::cache::Seal`): the feed's
//! state (`Feed`: the cursor, when it last answered, when the next poll is due — which is also the
//! poller's lease — and how many events were recorded) and the event log (`Log`, bounded, each
//! event kept until the tokens it names have expired). Every worker reads the state on each tick
//! and the log only when the state says it grew. A cache hit reads neither: a revoked entry is
//! dropped from the worker's cache by its tick, and an entry read from shared data is checked
//! against the events the worker holds (`Revocations::revokes`).
//!
//! Without a successful poll for `revocation.max_staleness_seconds`, no cached entry is trusted:
//! each request is introspected until the feed answers again (`Revocations::trusted`).

use crate::cache::{Entry, LocalCache, Seal, SharedStore, TokenHash, TokenState};
use crate::config::{Config, Revocation};
use crate::flow::{self, Call, CallAnswer, CallKind};
use crate::jwks::{self, KeySet};
use crate::jwt::{self, JwtError};
use crate::metrics::Metric;
use crate::worker::{State, KEY_SET_BACKOFF_SECONDS};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::rc::Rc;

/// The event of one revoked token (RFC 7009 revocation at the identity server).
pub const TOKEN_REVOKED: &str = "https://certbound.example/secevent/token-revoked";
/// The event of an offboarded partner: every token of the client issued before a time.
pub const CLIENT_OFFBOARDED: &str = "https://certbound.example/secevent/client-offboarded";

/// The longest cursor kept (the feed's `next`).
const MAX_CURSOR: usize = 256;
/// The longest client id an event may name.
const MAX_CLIENT_ID: usize = 256;

/// `TokenHash` of a token: the first 24 bytes of its SHA-256.
pub fn token_hash(token: &str) -> TokenHash {
    let digest = Sha256::digest(token.as_bytes());
    let mut hash = [0u8; 24];
    hash.copy_from_slice(&digest[..24]);
    hash
}

/// What an event revokes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Token(TokenHash),
    /// Every token of `client_id` issued before `issued_before` (Unix seconds).
    Client {
        client_id: String,
        issued_before: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub target: Target,
    /// Unix seconds after which no token the event names is valid: the event is forgotten then.
    pub retain_until: u64,
}

/// The event of a verified SET's claims: `events` must hold exactly one event of a known type.
pub fn event_from_claims(claims: &Map<String, Value>) -> Result<Event, &'static str> {
    let Some(Value::Object(events)) = claims.get("events") else {
        return Err("the SET has no events object");
    };
    let mut events = events.iter();
    let (Some((kind, Value::Object(e))), None) = (events.next(), events.next()) else {
        return Err("the SET does not hold exactly one event object");
    };
    let number = |name: &str| e.get(name).and_then(Value::as_u64);
    let retain_until = number("retain_until").ok_or("the event has no retain_until")?;
    let target = match kind.as_str() {
        TOKEN_REVOKED => {
            let hash = e
                .get("token_hash")
                .and_then(Value::as_str)
                .filter(|h| h.len() == 32)
                .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
                .and_then(|bytes| TokenHash::try_from(bytes.as_slice()).ok())
                .ok_or("the event's token_hash is not 32 base64url characters")?;
            Target::Token(hash)
        }
        CLIENT_OFFBOARDED => {
            let client_id = e
                .get("client_id")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty() && c.len() <= MAX_CLIENT_ID)
                .ok_or("the event's client_id is missing or too long")?;
            let issued_before = number("issued_before").ok_or("the event has no issued_before")?;
            Target::Client {
                client_id: client_id.to_string(),
                issued_before,
            }
        }
        _ => return Err("the event's type is not known"),
    };
    Ok(Event {
        target,
        retain_until,
    })
}

/// The feed's answer: `{"events": [SET, ...], "next": cursor}`.
pub fn parse_feed(body: &[u8]) -> Result<(Vec<String>, String), &'static str> {
    #[derive(Deserialize)]
    struct Answer {
        events: Vec<String>,
        next: String,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|_| "the feed answer is not JSON")?;
    // The cursor goes back into the next poll's path: URL-safe characters only.
    let safe = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    if a.next.is_empty() || a.next.len() > MAX_CURSOR || !a.next.chars().all(safe) {
        return Err("the feed's next cursor is not a short URL-safe string");
    }
    Ok((a.events, a.next))
}

/// What one poll's SETs came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verified {
    pub events: Vec<Event>,
    /// SETs refused (bad signature, unsigned, wrong issuer or audience, unknown event): with why.
    pub rejected: Vec<&'static str>,
    /// A SET names a key the key set lacks and the key set may be refetched: the poll is not
    /// recorded; the key set is fetched first.
    pub unknown_key: bool,
}

/// Verifies each SET against the key set and the section's rules (issuer, audience, algorithms,
/// `typ` `secevent+jwt`). `may_refetch`: whether an unknown `kid` is worth a key set fetch.
pub fn verify_sets(
    sets: &[String],
    keys: &KeySet,
    r: &Revocation,
    now: u64,
    may_refetch: bool,
) -> Verified {
    let mut out = Verified::default();
    for set in sets {
        match jwt::verify(set, keys, &r.rules, now, r.max_body_bytes) {
            Ok(claims) => match event_from_claims(&claims) {
                Ok(event) => out.events.push(event),
                Err(why) => out.rejected.push(why),
            },
            Err(JwtError::UnknownKey) if may_refetch => {
                out.unknown_key = true;
                return out;
            }
            Err(e) => out.rejected.push(e.describe()),
        }
    }
    out
}

/// The feed's state in shared data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feed {
    /// Where the next poll starts (`None`: from the feed's beginning).
    pub cursor: Option<String>,
    /// When the feed last answered (Unix milliseconds; 0: never).
    pub ok_at_ms: u64,
    /// When the next poll is due. A worker that claims the poll moves it past its call's timeout:
    /// the lease that keeps the other workers from polling too.
    pub due_ms: u64,
    /// Events recorded so far: the log's version.
    pub seq: u64,
    /// Unix seconds (0: none): an entry checked at or before this is not trusted (the log
    /// overflowed then, and dropped events not yet expired).
    pub revoked_before: u64,
}

/// The event log in shared data: (sequence number, event), oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log(pub Vec<(u64, Event)>);

/// Both values, under the cache's namespace and seal.
pub struct RevocationStore<'a> {
    pub namespace: &'a str,
    pub seal: &'a Seal,
}

impl RevocationStore<'_> {
    fn feed_key(&self) -> String {
        format!("{}/revocation/feed", self.namespace)
    }

    fn log_key(&self) -> String {
        format!("{}/revocation/events", self.namespace)
    }

    fn read<T: for<'de> Deserialize<'de>>(
        &self,
        store: &dyn SharedStore,
        key: &str,
    ) -> Option<(Option<T>, Option<u32>)> {
        let (bytes, cas) = store.get(key)?;
        let value = self
            .seal
            .open(&bytes)
            .and_then(|v| serde_json::from_slice(v).ok());
        Some((value, cas))
    }

    fn write<T: Serialize>(
        &self,
        store: &dyn SharedStore,
        key: &str,
        value: &T,
        cas: Option<u32>,
    ) -> bool {
        match serde_json::to_vec(value) {
            Ok(bytes) => store.set(key, &self.seal.seal(bytes), cas),
            Err(_) => false,
        }
    }

    /// The feed's state; a missing one is a feed never polled. `None` when the value there is not
    /// this configuration's (corrupt, or sealed by another): nothing is trusted then.
    pub fn feed(&self, store: &dyn SharedStore) -> Option<(Feed, Option<u32>)> {
        match self.read(store, &self.feed_key()) {
            None => Some((Feed::default(), None)),
            Some((Some(feed), cas)) => Some((feed, cas)),
            Some((None, cas)) => Some((
                Feed {
                    // Another configuration's state: polled again from the start, every entry
                    // checked before now distrusted.
                    seq: u64::MAX,
                    ..Feed::default()
                },
                cas,
            )),
        }
    }

    pub fn log(&self, store: &dyn SharedStore) -> Option<Log> {
        match self.read(store, &self.log_key()) {
            None => Some(Log::default()),
            Some((log, _)) => log,
        }
    }

    /// Claims the poll if it is due: true if this worker is to poll now.
    pub fn claim(&self, store: &dyn SharedStore, r: &Revocation, now_ms: u64) -> bool {
        let Some((mut feed, cas)) = self.feed(store) else {
            return false;
        };
        if feed.due_ms > now_ms {
            return false;
        }
        if feed.seq == u64::MAX {
            feed = Feed::default();
        }
        feed.due_ms = now_ms + r.timeout_ms + r.poll_interval_ms;
        self.write(store, &self.feed_key(), &feed, cas)
    }

    /// The cursor to poll from.
    pub fn cursor(&self, store: &dyn SharedStore) -> Option<String> {
        self.feed(store).and_then(|(f, _)| f.cursor)
    }

    /// A poll failed: the next one is due after the interval; the feed's age goes on growing.
    pub fn failed(&self, store: &dyn SharedStore, r: &Revocation, now_ms: u64) {
        if let Some((mut feed, cas)) = self.feed(store) {
            feed.due_ms = now_ms + r.poll_interval_ms;
            self.write(store, &self.feed_key(), &feed, cas);
        }
    }

    /// The poll is given back without an answer (the key set is fetched first): due at once.
    pub fn release(&self, store: &dyn SharedStore) {
        if let Some((mut feed, cas)) = self.feed(store) {
            feed.due_ms = 0;
            self.write(store, &self.feed_key(), &feed, cas);
        }
    }

    /// Records a poll's events and its `next` cursor: the log first (pruned of what has expired,
    /// bounded), then the state that says it grew. Returns the events recorded.
    pub fn record(
        &self,
        store: &dyn SharedStore,
        r: &Revocation,
        events: Vec<Event>,
        next: String,
        now_ms: u64,
    ) -> usize {
        let now = now_ms / 1000;
        let Some((mut feed, cas)) = self.feed(store) else {
            return 0;
        };
        if feed.seq == u64::MAX {
            feed = Feed::default();
        }
        let recorded = events.len();
        if recorded > 0 || feed.seq == 0 {
            let mut log = self.log(store).unwrap_or_default();
            log.0.retain(|(_, e)| e.retain_until > now);
            for event in events.into_iter().filter(|e| e.retain_until > now) {
                feed.seq += 1;
                log.0.push((feed.seq, event));
            }
            if log.0.len() > r.max_events {
                // The oldest events go; every entry checked before now is checked again.
                let excess = log.0.len() - r.max_events;
                log.0.drain(..excess);
                feed.revoked_before = now;
            }
            self.write(store, &self.log_key(), &log, None);
        }
        feed.cursor = Some(next);
        feed.ok_at_ms = now_ms;
        feed.due_ms = now_ms + r.poll_interval_ms;
        self.write(store, &self.feed_key(), &feed, cas);
        recorded
    }
}

/// What one worker knows of the recorded events, and whether it may trust its cache.
#[derive(Debug)]
pub struct Revocations {
    /// Whether cached entries may decide requests: always without a feed; with one, whether it
    /// answered within `max_staleness` at the last tick. Read on every request.
    pub trusted: bool,
    /// The log's version this worker has applied.
    seq: u64,
    revoked_before: u64,
    /// Revoked tokens, with when they are forgotten.
    tokens: HashMap<TokenHash, u64>,
    /// Offboarded clients: (issued before, retain until).
    clients: HashMap<String, (u64, u64)>,
    /// This worker's root context has a feed or key set call out.
    pub polling: Option<PollCall>,
    /// Milliseconds since the feed last answered, as of the last tick (`None`: never).
    pub lag_ms: Option<u64>,
    /// The last poll found a key the key set lacks: the next claim fetches the key set first.
    pub refetch_keys: bool,
}

/// What the recorded events say of a cached entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Good,
    /// An event names its token: refused.
    Revoked,
    /// Checked before events were forgotten (the log overflowed): introspected again.
    Unsure,
}

/// The root context's call out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollCall {
    Feed,
    KeySet,
}

/// What a tick's sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// The worker's cache entries an event revoked (taken out of its cache).
    pub revoked: Vec<Rc<Entry>>,
    /// Entries taken out to be introspected again (`Standing::Unsure`).
    pub unsure: usize,
}

impl Revocations {
    pub fn new(feed: Option<&Revocation>) -> Revocations {
        Revocations {
            trusted: feed.is_none(),
            seq: 0,
            revoked_before: 0,
            tokens: HashMap::new(),
            clients: HashMap::new(),
            polling: None,
            lag_ms: None,
            refetch_keys: false,
        }
    }

    /// What the recorded events say of a cached entry.
    pub fn standing(&self, entry: &Entry) -> Standing {
        let TokenState::Active(t) = &entry.state else {
            return Standing::Good;
        };
        // A token whose client is offboarded goes unless it was issued after the event's time
        // (an `iat` the answer did not give counts as before).
        let offboarded = || {
            t.client_id
                .as_ref()
                .and_then(|c| self.clients.get(c))
                .is_some_and(|(before, _)| t.issued_at.is_none_or(|iat| iat < *before))
        };
        if self.tokens.contains_key(&t.token_hash) || offboarded() {
            Standing::Revoked
        } else if self.revoked_before > 0 && t.checked_at <= self.revoked_before {
            Standing::Unsure
        } else {
            Standing::Good
        }
    }

    fn apply(&mut self, event: &Event) {
        match &event.target {
            Target::Token(hash) => {
                let until = self.tokens.entry(*hash).or_default();
                *until = (*until).max(event.retain_until);
            }
            Target::Client {
                client_id,
                issued_before,
            } => {
                let known = self.clients.entry(client_id.clone()).or_default();
                *known = (known.0.max(*issued_before), known.1.max(event.retain_until));
            }
        }
    }

    /// The tick: reads the feed's state, applies events recorded since the last tick (reading
    /// the log only then), drops the cache entries they revoke, and decides whether the cache is
    /// trusted until the next tick.
    pub fn sync(
        &mut self,
        r: &Revocation,
        shared: &RevocationStore,
        store: &dyn SharedStore,
        local: &mut LocalCache,
        now_ms: u64,
    ) -> Synced {
        let now = now_ms / 1000;
        let Some((feed, _)) = shared.feed(store) else {
            self.trusted = false;
            return Synced::default();
        };
        let mut synced = Synced::default();
        let grew = feed.seq != self.seq || feed.revoked_before != self.revoked_before;
        let mut consistent = feed.seq != u64::MAX;
        if grew && consistent {
            match shared.log(store) {
                Some(log) => {
                    // A log that starts over (a new namespace owner) is applied whole.
                    let since = if feed.seq < self.seq { 0 } else { self.seq };
                    for (_, event) in log.0.iter().filter(|(seq, _)| *seq > since) {
                        self.apply(event);
                    }
                    // Events the log dropped past `since` are covered by `revoked_before`.
                    self.seq = feed.seq;
                    self.revoked_before = feed.revoked_before;
                    let taken = local.take(|e| self.standing(e) != Standing::Good);
                    let (revoked, unsure): (Vec<_>, Vec<_>) = taken
                        .into_iter()
                        .partition(|e| self.standing(e) == Standing::Revoked);
                    synced.revoked = revoked;
                    synced.unsure = unsure.len();
                }
                None => consistent = false,
            }
        }
        self.tokens.retain(|_, until| *until > now);
        self.clients.retain(|_, (_, until)| *until > now);
        self.lag_ms = (feed.ok_at_ms > 0).then(|| now_ms.saturating_sub(feed.ok_at_ms));
        self.trusted = consistent && self.lag_ms.is_some_and(|lag| lag <= r.max_staleness_ms);
        synced
    }

    /// Events this worker holds (tests, logs).
    pub fn len(&self) -> usize {
        self.tokens.len() + self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---- the root context's part: the poll on the timer, and its answers ----

fn store_of<'a>(cfg: &'a Config, seal: &'a Seal) -> RevocationStore<'a> {
    RevocationStore {
        namespace: &cfg.cache.namespace,
        seal,
    }
}

/// The worker's tick (`now_ms`: Unix milliseconds): applies what other workers recorded, then,
/// if the poll is due and this worker claims it, the call to send (the feed, or first the key
/// set its events are verified with).
pub fn on_tick(cfg: &Config, st: &mut State, store: &dyn SharedStore, now_ms: u64) -> Option<Call> {
    let r = cfg.revocation.as_ref()?;
    apply_recorded(cfg, r, st, store, now_ms);
    if st.revocations.polling.is_some() || !store_of(cfg, &st.seal).claim(store, r, now_ms) {
        return None;
    }
    let now = now_ms / 1000;
    let have_keys = flow::key_set(cfg, st, store, &r.rules, now).is_some();
    if !have_keys || st.revocations.refetch_keys {
        let backing_off = st
            .key_set_failed_at
            .is_some_and(|t| now < t.saturating_add(KEY_SET_BACKOFF_SECONDS));
        if backing_off {
            store_of(cfg, &st.seal).failed(store, r, now_ms);
            st.tally.count(Metric::RevocationPollFailure);
            return None;
        }
        st.revocations.polling = Some(PollCall::KeySet);
        return Some(flow::key_set_call(&r.rules.jwks));
    }
    st.revocations.polling = Some(PollCall::Feed);
    let cursor = store_of(cfg, &st.seal).cursor(store);
    Some(feed_call(r, cursor.as_deref()))
}

/// `GET <path>?after=<cursor>` (no cursor: from the beginning).
fn feed_call(r: &Revocation, cursor: Option<&str>) -> Call {
    let path = match cursor {
        Some(c) => {
            let sep = if r.feed.path.contains('?') { '&' } else { '?' };
            format!("{}{sep}after={c}", r.feed.path)
        }
        None => r.feed.path.clone(),
    };
    Call {
        kind: CallKind::RevocationFeed,
        cluster: r.feed.cluster.clone(),
        headers: vec![
            (":method", "GET".to_string()),
            (":path", path),
            (":authority", r.feed.authority.clone()),
            ("accept", "application/json".to_string()),
        ],
        body: None,
        timeout_ms: r.timeout_ms,
    }
}

/// The largest answer read for the root context's call out.
pub fn answer_limit(cfg: &Config, st: &State) -> usize {
    match (&cfg.revocation, st.revocations.polling) {
        (Some(r), Some(PollCall::KeySet)) => r.rules.jwks.max_body_bytes,
        (Some(r), _) => r.max_body_bytes,
        (None, _) => 0,
    }
}

/// The root context's call could not be sent.
pub fn on_dispatch_failed(cfg: &Config, st: &mut State, store: &dyn SharedStore, now_ms: u64) {
    if let (Some(r), Some(_)) = (&cfg.revocation, st.revocations.polling.take()) {
        store_of(cfg, &st.seal).failed(store, r, now_ms);
        st.tally.count(Metric::RevocationPollFailure);
    }
}

/// The answer to the root context's call. Returns lines for the log (why a poll failed, why an
/// event was refused; never an event itself).
pub fn on_answer(
    cfg: &Config,
    st: &mut State,
    store: &dyn SharedStore,
    answer: CallAnswer,
    now_ms: u64,
) -> Vec<String> {
    let Some(r) = &cfg.revocation else {
        return Vec::new();
    };
    let now = now_ms / 1000;
    let mut log = Vec::new();
    let outcome = match st.revocations.polling.take() {
        None => return log,
        Some(PollCall::KeySet) => match (answer.status, answer.body) {
            (Some(200), Some(body)) => match KeySet::parse(&body) {
                Ok(keys) => {
                    flow::jwks_store(cfg, &st.seal).save(store, now, &body);
                    st.keys = Some((now, Rc::new(keys)));
                    st.key_set_failed_at = None;
                    st.revocations.refetch_keys = false;
                    // The poll the key set was fetched for goes out on the next tick.
                    store_of(cfg, &st.seal).release(store);
                    return log;
                }
                Err(why) => Err(why),
            },
            _ => Err("the key set could not be fetched"),
        },
        Some(PollCall::Feed) => on_feed(cfg, r, st, store, answer, now_ms, &mut log),
    };
    if let Err(why) = outcome {
        if st.revocations.polling.is_none() {
            store_of(cfg, &st.seal).failed(store, r, now_ms);
        }
        st.tally.count(Metric::RevocationPollFailure);
        log.push(format!("revocation feed poll failed: {why}"));
        if matches!(why, "the key set could not be fetched") {
            st.key_set_failed_at = Some(now);
        }
    }
    log
}

fn on_feed(
    cfg: &Config,
    r: &Revocation,
    st: &mut State,
    store: &dyn SharedStore,
    answer: CallAnswer,
    now_ms: u64,
    log: &mut Vec<String>,
) -> Result<(), &'static str> {
    let now = now_ms / 1000;
    let body = match (answer.status, answer.body) {
        (Some(200), Some(body)) => body,
        (Some(200), None) => return Err("the feed answer is too large"),
        (Some(_), _) => return Err("the feed answered with an error status"),
        (None, _) => return Err("the feed is unreachable"),
    };
    let (sets, next) = parse_feed(&body)?;
    let Some((fetched_at, keys)) = flow::key_set(cfg, st, store, &r.rules, now) else {
        st.revocations.refetch_keys = true;
        store_of(cfg, &st.seal).release(store);
        return Ok(());
    };
    let may_refetch = jwks::may_refetch(fetched_at, now, r.rules.jwks.min_refetch_interval_seconds);
    let verified = verify_sets(&sets, &keys, r, now, may_refetch);
    if verified.unknown_key {
        st.revocations.refetch_keys = true;
        store_of(cfg, &st.seal).release(store);
        return Ok(());
    }
    for why in &verified.rejected {
        log.push(format!("revocation event refused: {why}"));
    }
    st.tally
        .add(Metric::RevocationRejected, verified.rejected.len() as u64);
    let recorded = store_of(cfg, &st.seal).record(store, r, verified.events, next, now_ms);
    st.tally.add(Metric::RevocationApplied, recorded as u64);
    // This worker applies them at once; the others on their next tick.
    apply_recorded(cfg, r, st, store, now_ms);
    Ok(())
}

/// Applies the events recorded since the last sync: each cached entry they revoke becomes an
/// inactive one, here and in shared data (so that a request with a revoked token is refused at
/// once, and never served stale).
fn apply_recorded(
    cfg: &Config,
    r: &Revocation,
    st: &mut State,
    store: &dyn SharedStore,
    now_ms: u64,
) {
    let shared = store_of(cfg, &st.seal);
    let synced = st
        .revocations
        .sync(r, &shared, store, &mut st.local, now_ms);
    let dropped = synced.revoked.len() + synced.unsure;
    st.tally.add(Metric::RevokedEntryDropped, dropped as u64);
    for entry in synced.revoked {
        let revoked = Rc::new(revoked_entry(&entry, now_ms / 1000, cfg));
        flow::token_cache(cfg, &st.seal).insert(store, &revoked, now_ms / 1000);
        st.local.put(revoked);
    }
}

/// The inactive entry that replaces a revoked one: kept at least as long as the revoked one
/// could have decided (or been served stale), and the negative TTL.
pub fn revoked_entry(entry: &Entry, now: u64, cfg: &Config) -> Entry {
    let until = entry
        .stale_until
        .max(entry.expires_at)
        .max(now.saturating_add(cfg.cache.negative_ttl_seconds));
    Entry {
        key: entry.key,
        expires_at: until,
        stale_until: until,
        state: TokenState::Inactive,
    }
}

#[cfg(test)]
mod tests;

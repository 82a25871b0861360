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
//! each request is introspected until the feed answers again (`Revocations::trusted`). The poll
//! itself, from the root context's timer, is `crate::feed`'s.

use crate::cache::{Entry, LocalCache, Seal, SharedStore, TokenHash, TokenState};
use crate::config::{Config, Revocation};
use crate::jwks::KeySet;
use crate::jwt::{self, JwtError};
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
    Token(#[serde(with = "hash_b64")] TokenHash),
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
    /// SETs refused for good (bad signature, unsigned, wrong issuer or audience, unknown event),
    /// with why: the cursor moves past them.
    pub rejected: Vec<&'static str>,
    /// Why the poll is not recorded and is made again later (the cursor stays): a SET not valid
    /// yet, or signed by a key the key set lacks while it may not be refetched yet. Until then
    /// the feed's lag grows, so `max_staleness` bounds what a missed event can cost.
    pub retry: Option<&'static str>,
    /// A SET names a key the key set lacks and the key set may be refetched: the poll is not
    /// recorded; the key set is fetched first.
    pub unknown_key: bool,
}

/// How an unknown `kid` is handled: refetch the key set, wait until that is allowed, or refuse
/// the SET (the key set was just fetched for it and still lacks the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refetch {
    Allowed,
    NotYet,
    JustDone,
}

/// Verifies each SET against the key set and the section's rules (issuer, audience, algorithms,
/// `typ` `secevent+jwt`).
pub fn verify_sets(
    sets: &[String],
    keys: &KeySet,
    r: &Revocation,
    now: u64,
    refetch: Refetch,
) -> Verified {
    let mut out = Verified::default();
    for set in sets {
        match jwt::verify(set, keys, &r.rules, now, r.max_body_bytes) {
            Ok(claims) => match event_from_claims(&claims) {
                Ok(event) => out.events.push(event),
                Err(why) => out.rejected.push(why),
            },
            Err(JwtError::UnknownKey) if refetch == Refetch::Allowed => {
                out.unknown_key = true;
                return out;
            }
            Err(JwtError::UnknownKey) if refetch == Refetch::NotYet => {
                out.retry =
                    Some("an event's key is not in the key set, which may not be refetched yet");
                return out;
            }
            Err(JwtError::NotYetValid) => {
                out.retry = Some("an event is not valid yet (its iat is ahead of this clock)");
                return out;
            }
            Err(e) => out.rejected.push(e.describe()),
        }
    }
    out
}

/// The hash's base64url in the log (24 numbers in JSON would take five times the room).
mod hash_b64 {
    use super::{TokenHash, URL_SAFE_NO_PAD};
    use base64::Engine;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hash: &TokenHash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(hash))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TokenHash, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(D::Error::custom)?;
        TokenHash::try_from(bytes.as_slice()).map_err(D::Error::custom)
    }
}

/// The feed's state in shared data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feed {
    /// Where the next poll starts (`None`: from the feed's beginning).
    pub cursor: Option<String>,
    /// When the feed last answered (Unix milliseconds; 0: never).
    pub ok_at_ms: u64,
    /// When the next poll is due, or while `holder` polls, when its lease ends (`lease_ms`).
    pub due_ms: u64,
    /// The worker polling now (its nonce; 0: none). Only it may record, fail or release the poll.
    pub holder: u64,
    /// Chosen anew whenever the state starts over (none yet, or another configuration's): the
    /// sequence numbers are counted within it, so a worker that sees another epoch applies the
    /// whole log again.
    pub epoch: u64,
    /// Events recorded so far in this epoch: the log's version.
    pub seq: u64,
    /// Unix seconds (0: none): an entry checked at or before this is not trusted (events were
    /// lost then: the log overflowed, or could not be read).
    pub revoked_before: u64,
}

/// The event log in shared data: its epoch, the feed's `seq` when it was written, and
/// (sequence number, event), oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    pub epoch: u64,
    pub seq: u64,
    pub events: Vec<(u64, Event)>,
}

/// How long a claimed poll is its holder's: its call's timeout (the feed's or the key set's),
/// the interval, and a second to spare. A `due_ms` further ahead than this is a clock that went
/// back: the poll is due.
fn lease_ms(r: &Revocation) -> u64 {
    r.timeout_ms.max(r.rules.jwks.timeout_ms) + r.poll_interval_ms + 1000
}

/// One poll's verified events, the cursor after them, and whether the feed has more (a full
/// page: the next poll is due at once).
pub struct Page {
    pub events: Vec<Event>,
    pub next: String,
    pub more: bool,
}

/// Both values, under the cache's namespace and seal.
pub struct RevocationStore<'a> {
    pub namespace: &'a str,
    pub seal: &'a Seal,
}

/// What shared data holds under a key: nothing, a value this configuration sealed, or another's.
enum Stored<T> {
    Missing,
    Ours(T, Option<u32>),
    Foreign(Option<u32>),
}

impl RevocationStore<'_> {
    fn feed_key(&self) -> String {
        format!("{}/revocation/feed", self.namespace)
    }

    fn log_key(&self) -> String {
        format!("{}/revocation/events", self.namespace)
    }

    fn read<T: for<'de> Deserialize<'de>>(&self, store: &dyn SharedStore, key: &str) -> Stored<T> {
        let Some((bytes, cas)) = store.get(key) else {
            return Stored::Missing;
        };
        match self
            .seal
            .open(&bytes)
            .and_then(|v| serde_json::from_slice(v).ok())
        {
            Some(value) => Stored::Ours(value, cas),
            None => Stored::Foreign(cas),
        }
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

    /// The feed's state (`None`: another configuration's, or unreadable) and its CAS.
    pub fn feed(&self, store: &dyn SharedStore) -> (Option<Feed>, Option<u32>) {
        match self.read(store, &self.feed_key()) {
            Stored::Missing => (Some(Feed::default()), None),
            Stored::Ours(feed, cas) => (Some(feed), cas),
            Stored::Foreign(cas) => (None, cas),
        }
    }

    /// The log, if it is this configuration's and of `epoch`.
    pub fn log(&self, store: &dyn SharedStore, epoch: u64) -> Option<(Log, Option<u32>)> {
        match self.read::<Log>(store, &self.log_key()) {
            Stored::Ours(log, cas) if log.epoch == epoch => Some((log, cas)),
            _ => None,
        }
    }

    /// Claims the poll if it is due: true if this worker (`nonce`) is to poll now. A state that
    /// is not this configuration's starts over, in a new epoch.
    pub fn claim(&self, store: &dyn SharedStore, r: &Revocation, now_ms: u64, nonce: u64) -> bool {
        let (feed, cas) = self.feed(store);
        let mut feed = feed.unwrap_or_default();
        let lease = lease_ms(r);
        if feed.due_ms > now_ms && feed.due_ms <= now_ms.saturating_add(lease) {
            return false;
        }
        if feed.epoch == 0 {
            feed = Feed {
                epoch: (nonce ^ now_ms).max(1),
                ..Feed::default()
            };
        }
        feed.holder = nonce;
        feed.due_ms = now_ms + lease;
        if !self.write(store, &self.feed_key(), &feed, cas) {
            return false;
        }
        // A first write has no CAS to lose: read it back, the last writer holds the poll.
        cas.is_some() || self.feed(store).0.is_some_and(|f| f.holder == nonce)
    }

    /// The cursor to poll from.
    pub fn cursor(&self, store: &dyn SharedStore) -> Option<String> {
        self.feed(store).0.and_then(|f| f.cursor)
    }

    /// Gives up the poll `nonce` holds; the next one is due at `due_ms`.
    fn give_up(&self, store: &dyn SharedStore, nonce: u64, due_ms: u64) {
        if let (Some(mut feed), cas) = self.feed(store) {
            if feed.holder == nonce {
                feed.holder = 0;
                feed.due_ms = due_ms;
                self.write(store, &self.feed_key(), &feed, cas);
            }
        }
    }

    /// A poll failed: the next one is due after the interval; the feed's age goes on growing.
    pub fn failed(&self, store: &dyn SharedStore, r: &Revocation, now_ms: u64, nonce: u64) {
        self.give_up(store, nonce, now_ms + r.poll_interval_ms);
    }

    /// The poll is given back without an answer (the key set is fetched first): due at once.
    pub fn release(&self, store: &dyn SharedStore, nonce: u64) {
        self.give_up(store, nonce, 0);
    }

    /// Records a poll's page: the log first (pruned of what has expired, bounded, written with
    /// its CAS), then the state that says it grew. `None` when this worker no longer holds the
    /// poll or lost a race: nothing is recorded, the poll is made again.
    pub fn record(
        &self,
        store: &dyn SharedStore,
        r: &Revocation,
        page: Page,
        now_ms: u64,
        nonce: u64,
    ) -> Option<usize> {
        let now = now_ms / 1000;
        let (Some(mut feed), cas) = self.feed(store) else {
            return None;
        };
        if feed.holder != nonce {
            return None;
        }
        let Page { events, next, more } = page;
        let recorded = events.len();
        if recorded > 0 {
            let (mut log, log_cas) = match self.read::<Log>(store, &self.log_key()) {
                Stored::Ours(log, cas) if log.epoch == feed.epoch && log.seq >= feed.seq => {
                    (log, cas)
                }
                other => {
                    // No log of this state's (lost, or another configuration's): what it held
                    // is unknown, so every entry checked until now is checked again.
                    if feed.seq > 0 {
                        feed.revoked_before = now;
                    }
                    let cas = match other {
                        Stored::Ours(_, cas) | Stored::Foreign(cas) => cas,
                        Stored::Missing => None,
                    };
                    (Log::default(), cas)
                }
            };
            log.epoch = feed.epoch;
            log.events.retain(|(_, e)| e.retain_until > now);
            for event in events.into_iter().filter(|e| e.retain_until > now) {
                feed.seq += 1;
                log.events.push((feed.seq, event));
            }
            if log.events.len() > r.max_events {
                // The oldest events go; every entry checked until now is checked again.
                let excess = log.events.len() - r.max_events;
                log.events.drain(..excess);
                feed.revoked_before = now;
            }
            log.seq = feed.seq;
            if !self.write(store, &self.log_key(), &log, log_cas) {
                return None;
            }
        }
        feed.cursor = Some(next);
        feed.ok_at_ms = now_ms;
        feed.holder = 0;
        feed.due_ms = if more { 0 } else { now_ms + r.poll_interval_ms };
        self.write(store, &self.feed_key(), &feed, cas)
            .then_some(recorded)
    }
}

/// What one worker knows of the recorded events, and whether it may trust its cache.
#[derive(Debug)]
pub struct Revocations {
    /// Whether cached entries may decide requests: always without a feed; with one, whether it
    /// answered within `max_staleness` at the last tick. Read on every request.
    pub trusted: bool,
    /// This worker's name in the poll's lease (random per VM).
    pub nonce: u64,
    /// The feed state's epoch and log version this worker has applied.
    epoch: u64,
    seq: u64,
    revoked_before: u64,
    /// Revoked tokens, with when they are forgotten.
    tokens: HashMap<TokenHash, u64>,
    /// Offboarded clients: (issued before, retain until).
    clients: HashMap<String, (u64, u64)>,
    /// When (Unix seconds) forgotten events were last pruned.
    pruned_at: u64,
    /// This worker's root context has a feed or key set call out.
    pub polling: Option<PollCall>,
    /// Milliseconds since the feed last answered, as of the last tick (`None`: never).
    pub lag_ms: Option<u64>,
    /// The last poll found a key the key set lacks: the next claim fetches the key set first.
    pub refetch_keys: bool,
    /// The key set was fetched for such a key: if the next poll's SET still names an unknown
    /// key, the SET is refused.
    pub refetched_for_key: bool,
}

/// What the recorded events say of a cached entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Good,
    /// An event names its token: refused.
    Revoked,
    /// Checked before events were lost (the log overflowed or was lost), or a token whose client
    /// is unknown while a client is offboarded: introspected again.
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

/// A random number from the host (WASI `random_get`, through the standard library's hasher
/// seed): no crate needed for one number per VM.
fn random_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish().max(1)
}

impl Revocations {
    pub fn new(feed: Option<&Revocation>) -> Revocations {
        Revocations {
            trusted: feed.is_none(),
            nonce: random_nonce(),
            epoch: 0,
            seq: 0,
            revoked_before: 0,
            tokens: HashMap::new(),
            clients: HashMap::new(),
            pruned_at: 0,
            polling: None,
            lag_ms: None,
            refetch_keys: false,
            refetched_for_key: false,
        }
    }

    /// What the recorded events say of a cached entry.
    pub fn standing(&self, entry: &Entry) -> Standing {
        let TokenState::Active(t) = &entry.state else {
            return Standing::Good;
        };
        if self.tokens.contains_key(&t.token_hash) {
            return Standing::Revoked;
        }
        // A token whose client is offboarded goes unless it was issued after the event's time
        // (an `iat` the answer did not give counts as before).
        match &t.client_id {
            Some(c) => {
                let offboarded = self
                    .clients
                    .get(c)
                    .is_some_and(|(before, _)| t.issued_at.is_none_or(|iat| iat < *before));
                if offboarded {
                    return Standing::Revoked;
                }
            }
            None if !self.clients.is_empty() => return Standing::Unsure,
            None => {}
        }
        if self.revoked_before > 0 && t.checked_at <= self.revoked_before {
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
    /// the log only then), takes out the cache entries they revoke, and decides whether the
    /// cache is trusted until the next tick.
    pub fn sync(
        &mut self,
        r: &Revocation,
        shared: &RevocationStore,
        store: &dyn SharedStore,
        local: &mut LocalCache,
        now_ms: u64,
    ) -> Synced {
        let now = now_ms / 1000;
        let mut synced = Synced::default();
        let (Some(feed), _) = shared.feed(store) else {
            self.trusted = false;
            return synced;
        };
        let grew = feed.seq != self.seq
            || feed.epoch != self.epoch
            || feed.revoked_before != self.revoked_before;
        let mut consistent = true;
        if grew {
            match shared.log(store, feed.epoch) {
                // The log may be ahead of the state (written first), never behind it.
                Some((log, _)) if log.seq >= feed.seq => {
                    let since = if feed.epoch == self.epoch {
                        self.seq
                    } else {
                        0
                    };
                    for (_, event) in log.events.iter().filter(|(seq, _)| *seq > since) {
                        self.apply(event);
                    }
                    self.epoch = feed.epoch;
                    self.seq = feed.seq;
                    self.revoked_before = feed.revoked_before;
                    let taken = local.take(|e| self.standing(e) != Standing::Good);
                    let (revoked, unsure): (Vec<_>, Vec<_>) = taken
                        .into_iter()
                        .partition(|e| self.standing(e) == Standing::Revoked);
                    synced.revoked = revoked;
                    synced.unsure = unsure.len();
                }
                // No events yet in this epoch: nothing to apply.
                None if feed.seq == 0 => {
                    self.epoch = feed.epoch;
                    self.seq = 0;
                    self.revoked_before = feed.revoked_before;
                    let unsure = local.take(|e| self.standing(e) != Standing::Good);
                    synced.unsure = unsure.len();
                }
                _ => consistent = false,
            }
        }
        if now != self.pruned_at {
            self.pruned_at = now;
            self.tokens.retain(|_, until| *until > now);
            self.clients.retain(|_, (_, until)| *until > now);
        }
        self.lag_ms = (feed.ok_at_ms > 0).then(|| now_ms.saturating_sub(feed.ok_at_ms));
        // An answer from the future is a clock that went back: not trusted.
        let fresh = feed.ok_at_ms <= now_ms.saturating_add(1000)
            && self.lag_ms.is_some_and(|lag| lag <= r.max_staleness_ms);
        self.trusted = consistent && fresh;
        synced
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

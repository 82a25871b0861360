//! The token cache: bounded entries in proxy shared data, keyed by a hash of the token.
//!
//! Shared data is never evicted by the host, so the cache bounds itself: a token hashes to two of
//! `max_entries` fixed slots (two-choice hashing), and an insert reuses one of those two. However
//! many distinct tokens arrive, at most `max_entries` keys exist. Time is always passed in.

use crate::binding::Thumbprint;
use crate::jwks::KeySet;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// The host's shared data, as the cache needs it. `cas` is the host's compare-and-swap token.
pub trait SharedStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)>;
    /// Returns false when the write lost a race (CAS mismatch) or failed.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// SHA-256 over namespace, configuration fingerprint and token: the only form of the token kept.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct TokenKey(pub [u8; 32]);

/// Derives token keys. Namespace and fingerprint are hashed once, padded with zeros to a whole
/// SHA-256 block (their lengths come first, so the padding is unambiguous): a token of up to 47
/// bytes then costs one block on every request.
#[derive(Clone)]
pub struct KeyDeriver(Sha256);

impl KeyDeriver {
    pub fn new(namespace: &str, fingerprint: &str) -> Self {
        let mut prefix = Vec::new();
        for part in [namespace, fingerprint] {
            prefix.extend_from_slice(&(part.len() as u64).to_le_bytes());
            prefix.extend_from_slice(part.as_bytes());
        }
        prefix.resize(prefix.len().div_ceil(64) * 64, 0);
        KeyDeriver(Sha256::new_with_prefix(prefix))
    }

    #[inline]
    pub fn key(&self, token: &str) -> TokenKey {
        let mut h = self.0.clone();
        h.update((token.len() as u64).to_le_bytes());
        h.update(token.as_bytes());
        TokenKey(h.finalize().into())
    }
}

impl TokenKey {
    /// The key a `KeyDeriver` for namespace and fingerprint gives `token` (tests build keys this way).
    #[cfg(test)]
    pub fn new(namespace: &str, fingerprint: &str, token: &str) -> Self {
        KeyDeriver::new(namespace, fingerprint).key(token)
    }

    /// The two slots this key may live in.
    fn slots(&self, max_entries: u32) -> [u32; 2] {
        let a = u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]);
        let b = u32::from_le_bytes([self.0[4], self.0[5], self.0[6], self.0[7]]);
        [a % max_entries, b % max_entries]
    }
}

/// How an active token is bound to its holder (RFC 7800 `cnf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Binding {
    /// No confirmation method: a bearer token.
    #[default]
    Unbound,
    /// `x5t#S256`: the SHA-256 thumbprint of the client certificate (RFC 8705).
    Certificate(Thumbprint),
    /// A confirmation method certbound cannot check (`jkt` of DPoP, `jwk`, …), alone or beside
    /// `x5t#S256`: the token is refused, never taken for a bearer token.
    Unverifiable,
}

/// What is known about an active token once introspected and verified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActiveToken {
    pub cnf: Binding,
    /// Space-separated, as in the token's `scope`.
    pub scope: String,
    pub client_id: Option<String>,
    pub jti: Option<String>,
    /// The upstream's `Authorization` (`Bearer <JWT>`), ready to set; `None` keeps the client's.
    pub forward_authorization: Option<String>,
    /// (lower-case header name, value) set on the upstream request.
    pub headers: Vec<(String, String)>,
    /// What revocation events name (`crate::revocation`): the token's hash, its `iat`, and when
    /// the identity server vouched for it (Unix seconds).
    pub token_hash: TokenHash,
    pub issued_at: Option<u64>,
    pub checked_at: u64,
}

/// The first 24 bytes of SHA-256 over the token: how the identity server's revocation events
/// name a token (32 base64url characters), and the phantom JWT's `jti`. It cannot be turned back
/// into the token.
pub type TokenHash = [u8; 24];

// Entries live behind an `Rc`, one per token: boxing the large variant would only add an
// allocation per miss.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState {
    Active(ActiveToken),
    Inactive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: TokenKey,
    /// Unix seconds; at or after this instant the entry is a miss.
    pub expires_at: u64,
    /// Until when (Unix seconds) the entry may still decide a request while the identity server
    /// is unavailable (`cache.stale_if_error_seconds`); `expires_at` when it may not.
    pub stale_until: u64,
    pub state: TokenState,
}

/// Unix time at which a positive entry expires: min(token exp, max-age, configured maximum).
/// `None` when the token is already expired or the answer must not be cached.
pub fn positive_expiry(
    now: u64,
    exp: Option<u64>,
    max_age: Option<u64>,
    max_ttl: u64,
) -> Option<u64> {
    let mut ttl = max_ttl;
    if let Some(exp) = exp {
        ttl = ttl.min(exp.checked_sub(now)?);
    }
    if let Some(age) = max_age {
        ttl = ttl.min(age);
    }
    (ttl > 0).then(|| now.saturating_add(ttl))
}

/// What makes a value in shared data this configuration's own: an HMAC-SHA-256 keyed by the
/// configuration's fingerprint and the introspection client's secret. Another plugin sharing the
/// `vm_id` cannot forge an entry without the secret, and a value written under another
/// configuration is simply not there.
pub struct Seal(Hmac<Sha256>);

const SEAL_LEN: usize = 32;

impl Seal {
    pub fn new(fingerprint: &str, secret: &str) -> Seal {
        let mut key = Sha256::new_with_prefix(b"certbound shared-data seal 1");
        for part in [fingerprint, secret] {
            key.update((part.len() as u64).to_le_bytes());
            key.update(part.as_bytes());
        }
        // A key of SHA-256's block size, zero-padded as HMAC pads any shorter key: the
        // infallible constructor, no error to handle.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&key.finalize());
        Seal(<Hmac<Sha256> as KeyInit>::new(&block.into()))
    }

    /// `value` with its MAC appended.
    pub fn seal(&self, mut value: Vec<u8>) -> Vec<u8> {
        let mut mac = self.0.clone();
        mac.update(&value);
        value.extend_from_slice(&mac.finalize().into_bytes());
        value
    }

    /// The value of `sealed` if its MAC is this seal's (compared in constant time).
    pub fn open<'a>(&self, sealed: &'a [u8]) -> Option<&'a [u8]> {
        let (value, tag) = sealed.split_at_checked(sealed.len().checked_sub(SEAL_LEN)?)?;
        let mut mac = self.0.clone();
        mac.update(value);
        mac.verify_slice(tag).ok().map(|_| value)
    }
}

/// The token cache in shared data. Its keys do not depend on the configuration: however often the
/// proxy is reconfigured, at most `max_entries` slots exist per namespace (an entry made under an
/// old configuration is a miss, since its token key differs, and is overwritten like an expired
/// one).
pub struct TokenCache<'a> {
    pub namespace: &'a str,
    pub seal: &'a Seal,
    pub max_entries: u32,
}

impl TokenCache<'_> {
    fn slot_key(&self, slot: u32) -> String {
        format!("{}/token/{slot}", self.namespace)
    }

    fn read(&self, store: &dyn SharedStore, slot: &str) -> Option<(Option<Entry>, Option<u32>)> {
        let (bytes, cas) = store.get(slot)?;
        Some((self.seal.open(&bytes).and_then(decode), cas))
    }

    /// The live entry for `key`, if any.
    pub fn lookup(&self, store: &dyn SharedStore, key: &TokenKey, now: u64) -> Option<Entry> {
        key.slots(self.max_entries).into_iter().find_map(|slot| {
            let (entry, _) = self.read(store, &self.slot_key(slot))?;
            entry.filter(|e| e.key == *key && e.expires_at > now)
        })
    }

    /// Every entry for `key` (in either slot) that may still decide while the identity server is
    /// down (`Entry::stale_until`).
    pub fn stale_entries(&self, store: &dyn SharedStore, key: &TokenKey, now: u64) -> Vec<Entry> {
        key.slots(self.max_entries)
            .into_iter()
            .filter_map(|slot| {
                let (entry, _) = self.read(store, &self.slot_key(slot))?;
                entry.filter(|e| e.key == *key && e.stale_until > now)
            })
            .collect()
    }

    /// Stores `entry` in one of its two slots: the one it already holds, else a free or expired
    /// one, else the one whose occupant expires first. Losing a race to another worker is fine.
    pub fn insert(&self, store: &dyn SharedStore, entry: &Entry, now: u64) {
        let mut best: Option<(u64, String, Option<u32>)> = None;
        for slot in entry.key.slots(self.max_entries) {
            let key = self.slot_key(slot);
            let (rank, cas) = match self.read(store, &key) {
                // The slot this key holds is always the one rewritten: an answer replaces the
                // older one (an inactive answer must not leave a positive one in the other slot).
                Some((Some(old), cas)) if old.key == entry.key => {
                    store.set(&key, &self.seal.seal(encode(entry)), cas);
                    return;
                }
                None => (0, None),
                Some((Some(old), cas)) if old.key != entry.key && old.expires_at > now => {
                    (old.expires_at, cas)
                }
                // Expired, corrupt, or another configuration's.
                Some((_, cas)) => (0, cas),
            };
            if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
                best = Some((rank, key, cas));
            }
        }
        if let Some((_, key, cas)) = best {
            store.set(&key, &self.seal.seal(encode(entry)), cas);
        }
    }
}

/// This VM's own copy of recently used entries, in front of shared data: a hit here costs no
/// host call and no decoding. Bounded: when full, it starts over (shared data still has them).
pub struct LocalCache {
    map: HashMap<TokenKey, Rc<Entry>, BuildHasherDefault<KeyHasher>>,
    capacity: usize,
}

impl LocalCache {
    pub fn new(capacity: usize) -> Self {
        LocalCache {
            map: HashMap::default(),
            capacity: capacity.max(1),
        }
    }

    #[inline]
    pub fn get(&self, key: &TokenKey, now: u64) -> Option<Rc<Entry>> {
        self.map.get(key).filter(|e| e.expires_at > now).cloned()
    }

    pub fn put(&mut self, entry: Rc<Entry>) {
        if self.map.len() >= self.capacity && !self.map.contains_key(&entry.key) {
            self.map.clear();
        }
        self.map.insert(entry.key, entry);
    }

    /// Takes out the entries `take` accepts.
    pub fn take(&mut self, mut take: impl FnMut(&Entry) -> bool) -> Vec<Rc<Entry>> {
        let keys: Vec<TokenKey> = self
            .map
            .iter()
            .filter(|(_, e)| take(e))
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter_map(|k| self.map.remove(k)).collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The key already is a SHA-256: its first eight bytes are a good hash as they are.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
}

// ---- a compact binary encoding: a cache hit decodes it on every request ----

const VERSION: u8 = 4;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

pub fn encode(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(VERSION);
    out.extend_from_slice(&e.key.0);
    out.extend_from_slice(&e.expires_at.to_le_bytes());
    out.extend_from_slice(&e.stale_until.to_le_bytes());
    match &e.state {
        TokenState::Inactive => out.push(0),
        TokenState::Active(t) => {
            out.push(1);
            match &t.cnf {
                Binding::Unbound => out.push(0),
                Binding::Certificate(c) => {
                    out.push(1);
                    out.extend_from_slice(&c.0);
                }
                Binding::Unverifiable => out.push(2),
            }
            put_str(&mut out, &t.scope);
            put_opt(&mut out, t.client_id.as_deref());
            put_opt(&mut out, t.jti.as_deref());
            put_opt(&mut out, t.forward_authorization.as_deref());
            out.extend_from_slice(&(t.headers.len() as u32).to_le_bytes());
            for (name, value) in &t.headers {
                put_str(&mut out, name);
                put_str(&mut out, value);
            }
            out.extend_from_slice(&t.token_hash);
            match t.issued_at {
                Some(iat) => {
                    out.push(1);
                    out.extend_from_slice(&iat.to_le_bytes());
                }
                None => out.push(0),
            }
            out.extend_from_slice(&t.checked_at.to_le_bytes());
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn string(&mut self) -> Option<String> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
    fn opt(&mut self) -> Option<Option<String>> {
        match self.byte()? {
            0 => Some(None),
            1 => Some(Some(self.string()?)),
            _ => None,
        }
    }
}

/// `None` for anything that is not a well-formed entry of this version: a miss, never a panic.
pub fn decode(bytes: &[u8]) -> Option<Entry> {
    let mut r = Reader(bytes);
    if r.byte()? != VERSION {
        return None;
    }
    let key = TokenKey(r.array()?);
    let expires_at = u64::from_le_bytes(r.array()?);
    let stale_until = u64::from_le_bytes(r.array()?);
    let state = match r.byte()? {
        0 => TokenState::Inactive,
        1 => {
            let cnf = match r.byte()? {
                0 => Binding::Unbound,
                1 => Binding::Certificate(Thumbprint(r.array()?)),
                2 => Binding::Unverifiable,
                _ => return None,
            };
            let scope = r.string()?;
            let client_id = r.opt()?;
            let jti = r.opt()?;
            let forward_authorization = r.opt()?;
            let count = u32::from_le_bytes(r.array()?) as usize;
            let mut headers = Vec::with_capacity(count.min(16));
            for _ in 0..count {
                headers.push((r.string()?, r.string()?));
            }
            let token_hash = r.array()?;
            let issued_at = match r.byte()? {
                0 => None,
                1 => Some(u64::from_le_bytes(r.array()?)),
                _ => return None,
            };
            let checked_at = u64::from_le_bytes(r.array()?);
            TokenState::Active(ActiveToken {
                cnf,
                scope,
                client_id,
                jti,
                forward_authorization,
                headers,
                token_hash,
                issued_at,
                checked_at,
            })
        }
        _ => return None,
    };
    r.0.is_empty().then_some(Entry {
        key,
        expires_at,
        stale_until,
        state,
    })
}

// ---- the key set's copy in shared data ----

/// The key set in shared data, shared by every worker: `fetched_at` (u64 LE) then the raw JWKS,
/// sealed. One key per namespace, whatever the configuration.
pub struct JwksStore<'a> {
    pub namespace: &'a str,
    pub seal: &'a Seal,
}

impl JwksStore<'_> {
    fn key(&self) -> String {
        format!("{}/jwks", self.namespace)
    }

    /// The stored key set and when it was fetched.
    pub fn load(&self, store: &dyn SharedStore) -> Option<(u64, KeySet)> {
        let (sealed, _) = store.get(&self.key())?;
        let bytes = self.seal.open(&sealed)?;
        let (time, raw) = bytes.split_at_checked(8)?;
        let fetched_at = u64::from_le_bytes(time.try_into().ok()?);
        Some((fetched_at, KeySet::parse(raw).ok()?))
    }

    pub fn save(&self, store: &dyn SharedStore, now: u64, raw: &[u8]) {
        let mut value = Vec::with_capacity(8 + raw.len());
        value.extend_from_slice(&now.to_le_bytes());
        value.extend_from_slice(raw);
        store.set(&self.key(), &self.seal.seal(value), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    struct MemoryStore(RefCell<HashMap<String, (Vec<u8>, u32)>>);

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
            self.0
                .borrow()
                .get(key)
                .map(|(v, cas)| (v.clone(), Some(*cas)))
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            let mut map = self.0.borrow_mut();
            let current = map.get(key).map(|(_, c)| *c);
            if cas.is_some() && cas != current {
                return false;
            }
            map.insert(key.to_string(), (value.to_vec(), current.unwrap_or(0) + 1));
            true
        }
    }

    fn seal() -> &'static Seal {
        static SEAL: std::sync::OnceLock<Seal> = std::sync::OnceLock::new();
        SEAL.get_or_init(|| Seal::new("0011223344556677", "s3cret"))
    }

    fn cache(max_entries: u32) -> TokenCache<'static> {
        TokenCache {
            namespace: "certbound",
            seal: seal(),
            max_entries,
        }
    }

    fn active(token: &str, expires_at: u64) -> Entry {
        Entry {
            key: TokenKey::new("certbound", "0011223344556677", token),
            expires_at,
            stale_until: expires_at + 30,
            state: TokenState::Active(ActiveToken {
                cnf: Binding::Certificate(Thumbprint([7; 32])),
                scope: "transactions read".into(),
                client_id: Some("partner-client".into()),
                jti: Some("j-1".into()),
                forward_authorization: Some("Bearer eyJ.eyJ.sig".into()),
                headers: vec![("x-certbound-client-id".into(), "partner-client".into())],
                token_hash: [5; 24],
                issued_at: Some(900),
                checked_at: 950,
            }),
        }
    }

    #[test]
    fn an_answer_replaces_the_older_one_in_the_slot_it_holds() {
        // `key` may live in slots 0 and 1, `other` in 0 and 2 (of 4).
        let with_slots = |a: u8, b: u8, fill: u8| {
            let mut k = [fill; 32];
            k[..4].copy_from_slice(&u32::from(a).to_le_bytes());
            k[4..8].copy_from_slice(&u32::from(b).to_le_bytes());
            TokenKey(k)
        };
        let key = with_slots(0, 1, 9);
        let other = with_slots(0, 2, 8);
        let store = MemoryStore::default();
        let c = cache(4);
        // `other` holds slot 0, so the positive entry goes to slot 1.
        c.insert(
            &store,
            &Entry {
                key: other,
                ..active("o", 100)
            },
            0,
        );
        c.insert(
            &store,
            &Entry {
                key,
                stale_until: 400,
                ..active("k", 100)
            },
            0,
        );
        // Later `other` has expired (slot 0 is free): the inactive answer must still replace the
        // positive entry in slot 1, not sit beside it in slot 0.
        let inactive = Entry {
            key,
            expires_at: 200,
            stale_until: 250,
            state: TokenState::Inactive,
        };
        c.insert(&store, &inactive, 150);
        let known = c.stale_entries(&store, &key, 210);
        assert_eq!(known, vec![inactive]);
    }

    #[test]
    fn entries_round_trip_through_the_encoding() {
        let e = active("tok", 1000);
        assert_eq!(decode(&encode(&e)), Some(e));
        let inactive = Entry {
            key: TokenKey([1; 32]),
            expires_at: 5,
            stale_until: 5,
            state: TokenState::Inactive,
        };
        assert_eq!(decode(&encode(&inactive)), Some(inactive));
        let bytes = encode(&active("tok", 1000));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "truncated at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode(&extra), None);
        let mut other_version = bytes;
        other_version[0] = 9;
        assert_eq!(decode(&other_version), None);
    }

    #[test]
    fn the_key_hides_the_token_and_depends_on_namespace_and_fingerprint() {
        let a = TokenKey::new("certbound", "fp", "secret-token");
        assert_ne!(a, TokenKey::new("other", "fp", "secret-token"));
        assert_ne!(a, TokenKey::new("certbound", "fp2", "secret-token"));
        assert_ne!(a, TokenKey::new("certbound", "fp", "secret-token2"));
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(TokenKey::new("ab", "c", "t"), TokenKey::new("a", "bc", "t"));
        // The zero padding after the prefix cannot be confused with a longer fingerprint.
        assert_ne!(TokenKey::new("a", "b", "t"), TokenKey::new("a", "b\0", "t"));
        let deriver = KeyDeriver::new("certbound", "fp");
        assert_eq!(deriver.key("secret-token"), a);
        assert_eq!(deriver.key("secret-token"), deriver.key("secret-token"));
        let store = MemoryStore::default();
        cache(16).insert(&store, &active("secret-token", 100), 0);
        for (k, (v, _)) in store.0.borrow().iter() {
            assert!(!k.contains("secret-token"));
            assert!(!v.windows(12).any(|w| w == b"secret-token"));
        }
    }

    #[test]
    fn a_stored_entry_is_a_hit_until_it_expires() {
        let store = MemoryStore::default();
        let c = cache(100);
        let e = active("tok", 1000);
        assert_eq!(c.lookup(&store, &e.key, 0), None);
        c.insert(&store, &e, 0);
        assert_eq!(c.lookup(&store, &e.key, 999), Some(e.clone()));
        assert_eq!(c.lookup(&store, &e.key, 1000), None);
        assert_eq!(
            c.lookup(&store, &TokenKey::new("certbound", "x", "tok"), 0),
            None
        );
    }

    #[test]
    fn memory_stays_bounded_however_many_tokens_arrive() {
        let store = MemoryStore::default();
        let c = cache(64);
        for i in 0..10_000 {
            c.insert(&store, &active(&format!("token-{i}"), 1_000_000), 0);
        }
        assert!(store.0.borrow().len() <= 64);
        // Recently inserted tokens are still found.
        let last = active("token-9999", 1_000_000);
        assert_eq!(c.lookup(&store, &last.key, 1), Some(last));
    }

    #[test]
    fn two_choices_keep_a_working_set_that_fits() {
        // 300 tokens in 10 000 slots: with two choices, all stay cached.
        let store = MemoryStore::default();
        let c = cache(10_000);
        let entries: Vec<Entry> = (0..300).map(|i| active(&format!("t{i}"), 500)).collect();
        for e in &entries {
            c.insert(&store, e, 0);
        }
        let hits = entries
            .iter()
            .filter(|e| c.lookup(&store, &e.key, 1).is_some())
            .count();
        assert_eq!(hits, 300);
    }

    #[test]
    fn an_insert_replaces_the_occupant_that_expires_first() {
        let store = MemoryStore::default();
        let c = cache(1); // both choices are slot 0
        c.insert(&store, &active("a", 100), 0);
        c.insert(&store, &active("b", 50), 0);
        let b = active("b", 50);
        assert_eq!(c.lookup(&store, &b.key, 0), Some(b));
        assert_eq!(c.lookup(&store, &active("a", 100).key, 0), None);
    }

    #[test]
    fn reconfigurations_leave_no_slots_behind_and_read_nothing_of_each_other() {
        let store = MemoryStore::default();
        let seals: Vec<Seal> = (0..20)
            .map(|n| Seal::new(&format!("fingerprint-{n}"), "s3cret"))
            .collect();
        for (n, seal) in seals.iter().enumerate() {
            let c = TokenCache {
                namespace: "certbound",
                seal,
                max_entries: 64,
            };
            for i in 0..200 {
                let key = TokenKey::new("certbound", &format!("fingerprint-{n}"), &format!("t{i}"));
                let e = Entry {
                    key,
                    ..active("x", 1_000_000)
                };
                c.insert(&store, &e, 0);
            }
        }
        assert!(
            store.0.borrow().len() <= 64,
            "{} slots",
            store.0.borrow().len()
        );
        // An entry of the first configuration, copied into place, is no hit for the last one.
        let first = TokenCache {
            namespace: "certbound",
            seal: &seals[0],
            max_entries: 64,
        };
        let e = active("shared-token", 1_000_000);
        first.insert(&store, &e, 0);
        let last = TokenCache {
            namespace: "certbound",
            seal: &seals[19],
            max_entries: 64,
        };
        assert_eq!(last.lookup(&store, &e.key, 1), None);
        assert_eq!(first.lookup(&store, &e.key, 1), Some(e));
    }

    #[test]
    fn an_entry_without_this_configurations_seal_is_a_miss() {
        let store = MemoryStore::default();
        let c = cache(1);
        let e = active("a", 100);
        // Well-formed, but written by someone without the secret.
        let forged = Seal::new("0011223344556677", "guessed").seal(encode(&e));
        store.set(&c.slot_key(0), &forged, None);
        assert_eq!(c.lookup(&store, &e.key, 0), None);
        let mut unsealed = encode(&e);
        unsealed.extend_from_slice(&[0; 32]);
        store.set(&c.slot_key(0), &unsealed, None);
        assert_eq!(c.lookup(&store, &e.key, 0), None);
        c.insert(&store, &e, 0);
        assert_eq!(c.lookup(&store, &e.key, 0), Some(e));
        // The key set likewise.
        let keys = JwksStore {
            namespace: "certbound",
            seal: seal(),
        };
        let jwks = certbound_jose::testing::jwks_json(&[certbound_jose::testing::ps256()]);
        keys.save(&store, 5, jwks.as_bytes());
        assert_eq!(keys.load(&store).map(|(at, _)| at), Some(5));
        let other = Seal::new("0011223344556677", "other");
        let theirs = JwksStore {
            namespace: "certbound",
            seal: &other,
        };
        assert!(theirs.load(&store).is_none());
    }

    #[test]
    fn corrupt_slots_are_misses_and_get_overwritten() {
        let store = MemoryStore::default();
        let c = cache(1);
        store.set(&c.slot_key(0), b"garbage", None);
        let e = active("a", 100);
        assert_eq!(c.lookup(&store, &e.key, 0), None);
        c.insert(&store, &e, 0);
        assert_eq!(c.lookup(&store, &e.key, 0), Some(e));
    }

    #[test]
    fn the_local_cache_serves_live_entries_and_stays_bounded() {
        let mut local = LocalCache::new(3);
        let a = Rc::new(active("a", 100));
        local.put(a.clone());
        assert_eq!(local.get(&a.key, 99), Some(a.clone()));
        assert_eq!(local.get(&a.key, 100), None);
        for t in ["b", "c", "d", "e"] {
            local.put(Rc::new(active(t, 100)));
            assert!(local.len() <= 3);
        }
        assert!(!local.is_empty());
        let e = active("e", 100);
        assert_eq!(local.get(&e.key, 0).as_deref(), Some(&e));
    }

    #[test]
    fn positive_expiry_is_the_smallest_bound() {
        let table = [
            // now, exp, max-age, max_ttl, expected
            (100, Some(400), None, 300, Some(400)),
            (100, Some(150), None, 300, Some(150)),
            (100, Some(400), Some(20), 300, Some(120)),
            (100, None, None, 300, Some(400)),
            (100, Some(100), None, 300, None),
            (100, Some(50), None, 300, None),
            (100, Some(400), Some(0), 300, None),
        ];
        for (now, exp, age, max, expected) in table {
            assert_eq!(
                positive_expiry(now, exp, age, max),
                expected,
                "{now} {exp:?} {age:?} {max}"
            );
        }
    }
}

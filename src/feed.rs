//! The revocation feed's poll from the root context's timer: whether this worker polls now (the
//! lease), the call (the feed, or first the key set its events are verified with), and what its
//! answer does: verified events recorded in shared data and applied to this worker's cache.
//! What events are and what they revoke is `crate::revocation`'s.

use crate::cache::{Seal, SharedStore};
use crate::config::{Config, Revocation};
use crate::flow::{self, Call, CallAnswer, CallKind};
use crate::jwks::{self, KeySet};
use crate::metrics::Metric;
use crate::revocation::PollCall;
use crate::revocation::{parse_feed, revoked_entry, verify_sets, Page, Refetch, RevocationStore};
use crate::worker::{State, KEY_SET_BACKOFF_SECONDS};
use std::rc::Rc;

fn store_of<'a>(cfg: &'a Config, seal: &'a Seal) -> RevocationStore<'a> {
    RevocationStore {
        namespace: &cfg.cache.namespace,
        seal,
    }
}

/// The events asked for per poll: a page the default `max_body_bytes` holds (a PS256 SET is
/// about 800 bytes); with more waiting, the next poll goes out on the next tick.
pub const PAGE: usize = 50;

/// The worker's tick (`now_ms`: Unix milliseconds): applies what other workers recorded, then,
/// if the poll is due and this worker claims it, the call to send (the feed, or first the key
/// set its events are verified with).
pub fn on_tick(cfg: &Config, st: &mut State, store: &dyn SharedStore, now_ms: u64) -> Option<Call> {
    let r = cfg.revocation.as_ref()?;
    apply_recorded(cfg, r, st, store, now_ms);
    let nonce = st.revocations.nonce;
    if st.revocations.polling.is_some() || !store_of(cfg, &st.seal).claim(store, r, now_ms, nonce) {
        return None;
    }
    let now = now_ms / 1000;
    let have_keys = flow::key_set(cfg, st, store, &r.rules, now).is_some();
    if !have_keys || st.revocations.refetch_keys {
        let backing_off = st
            .key_set_failed_at
            .is_some_and(|t| now < t.saturating_add(KEY_SET_BACKOFF_SECONDS));
        if backing_off {
            store_of(cfg, &st.seal).failed(store, r, now_ms, nonce);
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

/// `GET <path>?after=<cursor>&limit=PAGE` (no cursor: from the beginning).
fn feed_call(r: &Revocation, cursor: Option<&str>) -> Call {
    let sep = if r.feed.path.contains('?') { '&' } else { '?' };
    let path = match cursor {
        Some(c) => format!("{}{sep}after={c}&limit={PAGE}", r.feed.path),
        None => format!("{}{sep}limit={PAGE}", r.feed.path),
    };
    Call {
        kind: CallKind::RevocationFeed,
        cluster: r.feed.cluster.clone(),
        headers: {
            let mut headers = r.feed.pseudo_headers("GET", path);
            headers.push(("accept", "application/json".to_string()));
            headers
        },
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
        let nonce = st.revocations.nonce;
        store_of(cfg, &st.seal).failed(store, r, now_ms, nonce);
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
    let nonce = st.revocations.nonce;
    let mut log = Vec::new();
    let outcome = match st.revocations.polling.take() {
        None => return log,
        Some(PollCall::KeySet) => match (answer.status, answer.body) {
            (Some(200), Some(body)) => match KeySet::parse(&body) {
                Ok(keys) => {
                    flow::jwks_store(cfg, &st.seal).save(store, now, &body);
                    st.keys = Some((now, Rc::new(keys)));
                    st.key_set_failed_at = None;
                    st.revocations.refetched_for_key = st.revocations.refetch_keys;
                    st.revocations.refetch_keys = false;
                    // The poll the key set was fetched for goes out on the next tick.
                    store_of(cfg, &st.seal).release(store, nonce);
                    return log;
                }
                Err(why) => Err(why),
            },
            _ => {
                st.key_set_failed_at = Some(now);
                Err("the key set could not be fetched")
            }
        },
        Some(PollCall::Feed) => on_feed(cfg, r, st, store, answer, now_ms, &mut log),
    };
    if let Err(why) = outcome {
        store_of(cfg, &st.seal).failed(store, r, now_ms, nonce);
        st.tally.count(Metric::RevocationPollFailure);
        log.push(format!("revocation feed poll failed: {why}"));
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
    let nonce = st.revocations.nonce;
    let body = match (answer.status, answer.body) {
        (Some(200), Some(body)) => body,
        (Some(200), None) => return Err("the feed answer is too large"),
        (Some(_), _) => return Err("the feed answered with an error status"),
        (None, _) => return Err("the feed is unreachable"),
    };
    let (sets, next) = parse_feed(&body)?;
    let Some((fetched_at, keys)) = flow::key_set(cfg, st, store, &r.rules, now) else {
        st.revocations.refetch_keys = true;
        store_of(cfg, &st.seal).release(store, nonce);
        return Ok(());
    };
    let refetch = if std::mem::take(&mut st.revocations.refetched_for_key) {
        Refetch::JustDone
    } else if jwks::may_refetch(fetched_at, now, r.rules.jwks.min_refetch_interval_seconds) {
        Refetch::Allowed
    } else {
        Refetch::NotYet
    };
    let verified = verify_sets(&sets, &keys, r, now, refetch);
    if verified.unknown_key {
        st.revocations.refetch_keys = true;
        store_of(cfg, &st.seal).release(store, nonce);
        return Ok(());
    }
    if let Some(why) = verified.retry {
        return Err(why);
    }
    for why in &verified.rejected {
        log.push(format!("revocation event refused: {why}"));
    }
    st.tally
        .add(Metric::RevocationRejected, verified.rejected.len() as u64);
    let page = Page {
        events: verified.events,
        next,
        more: sets.len() >= PAGE,
    };
    let recorded = store_of(cfg, &st.seal)
        .record(store, r, page, now_ms, nonce)
        .ok_or("the poll was taken over, or its record lost a race")?;
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

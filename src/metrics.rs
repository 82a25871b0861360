//! The filter's counters (`certbound.*` in Envoy's `/stats`): what is counted, kept as a per-worker
//! tally that the root context hands to the host (`Root::flush_metrics`).

use crate::deny::{DenyReason, REASONS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Allowed,
    Denied(DenyReason),
    CacheHit,
    CacheMiss,
    IntrospectionCall,
    IntrospectionFailure,
    JwksFetch,
    /// A request allowed on an expired entry while the identity server was unavailable.
    StaleAnswer,
    /// A poll of the revocation feed that went out (one worker polls at a time).
    RevocationPoll,
    /// A poll that failed (unreachable, timeout, not 200, unreadable): the feed's lag grows.
    RevocationPollFailure,
    /// A verified revocation event recorded in shared data (once per event, by the poller).
    RevocationApplied,
    /// A revocation event refused: not signed by the identity server, or not one certbound knows.
    RevocationRejected,
    /// A cached entry dropped because an event revoked its token (by each worker that held it).
    RevokedEntryDropped,
}

/// The counters other than the denials, in the order of their slots after the denials'.
const OTHERS: [&str; 12] = [
    "requests_allowed",
    "cache_hits",
    "cache_misses",
    "introspection_calls",
    "introspection_failures",
    "jwks_fetches",
    "stale_answers",
    "revocation_polls",
    "revocation_poll_failures",
    "revocations_applied",
    "revocation_events_rejected",
    "revocation_entries_dropped",
];

/// The one gauge: milliseconds since the revocation feed last answered, as each worker's tick
/// last saw it (every worker sets the same value).
pub const FEED_LAG_GAUGE: &str = "certbound.revocation_feed_lag_ms";

/// How many counters there are.
pub const COUNT: usize = REASONS.len() + OTHERS.len();

impl Metric {
    /// This counter's slot in a `Tally`.
    fn slot(self) -> usize {
        let other = |i: usize| REASONS.len() + i;
        match self {
            Metric::Denied(reason) => reason.index(),
            Metric::Allowed => other(0),
            Metric::CacheHit => other(1),
            Metric::CacheMiss => other(2),
            Metric::IntrospectionCall => other(3),
            Metric::IntrospectionFailure => other(4),
            Metric::JwksFetch => other(5),
            Metric::StaleAnswer => other(6),
            Metric::RevocationPoll => other(7),
            Metric::RevocationPollFailure => other(8),
            Metric::RevocationApplied => other(9),
            Metric::RevocationRejected => other(10),
            Metric::RevokedEntryDropped => other(11),
        }
    }
}

/// The name of the counter in each slot, as the host is asked to define it.
pub fn names() -> impl Iterator<Item = String> {
    let denied = REASONS
        .iter()
        .map(|r| format!("certbound.requests_denied.{}", r.metric));
    denied.chain(OTHERS.iter().map(|n| format!("certbound.{n}")))
}

/// Counts not yet handed to the host.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally([u64; COUNT]);

impl Tally {
    pub fn count(&mut self, metric: Metric) {
        self.add(metric, 1);
    }

    pub fn add(&mut self, metric: Metric, by: u64) {
        if let Some(n) = self.0.get_mut(metric.slot()) {
            *n += by;
        }
    }

    /// The counts per slot since the last take, which starts a new tally.
    pub fn take(&mut self) -> [u64; COUNT] {
        std::mem::take(&mut self.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|n| *n == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_its_own_slot_and_name() {
        let all = [
            Metric::Denied(DenyReason::MissingToken),
            Metric::Denied(DenyReason::IntrospectionBadResponse("x")),
            Metric::Allowed,
            Metric::CacheHit,
            Metric::CacheMiss,
            Metric::IntrospectionCall,
            Metric::IntrospectionFailure,
            Metric::JwksFetch,
            Metric::StaleAnswer,
            Metric::RevocationPoll,
            Metric::RevocationPollFailure,
            Metric::RevocationApplied,
            Metric::RevocationRejected,
            Metric::RevokedEntryDropped,
        ];
        let slots: std::collections::HashSet<_> = all.iter().map(|m| m.slot()).collect();
        assert_eq!(slots.len(), all.len());
        assert!(slots.iter().all(|s| *s < COUNT));
        let names: Vec<String> = names().collect();
        assert_eq!(names.len(), COUNT);
        assert_eq!(names[Metric::CacheHit.slot()], "certbound.cache_hits");
        assert_eq!(
            names[Metric::Denied(DenyReason::CertificateMismatch).slot()],
            "certbound.requests_denied.certificate_mismatch"
        );
    }

    #[test]
    fn a_tally_counts_until_taken() {
        let mut t = Tally::default();
        assert!(t.is_empty());
        t.count(Metric::CacheHit);
        t.count(Metric::CacheHit);
        t.count(Metric::Allowed);
        let counts = t.take();
        assert_eq!(counts[Metric::CacheHit.slot()], 2);
        assert_eq!(counts[Metric::Allowed.slot()], 1);
        assert!(t.is_empty());
    }
}

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
}

/// The counters other than the denials, in the order of their slots after the denials'.
const OTHERS: [&str; 7] = [
    "requests_allowed",
    "cache_hits",
    "cache_misses",
    "introspection_calls",
    "introspection_failures",
    "jwks_fetches",
    "stale_answers",
];

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
        if let Some(n) = self.0.get_mut(metric.slot()) {
            *n += 1;
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

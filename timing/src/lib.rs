//! How long each backend operation took, by backend and operation (both
//! closed sets of `&'static str` chosen by the calling crate: crypto's XFRM,
//! storage-offload's SPDK/configfs/tc/NVMe-oF, net-offload's rtnetlink and
//! devlink), as per-bucket counts the agent renders into
//! `dpu_agent_backend_operation_duration_seconds` (`Histogram::from_parts`).
//! Process-wide: one table for every backend, behind one lock held for a
//! few nanoseconds per operation.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// Upper bounds in seconds: a netlink or configfs call takes tens of
/// microseconds, an SPDK RPC a millisecond, a stuck one up to its timeout.
pub const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
    30.0,
];

/// One series: per-bucket counts (`BUCKETS.len() + 1`, the last is `+Inf`)
/// and the sum of the observed seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub counts: Vec<u64>,
    pub sum: f64,
}

type Key = (&'static str, &'static str);

static TABLE: Mutex<BTreeMap<Key, Series>> = Mutex::new(BTreeMap::new());

/// Records one operation of `backend` that took `secs`.
pub fn observe(backend: &'static str, operation: &'static str, secs: f64) {
    let secs = if secs.is_finite() && secs > 0.0 {
        secs
    } else {
        0.0
    };
    let slot = BUCKETS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(BUCKETS.len());
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let s = t.entry((backend, operation)).or_insert_with(|| Series {
        counts: vec![0; BUCKETS.len() + 1],
        sum: 0.0,
    });
    s.counts[slot] += 1;
    s.sum += secs;
}

/// Runs `f`, recording how long it took.
pub fn time<T>(backend: &'static str, operation: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    observe(backend, operation, started.elapsed().as_secs_f64());
    out
}

/// Every series so far, ordered by backend and operation.
pub fn snapshot() -> Vec<(&'static str, &'static str, Series)> {
    TABLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|((b, o), s)| (*b, *o, s.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        observe("test-backend", "op", 0.0003);
        observe("test-backend", "op", 99.0);
        observe("test-backend", "op", f64::NAN);
        let v = time("test-backend", "timed", || 7);
        assert_eq!(v, 7);
        let snap = snapshot();
        let (_, _, s) = snap
            .iter()
            .find(|(b, o, _)| *b == "test-backend" && *o == "op")
            .unwrap();
        assert_eq!(s.counts.iter().sum::<u64>(), 3);
        assert_eq!(s.counts[0], 1, "NaN counts as 0 s");
        assert_eq!(
            s.counts[BUCKETS.iter().position(|b| *b == 0.0005).unwrap()],
            1
        );
        assert_eq!(s.counts[BUCKETS.len()], 1, "+Inf");
        assert!(
            snap.iter()
                .any(|(b, o, _)| *b == "test-backend" && *o == "timed")
        );
        assert!(BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}

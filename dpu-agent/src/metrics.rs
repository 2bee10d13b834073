//! A small Prometheus histogram and the text-format helpers `/metrics` is
//! written with. Deliberately tiny (no registry, no dependency): each
//! component keeps its own [`HistogramVec`] behind its own lock and `ops`
//! renders them.
//!
//! Labels are `&'static str` only, so a label value can only come from a
//! closed set chosen in the code (a kind's path, a route template, a status
//! class, a known reason); nothing a caller sends can add a series.
//!
//! Buckets are upper bounds in seconds (or a count for [`GROUP_SIZE_BUCKETS`]),
//! chosen for the ranges measured in `BENCHMARKS.md`; `+Inf` is implied.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// API request latency: reads take ~0.6 ms (p50) to ~2 ms (p99), durable
/// writes ~60 ms (p50) to ~120 ms (p99) under load, watches return their
/// headers at once.
pub const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One reconcile: in-memory controllers take microseconds, a switch or
/// storage round trip milliseconds, a stuck backend up to its timeouts.
pub const RECONCILE_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0,
];

/// One store commit (redb write + fsync): ~0.2 ms fdatasync on a fast disk,
/// tens of ms on a slow or busy one.
pub const COMMIT_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Writes grouped into one commit: 1 when idle, up to the number of
/// concurrent writers under load.
pub const GROUP_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// One histogram: per-bucket counts (not cumulative; made cumulative when
/// rendered), the sum and the count.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `bounds.len() + 1` slots; the last one is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        // NaN and negative values (a clock step) count in the first bucket.
        let value = if value.is_finite() && value > 0.0 {
            value
        } else {
            0.0
        };
        let slot = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[slot] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// A histogram from per-bucket counts kept elsewhere (`counts` may be
    /// empty: nothing observed yet; missing slots count 0).
    pub fn from_parts(bounds: &'static [f64], counts: &[u64], sum: f64) -> Histogram {
        let mut h = Histogram::new(bounds);
        for (slot, n) in h.counts.iter_mut().zip(counts) {
            *slot = *n;
        }
        h.count = h.counts.iter().sum();
        h.sum = sum;
        h
    }

    /// `# HELP`, `# TYPE` and the series, without labels.
    pub fn render_family(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        self.render(out, name, &[]);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The `_bucket`, `_sum` and `_count` lines; `labels` are written
    /// before `le`.
    pub fn render(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let prefix = label_text(labels);
        let sep = if prefix.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, n) in self.counts.iter().enumerate() {
            cumulative += n;
            let le = match self.bounds.get(i) {
                Some(b) => format!("{b}"),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{prefix}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if prefix.is_empty() {
            String::new()
        } else {
            format!("{{{prefix}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Histograms by a fixed tuple of label values.
#[derive(Debug)]
pub struct HistogramVec<const N: usize> {
    bounds: &'static [f64],
    label_names: [&'static str; N],
    series: Mutex<BTreeMap<[&'static str; N], Histogram>>,
}

impl<const N: usize> HistogramVec<N> {
    pub const fn new(bounds: &'static [f64], label_names: [&'static str; N]) -> Self {
        HistogramVec {
            bounds,
            label_names,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, labels: [&'static str; N], value: f64) {
        if let Ok(mut s) = self.series.lock() {
            s.entry(labels)
                .or_insert_with(|| Histogram::new(self.bounds))
                .observe(value);
        }
    }

    /// A copy of one series, for tests.
    pub fn get(&self, labels: [&'static str; N]) -> Option<Histogram> {
        self.series.lock().ok()?.get(&labels).cloned()
    }

    /// `# HELP`, `# TYPE` and every series.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let Ok(s) = self.series.lock() else {
            return;
        };
        for (values, h) in s.iter() {
            let labels: Vec<(&str, &str)> = self
                .label_names
                .iter()
                .copied()
                .zip(values.iter().copied())
                .collect();
            h.render(out, name, &labels);
        }
    }
}

/// The `# HELP` and `# TYPE` lines of a family.
pub fn header(out: &mut String, name: &str, type_: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {type_}");
}

/// One sample line.
pub fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl std::fmt::Display,
) {
    let l = label_text(labels);
    if l.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{l}}} {value}");
    }
}

/// `a="x",b="y"`, values escaped as the text format requires.
fn label_text(labels: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s
}

/// A stored condition's `reason` as a metric label: its
/// [`Reason`](crate::reconcile::Reason) (the closed set controllers write),
/// or `Other` for text that is none of them (a status written by an older
/// agent).
pub fn reason_label(reason: &str) -> &'static str {
    crate::reconcile::Reason::parse(reason).map_or("Other", crate::reconcile::Reason::as_str)
}

/// `2xx` for 200..=299 and so on; `other` outside 100..=599.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Seconds since the Unix epoch, for `_timestamp_seconds` gauges.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_with_sum_and_count() {
        let h = HistogramVec::new(&[0.5, 1.0], ["kind"]);
        h.observe(["tenants"], 0.25);
        h.observe(["tenants"], 0.5);
        h.observe(["tenants"], 0.75);
        h.observe(["tenants"], 7.0);
        h.observe(["tenants"], f64::NAN);
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "Help.");
        assert_eq!(
            out,
            "# HELP x_seconds Help.\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{kind=\"tenants\",le=\"0.5\"} 3\n\
             x_seconds_bucket{kind=\"tenants\",le=\"1\"} 4\n\
             x_seconds_bucket{kind=\"tenants\",le=\"+Inf\"} 5\n\
             x_seconds_sum{kind=\"tenants\"} 8.5\n\
             x_seconds_count{kind=\"tenants\"} 5\n"
        );
    }

    #[test]
    fn unlabelled_histogram_and_escaping() {
        let h = HistogramVec::new(&[1.0], []);
        h.observe([], 2.0);
        let mut out = String::new();
        h.render(&mut out, "y", "Help.");
        assert!(
            out.contains("y_bucket{le=\"1\"} 0\ny_bucket{le=\"+Inf\"} 1\ny_sum 2\ny_count 1\n")
        );
        let mut out = String::new();
        sample(&mut out, "z", &[("a", "q\"\\\n")], 1);
        assert_eq!(out, "z{a=\"q\\\"\\\\\\n\"} 1\n");
    }

    #[test]
    fn histogram_from_parts() {
        let h = Histogram::from_parts(&[1.0, 2.0], &[1, 2, 3], 9.0);
        let mut out = String::new();
        h.render_family(&mut out, "h", "Help.");
        assert!(out.ends_with(
            "h_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 3\nh_bucket{le=\"+Inf\"} 6\nh_sum 9\nh_count 6\n"
        ));
        let empty = Histogram::from_parts(&[1.0], &[], 0.0);
        assert_eq!(empty.count(), 0);
    }

    #[test]
    fn bucket_bounds_increase() {
        for b in [
            HTTP_BUCKETS,
            RECONCILE_BUCKETS,
            COMMIT_BUCKETS,
            GROUP_SIZE_BUCKETS,
        ] {
            assert!(b.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn label_sets_are_closed() {
        assert_eq!(reason_label("SwitchUnavailable"), "SwitchUnavailable");
        assert_eq!(reason_label("anything a controller invents"), "Other");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(999), "other");
    }
}

//! Prometheus text exposition (`GET /metrics`): attestations by protocol and TEE, refusals
//! by reason, key and resource releases, and a latency histogram of handled requests by
//! endpoint. Counters are per process: a Prometheus server scrapes each replica and sums.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Counters {
    attestations: BTreeMap<(&'static str, &'static str), u64>,
    refusals: BTreeMap<&'static str, u64>,
    releases: BTreeMap<&'static str, u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// The broker's counters.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Counters)) {
        // A poisoned lock only means a panic elsewhere while counting: keep counting.
        let mut c = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut c);
    }

    /// A session attested (`protocol`: reference or rcar; `tee`: sev or snp).
    pub fn attested(&self, protocol: &'static str, tee: &'static str) {
        self.with(|c| *c.attestations.entry((protocol, tee)).or_default() += 1);
    }

    /// A request refused, by the refusal's kind.
    pub fn refused(&self, reason: &'static str) {
        self.with(|c| *c.refusals.entry(reason).or_default() += 1);
    }

    /// A key (reference) or resource (RCAR) released.
    pub fn released(&self, protocol: &'static str) {
        self.with(|c| *c.releases.entry(protocol).or_default() += 1);
    }

    /// A request to `endpoint` handled in `took` (waiting for a handler slot included).
    pub fn observe(&self, endpoint: &'static str, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.with(|c| {
            let h = c.latency.entry(endpoint).or_default();
            if let Some(n) = h.counts.get_mut(bucket) {
                *n += 1;
            }
            h.sum += secs;
            h.count += 1;
        });
    }

    /// The exposition text (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.with(|c| {
            let w = &mut out;
            let _ = writeln!(w, "# HELP krun_kbs_attestations_total Sessions attested.");
            let _ = writeln!(w, "# TYPE krun_kbs_attestations_total counter");
            let mut attestations = c.attestations.clone();
            for key in [("reference", "snp"), ("reference", "sev"), ("rcar", "snp")] {
                attestations.entry(key).or_default();
            }
            for ((protocol, tee), n) in &attestations {
                let _ = writeln!(
                    w,
                    "krun_kbs_attestations_total{{protocol=\"{protocol}\",tee=\"{tee}\"}} {n}"
                );
            }
            let _ = writeln!(w, "# HELP krun_kbs_refusals_total Requests refused, by reason.");
            let _ = writeln!(w, "# TYPE krun_kbs_refusals_total counter");
            for (reason, n) in &c.refusals {
                let _ = writeln!(w, "krun_kbs_refusals_total{{reason=\"{reason}\"}} {n}");
            }
            let _ = writeln!(
                w,
                "# HELP krun_kbs_key_releases_total Keys (reference) and resources (RCAR) released."
            );
            let _ = writeln!(w, "# TYPE krun_kbs_key_releases_total counter");
            let mut releases = c.releases.clone();
            for key in ["reference", "rcar"] {
                releases.entry(key).or_default();
            }
            for (protocol, n) in &releases {
                let _ = writeln!(
                    w,
                    "krun_kbs_key_releases_total{{protocol=\"{protocol}\"}} {n}"
                );
            }
            let _ = writeln!(
                w,
                "# HELP krun_kbs_request_duration_seconds Time to handle a request, by endpoint."
            );
            let _ = writeln!(w, "# TYPE krun_kbs_request_duration_seconds histogram");
            for (endpoint, h) in &c.latency {
                let mut cumulative = 0;
                for (i, n) in h.counts.iter().enumerate() {
                    cumulative += n;
                    let le = BUCKETS
                        .get(i)
                        .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                    let _ = writeln!(
                        w,
                        "krun_kbs_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"{le}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    w,
                    "krun_kbs_request_duration_seconds_sum{{endpoint=\"{endpoint}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    w,
                    "krun_kbs_request_duration_seconds_count{{endpoint=\"{endpoint}\"}} {}",
                    h.count
                );
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histogram_are_rendered_cumulatively() {
        let m = Metrics::default();
        m.attested("rcar", "snp");
        m.refused("SnpMeasurement");
        m.refused("SnpMeasurement");
        m.released("reference");
        m.observe("attest", Duration::from_millis(3));
        m.observe("attest", Duration::from_millis(40));
        m.observe("attest", Duration::from_secs(60));
        let text = m.render();
        for line in [
            "krun_kbs_attestations_total{protocol=\"rcar\",tee=\"snp\"} 1",
            "krun_kbs_attestations_total{protocol=\"reference\",tee=\"sev\"} 0",
            "krun_kbs_refusals_total{reason=\"SnpMeasurement\"} 2",
            "krun_kbs_key_releases_total{protocol=\"reference\"} 1",
            "krun_kbs_key_releases_total{protocol=\"rcar\"} 0",
            "krun_kbs_request_duration_seconds_bucket{endpoint=\"attest\",le=\"0.0025\"} 0",
            "krun_kbs_request_duration_seconds_bucket{endpoint=\"attest\",le=\"0.005\"} 1",
            "krun_kbs_request_duration_seconds_bucket{endpoint=\"attest\",le=\"0.05\"} 2",
            "krun_kbs_request_duration_seconds_bucket{endpoint=\"attest\",le=\"10\"} 2",
            "krun_kbs_request_duration_seconds_bucket{endpoint=\"attest\",le=\"+Inf\"} 3",
            "krun_kbs_request_duration_seconds_count{endpoint=\"attest\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}

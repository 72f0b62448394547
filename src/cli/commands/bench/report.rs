//! What a scenario measured and how it is printed: the figures, a table row, a JSON object or a CSV
//! row.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

use super::{BenchArgs, Plan};
use crate::broker::SharedBroker;

/// What one scenario measured.
#[derive(Debug)]
pub(super) struct Report {
    pub(super) plan: Plan,
    pub(super) published: u64,
    pub(super) delivered: u64,
    /// Messages the broker or client said it dropped for a slow subscriber (part of `lost`).
    pub(super) dropped: u64,
    /// Until the last publish was answered.
    pub(super) publishing: Duration,
    /// Until the last delivery arrived (or publishing ended, without subscribers).
    pub(super) elapsed: Duration,
    pub(super) latency: Histogram<u64>,
}

impl Report {
    fn expected(&self) -> u64 {
        if self.plan.subs == 0 {
            0
        } else if self.plan.shared {
            self.published
        } else {
            self.published * u64::from(self.plan.subs)
        }
    }

    fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.delivered)
    }
}

pub(super) const TEXT_HEADER: [&str; 14] = [
    "SCENARIO",
    "PUBS",
    "SUBS",
    "PUBLISHED",
    "DELIVERED",
    "LOST",
    "PUB/S",
    "DEL/S",
    "MB/S",
    "P50µs",
    "P90µs",
    "P99µs",
    "P99.9µs",
    "MAXµs",
];

pub(super) const CSV_HEADER: &str = "scenario,broker,pubs,subs,size,rate,published,delivered,lost,dropped,published_per_s,delivered_per_s,mb_per_s,p50_us,p90_us,p99_us,p999_us,max_us,elapsed_s,ack";

/// The figures every output form prints.
struct Figures {
    published_per_s: f64,
    delivered_per_s: f64,
    mb_per_s: f64,
    percentiles: Option<[u64; 5]>,
}

fn figures(r: &Report, size: usize) -> Figures {
    let published_per_s = r.published as f64 / r.publishing.as_secs_f64().max(1e-9);
    let delivered_per_s = r.delivered as f64 / r.elapsed.as_secs_f64().max(1e-9);
    // Bytes moved: what was delivered, or what was published when nothing subscribes.
    let moved = if r.plan.subs == 0 { published_per_s } else { delivered_per_s };
    let p = |q: f64| r.latency.value_at_quantile(q);
    let percentiles = (!r.latency.is_empty()).then(|| [p(0.5), p(0.9), p(0.99), p(0.999), r.latency.max()]);
    Figures { published_per_s, delivered_per_s, mb_per_s: moved * size as f64 / 1e6, percentiles }
}

pub(super) fn json_row(broker: &SharedBroker, args: &BenchArgs, r: &Report) -> serde_json::Value {
    let f = figures(r, args.size);
    let pct = |i: usize| f.percentiles.map(|p| p[i]);
    json!({
        "scenario": r.plan.name, "broker": broker.url(), "pubs": r.plan.pubs, "subs": r.plan.subs,
        "size": args.size, "rate": args.rate, "ack": r.plan.ack, "partitions": args.partitions, "keys": args.keys,
        "published": r.published, "delivered": r.delivered, "lost": r.lost(), "dropped": r.dropped,
        "published_per_s": f.published_per_s, "delivered_per_s": f.delivered_per_s, "mb_per_s": f.mb_per_s,
        "p50_us": pct(0), "p90_us": pct(1), "p99_us": pct(2), "p999_us": pct(3), "max_us": pct(4),
        "elapsed_s": r.elapsed.as_secs_f64(),
    })
}

pub(super) fn csv_row(broker: &SharedBroker, args: &BenchArgs, r: &Report) -> String {
    let f = figures(r, args.size);
    let pct = |i: usize| f.percentiles.map_or(String::new(), |p| p[i].to_string());
    format!(
        "{},{},{},{},{},{},{},{},{},{},{:.0},{:.0},{:.3},{},{},{},{},{},{:.6},{}",
        r.plan.name,
        broker.url().replace(',', "%2C"),
        r.plan.pubs,
        r.plan.subs,
        args.size,
        args.rate.map_or(String::new(), |r| format!("{r:.0}")),
        r.published,
        r.delivered,
        r.lost(),
        r.dropped,
        f.published_per_s,
        f.delivered_per_s,
        f.mb_per_s,
        pct(0),
        pct(1),
        pct(2),
        pct(3),
        pct(4),
        r.elapsed.as_secs_f64(),
        r.plan.ack
    )
}

pub(super) fn text_row(r: &Report, args: &BenchArgs) -> Vec<String> {
    let f = figures(r, args.size);
    let pct = |i: usize| f.percentiles.map_or("-".to_string(), |p| p[i].to_string());
    let delivered = if r.plan.subs == 0 { "-".to_string() } else { r.delivered.to_string() };
    vec![
        r.plan.name.to_string(),
        r.plan.pubs.to_string(),
        r.plan.subs.to_string(),
        r.published.to_string(),
        delivered,
        r.lost().to_string(),
        format!("{:.0}", f.published_per_s),
        if r.plan.subs == 0 { "-".into() } else { format!("{:.0}", f.delivered_per_s) },
        format!("{:.1}", f.mb_per_s),
        pct(0),
        pct(1),
        pct(2),
        pct(3),
        pct(4),
    ]
}

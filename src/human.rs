//! Figures written for people, shared by the command line, the TUI and the demo's report: sizes,
//! durations, retention limits and sparklines.

use crate::model::{DeliveryState, Discard, Limits, PushInfo};

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A message's delivery attempts in `peek`: "-" where they are not known. A subscription forgets a
/// message's attempts once it is settled (acked above the ack floor) or skipped by the filter, and
/// "0" there read as "never delivered".
pub fn attempts(state: DeliveryState, attempt: u32) -> String {
    match (state, attempt) {
        (DeliveryState::Acked | DeliveryState::Filtered, 0) => "-".into(),
        (_, n) => n.to_string(),
    }
}

/// A duration for people, to the most useful unit: `850ms`, `12.3s`, `4m10s`, `2h5m`, `3d4h`.
pub fn duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

/// A topic's limits in a few words.
pub fn retention(limits: &Limits, discard: Discard, policy: crate::model::RetentionPolicy) -> String {
    let mut parts = Vec::new();
    if policy.settles_delete() {
        parts.push(policy.label().to_string());
    }
    if let Some(n) = limits.max_msgs {
        parts.push(format!("{n} msgs"));
    }
    if let Some(b) = limits.max_bytes {
        parts.push(bytes(b));
    }
    if let Some(age) = limits.max_age {
        parts.push(duration(age));
    }
    if let Some(n) = limits.max_msgs_per_key {
        parts.push(format!("{n} per key"));
    }
    if parts.is_empty() {
        parts.push("unlimited".into());
    }
    if discard == Discard::New {
        parts.push("discard new".into());
    }
    parts.join(", ")
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A one-line sparkline of per-second counts.
pub fn sparkline(series: &[u64]) -> String {
    let max = series.iter().copied().max().unwrap_or(0);
    series
        .iter()
        .map(
            |&v| {
                if max == 0 || v == 0 { ' ' } else { BARS[usize::try_from(v * 7 / max).unwrap_or(7).min(7)] }
            },
        )
        .collect()
}

/// A figure the broker may not give: `-` when it did not.
pub fn or_dash<T>(value: Option<T>, show: impl FnOnce(T) -> String) -> String {
    value.map_or_else(|| "-".to_string(), show)
}

/// What a push subscription's pusher did, on one line: `attempts 12 (ok 10, failed 2), 3 in flight,
/// last status 500, slowed to 1 push per 200ms, last error: HTTP 500`.
pub fn push_figures(p: &PushInfo) -> String {
    let mut text = format!("attempts {} (ok {}, failed {})", p.attempts, p.succeeded, p.failed);
    if p.in_flight > 0 {
        text.push_str(&format!(", {} in flight", p.in_flight));
    }
    if let Some(status) = p.last_status {
        text.push_str(&format!(", last status {status}"));
    }
    if p.slowdown_ms > 0 {
        let pause = duration(std::time::Duration::from_millis(p.slowdown_ms));
        text.push_str(&format!(
            ", slowed to 1 push per {pause} after {} failures in a row",
            p.consecutive_failures
        ));
    }
    if let Some(e) = &p.last_error {
        text.push_str(&format!(", last error: {e}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_of_a_settled_message_are_unknown_not_zero() {
        // Issue 19: `peek` showed acked messages with attempt 0.
        assert_eq!(attempts(DeliveryState::Acked, 0), "-");
        assert_eq!(attempts(DeliveryState::Filtered, 0), "-");
        assert_eq!(attempts(DeliveryState::Available, 0), "0");
        assert_eq!(attempts(DeliveryState::InFlight, 2), "2");
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(std::time::Duration::from_millis(850)), "850ms");
        assert_eq!(duration(std::time::Duration::from_secs(250)), "4m10s");
        assert_eq!(duration(std::time::Duration::from_secs(7 * 86_400)), "7d0h");
    }

    #[test]
    fn sparkline_scales_to_the_peak() {
        assert_eq!(sparkline(&[0, 1, 4, 8]), " ▁▄█");
        assert_eq!(sparkline(&[0, 0]), "  ");
    }
}

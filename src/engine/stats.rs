//! Metrics exactly as SEMANTICS.md §9.7 defines them, and the rate meters behind the rates.

use std::time::Duration;

use super::log::Log;
use super::subscription::{Part, SubState};
use crate::model::clock::Timestamp;
use crate::model::config::{AckMode, Ordering};
use crate::model::name::Name;
use crate::model::{
    BlockedBy, ConsumerInfo, DeliveryState, MessageAckState, PartitionLag, PeekReport, SubscriptionInfo,
};
use crate::store::journal::{partition_keys, pos_key, split_key};

/// Seconds of history a rate meter keeps.
const RATE_SLOTS: usize = 16;
/// Complete seconds averaged for a rate.
const RATE_WINDOW: i64 = 5;

/// Events per second over the last few complete seconds, in constant space.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    slots: [u64; RATE_SLOTS],
    /// The second the newest slot belongs to.
    second: i64,
    /// Start of that second in µs, so that the common case (same second as last time) needs no division.
    second_start: i64,
    /// When counting began (µs): the first event, or the first after a silence longer than the history.
    /// A rate averages over the window or over the time since then, whichever is shorter: averaging a
    /// young meter over the whole window read a steady 20/s as 4, then 8, 12 … for five seconds.
    started: Option<i64>,
}

impl RateMeter {
    /// Counts `n` events at `now`.
    pub fn record(&mut self, now: Timestamp, n: u64) {
        let micros = now.as_micros();
        let offset = micros.wrapping_sub(self.second_start);
        if !(0..1_000_000).contains(&offset) || self.second_start == 0 {
            self.roll(micros);
        }
        self.slots[slot(self.second)] += n;
    }

    fn roll(&mut self, micros: i64) {
        let sec = micros.div_euclid(1_000_000);
        let gap = sec.saturating_sub(self.second);
        if gap >= RATE_SLOTS as i64 || gap < 0 || self.started.is_none() {
            self.slots = [0; RATE_SLOTS];
            self.started = Some(micros);
        } else {
            for s in (self.second + 1)..=sec {
                self.slots[slot(s)] = 0;
            }
        }
        self.second = sec;
        self.second_start = sec.saturating_mul(1_000_000);
    }

    /// Events counted in second `sec`, zero when outside the history.
    fn count(&self, sec: i64) -> u64 {
        if sec > self.second || sec <= self.second - RATE_SLOTS as i64 { 0 } else { self.slots[slot(sec)] }
    }

    /// Average events per second over the last complete seconds (fewer while the meter is young).
    pub fn rate(&self, now: Timestamp) -> f64 {
        let sec = now.as_micros().div_euclid(1_000_000);
        let total: u64 = ((sec - RATE_WINDOW)..sec).map(|s| self.count(s)).sum();
        if total == 0 {
            return 0.0;
        }
        let window_start =
            (sec - RATE_WINDOW).saturating_mul(1_000_000).max(self.started.unwrap_or(i64::MIN));
        let span = sec.saturating_mul(1_000_000).saturating_sub(window_start);
        if span <= 0 {
            return 0.0;
        }
        total as f64 / (span as f64 / 1e6)
    }

    /// Per-second counts of the last `n` complete seconds, oldest first (for sparklines).
    pub fn series(&self, now: Timestamp, n: usize) -> Vec<u64> {
        let sec = now.as_micros().div_euclid(1_000_000);
        let n = i64::try_from(n.min(RATE_SLOTS - 1)).unwrap_or(0);
        ((sec - n)..sec).map(|s| self.count(s)).collect()
    }
}

fn slot(sec: i64) -> usize {
    usize::try_from(sec.rem_euclid(RATE_SLOTS as i64)).unwrap_or(0)
}

/// Pending messages (and their bytes) of partition `part` of `sub` over `log`: covered, above the cursor.
fn pending_in(sub: &SubState, topic: &Name, log: &Log, part: Part) -> (u64, u64, u64) {
    let head = log.head_seq();
    let from = part.delivered_seq.max(log.first_seq().saturating_sub(1));
    let (pending, bytes) = if !sub.filters() {
        (
            head.saturating_sub(from).saturating_sub(log.gaps_between(from, head)),
            log.bytes_between(from, head),
        )
    } else {
        // A filtered subscription counts only what it covers, which needs a look at each subject.
        ((from + 1)..=head)
            .filter_map(|s| log.get(s))
            .filter(|r| sub.covers_record(topic, r))
            .fold((0, 0), |(n, b), r| (n + 1, b + r.size()))
    };
    (pending, bytes, from)
}

/// Computes the §9.7 metrics of `sub` over the topic's partitions `logs`. With more than one partition
/// the seq figures (`head_seq`, `first_seq`, `delivered_seq`, `ack_floor`) are sums over the
/// partitions, so that `head_seq − ack_floor` is still the total offset lag; `partitions` has each one.
pub(crate) fn subscription_info(
    sub: &SubState,
    topic: &Name,
    logs: &[Log],
    publish_rate: f64,
    now: Timestamp,
) -> SubscriptionInfo {
    let mut pending = 0;
    let mut pending_bytes = 0;
    let mut head = 0u64;
    let mut first = 0u64;
    let mut delivered = 0u64;
    let mut floor = 0u64;
    let mut lags = Vec::with_capacity(logs.len());
    // The oldest pending message: (publish time, partition, seq).
    let mut oldest_pending: Option<(Timestamp, u32, u64)> = None;
    for (p, (log, part)) in logs.iter().zip(&sub.parts).enumerate() {
        let partition = u32::try_from(p).unwrap_or(u32::MAX);
        let (n, bytes, from) = pending_in(sub, topic, log, *part);
        pending += n;
        pending_bytes += bytes;
        if n > 0
            && let Some(seq) = first_covered(sub, topic, log, from)
            && let Some(time) = log.get(seq).map(|r| r.publish_time)
            && oldest_pending.is_none_or(|(t, _, _)| time < t)
        {
            oldest_pending = Some((time, partition, seq));
        }
        head += log.head_seq();
        first += log.first_seq();
        delivered += part.delivered_seq;
        floor += part.ack_floor;
        lags.push(PartitionLag {
            partition,
            ack_floor: part.ack_floor,
            head_seq: log.head_seq(),
            lag: log.head_seq().saturating_sub(part.ack_floor),
            owner: sub.owner_of(p).map(|o| o.to_string()),
        });
    }
    let live = sub.entries.values().filter(|e| !e.state.is_terminal());
    let (unsettled_bytes, redelivered) =
        live.fold((0, 0), |(b, r), e| (b + e.bytes, r + u64::from(e.attempt >= 2)));
    let in_flight = u64::from(sub.in_flight);
    let delayed = sub.delayed.len() as u64;
    let redeliverable = sub.ready.len() as u64;
    // Messages the cursor passed that wait for their ordering line have never been delivered: pending.
    let unheld = pending;
    pending += sub.order.held();
    let backlog = pending + in_flight + delayed + redeliverable;
    let time_of = |key: u64| {
        let (p, seq) = split_key(key);
        logs.get(p as usize).and_then(|log| log.get(seq)).map(|r| r.publish_time)
    };
    // The oldest unsettled message is the oldest of each partition's lowest unsettled one.
    let oldest_unsettled = (0..logs.len())
        .filter_map(|p| {
            let p = u32::try_from(p).unwrap_or(u32::MAX);
            sub.entries
                .range(partition_keys(p))
                .find(|(_, e)| !e.state.is_terminal())
                .and_then(|(&k, _)| time_of(k))
        })
        .chain(oldest_pending.map(|(t, _, _)| t))
        .min();
    let age_of = |time: Option<Timestamp>| time.map_or(Duration::ZERO, |t| now.since(t));
    let deliver_rate = sub.deliver_rate.rate(now);
    let ack_rate = sub.ack_rate.rate(now);
    let drain = ack_rate - publish_rate;
    let eta = (backlog > 0 && drain > 0.0).then(|| Duration::from_secs_f64(backlog as f64 / drain));
    SubscriptionInfo {
        name: sub.config.name.clone(),
        topic: topic.clone(),
        filter: sub.config.filter.iter().map(|p| p.as_str().to_string()).collect(),
        attribute_filter: sub.config.attribute_filter.clone(),
        ack: sub.config.ack,
        start: sub.config.start,
        ack_deadline: sub.config.ack_deadline,
        dead_letter: sub.config.dead_letter.clone(),
        max_deliveries: sub.config.max_deliveries,
        max_in_flight: sub.config.max_in_flight,
        ordering: sub.config.ordering,
        assignment: sub.config.assignment,
        message_retention: sub.config.message_retention,
        dead_letter_on_expiry: sub.config.dead_letter_on_expiry,
        retain_acked: sub.config.retain_acked,
        ephemeral: !matches!(sub.config.lifetime, crate::model::config::Lifetime::Durable),
        head_seq: head,
        first_seq: first,
        delivered_seq: delivered,
        ack_floor: floor,
        pending,
        in_flight,
        delayed,
        redeliverable,
        redelivered,
        backlog,
        backlog_bytes: Some(pending_bytes + unsettled_bytes),
        offset_lag: lags.iter().map(|l| l.lag).sum(),
        oldest_unacked_age: Some(age_of(oldest_unsettled)),
        oldest_pending_age: Some(if pending > 0 {
            age_of(oldest_pending.map(|(t, _, _)| t))
        } else {
            Duration::ZERO
        }),
        consumers: sub
            .consumers
            .iter()
            .enumerate()
            .map(|(i, c)| ConsumerInfo {
                id: c.id.clone(),
                push: c.push.is_some(),
                prefetch: c.prefetch,
                in_flight: c.in_flight,
                attached_at: c.attached_at,
                idle: now.since(c.last_activity),
                delivered: c.delivered,
                acked: c.acked,
                standby: sub.standby(i),
            })
            .collect(),
        counters: sub.counters.clone(),
        publish_rate: Some(publish_rate),
        deliver_rate: Some(deliver_rate),
        ack_rate: Some(ack_rate),
        eta,
        blocked_by: blocked_by(sub, pending + redeliverable, delayed).or_else(|| {
            // Nothing else in the way, yet work waits: it waits for earlier messages of its line.
            let waits = sub.order.held() > 0 || (sub.config.ordering == Ordering::Strict && unheld > 0);
            (sub.ordered() && redeliverable == 0 && waits && in_flight + delayed > 0)
                .then_some(BlockedBy::Ordering)
        }),
        created: Some(sub.created),
        partitions: lags,
        push: sub.config.push.as_ref().map(|p| crate::model::PushInfo {
            endpoint: p.endpoint.clone(),
            ..crate::model::PushInfo::default()
        }),
    }
}

fn first_covered(sub: &SubState, topic: &Name, log: &Log, from: u64) -> Option<u64> {
    ((from + 1)..=log.head_seq()).find(|&s| log.get(s).is_some_and(|r| sub.covers_record(topic, &r)))
}

fn blocked_by(sub: &SubState, waiting: u64, delayed: u64) -> Option<BlockedBy> {
    if waiting == 0 {
        return (delayed > 0).then_some(BlockedBy::Backoff);
    }
    if sub.consumers.is_empty() {
        return Some(BlockedBy::NoConsumers);
    }
    if sub.config.ack == AckMode::None {
        return None;
    }
    let bytes_full =
        sub.config.max_in_flight_bytes > 0 && sub.in_flight_bytes >= sub.config.max_in_flight_bytes;
    if sub.in_flight >= sub.config.max_in_flight || bytes_full {
        return Some(BlockedBy::InFlightLimit);
    }
    if sub.consumers.iter().all(|c| c.in_flight >= c.prefetch) {
        return Some(BlockedBy::Prefetch);
    }
    None
}

/// Per-message ack state of `sub` from the floor up: in each partition at most `limit` messages from
/// `from`. The report's seq figures are sums over partitions, as in [`subscription_info`].
pub(crate) fn peek(sub: &SubState, topic: &Name, logs: &[Log], from: u64, limit: usize) -> PeekReport {
    let mut messages = Vec::new();
    for (p, (log, part)) in logs.iter().zip(&sub.parts).enumerate() {
        let partition = u32::try_from(p).unwrap_or(u32::MAX);
        peek_partition(sub, topic, log, partition, *part, from, limit, &mut messages);
    }
    PeekReport {
        subscription: sub.config.name.clone(),
        ack_floor: sub.parts.iter().map(|p| p.ack_floor).sum(),
        delivered_seq: sub.parts.iter().map(|p| p.delivered_seq).sum(),
        head_seq: logs.iter().map(Log::head_seq).sum(),
        messages,
        push: sub.config.push.as_ref().map(|p| crate::model::PushInfo {
            endpoint: p.endpoint.clone(),
            ..crate::model::PushInfo::default()
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn peek_partition(
    sub: &SubState,
    topic: &Name,
    log: &Log,
    partition: u32,
    part: Part,
    from: u64,
    limit: usize,
    messages: &mut Vec<MessageAckState>,
) {
    let start = from.max(part.ack_floor + 1).max(log.first_seq());
    let mut seq = start;
    let mut taken = 0;
    while seq <= log.head_seq() && taken < limit {
        let covered = log.get(seq).is_some_and(|r| sub.covers_record(topic, &r));
        let state = match sub.entries.get(&pos_key(partition, seq)) {
            Some(e) => MessageAckState {
                partition,
                seq,
                state: e.state,
                attempt: e.attempt,
                consumer: e.consumer.clone(),
                deadline: (e.state == DeliveryState::InFlight).then_some(e.deadline),
                not_before: (e.state == DeliveryState::Delayed).then_some(e.not_before),
                first_delivered: Some(e.first_delivered),
                last_delivered: Some(e.last_delivered),
            },
            None => {
                let state = if !covered {
                    DeliveryState::Filtered
                } else if seq <= part.delivered_seq {
                    DeliveryState::Acked
                } else {
                    DeliveryState::Available
                };
                MessageAckState {
                    partition,
                    seq,
                    state,
                    attempt: 0,
                    consumer: None,
                    deadline: None,
                    not_before: None,
                    first_delivered: None,
                    last_delivered: None,
                }
            }
        };
        messages.push(state);
        taken += 1;
        seq += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64) -> Timestamp {
        Timestamp::from_micros((secs * 1e6) as i64)
    }

    #[test]
    fn rate_averages_complete_seconds() {
        let mut meter = RateMeter::default();
        for s in 0..10 {
            meter.record(at(f64::from(s) + 0.5), 100);
        }
        assert_eq!(meter.rate(at(10.2)), 100.0);
        assert_eq!(meter.series(at(10.2), 3), vec![100, 100, 100]);
    }

    #[test]
    fn a_steady_rate_reads_as_itself_from_the_first_complete_second() {
        // Issue 19: during a steady 20/s the RATE column read 1.2, 9.2, 13.2 as the window filled.
        let mut meter = RateMeter::default();
        for i in 0..100 {
            meter.record(Timestamp::from_micros(10_000_000 + i * 50_000), 1);
        }
        for now in [11.01, 12.01, 13.5, 14.01] {
            let rate = meter.rate(at(now));
            assert!((rate - 20.0).abs() < 0.01, "{rate} at {now}");
        }
        // Starting mid-second counts only the time since the first event.
        let mut late = RateMeter::default();
        for i in 0..10 {
            late.record(Timestamp::from_micros(20_500_000 + i * 50_000), 1);
        }
        assert!((late.rate(at(21.2)) - 20.0).abs() < 0.01, "{}", late.rate(at(21.2)));
        // A meter silent longer than its history starts over.
        late.record(at(60.5), 5);
        assert!((late.rate(at(61.0)) - 10.0).abs() < 0.01, "{}", late.rate(at(61.0)));
    }

    #[test]
    fn rate_falls_to_zero_when_traffic_stops() {
        let mut meter = RateMeter::default();
        meter.record(at(1.0), 50);
        // Counted since its first event: 50 in the one second since then.
        assert_eq!(meter.rate(at(2.5)), 50.0);
        assert_eq!(meter.rate(at(6.5)), 10.0);
        assert_eq!(meter.rate(at(100.0)), 0.0);
    }
}

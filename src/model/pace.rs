//! Pacing: when each message of a paced run is due, so that a sender wakes once per [`TICK`] and sends
//! everything due as one batch, instead of sleeping once per message.
//!
//! Everything is counted from the run's start (messages due by now, less messages sent), never from
//! the last send: a late wake-up is made up at the next one and lateness never accumulates, so over a
//! run the rate is kept to within one tick's worth of messages, whatever the rate.

use std::time::Duration;

/// The shortest wait between two wake-ups of a paced sender. Messages closer together than this go out
/// together, one batch per tick; messages further apart go one at a time, each at its own moment.
///
/// 2 ms because tokio's timer counts whole milliseconds: 500 wake-ups a second cost next to nothing
/// (a sleep per message at 100 k/s was 5.5 s of kernel time per 100 k messages), batches stay small
/// (2,000 messages at 1 M/s), and a run ends at most about a tick after its last message was due.
pub const TICK: Duration = Duration::from_millis(2);

/// When each message of a paced run is due, measured from the run's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule(Kind);

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// Messages per second; message `n` (from 0) is due at `n / rate`.
    Rate(f64),
    /// Each message's own time, never earlier than the one before.
    Times(Vec<Duration>),
}

impl Schedule {
    /// A fixed rate in messages per second. The first message is due at once and message `n` (from 0)
    /// at `n / per_second`. A rate that is not a positive number paces nothing: everything is due at
    /// once.
    pub fn rate(per_second: f64) -> Schedule {
        Schedule(Kind::Rate(per_second))
    }

    /// Each message at its own time since the start (`replay --speed`: the original gaps divided by the
    /// speed). Messages go in the order given: one timed before its predecessor goes right after it.
    pub fn times(times: impl IntoIterator<Item = Duration>) -> Schedule {
        let mut latest = Duration::ZERO;
        let times = times
            .into_iter()
            .map(|t| {
                latest = latest.max(t);
                latest
            })
            .collect();
        Schedule(Kind::Times(times))
    }

    /// How many messages are due by `elapsed` since the start (sent or not).
    pub fn due(&self, elapsed: Duration) -> u64 {
        match &self.0 {
            Kind::Rate(rate) if !(rate.is_finite() && *rate > 0.0) => u64::MAX,
            // In nanoseconds: 9 ms × 100 k/s is exactly 900 that way, while 0.009 s × 100 k/s is
            // 899.99…, one message short. `as` saturates: a count past u64::MAX reads as u64::MAX.
            Kind::Rate(rate) => ((elapsed.as_nanos() as f64 * rate / 1e9).floor() as u64).saturating_add(1),
            Kind::Times(times) => times.partition_point(|t| *t <= elapsed) as u64,
        }
    }

    /// When message `n` (from 0) is due, since the start; `None` when the schedule holds no message
    /// `n`. Consistent with [`Schedule::due`]: at this time, message `n` is due.
    pub fn at(&self, n: u64) -> Option<Duration> {
        match &self.0 {
            Kind::Rate(rate) if !(rate.is_finite() && *rate > 0.0) => Some(Duration::ZERO),
            Kind::Rate(rate) => {
                let mut at = Duration::try_from_secs_f64(n as f64 / rate).unwrap_or(Duration::MAX);
                // n / rate rounded to whole nanoseconds may fall a hair before the moment `due` counts
                // message n in; step forward until it does (a step or two at most).
                for _ in 0..4 {
                    if self.due(at) > n {
                        break;
                    }
                    at = at.saturating_add(Duration::from_micros(1));
                }
                Some(at)
            }
            Kind::Times(times) => usize::try_from(n).ok().and_then(|n| times.get(n)).copied(),
        }
    }
}

/// A paced run's progress: what its schedule makes due, less what was sent.
#[derive(Debug, Clone)]
pub struct Pacer {
    schedule: Schedule,
    sent: u64,
}

impl Pacer {
    /// A run that has sent nothing yet.
    pub fn new(schedule: Schedule) -> Pacer {
        Pacer { schedule, sent: 0 }
    }

    /// How many messages may go now, at `elapsed` since the start: those due, less those sent.
    pub fn ready(&self, elapsed: Duration) -> u64 {
        self.schedule.due(elapsed).saturating_sub(self.sent)
    }

    /// Counts `n` messages as sent.
    pub fn count_sent(&mut self, n: u64) {
        self.sent = self.sent.saturating_add(n);
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// When to wake next (since the start), it being `elapsed` now: when the next message is due, but
    /// no sooner than a [`TICK`] from now, so that messages due close together go as one batch. `None`
    /// when the schedule holds no further message.
    pub fn wake(&self, elapsed: Duration) -> Option<Duration> {
        self.schedule.at(self.sent).map(|at| at.max(elapsed.saturating_add(TICK)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Clock, ManualClock, Timestamp};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_rate_makes_the_first_message_due_at_once_and_the_nth_at_n_over_rate() {
        let s = Schedule::rate(2.0);
        assert_eq!(s.due(Duration::ZERO), 1);
        assert_eq!(s.due(ms(499)), 1);
        assert_eq!(s.due(ms(500)), 2);
        assert_eq!(s.due(ms(10_000)), 21);
        assert_eq!(s.at(0), Some(Duration::ZERO));
        assert_eq!(s.at(1), Some(ms(500)));
        assert_eq!(s.at(20), Some(ms(10_000)));
    }

    #[test]
    fn a_message_is_due_at_the_time_its_schedule_names_even_when_that_time_rounds() {
        // 1/3 s is no whole number of nanoseconds; rounded down, message n would not yet be due at
        // "its" time and a sender waking then would find nothing to send.
        for rate in [3.0, 7.0, 30.0 / 60.0, 99_999.0, 1e6 / 3.0] {
            let s = Schedule::rate(rate);
            for n in [1u64, 2, 3, 10, 1_000, 123_457] {
                let at = s.at(n).unwrap();
                assert!(s.due(at) > n, "rate {rate}: message {n} is due at {at:?}");
                let before = at.checked_sub(Duration::from_micros(2)).unwrap();
                assert!(s.due(before) <= n, "rate {rate}: message {n} is not due before {at:?}");
            }
        }
    }

    #[test]
    fn a_rate_that_is_not_positive_paces_nothing() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(Schedule::rate(rate).due(Duration::ZERO), u64::MAX, "{rate}");
            assert_eq!(Schedule::rate(rate).at(7), Some(Duration::ZERO), "{rate}");
        }
    }

    #[test]
    fn times_are_due_in_order_and_one_timed_before_its_predecessor_goes_right_after_it() {
        let s = Schedule::times([ms(0), ms(10), ms(5), ms(30)]);
        assert_eq!(s.due(Duration::ZERO), 1);
        assert_eq!(s.due(ms(9)), 1);
        assert_eq!(s.due(ms(10)), 3, "the one at 5 ms waits for the one at 10 ms before it");
        assert_eq!(s.due(ms(31)), 4);
        assert_eq!(s.at(2), Some(ms(10)));
        assert_eq!(s.at(4), None);
    }

    #[test]
    fn a_pacer_sends_what_is_due_less_what_it_sent_and_lateness_is_made_up() {
        let mut p = Pacer::new(Schedule::rate(100_000.0));
        assert_eq!(p.ready(Duration::ZERO), 1);
        p.count_sent(1);
        assert_eq!(p.ready(ms(2)), 200);
        p.count_sent(200);
        // A wake-up 5 ms late: everything due meanwhile is ready at once.
        assert_eq!(p.ready(ms(9)), 700);
        p.count_sent(700);
        assert_eq!(p.ready(ms(9)), 0);
        assert_eq!(p.sent(), 901);
    }

    #[test]
    fn a_fast_pacer_wakes_once_a_tick_and_a_slow_one_at_each_message() {
        let mut fast = Pacer::new(Schedule::rate(100_000.0));
        fast.count_sent(1);
        assert_eq!(fast.wake(ms(0)), Some(TICK), "the next message is 10 µs away: wait a tick");
        let mut slow = Pacer::new(Schedule::rate(2.0));
        slow.count_sent(1);
        assert_eq!(slow.wake(ms(1)), Some(ms(500)), "the next message is 500 ms away: wake then");
        let mut done = Pacer::new(Schedule::times([ms(1)]));
        done.count_sent(1);
        assert_eq!(done.wake(ms(1)), None);
    }

    /// Runs a pacer on a manual clock: each wake-up comes `late` after the time asked for, and sends
    /// every message ready, as a sender does. Returns the batch sizes.
    fn run(rate: f64, total: u64, late: impl Fn(u64) -> Duration) -> (Vec<u64>, Duration) {
        let clock = ManualClock::new(Timestamp::from_micros(1_000_000));
        let start = clock.now();
        let mut pacer = Pacer::new(Schedule::rate(rate));
        let mut batches = Vec::new();
        let mut wake = 0u64;
        loop {
            let elapsed = clock.now().since(start);
            let n = pacer.ready(elapsed).min(total - pacer.sent());
            if n > 0 {
                batches.push(n);
                pacer.count_sent(n);
            }
            if pacer.sent() == total {
                return (batches, elapsed);
            }
            let next = pacer.wake(elapsed).unwrap();
            clock.set(start.plus(next + late(wake)));
            wake += 1;
        }
    }

    #[test]
    fn a_slow_rate_sends_one_message_at_a_time_never_a_burst() {
        let (batches, took) = run(2.0, 10, |_| Duration::ZERO);
        assert_eq!(batches, vec![1; 10]);
        assert_eq!(took, ms(4_500), "10 messages at 2/s: the last at 4.5 s");
    }

    #[test]
    fn a_fast_rate_sends_a_batch_a_tick_and_keeps_its_rate_through_late_wake_ups() {
        // Wake-ups up to 3 ms late, unevenly (a busy machine): the long-run rate is still the one asked.
        let (batches, took) = run(100_000.0, 100_000, |wake| Duration::from_micros(wake * 7919 % 3000));
        assert_eq!(batches.iter().sum::<u64>(), 100_000);
        assert!(batches.len() < 1_000, "{} wake-ups for 100,000 messages", batches.len());
        let asked = Duration::from_micros(999_990);
        assert!(took >= asked && took <= asked + ms(5), "the last message went at {took:?}");
    }
}

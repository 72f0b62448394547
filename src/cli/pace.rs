//! A paced run on the real clock, for `pub --rate` and `replay --rate`/`--speed`: the arithmetic of
//! [`Pacer`], started now, and the wait for its next wake-up. The caller sends what is ready as one
//! batch, and waits (selecting on Ctrl-C) only when nothing is.

use std::time::Duration;

use tokio::time::Instant;

use crate::model::{Pacer, Schedule};

/// A paced run, started at a moment of tokio's clock (which tests may pause and move by hand).
#[derive(Debug)]
pub struct PacedRun {
    pacer: Pacer,
    started: Instant,
}

impl PacedRun {
    /// A run on `schedule` that starts now.
    pub fn start(schedule: Schedule) -> PacedRun {
        PacedRun { pacer: Pacer::new(schedule), started: Instant::now() }
    }

    /// How many messages may go now, at most `limit` (a batch).
    pub fn ready(&self, limit: usize) -> usize {
        let ready = self.pacer.ready(self.started.elapsed());
        usize::try_from(ready).unwrap_or(usize::MAX).min(limit)
    }

    /// Counts `n` messages as sent.
    pub fn count_sent(&mut self, n: usize) {
        self.pacer.count_sent(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sleeps until the next message is due, or a tick from now if that is sooner, so that messages due
    /// close together are sent as one batch. Returns at once when the schedule holds no further message.
    pub async fn next_tick(&self) {
        if let Some(wake) = self.pacer.wake(self.started.elapsed()) {
            tokio::time::sleep_until(self.started + wake).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On tokio's paused clock (it moves only when every task waits), a 2/s run wakes at each message's
    /// moment and has one ready each time.
    #[tokio::test(start_paused = true)]
    async fn a_slow_run_wakes_when_each_message_is_due() {
        let mut run = PacedRun::start(Schedule::rate(2.0));
        let mut sent_at = Vec::new();
        while sent_at.len() < 4 {
            match run.ready(256) {
                0 => run.next_tick().await,
                n => {
                    assert_eq!(n, 1, "one at a time, never a burst");
                    sent_at.push(run.elapsed().as_millis());
                    run.count_sent(n);
                }
            }
        }
        assert_eq!(sent_at, vec![0, 500, 1000, 1500]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_run_sends_a_batch_a_tick_capped_at_the_limit() {
        let mut run = PacedRun::start(Schedule::rate(1_000_000.0));
        assert_eq!(run.ready(256), 1);
        run.count_sent(1);
        assert_eq!(run.ready(256), 0);
        run.next_tick().await;
        assert_eq!(run.elapsed(), crate::model::pace::TICK);
        assert_eq!(run.ready(256), 256, "2,000 are due; a batch takes 256");
        assert_eq!(run.ready(usize::MAX), 2_000);
    }
}

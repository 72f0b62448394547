//! One publisher's loop: closed loop as fast as answers come back, or open loop at a fixed rate with
//! each message stamped with the time it was due.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::measure::{Progress, now_micros};
use crate::broker::{BrokerError, SharedBroker};
use crate::cli::CliError;
use crate::model::{Name, PublishRequest};

/// One publisher's work.
pub(super) struct PublishJob {
    pub(super) broker: SharedBroker,
    /// The run's topics, taken in turn message by message (one, unless `--topics`).
    pub(super) topics: Arc<[Name]>,
    pub(super) count: u64,
    pub(super) until: Option<Instant>,
    pub(super) size: usize,
    pub(super) batch: u64,
    /// Publish calls in flight at once.
    pub(super) window: usize,
    /// Open loop: this publisher's rate in msgs/s.
    pub(super) rate: Option<f64>,
    /// The keys messages carry in turn (`--keys`); none when empty.
    pub(super) keys: Arc<[bytes::Bytes]>,
    pub(super) progress: Arc<Progress>,
    /// Ctrl-C: stop publishing, as if the count or duration were reached.
    pub(super) stop: CancellationToken,
}

impl PublishJob {
    pub(super) async fn run(self) -> Result<u64, CliError> {
        let body = vec![b'x'; self.size - 8];
        let started = Instant::now();
        let start_micros = now_micros();
        // Calls in flight, answered in order; a message counts as published once its call is answered.
        let mut in_flight = FuturesOrdered::new();
        let (mut sent, mut published) = (0u64, 0u64);
        while sent < self.count && self.until.is_none_or(|t| Instant::now() < t) && !self.stop.is_cancelled()
        {
            if in_flight.len() >= self.window {
                published += self.answered(in_flight.next().await)?;
            }
            let (n, due) = match self.rate {
                None => ((self.count - sent).min(self.batch), None),
                Some(rate) => {
                    // Everything due by now goes out (at most a batch); the next message's time is waited for.
                    let due_now = (started.elapsed().as_secs_f64() * rate) as u64;
                    if due_now <= sent {
                        let next = Duration::from_secs_f64((sent + 1) as f64 / rate);
                        let due = started + next;
                        let wait = due.saturating_duration_since(Instant::now());
                        if wait < PRECISE_BELOW && crate::broker::can_block_in_place() {
                            // The async timer ticks in whole milliseconds, which would stamp up to 1 ms of
                            // the harness's own lateness onto every message; short waits sleep the thread,
                            // with this worker's other tasks handed to another thread meanwhile.
                            tokio::task::block_in_place(|| std::thread::sleep(wait));
                            continue;
                        }
                        // Longer waits sleep on the timer to just short of the due time, and the rest
                        // as above.
                        let wake = due.checked_sub(PRECISE_BELOW / 2).unwrap_or(due);
                        tokio::select! {
                            () = tokio::time::sleep_until(wake.into()) => {}
                            () = self.stop.cancelled() => {}
                            Some(answer) = in_flight.next() => published += self.answered(Some(answer))?,
                        }
                        continue;
                    }
                    ((due_now - sent).min(self.batch).min(self.count - sent), Some(rate))
                }
            };
            let requests: Vec<PublishRequest> = (0..n)
                .map(|i| {
                    // Open loop stamps the time a message was due, closed loop the time it is sent.
                    let stamp = match due {
                        Some(rate) => start_micros + (((sent + i + 1) as f64 / rate) * 1e6) as u64,
                        None => now_micros(),
                    };
                    let mut payload = BytesMut::with_capacity(self.size);
                    payload.put_u64(stamp);
                    payload.extend_from_slice(&body);
                    let mut req =
                        PublishRequest::new(topic_of(&self.topics, sent + i).clone(), payload.freeze());
                    if !self.keys.is_empty() {
                        req.key = Some(self.keys[((sent + i) % self.keys.len() as u64) as usize].clone());
                    }
                    req
                })
                .collect();
            let broker = self.broker.clone();
            in_flight.push_back(async move { broker.publish_batch(requests).await.map(|_| n) });
            sent += n;
            // Polled once now, a call starts at once (a remote broker's frame goes out); answers that
            // are already in are counted.
            while let Some(Some(answer)) = in_flight.next().now_or_never() {
                published += self.answered(Some(answer))?;
            }
            // Let receivers run between batches so that a single-threaded broker is not starved.
            tokio::task::yield_now().await;
        }
        while let Some(answer) = in_flight.next().await {
            published += self.answered(Some(answer))?;
        }
        Ok(published)
    }

    /// Counts an answered publish call.
    fn answered(&self, answer: Option<Result<u64, BrokerError>>) -> Result<u64, CliError> {
        let n = answer.unwrap_or(Ok(0))?;
        self.progress.published.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

/// The topic of a publisher's `n`th message: the run's topics in turn, so that every batch of a run
/// spread over N topics carries runs of one message per topic (the spread's cost is per message).
pub(super) fn topic_of(topics: &[Name], n: u64) -> &Name {
    // `RunTopics` never leaves the list empty.
    let at = n % topics.len().max(1) as u64;
    &topics[at as usize]
}

/// Open-loop waits shorter than this sleep the thread rather than the async timer.
const PRECISE_BELOW: Duration = Duration::from_millis(2);

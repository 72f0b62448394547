//! Group commit for acks: acks that arrive while another is being written wait for it, then go
//! together as one UPDATE (one transaction, one WAL flush) instead of one each. The first ack to find
//! no write under way writes everything queued by then; an ack returns only when its row is `done`, so
//! the promise of a returned ack is the same as when each was written alone.

use std::sync::{Mutex, PoisonError};

use tokio::sync::oneshot;

use super::PostgresBroker;
use crate::broker::{AckToken, BrokerError, Settle};

/// One ack waiting for its write: `Some(true)` when its row became `done`, `Some(false)` when it did not
/// match a current lease, `None` when the shared write failed (the ack is then tried alone, which
/// reports the error).
struct Waiting {
    subscription: String,
    seq: i64,
    lease: i32,
    answer: oneshot::Sender<Option<bool>>,
}

/// How many times the writer yields at most while acks keep arriving, before writing.
const LINGER_TURNS: usize = 64;

/// Acks queued for the next write, and the turn to write.
#[derive(Default)]
pub(super) struct AckQueue {
    queued: Mutex<Vec<Waiting>>,
    turn: tokio::sync::Mutex<()>,
}

impl PostgresBroker {
    /// Acks `token`'s delivery, written with whatever other acks are queued.
    pub(super) async fn ack_grouped(&self, token: &AckToken) -> Result<(), BrokerError> {
        let (answer, mut heard) = oneshot::channel();
        self.acks.queued.lock().unwrap_or_else(PoisonError::into_inner).push(Waiting {
            subscription: token.subscription.as_str().to_string(),
            seq: i64::try_from(token.seq).unwrap_or(i64::MAX),
            lease: i32::try_from(token.lease).unwrap_or(i32::MAX),
            answer,
        });
        let outcome = {
            let _turn = self.acks.turn.lock().await;
            match heard.try_recv() {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.linger().await;
                    let batch =
                        std::mem::take(&mut *self.acks.queued.lock().unwrap_or_else(PoisonError::into_inner));
                    self.write_acks(batch).await;
                    heard.await.unwrap_or(None)
                }
            }
        };
        match outcome {
            Some(true) => Ok(()),
            // Not a current lease (or the write failed): the row-by-row path says why.
            Some(false) | None => self.settle_row(token, Settle::Ack).await,
        }
    }

    /// Lets acks that tasks ready to run are about to make join the write: yields while the queue
    /// keeps growing (a burst of acks, as when a worker's prefetch is settled as it arrives), and only
    /// once for an ack that comes alone. Never sleeps.
    async fn linger(&self) {
        let queued = || self.acks.queued.lock().unwrap_or_else(PoisonError::into_inner).len();
        let mut seen = queued();
        for _ in 0..LINGER_TURNS {
            tokio::task::yield_now().await;
            let now = queued();
            if now == seen {
                return;
            }
            seen = now;
        }
    }

    /// Writes `batch` in one statement and answers each ack in it.
    async fn write_acks(&self, batch: Vec<Waiting>) {
        let subs: Vec<&str> = batch.iter().map(|w| w.subscription.as_str()).collect();
        let seqs: Vec<i64> = batch.iter().map(|w| w.seq).collect();
        let leases: Vec<i32> = batch.iter().map(|w| w.lease).collect();
        let sql = format!(
            "UPDATE {}.deliveries d SET state = 'done', deadline = NULL, updated_at = now()
             FROM unnest($1::text[], $2::int8[], $3::int4[]) AS a(subscription, seq, lease)
             WHERE d.subscription = a.subscription AND d.seq = a.seq
               AND d.state = 'in_flight' AND d.attempts = a.lease
             RETURNING d.subscription, d.seq",
            self.target.s()
        );
        let done = match self.client().await {
            Ok(client) => client.query(&sql, &[&subs, &seqs, &leases]).await.ok(),
            Err(_) => None,
        };
        let done: Option<std::collections::HashSet<(String, i64)>> =
            done.map(|rows| rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))).collect());
        for w in batch {
            let outcome = done.as_ref().map(|d| d.contains(&(w.subscription.clone(), w.seq)));
            let _ = w.answer.send(outcome);
        }
    }
}

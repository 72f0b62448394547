//! Reconnecting: one backoff and one loop, so every backend waits the same way after a broker goes
//! away and reports the outage the same way.

use std::future::Future;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::broker::ConnectionEvent;

/// Delays between reconnection attempts: 100 ms, doubling, at most 5 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first delay.
    pub const FIRST: Duration = Duration::from_millis(100);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(5);

    /// A backoff at its first delay.
    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The delay to wait now; the one after it is twice as long, up to [`Backoff::MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        now
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Waits the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// After a link dropped for `reason`: reports `Disconnected`, then tries `attempt` with backoff until it
/// succeeds (reporting `Reconnected`) or `abandoned` says nobody waits any more (`None`).
pub async fn reconnect<T, E, F, Fut>(
    events: &broadcast::Sender<ConnectionEvent>,
    reason: String,
    mut abandoned: impl FnMut() -> bool,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let _ = events.send(ConnectionEvent::Disconnected { reason });
    let mut backoff = Backoff::new();
    loop {
        if abandoned() {
            return None;
        }
        backoff.wait().await;
        if abandoned() {
            return None;
        }
        if let Ok(value) = attempt().await {
            let _ = events.send(ConnectionEvent::Reconnected);
            return Some(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_five_seconds_and_reset() {
        let mut b = Backoff::new();
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Backoff::FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_reports_the_outage_once_and_the_return() {
        let (events, mut rx) = broadcast::channel(8);
        let mut tries = 0;
        let got = reconnect(
            &events,
            "gone".into(),
            || false,
            || {
                tries += 1;
                let n = tries;
                async move { if n < 3 { Err("not yet") } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(got, Some(3));
        assert_eq!(rx.try_recv().ok(), Some(ConnectionEvent::Disconnected { reason: "gone".into() }));
        assert_eq!(rx.try_recv().ok(), Some(ConnectionEvent::Reconnected));
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_stops_when_nobody_waits() {
        let (events, _rx) = broadcast::channel(8);
        let got: Option<()> =
            reconnect(&events, "gone".into(), || true, || async { Err::<(), _>("never") }).await;
        assert_eq!(got, None);
    }
}

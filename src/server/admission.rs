//! Admission before `hello`: a connection that has not finished its handshake and `hello` holds a
//! pending slot (a quarter of `max_connections`, beside the authenticated ones), may send only a few
//! bytes, and has a deadline. When the pending slots are full, a new connection closes the oldest
//! pending one, so idle or half-sent sockets cannot keep an authenticated client out.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Connections still in their handshake or before `hello`, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    state: Mutex<PendingState>,
}

#[derive(Debug, Default)]
struct PendingState {
    next_id: u64,
    waiting: VecDeque<(u64, CancellationToken)>,
}

impl Pending {
    /// Takes a pending slot; when all `max` are taken, the oldest holder is told to leave.
    pub(crate) fn admit(self: &Arc<Self>, max: usize) -> PendingSlot {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.waiting.len() >= max.max(1) {
            if let Some((_, oldest)) = state.waiting.pop_front() {
                oldest.cancel();
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        let evicted = CancellationToken::new();
        state.waiting.push_back((id, evicted.clone()));
        PendingSlot { pending: self.clone(), id, evicted }
    }

    /// How many connections are pending now.
    pub(crate) fn count(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).waiting.len()
    }

    fn leave(&self, id: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.waiting.retain(|(other, _)| *other != id);
    }
}

/// A connection's pending slot, given back when dropped (on `hello` or when the connection ends).
#[derive(Debug)]
pub(crate) struct PendingSlot {
    pending: Arc<Pending>,
    id: u64,
    /// Fired when a newer connection needed the slot.
    pub(crate) evicted: CancellationToken,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.pending.leave(self.id);
    }
}

/// The error a [`Metered`] socket reports when a client sends more before `hello` than allowed.
#[derive(Debug, thiserror::Error)]
#[error("more than the allowed bytes arrived before hello")]
pub(crate) struct TooMuchBeforeHello;

/// Whether a read error is [`TooMuchBeforeHello`].
pub(crate) fn is_too_much_before_hello(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<TooMuchBeforeHello>())
}

/// Bytes a socket may still deliver; `u64::MAX` once the limit is lifted.
pub(crate) type Allowance = Arc<AtomicU64>;

/// Lifts a [`Metered`] socket's limit (after `hello`).
pub(crate) fn lift(allowance: &Allowance) {
    allowance.store(u64::MAX, Ordering::Release);
}

/// A socket whose reads stop with [`TooMuchBeforeHello`] once the allowance is spent, so that what a
/// client can make the server buffer before it has authenticated (the HTTP upgrade, a partial frame) is
/// bounded by the allowance rather than by the frame limit.
#[derive(Debug)]
pub(crate) struct Metered<S> {
    inner: S,
    allowance: Allowance,
}

impl<S> Metered<S> {
    pub(crate) fn new(inner: S, allowance: u64) -> (Self, Allowance) {
        let allowance = Arc::new(AtomicU64::new(allowance));
        (Metered { inner, allowance: allowance.clone() }, allowance)
    }

    /// The socket underneath (once the allowance no longer matters).
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let left = this.allowance.load(Ordering::Acquire);
        if left == u64::MAX {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, TooMuchBeforeHello)));
        }
        // Read no more than the allowance into a small buffer of our own, so the caller's buffer is
        // filled only with what was allowed.
        let mut chunk = [0u8; 4096];
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.remaining()).min(chunk.len());
        let mut small = ReadBuf::new(&mut chunk[..want]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut small))?;
        let got = small.filled();
        buf.put_slice(got);
        let n = got.len() as u64;
        // Lifted meanwhile? Then it stays lifted.
        let _ = this.allowance.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            (now != u64::MAX).then(|| now.saturating_sub(n))
        });
        Poll::Ready(Ok(()))
    }
}

forward_writes!(Metered);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_metered_socket_delivers_its_allowance_then_refuses_until_lifted() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (mut metered, allowance) = Metered::new(server, 10);
        client.write_all(&[7u8; 30]).await.unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 10 {
            got += metered.read(&mut buf[got..]).await.unwrap();
        }
        assert_eq!(got, 10, "exactly the allowance");
        let err = metered.read(&mut buf).await.unwrap_err();
        assert!(is_too_much_before_hello(&err), "{err}");
        lift(&allowance);
        assert_eq!(metered.read(&mut buf).await.unwrap(), 20, "the rest once lifted");
    }

    #[test]
    fn a_full_pending_set_evicts_its_oldest() {
        let pending = Arc::new(Pending::default());
        let first = pending.admit(2);
        let second = pending.admit(2);
        assert_eq!(pending.count(), 2);
        let third = pending.admit(2);
        assert!(first.evicted.is_cancelled(), "the oldest made room");
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        assert_eq!(pending.count(), 2);
        drop(second);
        drop(first);
        assert_eq!(pending.count(), 1, "leaving gives the slot back, and an evicted one has none");
        drop(third);
        assert_eq!(pending.count(), 0);
    }
}

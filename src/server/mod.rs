//! `pubsub serve`: the engine over WebSocket, and plain HTTP on the same port. Accepts connections,
//! enforces limits and auth, and hands each connection to [`connection`] (which passes requests that
//! are not WebSocket upgrades to [`http`]); shuts down gracefully when its cancellation token fires.

/// Implements `AsyncWrite` for a wrapper `$wrapper<S>` whose own work is on the read side: every write
/// goes straight to its `inner` stream.
macro_rules! forward_writes {
    ($wrapper:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}

mod admission;
pub mod auth;
mod connection;
mod handler;
mod http;
mod pump;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::local::LocalBroker;
use crate::engine::ByteBudget;
use crate::protocol::ServerLimits;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Clients must present this token in `hello`; `None` (or an empty token, which is no token) lets
    /// anyone on the listen address in.
    pub token: Option<String>,
    /// Per-connection and server-wide limits.
    pub limits: ServeLimits,
    /// A connection whose socket accepts no data for this long is closed (its in-flight messages return).
    pub write_timeout: Duration,
    /// An HTTP event stream with nothing to send for this long gets a comment line, so that clients and
    /// proxies see it alive and a client that has gone is noticed.
    pub keep_alive: Duration,
    /// A persistent HTTP connection with no new request for this long is closed.
    pub idle_timeout: Duration,
    /// The origin (or `*`) whose browser pages may read HTTP answers and event streams (CORS); `None`
    /// sends no CORS headers, so browsers keep pages of other origins from reading them.
    pub allow_origin: Option<String>,
    /// A page served at `GET /` (with the token, as every route): a shared demo's read-only web view.
    /// `None`, as for `pubsub serve`, leaves `/` unrouted.
    pub page: Option<&'static str>,
}

/// Limits, each breach answered with an error frame (or, before `hello`, by closing the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Largest frame, bytes.
    pub max_frame_bytes: usize,
    /// Largest message (payload + key + headers), bytes.
    pub max_message_bytes: usize,
    /// Most connections past `hello`. Connections before it have a quarter of this again of their own
    /// ([`ServeLimits::max_pending`]).
    pub max_connections: usize,
    /// Most streams per connection.
    pub max_subscriptions: usize,
    /// Most unacked deliveries per connection (sum of stream prefetch).
    pub max_in_flight: u32,
    /// Frames queued for one connection before its streams wait (and lag).
    pub queue_frames: usize,
    /// Bytes one stream may hold in the server (messages the engine pushed to it, frames built from them
    /// and not yet written to the socket) before the engine stops pushing to it; a client may ask for
    /// less with `prefetch_bytes`, never more.
    pub max_stream_bytes: usize,
    /// Bytes one connection may hold in the server for all its streams and answers together.
    pub max_connection_bytes: usize,
    /// Time a new connection has for its WebSocket handshake.
    pub handshake_timeout: Duration,
    /// Time a connection has from its handshake to a complete `hello`.
    pub hello_timeout: Duration,
    /// Bytes a connection may send before its `hello` is accepted, handshake included (what an
    /// unauthenticated client can make the server buffer).
    pub max_hello_bytes: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_frame_bytes: 4 << 20,
            max_message_bytes: 1 << 20,
            max_connections: 1024,
            max_subscriptions: 256,
            max_in_flight: 100_000,
            queue_frames: 256,
            max_stream_bytes: 8 << 20,
            max_connection_bytes: 32 << 20,
            handshake_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            max_hello_bytes: 64 << 10,
        }
    }
}

impl ServeLimits {
    /// The limits as announced in `welcome`.
    pub fn announce(&self) -> ServerLimits {
        ServerLimits {
            max_frame_bytes: self.max_frame_bytes,
            max_message_bytes: self.max_message_bytes,
            max_subscriptions: self.max_subscriptions,
            max_in_flight: self.max_in_flight,
            max_stream_bytes: self.max_stream_bytes as u64,
            max_connection_bytes: self.max_connection_bytes as u64,
        }
    }

    /// Most connections in their handshake or before `hello`: a quarter of `max_connections`, at least
    /// one. When they are all taken, a new connection closes the oldest of them.
    pub fn max_pending(&self) -> usize {
        (self.max_connections / 4).max(1)
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            token: None,
            limits: ServeLimits::default(),
            write_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            allow_origin: None,
            page: None,
        }
    }
}

/// Refuses to expose an engine beyond loopback without a token, unless the user insists.
/// An empty token counts as none: it would let anyone in.
pub fn check_exposure(addr: &SocketAddr, token: Option<&str>, insecure: bool) -> Result<(), String> {
    let token = token.filter(|t| !t.is_empty());
    if addr.ip().is_loopback() || token.is_some() || insecure {
        return Ok(());
    }
    Err(format!(
        "refusing to listen on {addr} without a token (an empty token is none): anyone who can reach it \
         could read and publish. Pass --token T (clients use ws://{addr}?token=T), listen on 127.0.0.1, \
         or add --insecure"
    ))
}

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub broker: Arc<LocalBroker>,
    pub config: ServeConfig,
    /// Connections past `hello`.
    pub connections: AtomicU64,
    /// Connections in their handshake or before `hello`.
    pub pending: Arc<admission::Pending>,
    /// Each connection's byte budget, for `stats` to add up (no shared counter that every message of
    /// every connection would have to touch).
    pub budgets: Mutex<Vec<Weak<ByteBudget>>>,
    pub started: Instant,
    /// Fired by a `shutdown` request or a signal.
    pub shutdown: CancellationToken,
}

impl Shared {
    /// A new connection's byte budget, registered for [`Shared::held_bytes`].
    pub(crate) fn connection_budget(&self) -> Arc<ByteBudget> {
        let budget = ByteBudget::new(self.config.limits.max_connection_bytes as u64);
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        budgets.retain(|b| b.strong_count() > 0);
        budgets.push(Arc::downgrade(&budget));
        budget
    }

    /// Bytes held for all connections now.
    pub(crate) fn held_bytes(&self) -> u64 {
        let budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        budgets.iter().filter_map(Weak::upgrade).map(|b| b.used()).sum()
    }
}

/// A connection counted among the served ones (`max_connections`); dropping it leaves the count.
pub(crate) struct Served(Arc<Shared>);

impl Served {
    /// A place among the served connections, or `None` when they are all taken.
    pub(crate) fn take(shared: &Arc<Shared>) -> Option<Served> {
        let served = Served(shared.clone());
        let before = shared.connections.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        // Dropping `served` when there is no room gives the place back.
        (before < shared.config.limits.max_connections as u64).then_some(served)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Serves the engine behind `broker` on `listener` until `shutdown` fires, then closes every connection
/// with a reason and waits (at most 5 s) for them to finish their writes.
pub async fn run(
    listener: TcpListener,
    broker: Arc<LocalBroker>,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    run_on(vec![listener], broker, config, shutdown).await
}

/// [`run`] on several listeners (`serve --http ADDR` adds one): one server, whose limits count the
/// connections of all of them together.
pub async fn run_on(
    listeners: Vec<TcpListener>,
    broker: Arc<LocalBroker>,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut config = config;
    config.token = config.token.filter(|t| !t.is_empty());
    let shared = Arc::new(Shared {
        broker,
        config,
        connections: AtomicU64::new(0),
        pending: Arc::default(),
        budgets: Mutex::default(),
        started: Instant::now(),
        shutdown: shutdown.clone(),
    });
    let tracker = TaskTracker::new();
    let loops = listeners.into_iter().map(|listener| accept_loop(listener, &shared, &tracker));
    futures_util::future::join_all(loops).await;
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    Ok(())
}

/// Accepts connections on `listener` until the server shuts down.
async fn accept_loop(listener: TcpListener, shared: &Arc<Shared>, tracker: &TaskTracker) {
    let shutdown = &shared.shutdown;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: wait a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Taken here, in accept order, so that a full set of pending connections gives way oldest first.
        let slot = shared.pending.admit(shared.config.limits.max_pending());
        let cancel = shutdown.child_token();
        tracker.spawn(connection::serve(stream, peer, shared.clone(), cancel, slot));
    }
}

//! `pubsub serve`: the engine over WebSocket. Accepts connections, enforces limits and auth, and hands
//! each connection to [`connection`]; shuts down gracefully when its cancellation token fires.

pub mod auth;
mod connection;
mod handler;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::local::LocalBroker;
use crate::protocol::ServerLimits;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Clients must present this token in `hello`; `None` lets anyone on the listen address in.
    pub token: Option<String>,
    /// Per-connection and server-wide limits.
    pub limits: ServeLimits,
    /// A connection whose socket accepts no data for this long is closed (its in-flight messages return).
    pub write_timeout: Duration,
}

/// Limits, each breach answered with an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Largest frame, bytes.
    pub max_frame_bytes: usize,
    /// Largest message (payload + key + headers), bytes.
    pub max_message_bytes: usize,
    /// Most open connections.
    pub max_connections: usize,
    /// Most streams per connection.
    pub max_subscriptions: usize,
    /// Most unacked deliveries per connection (sum of stream prefetch).
    pub max_in_flight: u32,
    /// Frames queued for one connection before its streams wait (and lag).
    pub queue_frames: usize,
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
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig { token: None, limits: ServeLimits::default(), write_timeout: Duration::from_secs(30) }
    }
}

/// Refuses to expose an engine beyond loopback without a token, unless the user insists.
pub fn check_exposure(addr: &SocketAddr, token: Option<&str>, insecure: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || token.is_some() || insecure {
        return Ok(());
    }
    Err(format!(
        "refusing to listen on {addr} without a token: anyone who can reach it could read and publish. \
         Pass --token T (clients use ws://{addr}?token=T), listen on 127.0.0.1, or add --insecure"
    ))
}

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub broker: Arc<LocalBroker>,
    pub config: ServeConfig,
    pub connections: AtomicU64,
    pub started: Instant,
    /// Fired by a `shutdown` request or a signal.
    pub shutdown: CancellationToken,
}

/// Serves the engine behind `broker` on `listener` until `shutdown` fires, then closes every connection
/// with a reason and waits (at most 5 s) for them to finish their writes.
pub async fn run(
    listener: TcpListener,
    broker: Arc<LocalBroker>,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        broker,
        config,
        connections: AtomicU64::new(0),
        started: Instant::now(),
        shutdown: shutdown.clone(),
    });
    let tracker = TaskTracker::new();
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
        let shared = shared.clone();
        let cancel = shutdown.child_token();
        tracker.spawn(async move {
            let over = shared.connections.fetch_add(1, Ordering::AcqRel) as usize
                >= shared.config.limits.max_connections;
            connection::serve(stream, peer, shared.clone(), cancel, over).await;
            shared.connections.fetch_sub(1, Ordering::AcqRel);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    Ok(())
}

//! The one way commands hear that they should stop: SIGINT (Ctrl-C), SIGTERM or SIGHUP, alike.
//!
//! A command that waits on [`interrupted`] stops what it is doing, reports what it did, and exits 130.
//! Installing the handler also matters for commands started in the background by a non-interactive
//! shell, which inherit SIGINT ignored: with a handler of their own they stop on it too. SIGHUP is the
//! terminal closing under a running command (a closed window, a killed tmux session): without a handler
//! it killed the process on the spot, and a `demo --compare` left its topics on the brokers it compared.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Resolves at the first SIGINT, SIGTERM or SIGHUP. The handlers are installed when this is called, not
/// when the future is first polled, so a signal that comes before the first wait is not lost (nor fatal).
/// Never resolves if no signal can be watched. Call it inside the runtime.
pub fn interrupted() -> impl std::future::Future<Output = ()> + Send {
    let int = signal(SignalKind::interrupt()).ok();
    let term = signal(SignalKind::terminate()).ok();
    let hup = signal(SignalKind::hangup()).ok();
    async move {
        tokio::select! {
            () = first(int) => {}
            () = first(term) => {}
            () = first(hup) => {}
        }
    }
}

/// The first delivery of a watched signal; never, when it could not be watched.
async fn first(watched: Option<Signal>) {
    match watched {
        Some(mut s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

//! The one way commands hear that they should stop: SIGINT (Ctrl-C) or SIGTERM, alike.
//!
//! A command that waits on [`interrupted`] stops what it is doing, reports what it did, and exits 130.
//! Installing the handler also matters for commands started in the background by a non-interactive
//! shell, which inherit SIGINT ignored: with a handler of their own they stop on it too.

/// Resolves at the first SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal that comes before the first wait is not lost (nor fatal).
/// Never resolves if neither signal can be watched. Call it inside the runtime.
pub fn interrupted() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    async move {
        let int = async {
            match int.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let term = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = int => {}
            () = term => {}
        }
    }
}

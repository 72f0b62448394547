//! `pubsub demo NAME --share`: the live demo's private engine served to attendees over WebSocket and
//! HTTP (the same server as `pubsub serve`, always with a token), its state and narration published on
//! `$demo.status` (`crate::demo::share`), and the read-only web page at `/`.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::DemoArgs;
use crate::cli::output::{Stdout, note};
use crate::cli::{CliError, Context};
use crate::demo::Scenario;
use crate::demo::live::{DemoStatus, Live};
use crate::demo::share::{Narration, PAGE, broadcast, tee};
use crate::server::{self, ServeConfig};

/// Runs a shared live demo: in the teacher's TUI on a terminal (`on_terminal`), else served until
/// SIGINT or SIGTERM with the invitation on stdout.
pub async fn run(
    ctx: &Context,
    args: &DemoArgs,
    scenario: Scenario,
    on_terminal: bool,
) -> Result<(), CliError> {
    if ctx.broker_explicit {
        return Err(CliError::Usage(
            "--share serves the demo's own engine; on a broker of your own, attendees connect to that broker"
                .into(),
        ));
    }
    let (said_tx, said_rx) = mpsc::channel(1024);
    let (view_tx, view_rx) = mpsc::channel(1024);
    let narration = Narration::default();
    tokio::spawn(tee(said_rx, on_terminal.then(|| view_tx.clone()), narration.clone()));
    let live = Live::new(scenario.clone(), args.seed, Some(said_tx)).await?;
    let (controls_tx, controls_rx) = mpsc::channel(64);
    let (status_tx, status_rx) = watch::channel(live.status().await);
    let sharing =
        start(&live, &scenario, status_rx.clone(), narration, args.listen, ctx.token.clone()).await?;
    let broker = live.broker();
    let running = tokio::spawn(live.run(controls_rx, status_tx));
    let mut out = Stdout::new();
    for line in &sharing.lines {
        out.line(line)?;
    }
    out.flush()?;
    if !on_terminal {
        crate::cli::signal::interrupted().await;
        note("stopping the shared demo: closing the attendees' connections");
        drop(controls_tx);
        running.abort();
        sharing.stop().await;
        return Ok(());
    }
    // The invitation opens the teacher's narration too, so it stays in sight once the TUI is up.
    for line in &sharing.lines {
        let _ = view_tx.try_send(line.clone());
    }
    let opts = super::demo_tui_options(args);
    let publishers = scenario.publishers.iter().map(|p| (p.name.clone(), p.subjects.clone())).collect();
    let demo = crate::tui::DemoFeed {
        publishers,
        narration: Some(view_rx),
        controls: Some(controls_tx),
        status: Some(status_rx),
    };
    let ui = crate::tui::run_with_view(broker, opts, crate::tui::app::View::Topology, demo).await;
    running.abort();
    sharing.stop().await;
    ui.map_err(|e| CliError::Failed(e.to_string()))
}

/// A demo being shared; [`Sharing::stop`] closes the attendees' connections.
pub struct Sharing {
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// What to tell the attendees, line by line.
    pub lines: Vec<String>,
}

impl Sharing {
    /// Closes every attendee's connection (with a reason) and waits for the server to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}

/// Serves `live`'s engine on `listen` with `token` (a fresh one when `None`), publishing the state that
/// `status` carries and the lines `narration` records for watchers.
pub async fn start(
    live: &Live,
    scenario: &Scenario,
    status: watch::Receiver<DemoStatus>,
    narration: Narration,
    listen: SocketAddr,
    token: Option<String>,
) -> Result<Sharing, CliError> {
    // A shared demo always has a token: the room's network is not the teacher's laptop.
    let token = match token.filter(|t| !t.is_empty()) {
        Some(t) => t,
        None => server::auth::new_token().map_err(|e| CliError::Failed(e.to_string()))?,
    };
    server::check_exposure(&listen, Some(&token), false).map_err(CliError::Usage)?;
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        CliError::Failed(format!(
            "cannot listen on {listen}: {e}; choose another --listen (port 0 picks a free one)"
        ))
    })?;
    let addr = listener.local_addr()?;
    let config = ServeConfig { token: Some(token.clone()), page: Some(PAGE), ..ServeConfig::default() };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(server::run(listener, live.local_broker(), config, shutdown.clone()));
    tokio::spawn(broadcast(live.engine().clone(), status, narration));
    Ok(Sharing { shutdown, server, lines: invitation(scenario, addr, &token) })
}

/// The commands attendees type, for a demo served on `addr`.
pub fn invitation(scenario: &Scenario, addr: SocketAddr, token: &str) -> Vec<String> {
    let host = reachable_host(addr.ip());
    let url = format!("ws://{host}:{}?token={token}", addr.port());
    let mut lines = vec![
        format!("sharing {} on {addr}; attendees type:", scenario.name),
        format!("  watch:      pubsub join '{url}'"),
        format!("              (or: pubsub --broker '{url}' tui)"),
    ];
    if let Some(s) = scenario.subscriptions.first() {
        lines.push(format!(
            "  take part:  pubsub --broker '{url}' sub {} -s {}   (as user@host; --name NAME)",
            s.topic, s.name
        ));
    }
    lines.push(format!("  browser:    http://{host}:{}/?token={token}", addr.port()));
    lines
}

/// The host attendees reach the teacher at: the listen address, or for an unspecified one (0.0.0.0,
/// `::`) this machine's host name.
fn reachable_host(ip: IpAddr) -> String {
    if !ip.is_unspecified() {
        return match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
    }
    host_name().unwrap_or_else(|| "localhost".into())
}

/// This machine's host name, when it can be read.
pub fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())?;
    (!name.is_empty()).then_some(name)
}

/// `user@host`: the name an attendee's consumer takes when it gives none.
pub fn user_at_host() -> String {
    let user = ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "attendee".into());
    format!("{user}@{}", host_name().unwrap_or_else(|| "localhost".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_invitation_names_the_url_with_its_token_and_the_scenarios_first_subscription() {
        let scenario = Scenario::load("fan-out").unwrap();
        let lines = invitation(&scenario, "127.0.0.1:7078".parse().unwrap(), "t0k");
        let text = lines.join("\n");
        assert!(text.contains("pubsub join 'ws://127.0.0.1:7078?token=t0k'"), "{text}");
        assert!(text.contains("sub orders -s billing"), "{text}");
        assert!(text.contains("http://127.0.0.1:7078/?token=t0k"), "{text}");
        let any = invitation(&scenario, "0.0.0.0:7078".parse().unwrap(), "t");
        assert!(
            !any.join("\n").contains("0.0.0.0:7078?"),
            "an unspecified address is no place to connect to"
        );
    }

    #[test]
    fn user_at_host_has_both_parts() {
        let name = user_at_host();
        let (user, host) = name.split_once('@').unwrap();
        assert!(!user.is_empty() && !host.is_empty());
    }
}

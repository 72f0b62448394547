//! `pubsub serve`: run the engine as a WebSocket server in the foreground, as the user's background
//! daemon (`--detach`), or ask the daemon how it is (`status`) or to stop (`stop`).

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;
use crate::broker::daemon::{Endpoint, create_private_dir, spawn_daemon, wait_for_endpoint};
use crate::broker::local::LocalBroker;
use crate::broker::remote::RemoteBroker;
use crate::cli::output::{Stdout, note};
use crate::cli::{CliError, Context};
use crate::config::paths::Paths;
use crate::engine::{Engine, EngineConfig};
use crate::model::{Durability, SystemClock};
use crate::server::{self, ServeConfig, ServeLimits, auth};

/// Options of `pubsub serve`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeArgs {
    /// Manage the local daemon instead of serving.
    #[command(subcommand)]
    pub action: Option<ServeAction>,
    /// Address to listen on (port 0 picks a free port; the URL is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7077", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Also listen on this address, for HTTP clients on another port or interface (it answers
    /// WebSocket upgrades too; the main address answers HTTP as well). Same token and limits.
    #[arg(long, value_name = "ADDR", conflicts_with = "detach")]
    pub http: Option<SocketAddr>,
    /// Listen beyond loopback without a token (anyone who can reach the port can read and publish).
    #[arg(long)]
    pub insecure: bool,
    /// Keep everything in memory: the default for a foreground `serve`; the daemon keeps its data under
    /// the user's data directory unless it is given this.
    #[arg(long, conflicts_with = "data_dir")]
    pub memory: bool,
    /// Keep topics, messages and subscription state in this directory (created when missing; one
    /// process at a time). They survive restarts and crashes; see docs/STORAGE.md.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// On a data directory, when a publish to an auto-created topic returns: always, batch (group
    /// commit), interval:DURATION or never (`topic create --durability` sets it per topic).
    #[arg(long, value_name = "MODE", default_value = "batch", value_parser = parse_durability)]
    pub durability: Durability,
    /// Start the user's engine daemon in the background and return.
    #[arg(long)]
    pub detach: bool,
    /// Run as the daemon (what `--detach` and autostart launch).
    #[arg(long, hide = true)]
    pub daemon: bool,
    /// Worker threads of the server's runtime (default: one per core). On a machine it shares with its
    /// clients, fewer can serve more (docs/BENCHMARKS.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024), conflicts_with = "detach")]
    pub threads: Option<u16>,
    /// Largest frame accepted, bytes (raised to hold the largest message when that needs more).
    #[arg(long, default_value_t = ServeLimits::default().max_frame_bytes, value_name = "BYTES")]
    pub max_frame_bytes: usize,
    /// Largest message accepted (payload + key + headers), bytes.
    #[arg(long, default_value_t = ServeLimits::default().max_message_bytes, value_name = "BYTES")]
    pub max_message_bytes: usize,
    /// Most open connections.
    #[arg(long, default_value_t = ServeLimits::default().max_connections, value_name = "N")]
    pub max_connections: usize,
    /// Most streams per connection.
    #[arg(long, default_value_t = ServeLimits::default().max_subscriptions, value_name = "N")]
    pub max_subscriptions: usize,
    /// Most unacked deliveries per connection.
    #[arg(long, default_value_t = ServeLimits::default().max_in_flight, value_name = "N")]
    pub max_in_flight: u32,
    /// Let browser pages from this origin (`http://localhost:8000`, or `*` for any) read the plain
    /// HTTP answers and event streams (CORS headers; none by default). The token is still required.
    #[arg(long, value_name = "ORIGIN", value_parser = parse_origin)]
    pub allow_origin: Option<String>,
    /// Close a connection whose socket accepts nothing for this long (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub write_timeout: Duration,
    /// Close a plain HTTP connection kept open between requests (keep-alive) when no new request
    /// comes within this long (e.g. 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = parse_idle_timeout, value_name = "DURATION")]
    pub http_idle_timeout: Duration,
}

/// `serve status` and `serve stop`.
#[derive(Debug, Subcommand)]
pub enum ServeAction {
    /// Say whether the local daemon runs, where, and what it holds (exit 3 when it does not run).
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop the local daemon.
    Stop,
}

/// Runs `pubsub serve`.
pub async fn run(ctx: &Context, args: ServeArgs) -> Result<(), CliError> {
    match args.action {
        Some(ServeAction::Status { json }) => return status(json).await,
        Some(ServeAction::Stop) => return stop().await,
        None => {}
    }
    if args.detach {
        return detach(&daemon_settings(&args)).await;
    }
    let config = ServeConfig {
        token: ctx.token.clone(),
        limits: ServeLimits {
            // A frame must hold the largest message, base64 in a JSON envelope at worst.
            max_frame_bytes: args
                .max_frame_bytes
                .max(args.max_message_bytes.saturating_mul(4) / 3 + (64 << 10)),
            max_message_bytes: args.max_message_bytes,
            max_connections: args.max_connections,
            max_subscriptions: args.max_subscriptions,
            max_in_flight: args.max_in_flight,
            ..ServeLimits::default()
        },
        write_timeout: args.write_timeout,
        idle_timeout: args.http_idle_timeout,
        allow_origin: args.allow_origin.clone(),
        ..ServeConfig::default()
    };
    if args.daemon {
        let data_dir = match (args.memory, args.data_dir) {
            (true, _) => None,
            (false, Some(dir)) => Some(dir),
            (false, None) => Some(paths()?.data.join("engine")),
        };
        return run_daemon(config, data_dir, args.durability).await;
    }
    server::check_exposure(&args.listen, config.token.as_deref(), args.insecure).map_err(CliError::Usage)?;
    if let Some(http) = &args.http {
        server::check_exposure(http, config.token.as_deref(), args.insecure).map_err(CliError::Usage)?;
    }
    let (engine, kind) = open_engine(args.data_dir.as_deref(), args.durability)?;
    let listener = TcpListener::bind(args.listen).await.map_err(|e| bind_error(&args.listen, &e))?;
    let addr = listener.local_addr()?;
    let mut listeners = vec![listener];
    if let Some(http) = args.http {
        let extra = TcpListener::bind(http).await.map_err(|e| bind_error(&http, &e))?;
        note(&format!("also answering HTTP on http://{}", extra.local_addr()?));
        listeners.push(extra);
    }
    note(&format!("serving {kind} on ws://{addr} (Ctrl-C stops it)"));
    Stdout::new().line(&format!("ws://{addr}"))?;
    serve_until_signal(listeners, config, engine).await
}

/// The engine to serve: in memory, or opened (and recovered) from a data directory, with a phrase that
/// says which for the startup line. What recovery repaired is reported on stderr.
fn open_engine(
    data_dir: Option<&std::path::Path>,
    durability: Durability,
) -> Result<(Engine, String), CliError> {
    let Some(dir) = data_dir else {
        return Ok((Engine::new(), "an in-memory engine".into()));
    };
    let config = EngineConfig { default_durability: durability, ..EngineConfig::default() };
    let (engine, report) = Engine::open(dir, Arc::new(SystemClock), config)
        .map_err(|e| CliError::Failed(open_failure(dir, &e.to_string())))?;
    for finding in report.findings() {
        note(&format!("recovery: {finding}"));
    }
    let topics = engine.stats().topics;
    let ms = report.elapsed.as_secs_f64() * 1000.0;
    Ok((
        engine,
        format!(
            "the engine in {} ({topics} topic{}, opened in {ms:.1} ms)",
            dir.display(),
            if topics == 1 { "" } else { "s" }
        ),
    ))
}

/// Why `dir` did not open, ending with the command that sets damage aside when the store found some:
/// the daemon's error line is often all a user sees of it (autostart relays it). A hint of the store's
/// own that does not name the directory gives way to one that does.
fn open_failure(dir: &std::path::Path, why: &str) -> String {
    let text = format!("cannot open {}: {why}", dir.display());
    let repair = format!("pubsub store repair {}", dir.display());
    if text.contains(&repair) {
        return text;
    }
    let base = match text.find("pubsub store repair") {
        Some(at) => text[..at].rfind("; ").map_or(text.as_str(), |cut| &text[..cut]),
        None if text.contains("corrupt") => text.as_str(),
        None => return text,
    };
    format!("{base}; run '{repair}' to move what cannot be read aside")
}

/// A port that cannot be taken is this server's own problem, not an unreachable broker (exit 1).
fn bind_error(addr: &SocketAddr, e: &std::io::Error) -> CliError {
    let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
        "; something else listens there: choose another --listen (port 0 picks a free one)"
    } else {
        ""
    };
    CliError::Failed(format!("cannot listen on {addr}: {e}{hint}"))
}

async fn serve_until_signal(
    listeners: Vec<TcpListener>,
    config: ServeConfig,
    engine: Engine,
) -> Result<(), CliError> {
    let broker = Arc::new(LocalBroker::new(engine.clone(), "mem://"));
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let served = server::run_on(listeners, broker, config, shutdown).await;
    // A clean stop checkpoints every subscription so the next start replays nothing.
    let closed = engine.close();
    served?;
    closed.map_err(|e| CliError::Failed(format!("closing the data directory: {e}")))
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    tokio::select! {
        () = crate::cli::signal::interrupted() => {}
        () = shutdown.cancelled() => return,
    }
    note("stopping: closing connections");
    shutdown.cancel();
}

fn paths() -> Result<Paths, CliError> {
    Paths::discover().map_err(CliError::Usage)
}

/// The daemon: one per user (a lock file says so), on a free loopback port with a fresh token, announced
/// through the endpoint file and withdrawn from it on the way out.
async fn run_daemon(
    mut config: ServeConfig,
    data_dir: Option<std::path::PathBuf>,
    durability: Durability,
) -> Result<(), CliError> {
    let paths = paths()?;
    create_private_dir(&paths.runtime)?;
    let lock =
        OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(paths.serve_lock())?;
    if lock.try_lock().is_err() {
        let pid = Endpoint::read(&paths.endpoint()).map_or_else(|| "unknown".into(), |e| e.pid.to_string());
        return Err(CliError::Usage(format!(
            "a local engine daemon already runs for this user (pid {pid}, lock {})",
            paths.serve_lock().display()
        )));
    }
    let (engine, kind) = open_engine(data_dir.as_deref(), durability)?;
    let token = auth::new_token()?;
    config.token = Some(token.clone());
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("ws://{}", listener.local_addr()?);
    let endpoint = Endpoint { url: url.clone(), token, pid: std::process::id() };
    endpoint.write(&paths.endpoint())?;
    note(&format!("daemon pid {} serving {kind} on {url}", endpoint.pid));
    let result = serve_until_signal(vec![listener], config, engine).await;
    // Withdraw the endpoint only if it is still ours.
    if Endpoint::read(&paths.endpoint()).is_some_and(|e| e.pid == endpoint.pid) {
        let _ = std::fs::remove_file(paths.endpoint());
    }
    drop(lock);
    note("daemon stopped");
    result
}

async fn connect_daemon(paths: &Paths) -> Option<(Endpoint, RemoteBroker)> {
    let endpoint = Endpoint::read(&paths.endpoint())?;
    let broker = RemoteBroker::connect(&endpoint.url, Some(endpoint.token.clone())).await.ok()?;
    Some((endpoint, broker))
}

/// The flags of `serve --detach` that the daemon it starts must be given: those set to something other
/// than their default (the daemon starts from the defaults, as autostart starts it).
fn daemon_settings(args: &ServeArgs) -> Vec<String> {
    let defaults = ServeLimits::default();
    let mut out = Vec::new();
    let mut flag = |name: &str, value: Option<String>| {
        out.push(format!("--{name}"));
        out.extend(value);
    };
    if args.memory {
        flag("memory", None);
    }
    if let Some(dir) = &args.data_dir {
        flag("data-dir", Some(dir.display().to_string()));
    }
    if args.durability.to_string() != "batch" {
        flag("durability", Some(args.durability.to_string()));
    }
    let limits = [
        ("max-frame-bytes", args.max_frame_bytes, defaults.max_frame_bytes),
        ("max-message-bytes", args.max_message_bytes, defaults.max_message_bytes),
        ("max-connections", args.max_connections, defaults.max_connections),
        ("max-subscriptions", args.max_subscriptions, defaults.max_subscriptions),
        ("max-in-flight", args.max_in_flight as usize, defaults.max_in_flight as usize),
    ];
    for (name, value, default) in limits {
        if value != default {
            flag(name, Some(value.to_string()));
        }
    }
    if let Some(origin) = &args.allow_origin {
        flag("allow-origin", Some(origin.clone()));
    }
    for (name, value) in
        [("write-timeout", args.write_timeout), ("http-idle-timeout", args.http_idle_timeout)]
    {
        if value != DEFAULT_TIMEOUT {
            flag(name, Some(humantime::format_duration(value).to_string()));
        }
    }
    out
}

/// The default of `--write-timeout` and `--http-idle-timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

async fn detach(settings: &[String]) -> Result<(), CliError> {
    let paths = paths()?;
    if let Some((endpoint, _)) = connect_daemon(&paths).await {
        let unchanged = if settings.is_empty() {
            String::new()
        } else {
            format!(
                "; it keeps its settings (not {}): `pubsub serve stop` first to change them",
                settings.join(" ")
            )
        };
        note(&format!(
            "a local engine daemon already runs (pid {}, {}){unchanged}",
            endpoint.pid, endpoint.url
        ));
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut starting = spawn_daemon(&exe, &paths, settings)?;
    let pid = starting.pid();
    let endpoint = wait_for_endpoint(&paths, &mut starting, Duration::from_secs(10)).await?;
    note(&format!(
        "started a local engine daemon (pid {pid}, {}); logs in {}",
        endpoint.url,
        paths.serve_log().display()
    ));
    Ok(())
}

async fn status(json: bool) -> Result<(), CliError> {
    let paths = paths()?;
    let Some((endpoint, broker)) = connect_daemon(&paths).await else {
        return Err(CliError::Broker(BrokerError::Unreachable {
            url: "local".into(),
            reason: "no local engine daemon is running".into(),
        }));
    };
    let stats = broker.stats().await?;
    let mut out = Stdout::new();
    if json {
        let value = serde_json::json!({
            "running": true, "pid": endpoint.pid, "url": endpoint.url, "version": stats.version,
            "uptime_s": stats.uptime_s, "connections": stats.connections, "engine": stats.engine,
            "log": paths.serve_log(),
        });
        return out.line(&value.to_string());
    }
    out.line(&format!("running: pid {}, {}, pubsub {}", endpoint.pid, endpoint.url, stats.version))?;
    out.line(&format!(
        "uptime {}s, {} connection(s), {} topic(s), {} subscription(s), {} tap(s)",
        stats.uptime_s, stats.connections, stats.engine.topics, stats.engine.subscriptions, stats.engine.taps
    ))?;
    out.line(&format!("log: {}", paths.serve_log().display()))
}

async fn stop() -> Result<(), CliError> {
    let paths = paths()?;
    let Some((endpoint, broker)) = connect_daemon(&paths).await else {
        note("no local engine daemon is running");
        return Ok(());
    };
    broker.shutdown().await?;
    drop(broker);
    for _ in 0..200 {
        if Endpoint::read(&paths.endpoint()).is_none_or(|e| e.pid != endpoint.pid) {
            note(&format!("stopped the local engine daemon (pid {})", endpoint.pid));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(CliError::Usage(format!("the daemon (pid {}) did not stop within 10 s", endpoint.pid)))
}

/// Closes every descriptor above 2 that this process inherited. A daemon outlives whoever started it,
/// and an inherited pipe it kept open would make the reader of that pipe wait for the daemon's end
/// (`cargo test 2>&1 | tee log` hung until a stray daemon was killed). Called by `serve --daemon` before
/// the runtime starts, while nothing else in the process has opened anything or could.
pub fn close_inherited_descriptors() {
    let Ok(listing) = std::fs::read_dir("/proc/self/fd") else { return };
    let inherited: Vec<i32> = listing
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    // The listing's own descriptor is among them, already closed again: that close fails harmlessly.
    for fd in inherited {
        let _ = nix::unistd::close(fd);
    }
}

/// An idle timeout for kept HTTP connections: a duration above zero (zero would close every
/// connection as soon as its answer is written, which `Connection: close` already does).
fn parse_idle_timeout(text: &str) -> Result<Duration, String> {
    let d = crate::cli::parse::parse_duration(text)?;
    if d.is_zero() {
        return Err(format!("\"{text}\" is no time at all: give a duration above zero, such as 30s"));
    }
    Ok(d)
}

/// Parses `--allow-origin`: one origin or `*`, which goes into a header line as it is.
fn parse_origin(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_control() || c.is_whitespace() || c == ',') {
        return Err(format!("\"{s}\" is not an origin: give one, like http://localhost:8000, or *"));
    }
    Ok(s.to_string())
}

/// Parses `--durability`.
fn parse_durability(s: &str) -> Result<Durability, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::open_failure;
    use std::path::Path;

    #[test]
    fn a_corrupt_store_is_answered_with_the_repair_command_for_its_directory() {
        let dir = Path::new("/d/engine");
        let hint = "run 'pubsub store repair /d/engine' to move what cannot be read aside";
        let corrupt = "storage: /d/engine/x.log: corrupt at offset 9: CRC mismatch";
        assert_eq!(open_failure(dir, corrupt), format!("cannot open /d/engine: {corrupt}; {hint}"));
        // The store's own hint, whatever its words, gives way to one naming the directory.
        for store_hint in ["run `pubsub store repair DIR` to move it aside", "`pubsub store repair` helps"] {
            let why = format!("{corrupt}; {store_hint}");
            assert_eq!(open_failure(dir, &why), format!("cannot open /d/engine: {corrupt}; {hint}"));
        }
        // One that names it already, and errors that are not damage, stay as they are.
        let named = "storage: lost metadata. Run `pubsub store repair /d/engine` to recover them";
        assert_eq!(open_failure(dir, named), format!("cannot open /d/engine: {named}"));
        let busy = "storage: data directory /d/engine is in use by process 7";
        assert_eq!(open_failure(dir, busy), format!("cannot open /d/engine: {busy}"));
    }
}

//! The shared local engine (`--broker local`): finding the user's daemon through its endpoint file,
//! and starting one in the background when none runs.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::BrokerError;
use super::remote::RemoteBroker;
use crate::config::paths::Paths;

/// What a running daemon publishes about itself (file mode 0600: the token is a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Where it listens, `ws://127.0.0.1:PORT`.
    pub url: String,
    /// The token clients must present.
    pub token: String,
    /// Its process id.
    pub pid: u32,
}

impl Endpoint {
    /// Reads the endpoint file, if there is a readable one.
    pub fn read(path: &Path) -> Option<Endpoint> {
        let text = fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the endpoint file atomically with mode 0600.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(serde_json::to_string_pretty(self).unwrap_or_default().as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    }
}

pub use crate::config::paths::create_private_dir;

/// How `local` behaves when no daemon runs.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Start a daemon when none runs.
    pub autostart: bool,
    /// The `pubsub` executable to start it with.
    pub exe: Option<PathBuf>,
}

/// Connects to the user's daemon, starting one first when allowed and needed. The second value is a
/// note for the user when a daemon was started.
pub async fn connect_local(opts: &LocalOptions) -> Result<(RemoteBroker, Option<String>), BrokerError> {
    let paths =
        Paths::discover().map_err(|reason| BrokerError::Unreachable { url: "local".into(), reason })?;
    if let Some(broker) = try_existing(&paths).await {
        return Ok((broker, None));
    }
    if !opts.autostart {
        return Err(BrokerError::Unreachable {
            url: "local".into(),
            reason:
                "no local engine daemon is running (autostart is off); start one with `pubsub serve --detach`"
                    .into(),
        });
    }
    let exe = match &opts.exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe()
            .map_err(|e| unreachable(format!("cannot find the pubsub executable: {e}")))?,
    };
    // One client at a time checks and starts, so a race of two ends with one daemon.
    let lock = lock_exclusive(paths.autostart_lock()).await?;
    if let Some(broker) = try_existing(&paths).await {
        drop(lock);
        return Ok((broker, None));
    }
    let mut starting = spawn_daemon(&exe, &paths, &[])?;
    let pid = starting.pid();
    let endpoint = wait_for_endpoint(&paths, &mut starting, Duration::from_secs(10)).await?;
    let broker =
        RemoteBroker::connect_following(&endpoint.url, Some(endpoint.token.clone()), Some(paths.endpoint()))
            .await?;
    drop(lock);
    let note =
        format!("started a local engine daemon (pid {pid}, {}); `pubsub serve stop` stops it", endpoint.url);
    Ok((broker, Some(note)))
}

fn unreachable(reason: String) -> BrokerError {
    BrokerError::Unreachable { url: "local".into(), reason }
}

async fn try_existing(paths: &Paths) -> Option<RemoteBroker> {
    let endpoint = Endpoint::read(&paths.endpoint())?;
    RemoteBroker::connect_following(&endpoint.url, Some(endpoint.token), Some(paths.endpoint())).await.ok()
}

async fn lock_exclusive(path: PathBuf) -> Result<File, BrokerError> {
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let file = OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(&path)?;
        file.lock()?;
        Ok::<File, std::io::Error>(file)
    })
    .await
    .map_err(|e| unreachable(e.to_string()))?
    .map_err(|e| unreachable(format!("cannot take the autostart lock: {e}")))
}

/// A daemon that was started and is not known to be up yet.
#[derive(Debug)]
pub struct Starting {
    child: Child,
    /// The log's length before the child started: what follows is the child's to say.
    log_from: u64,
}

impl Starting {
    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `exe serve --daemon` (with `settings`, more `serve` flags) detached from this terminal,
/// logging to the log directory.
pub fn spawn_daemon(exe: &Path, paths: &Paths, settings: &[String]) -> Result<Starting, BrokerError> {
    let log = paths
        .open_serve_log()
        .map_err(|e| unreachable(format!("cannot open {}: {e}", paths.serve_log().display())))?;
    let log_from = log.metadata().map_or(0, |m| m.len());
    let err_log = log.try_clone().map_err(|e| unreachable(e.to_string()))?;
    let mut command = Command::new(exe);
    command.args(["serve", "--daemon"]).args(settings).stdin(Stdio::null()).stdout(log).stderr(err_log);
    // Its own process group: Ctrl-C in the terminal that started it does not stop it. Descriptors this
    // process inherited without close-on-exec reach the daemon too; it closes them as it starts.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().map_err(|e| unreachable(format!("cannot start {}: {e}", exe.display())))?;
    Ok(Starting { child, log_from })
}

/// Waits until the daemon being started has written its endpoint file. A daemon that exits first (it
/// could not open its data directory, say) ends the wait at once with the error it logged.
pub async fn wait_for_endpoint(
    paths: &Paths,
    starting: &mut Starting,
    within: Duration,
) -> Result<Endpoint, BrokerError> {
    let started = Instant::now();
    let pid = starting.pid();
    loop {
        if let Some(endpoint) = Endpoint::read(&paths.endpoint())
            && endpoint.pid == pid
        {
            return Ok(endpoint);
        }
        if let Ok(Some(status)) = starting.child.try_wait() {
            return Err(unreachable(startup_failure(paths, starting.log_from, pid, status)));
        }
        if started.elapsed() > within {
            return Err(unreachable(format!(
                "the daemon (pid {pid}) did not come up within {within:?}; see {}",
                paths.serve_log().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Why a daemon exited before it was ready: the last error line it wrote to the log after `from`.
fn startup_failure(paths: &Paths, from: u64, pid: u32, status: ExitStatus) -> String {
    let said = log_since(&paths.serve_log(), from).unwrap_or_default();
    let lines = || said.lines().map(str::trim).filter(|l| !l.is_empty());
    let error = lines().filter_map(|l| l.strip_prefix("pubsub: error: ")).next_back();
    match error.or_else(|| lines().next_back()) {
        Some(line) => format!("the local engine daemon (pid {pid}) could not start: {line}"),
        None => format!(
            "the local engine daemon (pid {pid}) exited ({status}) before it was ready; see {}",
            paths.serve_log().display()
        ),
    }
}

/// What the log holds after `from`, at most its last 64 KiB.
fn log_since(path: &Path, from: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(from.max(len.saturating_sub(64 * 1024))))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn endpoint_file_is_private_and_round_trips() {
        let dir = std::env::temp_dir().join(format!("pubsub-endpoint-test-{}", std::process::id()));
        let path = dir.join("run").join("endpoint.json");
        let endpoint = Endpoint { url: "ws://127.0.0.1:1".into(), token: "secret".into(), pid: 42 };
        endpoint.write(&path).unwrap();
        assert_eq!(Endpoint::read(&path), Some(endpoint));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = fs::remove_dir_all(&dir);
    }
}

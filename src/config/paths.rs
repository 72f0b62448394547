//! Directories, from the platform's conventions (`directories`), or all under `PUBSUB_HOME` when that
//! is set (tests and portable setups use it to keep everything in one place).
//!
//! The runtime directory holds the endpoint file (with the daemon's token) and the log directory holds
//! what the daemon says, so both are made 0700 and the log 0600, also when they exist already with
//! wider modes (an older version, or a umask of 000, made them so).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use directories::ProjectDirs;

/// The directories pubsub uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Durable engine data.
    pub data: PathBuf,
    /// Runtime files: the daemon's endpoint file and locks.
    pub runtime: PathBuf,
    /// Logs (the daemon writes `serve.log` here).
    pub logs: PathBuf,
    /// Configuration.
    pub config: PathBuf,
}

impl Paths {
    /// The directories for this user.
    pub fn discover() -> Result<Paths, String> {
        if let Some(home) = std::env::var_os("PUBSUB_HOME").filter(|h| !h.is_empty()) {
            let home = PathBuf::from(home);
            return Ok(Paths {
                data: home.join("data"),
                runtime: home.join("run"),
                logs: home.join("log"),
                config: home.join("config"),
            });
        }
        let dirs = ProjectDirs::from("", "", "pubsub")
            .ok_or("cannot find a home directory for pubsub's files; set PUBSUB_HOME")?;
        let state =
            dirs.state_dir().map(PathBuf::from).unwrap_or_else(|| dirs.data_local_dir().to_path_buf());
        Ok(Paths {
            data: dirs.data_dir().to_path_buf(),
            // Without XDG_RUNTIME_DIR (root shells, containers) the state directory stands in.
            runtime: dirs.runtime_dir().map(PathBuf::from).unwrap_or_else(|| state.join("run")),
            logs: state.join("log"),
            config: dirs.config_dir().to_path_buf(),
        })
    }

    /// The configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.config.join("config.toml")
    }

    /// The daemon's endpoint file.
    pub fn endpoint(&self) -> PathBuf {
        self.runtime.join("endpoint.json")
    }

    /// The lock clients hold while they check for and start a daemon.
    pub fn autostart_lock(&self) -> PathBuf {
        self.runtime.join("autostart.lock")
    }

    /// The lock a running daemon holds for its lifetime.
    pub fn serve_lock(&self) -> PathBuf {
        self.runtime.join("serve.lock")
    }

    /// The daemon's log file.
    pub fn serve_log(&self) -> PathBuf {
        self.logs.join("serve.log")
    }

    /// Opens the daemon's log for appending, readable only by this user, creating its directory.
    pub fn open_serve_log(&self) -> std::io::Result<File> {
        create_private_dir(&self.logs)?;
        let log = OpenOptions::new().append(true).create(true).mode(0o600).open(self.serve_log())?;
        if log.metadata()?.permissions().mode() & 0o077 != 0 {
            log.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        Ok(log)
    }
}

/// Creates a directory (and parents) readable only by this user; a directory that exists with a wider
/// mode is narrowed to 0700 (its parents are left as they are: they may be shared, like `~/.local`).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    if fs::metadata(dir)?.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

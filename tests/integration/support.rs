//! Helpers shared by the integration tests.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use assert_cmd::cargo::CommandCargoExt;

use pubsub::engine::{
    Delivery, Engine, EngineConfig, FetchOptions, ManualClock, Name, PublishRequest, SubscriptionConfig,
    Timestamp,
};

/// An engine on a manual clock standing at a fixed, realistic time.
pub fn engine() -> (Engine, Arc<ManualClock>) {
    engine_with(EngineConfig::default())
}

pub fn engine_with(config: EngineConfig) -> (Engine, Arc<ManualClock>) {
    let clock = ManualClock::new(Timestamp::from_micros(1_780_000_000_000_000));
    (Engine::with_clock(clock.clone(), config), clock)
}

pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

pub fn publish(engine: &Engine, subject: &str, payload: &str) -> u64 {
    engine.publish(PublishRequest::new(name(subject), payload.to_string())).unwrap().seq
}

pub fn subscribe(engine: &Engine, sub: &str, topic: &str, tweak: impl FnOnce(&mut SubscriptionConfig)) {
    let mut config = SubscriptionConfig::new(name(sub), name(topic));
    config.start = pubsub::engine::StartPosition::All;
    tweak(&mut config);
    engine.create_subscription(config).unwrap();
}

pub fn fetch(engine: &Engine, sub: &str, consumer: &str, max: usize) -> Vec<Delivery> {
    engine
        .try_fetch(&name(sub), consumer, &FetchOptions { max_msgs: max, ..FetchOptions::default() })
        .unwrap()
}

pub fn seqs(batch: &[Delivery]) -> Vec<u64> {
    batch.iter().map(|d| d.message.seq).collect()
}

/// A private PUBSUB_HOME; dropping it stops any daemon started under it.
pub struct Home(pub PathBuf);

impl Home {
    pub fn new(tag: &str) -> Home {
        let dir = std::env::temp_dir().join(format!("pubsub-daemon-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Home(dir)
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::cargo_bin("pubsub").unwrap();
        cmd.env("PUBSUB_HOME", &self.0).env_remove("PUBSUB_BROKER").env_remove("PUBSUB_TOKEN");
        cmd
    }

    /// Runs pubsub with `input` on stdin.
    pub fn run_with(&self, args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
        use std::io::Write;
        let mut child = self
            .cmd()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs a shell script with `pubsub` on the PATH and this home.
    pub fn sh(&self, script: &str) -> (i32, String, String) {
        let bin = assert_cmd::cargo::cargo_bin("pubsub");
        let dir = bin.parent().unwrap();
        let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
        outcome(
            Command::new("sh")
                .args(["-c", script])
                .env("PATH", path)
                .env("PUBSUB_HOME", &self.0)
                .env_remove("PUBSUB_BROKER")
                .env_remove("PUBSUB_TOKEN"),
        )
    }

    /// Starts the daemon up front, so later commands print nothing about starting one.
    pub fn with_daemon(tag: &str) -> Home {
        let home = Home::new(tag);
        let (code, _, stderr) = home.run(&["serve", "--detach"]);
        assert_eq!(code, 0, "{stderr}");
        home
    }

    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        outcome(self.cmd().args(args))
    }

    /// A pubsub command against `url`, not yet run.
    pub fn at(&self, url: &str, args: &[&str]) -> Command {
        let mut cmd = self.cmd();
        cmd.arg("--broker").arg(url).args(args);
        cmd
    }
}

/// Runs a command to its end: exit code (-1 for a signal), stdout and stderr as text.
/// The lines a spawned child prints on its piped stdout, as they come, read by a thread of their own.
pub fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

pub fn outcome(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self.cmd().args(["serve", "stop"]).output();
        // Whatever still runs under this home (a daemon `serve stop` could not reach, one that was still
        // starting, one whose endpoint file is gone) is ended too: a test leaves no process behind.
        for pid in daemons_under(&self.0) {
            end_process(pid);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The live `pubsub serve --daemon` processes whose PUBSUB_HOME is `home`, found through /proc (the
/// endpoint file names only a daemon that finished starting and has not withdrawn it).
pub fn daemons_under(home: &std::path::Path) -> Vec<u32> {
    let wanted = format!("PUBSUB_HOME={}", home.display());
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    procs
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
            let cmdline = read("cmdline");
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let daemon = args.windows(2).any(|w| w == [&b"serve"[..], &b"--daemon"[..]]);
            daemon && read("environ").split(|b| *b == 0).any(|v| v == wanted.as_bytes()) && is_running(*pid)
        })
        .collect()
}

/// Whether `pid` is a process that has not ended (a zombie waiting for its parent has).
pub fn is_running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // `pid (comm) STATE …`; comm may hold spaces and parentheses, so read after the last `)`.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z")
}

/// Asks `pid` to stop (SIGTERM, so it closes its data directory), and kills it after 5 s.
fn end_process(pid: u32) {
    let signal = |name: &str| Command::new("kill").args([name, &pid.to_string()]).output();
    let _ = signal("-TERM");
    let started = std::time::Instant::now();
    while is_running(pid) && started.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if is_running(pid) {
        let _ = signal("-KILL");
    }
}

/// A private CA and a server certificate for 127.0.0.1 it signed, as PEM file paths.
pub struct TestCerts {
    /// The CA certificate.
    pub ca: String,
    /// The server's private key.
    pub key: String,
    /// The server's certificate.
    pub cert: String,
}

/// Makes a CA and a 127.0.0.1 server certificate with `openssl` in `dir`, readable by any user (brokers
/// that drop privileges read them too).
pub fn test_certificates(dir: &std::path::Path) -> TestCerts {
    use std::os::unix::fs::PermissionsExt;
    let path = |f: &str| dir.join(f).display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let (ca, ca_key, key, csr, cert, ext) = (
        path("ca.pem"),
        path("ca.key"),
        path("server.key"),
        path("server.csr"),
        path("server.pem"),
        path("ext.cnf"),
    );
    let ca_subject = "/CN=pubsub test CA";
    openssl(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", ca_subject, "-keyout",
        &ca_key, "-out", &ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    for f in [&key, &cert, &ca] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    TestCerts { ca, key, cert }
}

/// Waits (up to 10 s, polling every 20 ms) until a broker a test started accepts connections on
/// 127.0.0.1:`port`; fails the test naming `what` otherwise.
pub fn wait_until_listening(port: u16, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs one of the Python scripts under `tests/interop/` with `args` off the async runtime's threads,
/// and fails the test unless it exits 0 printing `OK`.
pub async fn python_script_says_ok(script: &str, args: Vec<String>) {
    let path = format!("{}/tests/interop/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::task::spawn_blocking(move || Command::new("python3").arg(path).args(args).output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stdout.trim() == "OK", "{script} failed:\n{stdout}\n{stderr}");
}

/// A fresh directory under the system temp dir for an engine's data, removed when dropped.
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// A directory of its own for this test (`tag`), this process and this call.
    pub fn new(tag: &str) -> DataDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pubsub-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        DataDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The durable engine in `dir`, on `clock`, with the default settings.
pub fn open_engine(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Engine {
    Engine::open(dir, clock.clone(), EngineConfig::default()).unwrap().0
}

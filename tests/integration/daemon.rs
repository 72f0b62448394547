//! The shared local engine through the real binary: autostart, status, stop, the endpoint file, refusals.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::support::Home;

#[test]
fn status_without_a_daemon_exits_3_and_no_autostart_refuses() {
    let home = Home::new("absent");
    let (code, _, stderr) = home.run(&["serve", "status"]);
    assert_eq!(code, 3, "{stderr}");
    let (code, _, stderr) = home.run(&["--no-autostart", "bench", "-n", "10"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no local engine daemon is running"), "{stderr}");
    assert!(!home.0.join("run/endpoint.json").exists());
}

#[test]
fn first_client_starts_the_daemon_once_and_stop_ends_it() {
    let home = Home::new("lifecycle");
    let (code, _, stderr) = home.run(&["bench", "-n", "200"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("started a local engine daemon"), "{stderr}");
    let endpoint = home.0.join("run/endpoint.json");
    let mode = std::fs::metadata(&endpoint).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the endpoint file holds the token");
    let (code, _, stderr) = home.run(&["bench", "-n", "200"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("started"), "the second client reuses the daemon: {stderr}");
    let (code, stdout, _) = home.run(&["serve", "status", "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(status["running"], true);
    let (code, _, stderr) = home.run(&["serve", "stop"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    assert!(!endpoint.exists(), "the daemon withdrew its endpoint");
    assert_eq!(home.run(&["serve", "status"]).0, 3);
}

#[test]
fn two_clients_starting_at_once_end_with_one_daemon() {
    let home = Home::new("race");
    let children: Vec<_> = (0..3)
        .map(|_| {
            home.cmd()
                .args(["bench", "-n", "50"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut started = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        started +=
            usize::from(String::from_utf8_lossy(&out.stderr).contains("started a local engine daemon"));
    }
    assert_eq!(started, 1, "exactly one client started a daemon");
    let (_, _, stderr) = home.run(&["serve", "--detach"]);
    assert!(stderr.contains("already runs"), "{stderr}");
}

/// `serve --detach` hands its settings to the daemon it starts (they used to be dropped for the
/// defaults); a daemon already running keeps its own, and says so.
#[test]
fn serve_detach_starts_the_daemon_with_its_flags() {
    let home = Home::new("detach-flags");
    let (code, _, stderr) = home.run(&["serve", "--detach", "--memory", "--max-message-bytes", "100"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = home.run(&["pub", "t", &"x".repeat(200)]);
    assert_ne!(code, 0, "a 200-byte message passed a 100-byte limit");
    assert!(stderr.contains("100"), "{stderr}");
    let (code, _, stderr) = home.run(&["pub", "t", "small"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = home.run(&["serve", "--detach", "--write-timeout", "5s"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("already runs") && stderr.contains("--write-timeout 5s"), "{stderr}");
    // --memory reached it too: its topics are kept in memory, not under the data directory.
    let (code, out, stderr) = home.run(&["topic", "info", "t"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.lines().any(|l| l.starts_with("storage") && l.trim_end().ends_with("memory")), "{out}");
}

#[test]
fn serving_beyond_loopback_without_a_token_is_refused() {
    let home = Home::new("exposed");
    let (code, _, stderr) = home.run(&["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--token"), "{stderr}");
}

#[test]
fn foreground_serve_prints_its_url_and_stops_on_sigterm() {
    let home = Home::new("foreground");
    let mut child = home
        .cmd()
        .args(["serve", "--listen", "127.0.0.1:0", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().to_string();
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    let (code, _, stderr) = home.run(&["--broker", &url, "bench", "-n", "100"]);
    assert_eq!(code, 0, "{stderr}");
    // `--threads 1`: the main thread and one runtime worker, nothing else yet.
    let threads = std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap().count();
    assert_eq!(threads, 2, "one worker thread");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
}

#[test]
fn a_subscriber_follows_the_local_daemon_to_its_new_endpoint_after_a_restart() {
    let home = Home::with_daemon("daemon-restart");
    let mut sub = home
        .cmd()
        .args(["sub", "news", "--timeout", "60s", "--format", "raw"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = crate::support::stdout_lines(&mut sub);
    // Publishes `text` until the subscriber prints it (a live tap sees only what comes after it joined).
    let publish_until_seen = |text: &str| {
        let started = std::time::Instant::now();
        loop {
            let (code, _, stderr) = home.run(&["pub", "news", text]);
            assert_eq!(code, 0, "{stderr}");
            if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(300))
                && line == text
            {
                return;
            }
            assert!(started.elapsed().as_secs() < 30, "the subscriber never printed {text:?}");
        }
    };
    publish_until_seen("before");
    let (code, _, stderr) = home.run(&["serve", "stop"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = home.run(&["serve", "--detach"]);
    assert_eq!(code, 0, "{stderr}");
    // The new daemon listens on another port with another token; the subscriber must find it there.
    publish_until_seen("after");
    let _ = sub.kill();
    let _ = sub.wait();
}

/// The pid in a home's endpoint file.
fn endpoint_pid(home: &Home) -> u32 {
    let text = std::fs::read_to_string(home.0.join("run/endpoint.json")).unwrap();
    let endpoint: serde_json::Value = serde_json::from_str(&text).unwrap();
    u32::try_from(endpoint["pid"].as_u64().unwrap()).unwrap()
}

/// Waits (up to 10 s) until `pid` has ended.
fn wait_gone(pid: u32) -> bool {
    let started = std::time::Instant::now();
    while crate::support::is_running(pid) {
        if started.elapsed() > std::time::Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

#[test]
fn a_corrupt_record_fails_autostart_at_once_with_the_daemons_error_and_the_repair_command() {
    let home = Home::new("corrupt");
    let messages: Vec<String> = (1..=10).map(|i| format!("order number {i}")).collect();
    let mut args = vec!["pub", "orders"];
    args.extend(messages.iter().map(String::as_str));
    let (code, _, stderr) = home.run(&args);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = home.run(&["serve", "stop"]);
    assert_eq!(code, 0, "{stderr}");
    // docs/STORAGE.md: the index holds `rel_seq u32 | pos u32 | time i64` per record, a record is
    // `len u32 | crc u32 | …` with the payload last. Flip the last payload byte of the 4th record.
    let engine = home.0.join("data/engine");
    let segment = engine.join("topics/orders/0/00000000000000000001");
    let index = std::fs::read(segment.with_extension("idx")).unwrap();
    assert_eq!(index.len(), 10 * 16, "one index entry per message");
    let pos = u32::from_le_bytes(index[3 * 16 + 4..3 * 16 + 8].try_into().unwrap()) as usize;
    let log_path = segment.with_extension("log");
    let mut log = std::fs::read(&log_path).unwrap();
    let len = u32::from_le_bytes(log[pos..pos + 4].try_into().unwrap()) as usize;
    let last = pos + 8 + len - 1;
    assert_eq!(log[last], b'4', "the 4th record ends with its payload");
    log[last] ^= 0xff;
    std::fs::write(&log_path, &log).unwrap();

    let (code, _, stderr) = home.run(&["topics"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(!stderr.contains("did not come up"), "the error came at once, not after a wait: {stderr}");
    assert!(stderr.contains("could not start"), "{stderr}");
    assert!(stderr.contains(&log_path.display().to_string()), "the damaged file is named: {stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
    let repair = format!("pubsub store repair {}", engine.display());
    assert!(stderr.contains(&repair), "the repair command names the directory: {stderr}");
    assert!(stderr.trim_end().ends_with("to move what cannot be read aside"), "{stderr}");
    assert!(crate::support::daemons_under(&home.0).is_empty(), "no daemon runs");
}

#[test]
fn runtime_and_log_directories_are_private_even_when_they_existed_open() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new("modes");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // As an older version or a umask of 000 might have left them.
    for dir in ["run", "log"] {
        std::fs::create_dir_all(home.0.join(dir)).unwrap();
        std::fs::set_permissions(home.0.join(dir), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(home.0.join("log/serve.log"), "").unwrap();
    std::fs::set_permissions(home.0.join("log/serve.log"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) = home.run(&["serve", "--detach"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(mode(&home.0.join("run")), 0o700, "the endpoint file's directory");
    assert_eq!(mode(&home.0.join("log")), 0o700, "the log directory");
    assert_eq!(mode(&home.0.join("log/serve.log")), 0o600, "the daemon's log");
    assert_eq!(mode(&home.0.join("run/endpoint.json")), 0o600);
    // Made fresh, they are private from the start.
    let fresh = Home::new("modes-fresh");
    let (code, _, stderr) = fresh.run(&["serve", "--detach"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        (mode(&fresh.0.join("run")), mode(&fresh.0.join("log")), mode(&fresh.0.join("log/serve.log"))),
        (0o700, 0o700, 0o600)
    );
}

#[test]
fn an_autostarted_daemon_keeps_no_descriptor_it_inherited() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let home = Home::new("fds");
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    // The shell hands pubsub a copy of its stdout pipe as fd 7, without close-on-exec, as a shell or a
    // test harness can; the daemon that pubsub starts must not keep it (or `… | tee` never ends).
    let mut sh = Command::new("sh")
        .args(["-c", r#"exec 7>&1; exec "$0" topics"#])
        .arg(&bin)
        .env("PUBSUB_HOME", &home.0)
        .env_remove("PUBSUB_BROKER")
        .env_remove("PUBSUB_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = sh.stdout.take().unwrap();
    let pipe = std::fs::read_link(format!("/proc/self/fd/{}", stdout.as_raw_fd())).unwrap();
    let status = sh.wait().unwrap();
    let mut stderr = String::new();
    sh.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("started a local engine daemon"), "{stderr}");
    let pid = endpoint_pid(&home);
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let fd: u32 = entry.file_name().to_str().unwrap().parse().unwrap();
        // A descriptor may close between the listing and the look.
        if let Ok(target) = std::fs::read_link(entry.path()) {
            fds.push((fd, target));
        }
    }
    assert!(!fds.iter().any(|(_, target)| *target == pipe), "the daemon holds the test's pipe: {fds:?}");
    let log = home.0.join("log/serve.log");
    for (fd, target) in &fds {
        let text = target.display().to_string();
        let allowed = match fd {
            0 => text == "/dev/null",
            1 | 2 => *target == log,
            _ => {
                text.starts_with("socket:") || text.starts_with("anon_inode:") || target.starts_with(&home.0)
            }
        };
        assert!(allowed, "fd {fd} -> {text} is not the daemon's own: {fds:?}");
    }
    // With the daemon holding no copy, the pipe's reader sees its end as soon as the shell is gone.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = tx.send(stdout.read_to_end(&mut rest).map(|_| rest));
    });
    let rest = rx.recv_timeout(std::time::Duration::from_secs(10));
    assert!(rest.is_ok_and(|r| r.is_ok()), "the pipe stayed open after the command ended");
}

#[test]
fn a_daemon_autostarted_in_a_shell_pipeline_is_gone_once_its_home_is_dropped() {
    let home = Home::new("dropped");
    let (code, _, stderr) = home.sh("pubsub pub jobs one two | cat");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("started a local engine daemon"), "{stderr}");
    let pid = endpoint_pid(&home);
    assert!(crate::support::is_running(pid));
    drop(home);
    assert!(wait_gone(pid), "daemon {pid} outlived its home");
}

#[test]
fn dropping_a_home_ends_a_daemon_that_serve_stop_cannot_reach() {
    let home = Home::with_daemon("unreachable-stop");
    let pid = endpoint_pid(&home);
    // A wrong token in the endpoint file: `serve stop` cannot talk to the daemon, and says none runs.
    let path = home.0.join("run/endpoint.json");
    let mut endpoint: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    endpoint["token"] = "not-the-token".into();
    std::fs::write(&path, endpoint.to_string()).unwrap();
    let (code, _, stderr) = home.run(&["serve", "stop"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("no local engine daemon is running"), "{stderr}");
    assert!(crate::support::is_running(pid), "serve stop could not stop it");
    drop(home);
    assert!(wait_gone(pid), "daemon {pid} outlived its home");
}

/// More topics than the daemon may hold files open for (`PUBSUB_MAX_OPEN_PARTITIONS=4`): the idle
/// ones give their descriptors up, every publish still lands, and all of it is read back after kill -9.
#[test]
fn topics_beyond_the_open_file_budget_close_idle_files_and_lose_nothing() {
    let home = Home::new("fd-budget");
    let (code, _, stderr) = home.sh("export PUBSUB_MAX_OPEN_PARTITIONS=4
         for round in 1 2; do for i in $(seq 0 29); do pubsub pub t$i m$i.$round || exit 1; done; done");
    assert_eq!(code, 0, "{stderr}");
    let daemons = crate::support::daemons_under(&home.0);
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    let segment_files = std::fs::read_dir(format!("/proc/{}/fd", daemons[0]))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(&home.0))
        .filter(|target| target.extension().is_some_and(|e| e == "log" || e == "idx"))
        .filter(|target| target.to_string_lossy().contains("/topics/"))
        .count();
    assert!(segment_files <= 8, "30 topics under a budget of 4 hold {segment_files} segment files open");

    let killed = Command::new("kill").args(["-KILL", &daemons[0].to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while crate::support::is_running(daemons[0]) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!crate::support::is_running(daemons[0]), "the daemon outlived kill -9");
    let (code, stdout, stderr) =
        home.sh("for i in $(seq 0 29); do pubsub sub t$i --from start --exit-at-end || exit 1; done");
    assert_eq!(code, 0, "{stderr}");
    let expected: Vec<String> = (0..30).flat_map(|i| [format!("m{i}.1"), format!("m{i}.2")]).collect();
    let payloads: Vec<&str> = stdout.lines().filter_map(|line| line.split_whitespace().last()).collect();
    assert_eq!(payloads, expected);
}

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
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
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

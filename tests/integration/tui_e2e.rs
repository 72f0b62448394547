//! The real binary in a real terminal (tmux): open the TUI against the local daemon, publish from another
//! process, see the message in the stream view, open its detail, quit, and check the terminal was restored.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::Home;

pub(crate) struct Tmux {
    session: String,
}

impl Tmux {
    /// Runs `script` in a detached `width`×`height` tmux session named after `tag`; `None` (after saying
    /// why) when tmux is missing, which fails instead under PUBSUB_REQUIRE_BROKERS.
    pub(crate) fn start(tag: &str, width: u16, height: u16, script: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "tmux is required for {tag}");
            eprintln!("skipping {tag}: tmux is not installed");
            return None;
        }
        let session = format!("pubsub-{tag}-{}", std::process::id());
        let (w, h) = (width.to_string(), height.to_string());
        let ok = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session, "-x", &w, "-y", &h, script])
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux could not start a session");
        Some(Tmux { session })
    }

    pub(crate) fn capture(&self) -> String {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.session]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        assert!(Command::new("tmux").args(&args).status().unwrap().success());
    }

    /// Waits until the screen shows `text`; fails with the screen when it does not within 10 s.
    pub(crate) fn wait_for(&self, text: &str) -> String {
        let started = Instant::now();
        loop {
            let screen = self.capture();
            if screen.contains(text) {
                return screen;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "never saw {text:?}; screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.session]).status();
    }
}

#[test]
fn tui_shows_a_published_message_and_restores_the_terminal() {
    let home = Home::with_daemon("tui-e2e");
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let script = format!(
        "PUBSUB_HOME={} {} tui --no-mouse; echo EXITED=$?; stty -a | tr ' ;' '\\n\\n' | grep -x -- '-\\?icanon'; sleep 30",
        home.0.display(),
        bin.display()
    );
    let Some(tmux) = Tmux::start("e2e", 120, 40, &script) else { return };
    tmux.wait_for("1 Topics");
    let (code, _, stderr) = home.run(&["pub", "demo.orders", r#"{"hello":"from e2e"}"#]);
    assert_eq!(code, 0, "{stderr}");
    tmux.keys(&["2"]);
    tmux.wait_for(r#"{"hello":"from e2e"}"#);
    tmux.keys(&["Enter"]);
    tmux.wait_for("message demo.orders#1");
    // The detail pane shows the payload as pretty JSON (waited for: a capture can catch a frame half drawn).
    tmux.wait_for(r#""hello": "from e2e""#);
    tmux.keys(&["1"]);
    tmux.wait_for("demo.orders");
    tmux.keys(&["C-c"]);
    tmux.wait_for("EXITED=0");
    let screen = tmux.wait_for("icanon");
    assert!(
        screen.lines().any(|l| l.trim() == "icanon"),
        "the terminal is back in canonical mode:\n{screen}"
    );
    assert!(!screen.contains("1 Topics"), "the alternate screen was left:\n{screen}");
}

#[test]
fn demo_runs_live_on_the_topology_and_writes_a_snapshot() {
    let home = Home::new("demo-e2e");
    std::fs::create_dir_all(&home.0).unwrap();
    let snapshot = home.0.join("topology.txt");
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let script = format!(
        "PUBSUB_HOME={} {} demo crash --workshop --snapshot {}; echo EXITED=$?; sleep 30",
        home.0.display(),
        bin.display(),
        snapshot.display()
    );
    let Some(tmux) = Tmux::start("demo-e2e", 140, 45, &script) else { return };
    tmux.wait_for("4 Topology");
    tmux.wait_for("worker-b");
    tmux.wait_for("what is happening");
    tmux.keys(&["C-c"]);
    tmux.wait_for("EXITED=0");
    let text = std::fs::read_to_string(&snapshot).unwrap();
    assert!(text.contains("topology: publishers → topics → subscriptions → consumers"), "{text}");
    assert!(text.contains("producer") && text.contains("pool"), "{text}");
}

#[test]
fn demo_control_keys_act_live_and_are_narrated() {
    let home = Home::new("demo-keys-e2e");
    std::fs::create_dir_all(&home.0).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let script = format!(
        "PUBSUB_HOME={} {} demo work-queue --workshop; echo EXITED=$?; sleep 30",
        home.0.display(),
        bin.display()
    );
    let Some(tmux) = Tmux::start("demo-keys-e2e", 140, 40, &script) else { return };
    tmux.wait_for("worker-slow");
    tmux.wait_for("x crash");
    // The selection starts on the publisher: a burst comes from it.
    tmux.keys(&["b"]);
    tmux.wait_for("scheduler sent a burst of 100 messages");
    tmux.keys(&["Space"]);
    tmux.wait_for("PAUSED");
    tmux.keys(&["+"]);
    tmux.wait_for("time now runs at 2× real time");
    tmux.keys(&["G", "x"]);
    tmux.wait_for("worker-slow crashed holding");
    tmux.wait_for("CRASHED");
    tmux.keys(&["C-c"]);
    tmux.wait_for("EXITED=0");
}

#[test]
fn topic_delete_asks_on_a_terminal_and_keeps_the_topic_unless_told_yes() {
    let home = Home::with_daemon("confirm-e2e");
    let (code, _, stderr) = home.run(&["pub", "precious", "a", "b"]);
    assert_eq!(code, 0, "{stderr}");
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let script = format!(
        "export PUBSUB_HOME={}; {bin} topic delete precious; echo FIRST=$?; {bin} topic delete precious; echo SECOND=$?; sleep 30",
        home.0.display(),
        bin = bin.display()
    );
    let Some(tmux) = Tmux::start("confirm", 120, 20, &script) else { return };
    tmux.wait_for("delete topic precious (2 message(s), 0 subscription(s))? [y/N]");
    tmux.keys(&["n", "Enter"]);
    tmux.wait_for("FIRST=1");
    let (code, out, _) = home.run(&["topics", "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"precious\""), "the topic survived a no: {out}");
    tmux.keys(&["y", "Enter"]);
    tmux.wait_for("SECOND=0");
    let (_, out, _) = home.run(&["topics", "--json"]);
    assert!(!out.contains("\"precious\""), "the topic went after a yes: {out}");
}

#[test]
fn the_header_follows_the_local_daemon_to_its_new_port_after_a_restart() {
    // Issue 19 point 11: after `serve stop` and a new daemon, the TUI reconnected but its header kept
    // showing the old port.
    let home = Home::with_daemon("tui-restart");
    let endpoint_url = |home: &Home| -> String {
        let text = std::fs::read_to_string(home.0.join("run/endpoint.json")).unwrap();
        let endpoint: serde_json::Value = serde_json::from_str(&text).unwrap();
        endpoint["url"].as_str().unwrap().to_string()
    };
    let before = endpoint_url(&home);
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let script = format!("PUBSUB_HOME={} {} tui --no-mouse; sleep 30", home.0.display(), bin.display());
    let Some(tmux) = Tmux::start("tui-restart", 120, 30, &script) else { return };
    tmux.wait_for(&format!("● {before}"));
    let (code, _, stderr) = home.run(&["serve", "stop"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = home.run(&["serve", "--detach"]);
    assert_eq!(code, 0, "{stderr}");
    let after = endpoint_url(&home);
    if after == before {
        eprintln!("the new daemon got the old port again; nothing to tell apart");
        return;
    }
    tmux.wait_for(&format!("● {after}"));
    tmux.keys(&["C-c"]);
}

/// `demo --compare` on a terminal: the live view with a column per broker, then the final table in the
/// view, and after quitting the same table printed on the terminal; a second run quit early (after a
/// pause) still ends cleanly with the table of what it ran.
#[test]
fn demo_compare_shows_the_columns_live_then_the_final_table_which_stays_after_quitting() {
    let home = Home::new("compare-e2e");
    std::fs::create_dir_all(&home.0).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let script = format!(
        "export PUBSUB_HOME={home}; {bin} demo offline-subscriber --compare mem://,mem:// --duration 3s; echo FIRST=$?; read -r next; {bin} demo offline-subscriber --compare mem://,mem:// --workshop; echo SECOND=$?; sleep 30",
        home = home.0.display(),
        bin = bin.display()
    );
    let Some(tmux) = Tmux::start("compare-e2e", 100, 30, &script) else { return };
    let screen = tmux.wait_for("[2] mem:// #2");
    assert!(screen.contains("demo offline-subscriber --compare"), "{screen}");
    tmux.wait_for("lost so far");
    tmux.wait_for("s of 3.0 s");
    tmux.wait_for("done in 3.0 s: the final table");
    let screen = tmux.wait_for("waiting at end");
    assert!(screen.contains("max lag"), "the final table's rows: {screen}");
    tmux.keys(&["q"]);
    let screen = tmux.wait_for("FIRST=0");
    assert!(screen.contains("demo offline-subscriber --compare — "), "the table is printed:\n{screen}");
    assert!(screen.contains("seed 42, 3.0 s on each broker"), "{screen}");
    assert!(screen.contains("[2] mem://"), "{screen}");
    // The second run (20 s) is paused, then quit early.
    tmux.keys(&["Enter"]);
    tmux.wait_for("s of 20.0 s");
    tmux.keys(&["Space"]);
    tmux.wait_for("PAUSED at");
    tmux.keys(&["q"]);
    let screen = tmux.wait_for("SECOND=0");
    assert!(screen.contains("s on each broker at once"), "{screen}");
    assert!(!screen.contains("20.0 s on each broker"), "it stopped before the end:\n{screen}");
}

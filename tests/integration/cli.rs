//! The real binary: version, help and exit codes.

use assert_cmd::Command;

fn pubsub() -> Command {
    let mut cmd = Command::cargo_bin("pubsub").unwrap();
    // The environment must not leak into defaults or snapshots, and no test touches the user's daemon.
    cmd.env_remove("PUBSUB_BROKER").env_remove("PUBSUB_TOKEN").env("PUBSUB_HOME", scratch_home());
    cmd
}

#[test]
fn version_prints_the_package_version() {
    let out = pubsub().arg("--version").assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.trim(), format!("pubsub {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_lists_commands_broker_urls_and_exit_codes() {
    let out = pubsub().arg("--help").assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../snapshots");
    settings.bind(|| insta::assert_snapshot!("help", text));
}

#[test]
fn unknown_flag_is_a_usage_error() {
    pubsub().arg("--no-such-flag").assert().code(2);
}

#[test]
fn unknown_broker_scheme_exits_with_usage_code() {
    let assert = pubsub().args(["--broker", "gopher://x", "bench", "-n", "10"]).assert().code(2);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("unknown broker scheme \"gopher\""), "{stderr}");
}

#[test]
fn bench_on_mem_delivers_every_message() {
    let out = pubsub()
        .args(["--broker", "mem://", "bench", "-n", "2000", "--subscribers", "2", "--json"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let report: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(report["messages"], 2000);
    assert_eq!(report["delivered"], 4000);
}

#[test]
fn bench_splits_messages_between_publishers_and_runs_without_subscribers() {
    let run = |args: &[&str]| {
        let out = pubsub().args(["--broker", "mem://", "bench", "--json"]).args(args).assert().success();
        let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        serde_json::from_str::<serde_json::Value>(text.trim()).unwrap()
    };
    // 1001 does not divide by 3: the remainder must still be sent, and each message delivered once.
    let shared = run(&["-n", "1001", "--publishers", "3", "--batch", "64"]);
    assert_eq!((shared["messages"].as_u64(), shared["delivered"].as_u64()), (Some(1001), Some(1001)));
    let alone = run(&["-n", "500", "--subscribers", "0"]);
    assert_eq!((alone["messages"].as_u64(), alone["delivered"].as_u64()), (Some(500), Some(0)));
    assert!(alone["published_per_s"].as_f64().is_some_and(|r| r > 0.0), "{alone}");
    pubsub().args(["--broker", "mem://", "bench", "--publishers", "0"]).assert().code(2);
}

/// A PUBSUB_HOME shared by the CLI tests of this run that expect no daemon.
fn scratch_home() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pubsub-cli-tests-{}", std::process::id()))
}

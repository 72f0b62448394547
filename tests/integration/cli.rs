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
    assert_eq!(report["published"], 2000);
    assert_eq!(report["delivered"], 4000);
    assert_eq!(report["lost"], 0);
}

#[test]
fn bench_scenarios_report_every_field_as_json_and_csv() {
    let out = pubsub()
        .args(["--broker", "mem://", "bench", "--scenario", "all", "-n", "3000", "--json"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = rows.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(names, ["pub", "1:1", "fanout", "fanin", "queue"]);
    for row in &rows {
        for field in [
            "published",
            "delivered",
            "lost",
            "published_per_s",
            "delivered_per_s",
            "mb_per_s",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
        ] {
            assert!(row.get(field).is_some(), "{field} missing in {row}");
        }
        assert_eq!(row["published"], 3000, "{row}");
        assert_eq!(row["lost"], 0, "the engine loses nothing: {row}");
    }
    // Fan-out delivers every message to each of its 10 subscribers; the queue shares them out once.
    assert_eq!(rows[2]["delivered"], 30_000);
    assert_eq!(rows[4]["delivered"], 3000);
    assert!(rows[0]["p50_us"].is_null(), "no latency without subscribers");
    // An open-loop run at a fixed rate, as CSV: the header names the fields, the row carries the rate.
    let out = pubsub()
        .args(["--broker", "mem://", "bench", "--scenario", "1:1", "-n", "500", "--rate", "2000/s", "--csv"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("scenario,broker,pubs,subs,size,rate,published,delivered,lost"), "{text}");
    let cells: Vec<&str> = lines[1].split(',').collect();
    assert_eq!((cells[0], cells[5], cells[6], cells[7], cells[8]), ("1:1", "2000", "500", "500", "0"));
    // 500 messages due over 0.25 s: an open loop cannot finish much sooner than that.
    let elapsed: f64 = cells[18].parse().unwrap();
    assert!(elapsed >= 0.24, "the rate was kept: {elapsed}");
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
    assert_eq!((shared["published"].as_u64(), shared["delivered"].as_u64()), (Some(1001), Some(1001)));
    // However many publish calls are in flight, every message is counted once, when its call is answered.
    for window in ["1", "32"] {
        let r = run(&["-n", "1001", "--batch", "10", "--window", window]);
        assert_eq!((r["published"].as_u64(), r["delivered"].as_u64()), (Some(1001), Some(1001)), "{r}");
    }
    pubsub().args(["--broker", "mem://", "bench", "--window", "0"]).assert().code(2);
    // Options a scenario would ignore are refused rather than dropped.
    for args in [
        &["--scenario", "1:1", "--subs", "5"][..],
        &["--scenario", "fanout", "--subs", "0"],
        &["--scenario", "pub", "--subs", "2"],
        &["--scenario", "fanin", "--subs", "3"],
        &["-n", "0"],
        &["-n", "10", "--duration", "1s"],
    ] {
        pubsub().args(["--broker", "mem://", "bench"]).args(args).assert().code(2);
    }
    let alone = run(&["-n", "500", "--subscribers", "0"]);
    assert_eq!((alone["published"].as_u64(), alone["delivered"].as_u64()), (Some(500), Some(0)));
    assert!(alone["published_per_s"].as_f64().is_some_and(|r| r > 0.0), "{alone}");
    pubsub().args(["--broker", "mem://", "bench", "--publishers", "0"]).assert().code(2);
}

/// A PUBSUB_HOME shared by the CLI tests of this run that expect no daemon.
fn scratch_home() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pubsub-cli-tests-{}", std::process::id()))
}

#[test]
fn paced_pub_publishes_every_message_no_sooner_than_its_rate_allows_and_says_the_rate_kept() {
    // Issue 20 point 5: a paced pub sends what is due as one batch per tick instead of sleeping once
    // per message. Every message still goes, in order, and `-v` says the rate asked and the rate kept.
    let out = pubsub()
        .args(["--broker", "mem://", "pub", "t", "m{{seq}}", "--count", "2000", "--rate", "100k/s", "-v"])
        .assert()
        .success();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("published 2000 message(s), stored in t as seq 1..=2000"), "{stderr}");
    let took: f64 = stderr
        .split_once("paced at 100000/s asked, ")
        .and_then(|(_, rest)| rest.split_once("(2000 message(s) in "))
        .and_then(|(_, rest)| rest.split_once('s'))
        .map(|(secs, _)| secs.parse().unwrap())
        .unwrap_or_else(|| panic!("no pace line: {stderr}"));
    // The last of 2,000 messages at 100 k/s is due at 19.99 ms: a paced run cannot end sooner.
    assert!(took >= 0.019, "the rate was kept: {took}");
}

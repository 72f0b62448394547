//! The scriptable commands through the real binary, against a private local daemon.

use crate::support::Home;

#[test]
fn pub_json_takes_envelopes_written_by_hand_with_only_a_payload() {
    let home = Home::with_daemon("hand-envelopes");
    let input = concat!(r#"{"payload": "hi"}"#, "\n", r#"{"payload": "there", "key": "k"}"#, "\n");
    let (code, _, stderr) = home.run_with(&["pub", "notes", "--json"], input.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) =
        home.run_with(&["pub", "--json"], br#"{"topic": "notes", "payload": "by topic"}"#);
    assert_eq!(code, 0, "{stderr}");
    let (_, out, _) =
        home.run(&["sub", "notes", "--from", "start", "--exit-at-end", "--format", "{{key}}:{{payload}}"]);
    assert_eq!(out, ":hi\nk:there\n:by topic\n");
    let (code, _, stderr) = home.run_with(&["pub", "--json"], br#"{"payload": "nowhere"}"#);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("names no subject or topic"), "{stderr}");
}

#[test]
fn pub_and_sub_json_round_trip_reproduces_keys_headers_and_bytes() {
    let home = Home::with_daemon("roundtrip");
    let input = concat!(
        r#"{"subject":"src","payload":"AP8BAg==","payload_encoding":"base64","key":"k1","headers":{"h":"v"}}"#,
        "\n",
        r#"{"subject":"src","payload":"plain text","key":"/w==","key_encoding":"base64"}"#,
        "\n",
        r#"{"subject":"src","payload":{"a":[1,2]},"payload_encoding":"json"}"#,
        "\n"
    );
    let (code, _, stderr) = home.run_with(&["pub", "--json"], input.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    let (code, first, stderr) = home.run(&["sub", "src", "--from", "start", "--exit-at-end", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = home.run_with(&["pub", "dst", "--json"], first.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    let (_, second, _) = home.run(&["sub", "dst", "--from", "start", "--exit-at-end", "--json"]);
    let fields = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                serde_json::json!([
                    v["payload"],
                    v["payload_encoding"],
                    v["key"],
                    v["key_encoding"],
                    v["headers"]
                ])
            })
            .collect()
    };
    assert_eq!(fields(&first).len(), 3);
    assert_eq!(fields(&first), fields(&second), "keys, headers and bytes survive sub --json | pub --json");
    assert!(first.contains(r#""payload":"AP8BAg==""#), "{first}");
    assert!(first.contains(r#""payload":"{\"a\":[1,2]}""#), "{first}");
}

#[test]
fn sub_piped_into_head_exits_quietly() {
    let home = Home::with_daemon("head");
    // More than a pipe holds (64 KiB), so `sub` is still writing when `head` leaves and meets the closed
    // pipe. (With less, it could write everything first and then wait for new messages: an idle `sub`
    // does not notice that its reader left.)
    let (code, _, stderr) =
        home.sh("seq 50000 | pubsub pub numbers && pubsub sub numbers --from start | head -1");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "", "a closed pipe is not an error");
}

#[test]
fn sub_piped_into_head_ends_when_head_does_even_with_nothing_more_to_write() {
    // Found while making the suite leave no process behind: with a backlog that fits in the pipe, `sub`
    // wrote it all, then waited for new messages without noticing that `head` had gone.
    let home = Home::with_daemon("head-idle");
    let (code, out, stderr) = home.sh(
        "pubsub pub few a b c && ( timeout 20 pubsub sub few --from start; echo \"sub exited $?\" >&2 ) | head -1",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(out.ends_with("few #1 a\n") && out.lines().count() == 1, "{out}");
    assert!(stderr.contains("sub exited 0"), "sub waited for its timeout: {stderr}");
}

#[test]
fn failures_have_their_documented_exit_codes() {
    let home = Home::with_daemon("codes");
    let (code, _, stderr) = home.run(&["--broker", "gopher://x", "topics"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = home.run(&["--broker", "nosuchprofile", "topics"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no profile of that name"), "{stderr}");
    let (code, _, stderr) = home.run(&["pub", "t", "x {{nosuch}}", "--count", "2"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown placeholder {{nosuch}}"), "{stderr}");
    let (code, _, stderr) = home.run_with(&["pub", "quiet", "-v"], b"");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("nothing was published"), "{stderr}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, stderr) = home.run(&["serve", "--listen", &addr]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot listen on") && stderr.contains("choose another --listen"), "{stderr}");
    // One clear error at every size, not a lost connection past the frame size.
    let big = home.0.join("big.bin");
    std::fs::write(&big, vec![b'a'; 10_000_000]).unwrap();
    let (code, _, stderr) = home.run(&["pub", "big", "--file", big.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("message of 10000000 bytes is larger than the server's limit"), "{stderr}");
    let (code, _, stderr) = home.run(&["ack", "s", "1", "1", "--delay", "5s"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--delay is for nack"), "{stderr}");
    let (code, _, stderr) = home.run(&["--broker", "ws://127.0.0.1:1", "topics"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("cannot reach broker"), "{stderr}");
    let (code, _, stderr) = home.run(&["pub", "bad..name", "x"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("\"bad..name\""), "{stderr}");
    let (code, _, stderr) = home.run(&["sub", "quiet", "--timeout", "200ms"]);
    assert_eq!(code, 4, "{stderr}");
    let (code, _, stderr) = home.run(&["sub-info", "missing"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no subscription named \"missing\""), "{stderr}");
}

#[test]
fn an_invalid_envelope_line_is_named_and_what_came_before_is_published() {
    let home = Home::with_daemon("badline");
    let input = "{\"subject\":\"t\",\"payload\":\"one\"}\n{\"subject\":\"t\",\"payload\":\"two\"}\nnot json\n{\"subject\":\"t\",\"payload\":\"four\"}\n";
    let (code, _, stderr) = home.run_with(&["pub", "--json"], input.as_bytes());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("2 message(s) before it were published"), "{stderr}");
    let (_, out, _) = home.run(&["tail", "t", "-n", "10", "--format", "raw"]);
    assert_eq!(out, "one\ntwo\n");
}

#[test]
fn pub_reads_lines_templates_and_reports_with_verbose() {
    let home = Home::with_daemon("pubforms");
    let (code, _, stderr) = home.run_with(&["pub", "lines", "-v"], b"a\nb\r\nc");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("published 3 message(s), stored in lines as seq 1..=3"), "{stderr}");
    let (code, _, stderr) =
        home.run(&["pub", "tpl", "{{seq}}-{{random 1 1}}", "--count", "3", "-H", "a=b", "-k", "K"]);
    assert_eq!(code, 0, "{stderr}");
    let (_, out, _) = home.run(&["tail", "tpl", "--format", "{{payload}} {{key}} {{header.a}}"]);
    assert_eq!(out, "1-1 K b\n2-1 K b\n3-1 K b\n");
    let (_, out, _) = home.run(&["tail", "lines", "--format", "raw"]);
    assert_eq!(out, "a\nb\nc\n");
}

#[test]
fn exec_acks_on_success_and_nacks_on_failure() {
    let home = Home::with_daemon("exec");
    home.run(&["subs", "create", "w", "--topic", "jobs", "--from", "start"]);
    home.run(&["pub", "jobs", "ok-1", "fail", "ok-2"]);
    let (code, _, stderr) = home.run(&[
        "sub",
        "jobs",
        "--subscription",
        "w",
        "--exec",
        "payload=$(cat); test \"$payload\" != fail && test \"$PUBSUB_TOPIC\" = jobs",
        "--until-idle",
        "700ms",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (_, out, _) = home.run(&["sub-info", "w", "--json"]);
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(info["counters"]["acked"], 2, "{info}");
    assert!(info["counters"]["nacked"].as_u64().unwrap() >= 1, "{info}");
    assert_eq!(info["ack_floor"], 1, "the failed message holds the floor: {info}");
}

#[test]
fn manual_ack_prints_leases_that_pubsub_ack_settles_while_the_consumer_runs() {
    let home = Home::with_daemon("manual-ok");
    home.run(&["pub", "m", "one", "two"]);
    let (code, _, stderr) = home.sh(
        "pubsub sub m -s live --from start --ack manual --format '{{seq}} {{lease}}' --until-idle 1500ms \\
         | while read seq lease; do pubsub ack live \"$seq\" \"$lease\" || exit 9; done",
    );
    assert_eq!(code, 0, "{stderr}");
    let (_, out, _) = home.run(&["sub-info", "live", "--json"]);
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (info["counters"]["acked"].as_u64(), info["ack_floor"].as_u64()),
        (Some(2), Some(2)),
        "{info}"
    );
}

#[test]
fn a_lease_of_a_departed_consumer_is_refused_as_stale() {
    let home = Home::with_daemon("manual");
    home.run(&["pub", "m", "hello"]);
    let (_, out, stderr) = home
        .run(&["sub", "m", "-s", "manual", "--from", "start", "--ack", "manual", "--count", "1", "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out} {stderr}"));
    let (seq, lease) = (v["seq"].to_string(), v["lease"].to_string());
    // The consumer left, so its lease was voided and the message is available again: a stale ack is refused.
    let (code, _, stderr) = home.run(&["ack", "manual", &seq, &lease]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("stale lease"), "{stderr}");
}

#[test]
fn topics_subs_peek_and_seek_show_state() {
    let home = Home::with_daemon("admin");
    let (code, _, stderr) =
        home.run(&["topic", "create", "orders", "--subject", "orders.>", "--max-msgs", "100"]);
    assert_eq!(code, 0, "{stderr}");
    home.run(&["pub", "orders.eu", "a", "b", "c"]);
    let (_, out, _) = home.run(&["topics"]);
    assert!(out.contains("orders") && out.contains("100 msgs"), "{out}");
    home.run(&["subs", "create", "audit", "--topic", "orders", "--from", "start"]);
    let (_, out, _) = home.run(&["peek", "audit"]);
    assert!(out.contains("pending"), "{out}");
    home.run(&["sub", "orders", "-s", "audit", "--count", "3"]);
    let (_, out, _) = home.run(&["subs"]);
    assert!(out.lines().any(|l| l.starts_with("audit") && l.contains(" 3 ")), "{out}");
    let (code, _, stderr) = home.run(&["seek", "audit", "2"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("from seq 2"), "{stderr}");
    let (_, out, _) = home.run(&["sub-info", "audit", "--json"]);
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((info["ack_floor"].as_u64(), info["pending"].as_u64()), (Some(1), Some(2)));
    let (code, _, stderr) = home.run(&["topic", "purge", "orders"]);
    assert_eq!(code, 0, "{stderr}");
    // An emptied topic shows no seq range (it used to say "4..3").
    let (code, out, _) = home.run(&["topic", "info", "orders"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("seqs") && l.contains("none (next is 4)")), "{out}");
    let (code, _, _) = home.run(&["topic", "delete", "orders"]);
    assert_eq!(code, 0);
}

#[test]
fn record_then_replay_into_another_topic() {
    let home = Home::with_daemon("replay");
    home.run(&["pub", "src", "one", "two", "three"]);
    let file = home.0.join("rec.ndjson");
    let file = file.to_str().unwrap();
    let (code, _, stderr) = home.run(&["record", "src", "--from", "start", "--exit-at-end", "-o", file]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = home.run(&["replay", "--file", file, "--into", "copy", "--speed", "50"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = home.run(&["replay", "src", "--from", "2", "--into", "copy"]);
    assert_eq!(code, 0, "{stderr}");
    let (_, out, _) = home.run(&["tail", "copy", "--format", "raw"]);
    assert_eq!(out, "one\ntwo\nthree\ntwo\nthree\n");
}

#[test]
fn config_profiles_name_brokers() {
    let home = Home::new("config");
    let (_, path, _) = home.run(&["config", "path"]);
    let path = std::path::PathBuf::from(path.trim());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "[profiles.scratch]\nbroker = \"mem://\"\n").unwrap();
    let (code, out, stderr) = home.run(&["--broker", "scratch", "topics", "--json"]);
    assert_eq!((code, out.as_str()), (0, ""), "{stderr}");
    let (_, out, _) = home.run(&["--broker", "scratch", "config", "show"]);
    assert!(out.contains("\"broker\": \"mem://\""), "{out}");
    std::fs::write(&path, "brokr = 1\n").unwrap();
    let (code, _, stderr) = home.run(&["topics"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("config.toml"), "{stderr}");
}

#[test]
fn completions_and_man_page_are_generated() {
    let home = Home::new("gen");
    let (code, out, _) = home.run(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(out.contains("pubsub") && out.contains("complete"), "{}", &out[..out.len().min(200)]);
    let (code, out, _) = home.run(&["man"]);
    assert_eq!(code, 0);
    assert!(out.contains(".TH pubsub"), "{}", &out[..out.len().min(200)]);
}

#[test]
fn every_command_help_is_snapshotted() {
    use clap::CommandFactory;
    let home = Home::new("help");
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../snapshots");
    let _guard = settings.bind_to_scope();
    for sub in pubsub::cli::Cli::command().get_subcommands() {
        let name = sub.get_name().to_string();
        if name == "help" {
            continue;
        }
        let (code, out, stderr) = home.run(&[&name, "--help"]);
        assert_eq!(code, 0, "{name}: {stderr}");
        insta::assert_snapshot!(format!("help_{name}"), out);
    }
}

#[test]
fn ctrl_c_ends_sub_with_130_and_releases_what_it_held() {
    let home = Home::with_daemon("sigint");
    home.run(&["subs", "create", "held", "--topic", "work", "--from", "start"]);
    home.run(&["pub", "work", "a", "b", "c"]);
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let child = std::process::Command::new(bin)
        .args(["sub", "work", "-s", "held", "--ack", "manual", "--format", "raw"])
        .env("PUBSUB_HOME", &home.0)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it holds the three messages, then interrupt it.
    let started = std::time::Instant::now();
    loop {
        let (_, out, _) = home.run(&["sub-info", "held", "--json"]);
        let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        if info["in_flight"] == 3 {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "never held the messages: {info}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let (_, info, _) = home.run(&["sub-info", "held", "--json"]);
    let info: serde_json::Value = serde_json::from_str(info.trim()).unwrap();
    assert_eq!((info["in_flight"].as_u64(), info["redeliverable"].as_u64()), (Some(0), Some(3)), "{info}");
}

#[test]
fn fixes_from_a_first_time_user_session() {
    let home = Home::with_daemon("newuser");
    home.run(&["pub", "t", "one", "two"]);
    // An empty range with --exit-at-end ends at once instead of waiting.
    for from in ["end", "99"] {
        let (code, out, stderr) = home.run(&["sub", "t", "--from", from, "--exit-at-end"]);
        assert_eq!((code, out.as_str()), (0, ""), "--from {from}: {stderr}");
    }
    // `--from -5m` (a leading hyphen) is a value, not a flag.
    let (code, out, stderr) = home.run(&["sub", "t", "--from", "-5m", "--exit-at-end", "--format", "raw"]);
    assert_eq!((code, out.as_str()), (0, "one\ntwo\n"), "{stderr}");
    // `pub -v` says when the broker dropped a message as a --msg-id duplicate.
    let (code, _, stderr) = home.run(&["pub", "t", "once", "--msg-id", "m-1", "-v"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("duplicate"), "{stderr}");
    let (code, _, stderr) = home.run(&["pub", "t", "once", "--msg-id", "m-1", "-v"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("1 of them duplicates by --msg-id"), "{stderr}");
    // Zero credit or zero parallel commands could never deliver: usage errors.
    for flag in ["--prefetch", "--parallel"] {
        let (code, _, stderr) = home.run(&["sub", "t", flag, "0"]);
        assert_eq!(code, 2, "{flag} 0: {stderr}");
    }
    // A subscription reads its own topic; naming another topic is an error, not a silent switch.
    home.run(&["subs", "create", "mine", "--topic", "t", "--from", "start"]);
    let (code, _, stderr) = home.run(&["sub", "other", "-s", "mine", "--count", "1", "--timeout", "2s"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("reads topic \"t\""), "{stderr}");
    // A dead-letter topic that the source topic would capture is refused up front.
    home.run(&["topic", "create", "shop", "--subject", "shop.>"]);
    let (code, _, stderr) =
        home.run(&["subs", "create", "dl", "--topic", "shop", "--dead-letter", "shop.dead"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("dlq.shop"), "{stderr}");
    // `pub --json --file` reads the file's envelopes.
    let file = home.0.join("in.ndjson");
    std::fs::write(&file, "{\"subject\":\"j\",\"payload\":\"a\"}\n{\"subject\":\"j\",\"payload\":\"b\"}\n")
        .unwrap();
    let (code, _, stderr) = home.run(&["pub", "--json", "--file", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (_, out, _) = home.run(&["tail", "j", "--format", "raw"]);
    assert_eq!(out, "a\nb\n");
    // PUBSUB_NO_AUTOSTART accepts 1.
    let other = Home::new("newuser-noauto");
    let out = other.cmd().env("PUBSUB_NO_AUTOSTART", "1").arg("topics").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn ctrl_c_during_exec_exits_130_kills_the_command_and_releases_the_message() {
    let home = Home::with_daemon("exec-sigint");
    home.run(&["subs", "create", "slow", "--topic", "w", "--from", "start"]);
    home.run(&["pub", "w", "job"]);
    let marker = home.0.join("still-running");
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let child = std::process::Command::new(bin)
        .args(["sub", "w", "-s", "slow", "--exec", &format!("sleep 5; touch {}", marker.display())])
        .env("PUBSUB_HOME", &home.0)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let (_, out, _) = home.run(&["sub-info", "slow", "--json"]);
        let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        if info["in_flight"] == 1 {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{info}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, info, _) = home.run(&["sub-info", "slow", "--json"]);
    let info: serde_json::Value = serde_json::from_str(info.trim()).unwrap();
    assert_eq!(
        (info["in_flight"].as_u64(), info["counters"]["nacked"].as_u64()),
        (Some(0), Some(0)),
        "{info}"
    );
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert!(!marker.exists(), "the command was killed with sub, not left running");
}

#[test]
fn ctrl_c_during_bench_reports_what_was_measured_and_removes_the_run_topic() {
    let home = Home::with_daemon("bench-sigint");
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let child = std::process::Command::new(bin)
        .args(["bench", "--scenario", "all", "--duration", "60s", "--rate", "2000/s", "--csv"])
        .env("PUBSUB_HOME", &home.0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the run's first topic exists, so the interrupt lands mid-scenario.
    let started = std::time::Instant::now();
    loop {
        let (_, out, _) = home.run(&["topics"]);
        if out.contains("bench-") {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "no bench topic appeared: {out}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    // The header and the interrupted scenario's row, and no scenario after it.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let cells: Vec<&str> = lines[1].split(',').collect();
    assert_eq!((cells[0], cells[19]), ("pub", "false"), "{stdout}");
    assert!(cells[6].parse::<u64>().unwrap() > 0, "it had published: {stdout}");
    let (_, topics, _) = home.run(&["topics"]);
    assert!(!topics.contains("bench-"), "the run's topic was removed: {topics}");
}

#[test]
fn bench_spreads_over_topics_of_its_own_and_fills_a_named_topic_that_stays() {
    let home = Home::with_daemon("bench-topics");
    let json = |out: &str| serde_json::from_str::<serde_json::Value>(out.trim()).unwrap();
    // Spread over 7 topics, with a subscriber listening on all of them: every message is published,
    // and what the listener did not get is counted as lost, never hidden; the topics go afterwards.
    let (code, out, err) = home.run(&["bench", "--topics", "7", "-n", "700", "--batch", "7", "--json"]);
    assert_eq!(code, 0, "{err}");
    let r = json(&out);
    assert_eq!(r["published"], 700, "{r}");
    assert!(r["delivered"].as_u64().unwrap() > 0, "the pattern covers the run's topics: {r}");
    assert_eq!(r["delivered"].as_u64().unwrap() + r["lost"].as_u64().unwrap(), 700, "{r}");
    let (_, topics, _) = home.run(&["topics"]);
    assert!(!topics.contains("bench-"), "the run's topics were removed: {topics}");
    // A named topic is created once, filled by each run and kept, without the runs' subscriptions.
    for _ in 0..2 {
        let (code, out, err) = home.run(&["bench", "--topic", "backlog", "-n", "300", "--json"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(json(&out)["delivered"], 300, "{out}");
    }
    let (_, info, _) = home.run(&["topics", "--json"]);
    let backlog = info.lines().map(json).find(|t| t["name"] == "backlog").expect("the topic stays");
    assert_eq!(backlog["messages"], 600, "{backlog}");
    let (_, subs, _) = home.run(&["subs"]);
    assert!(!subs.contains("backlog-s"), "the runs' subscriptions were removed: {subs}");
    // A shared subscription reads one topic: `queue` over several is refused as a usage error.
    let (code, _, err) = home.run(&["bench", "--scenario", "queue", "--topics", "3"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn bench_with_partitions_and_keys_spreads_keyed_messages_over_the_partitions() {
    let home = Home::with_daemon("bench-partitions");
    let json = |out: &str| serde_json::from_str::<serde_json::Value>(out.trim()).unwrap();
    let args = ["bench", "--topic", "keyed", "--partitions", "4", "--keys", "8", "-n", "800", "--json"];
    let (code, out, err) = home.run(&args);
    assert_eq!(code, 0, "{err}");
    let r = json(&out);
    assert_eq!(
        (r["delivered"].as_u64(), r["partitions"].as_u64(), r["keys"].as_u64()),
        (Some(800), Some(4), Some(8)),
        "{r}"
    );
    let (_, info, _) = home.run(&["topics", "--json"]);
    let keyed = info.lines().map(json).find(|t| t["name"] == "keyed").expect("the topic stays");
    assert_eq!((keyed["partitions"].as_u64(), keyed["messages"].as_u64()), (Some(4), Some(800)), "{keyed}");
    let used = keyed["partition_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["messages"].as_u64() > Some(0))
        .count();
    assert!(used > 1, "eight keys land in more than one of four partitions: {keyed}");
    // Every message of a key is in one partition: 800 messages over 8 keys are 100 per key, so each
    // partition holds a multiple of 100.
    for p in keyed["partition_info"].as_array().unwrap() {
        assert_eq!(p["messages"].as_u64().unwrap() % 100, 0, "{keyed}");
    }
}

#[test]
fn record_to_dash_writes_stdout_and_no_file_named_dash() {
    let home = Home::with_daemon("record-dash");
    home.run(&["pub", "src", "one", "two"]);
    let out = home
        .cmd()
        .args(["record", "src", "--from", "start", "--exit-at-end", "-o", "-"])
        .current_dir(&home.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let payloads: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"].to_string())
        .collect();
    assert_eq!(payloads, ["\"one\"", "\"two\""], "{stderr}");
    assert!(!home.0.join("-").exists(), "`-o -` means stdout, not a file named -");
    assert!(!stderr.contains("recording to"), "{stderr}");
}

#[test]
fn replay_refuses_a_line_longer_than_any_recording_naming_file_and_line() {
    let home = Home::new("replay-long");
    // What was reported: the client read /dev/zero as one line until it held 3.4 GB.
    let (code, _, stderr) = home.run(&["--broker", "mem://", "replay", "--file", "/dev/zero"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("/dev/zero: line 1: longer than 64 MiB"), "{stderr}");
    // A good first line and a second one with no end (a sparse file: 70 MiB of zeros after it).
    std::fs::create_dir_all(&home.0).unwrap();
    let path = home.0.join("long.ndjson");
    std::fs::write(&path, "{\"subject\":\"t\",\"payload\":\"fine\"}\n").unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(70 << 20).unwrap();
    let (code, _, stderr) = home.run(&["--broker", "mem://", "replay", "--file", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&format!("{}: line 2: longer than 64 MiB", path.display())), "{stderr}");
    assert!(stderr.contains("nothing was published"), "{stderr}");
}

/// Waits until topic `topic` of `home` holds at least `n` messages.
fn wait_for_messages(home: &Home, topic: &str, n: u64) {
    let started = std::time::Instant::now();
    loop {
        let (_, out, _) = home.run(&["topic", "info", topic, "--json"]);
        let head =
            serde_json::from_str::<serde_json::Value>(out.trim()).ok().and_then(|v| v["head_seq"].as_u64());
        if head.is_some_and(|h| h >= n) {
            return;
        }
        assert!(started.elapsed().as_secs() < 30, "{topic} never reached {n} messages");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn paced_pub_and_replay_stop_on_sigint_sigterm_and_sighup_and_say_what_they_did() {
    // Found by a new user: `pub --count --rate` and `replay` died on Ctrl-C without their summary, and
    // ignored SIGINT when started in the background. SIGHUP (the terminal closed) used to kill them.
    let home = Home::with_daemon("signals");
    for signal in ["-INT", "-TERM", "-HUP"] {
        let topic = format!("paced{}", &signal[1..]).to_lowercase();
        let child = home
            .cmd()
            .args(["pub", &topic, "m{{seq}}", "--count", "100000", "--rate", "50/s", "-v"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_messages(&home, &topic, 3);
        std::process::Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{signal}: {stderr}");
        assert!(stderr.contains("published") && stderr.contains("message(s)"), "{signal}: {stderr}");

        let copy = format!("{topic}.copy");
        let child = home
            .cmd()
            .args(["replay", &topic, "--into", &copy, "--rate", "20/s"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_messages(&home, &copy, 2);
        std::process::Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{signal}: {stderr}");
        assert!(stderr.contains("replay interrupted after"), "{signal}: {stderr}");
    }
}

#[test]
fn a_paced_pub_started_in_the_background_by_a_script_still_stops_on_sigint() {
    // A non-interactive shell starts background jobs with SIGINT ignored; the command's own handler
    // takes it anyway.
    let home = Home::with_daemon("signals-bg");
    let (code, _, stderr) = home.sh(
        "pubsub pub bg 'm{{seq}}' --count 100000 --rate 50/s -v & pid=$!; \
         for i in $(seq 100); do [ \"$(pubsub topic info bg --json 2>/dev/null | grep -o '\"head_seq\":[0-9]*' | cut -d: -f2)\" -ge 2 ] 2>/dev/null && break; sleep 0.1; done; \
         kill -INT $pid; for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; \
         kill -KILL $pid 2>/dev/null; wait $pid; echo \"exit $?\" >&2",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("exit 130"), "{stderr}");
}

#[test]
fn sub_count_takes_exactly_n_and_spends_no_attempt_of_the_rest() {
    // Issue 19 point 1, as a user met it against the daemon: with max_deliveries 1 and a dead-letter
    // topic, `sub --count 1` twice printed m1 then m3, and m2 and m4 were dead-lettered.
    let home = Home::with_daemon("count-n");
    let (code, _, stderr) = home.run(&[
        "subs",
        "create",
        "w",
        "--topic",
        "orders",
        "--from",
        "start",
        "--max-deliveries",
        "1",
        "--dead-letter",
        "dlq",
    ]);
    assert_eq!(code, 0, "{stderr}");
    home.run(&["pub", "orders", "m1", "m2", "m3", "m4", "m5"]);
    let mut printed = String::new();
    for n in ["1", "1", "2"] {
        let (code, out, stderr) =
            home.run(&["sub", "orders", "-s", "w", "--count", n, "--format", "{{payload}}"]);
        assert_eq!(code, 0, "{stderr}");
        printed.push_str(&out);
    }
    assert_eq!(printed, "m1\nm2\nm3\nm4\n");
    let (_, out, _) = home.run(&["sub-info", "w", "--json"]);
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(info["counters"]["delivered"], 4, "only what was printed was delivered: {info}");
    assert_eq!(info["counters"]["dead_lettered"], 0, "{info}");
    let (_, out, _) = home.run(&["sub", "orders", "-s", "w", "--count", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((v["payload"].as_str(), v["attempt"].as_u64()), (Some("m5"), Some(1)), "{v}");
}

#[test]
fn exec_leases_only_what_parallel_commands_can_start_and_keeps_a_long_job_leased() {
    // Issue 19 point 3: `sub -s --exec` leased far more than it could start, so leases ran out while
    // jobs waited, and a job longer than its lease was redelivered although it succeeded.
    let home = Home::with_daemon("exec-lease");
    let (code, _, stderr) =
        home.run(&["subs", "create", "w", "--topic", "jobs", "--from", "start", "--ack-deadline", "2s"]);
    assert_eq!(code, 0, "{stderr}");
    home.run(&["pub", "jobs", "j1", "j2", "j3", "j4", "j5", "j6"]);
    // Each command notes how many messages the subscription has in flight while it runs.
    let (code, _, stderr) = home.sh("pubsub sub jobs -s w --parallel 2 --count 6 \\
           --exec 'pubsub sub-info w --json >> \"$PUBSUB_HOME/seen\"'");
    assert_eq!(code, 0, "{stderr}");
    let seen = std::fs::read_to_string(home.0.join("seen")).unwrap();
    let in_flight: Vec<u64> = seen
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["in_flight"].as_u64().unwrap())
        .collect();
    assert_eq!(in_flight.len(), 6, "{seen}");
    assert!(in_flight.iter().all(|&n| n <= 2), "never more in flight than --parallel: {in_flight:?}");
    // A job that runs past its 2 s lease keeps it (extended while it runs) and is acked once.
    home.run(&["pub", "jobs", "slow"]);
    let (code, _, stderr) = home.run(&["sub", "jobs", "-s", "w", "--count", "1", "--exec", "sleep 3"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("redelivered"), "{stderr}");
    let (_, out, _) = home.run(&["sub-info", "w", "--json"]);
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(info["counters"]["acked"], 7, "{info}");
    assert_eq!(info["counters"]["deadline_expired"], 0, "{info}");
}

#[test]
fn extend_and_term_settle_a_lease_from_another_process() {
    let home = Home::with_daemon("extend-term");
    let (code, _, stderr) = home.run(&[
        "subs",
        "create",
        "s",
        "--topic",
        "m",
        "--from",
        "start",
        "--dead-letter",
        "m.dead",
        "--backoff",
        "none",
        "--max-lease",
        "10m",
    ]);
    assert_eq!(code, 0, "{stderr}");
    home.run(&["pub", "m", "one"]);
    let (code, _, stderr) =
        home.sh("pubsub sub m -s s --ack manual --format '{{seq}} {{lease}}' --until-idle 1500ms \\
         | while read seq lease; do \\
             pubsub extend s \"$seq\" \"$lease\" --by 5m || exit 7; \\
             pubsub peek s | grep -q 'lease ends in' || exit 8; \\
             pubsub term s \"$seq\" \"$lease\" --reason 'bad input' || exit 9; \\
             if pubsub extend s \"$seq\" \"$lease\" 2>/dev/null; then exit 10; fi; \\
           done");
    assert_eq!(code, 0, "{stderr}");
    let (_, out, _) = home.run(&[
        "sub",
        "m.dead",
        "--from",
        "start",
        "--exit-at-end",
        "--format",
        "{{payload}} {{header.x-dead-letter-reason}}: {{header.x-dead-letter-detail}}",
    ]);
    assert_eq!(out, "one term: bad input\n");
}

#[test]
fn subs_create_takes_a_backoff() {
    let home = Home::with_daemon("backoff");
    for (sub, backoff) in [("quick", "none"), ("slow", "10m,20m")] {
        let (code, _, stderr) =
            home.run(&["subs", "create", sub, "--topic", "b", "--from", "start", "--backoff", backoff]);
        assert_eq!(code, 0, "{stderr}");
    }
    home.run(&["pub", "b", "x"]);
    for sub in ["quick", "slow"] {
        let (code, _, stderr) = home.run(&["sub", "b", "-s", sub, "--count", "1", "--exec", "false"]);
        assert_eq!(code, 0, "{stderr}");
    }
    // A nack with no delay waits for the backoff: none at once, the list's first delay otherwise.
    let (_, quick, _) = home.run(&["peek", "quick"]);
    assert!(quick.contains("available") && !quick.contains("retry in"), "{quick}");
    let (_, slow, _) = home.run(&["peek", "slow"]);
    assert!(slow.contains("retry in 9m") || slow.contains("retry in 10m"), "{slow}");
    let (code, _, stderr) = home.run(&["subs", "create", "bad", "--topic", "b", "--backoff", "5s..1s"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn kcat_style_keys_delimiters_and_short_flags() {
    let home = Home::with_daemon("kcat");
    // -K: key and value on one line, cut at the first delimiter; a line without it is all value.
    let (code, _, stderr) = home.run_with(&["pub", "kv", "-K", ":"], b"k1:v1\nk2:v:2\nnokey\n");
    assert_eq!(code, 0, "{stderr}");
    let (_, out, _) = home.run(&["sub", "kv", "-F", "start", "-e", "--format", "{{key}}={{payload}}"]);
    assert_eq!(out, "k1=v1\nk2=v:2\n=nokey\n");
    // -D: records end with a delimiter of several bytes; the last one needs none.
    let (code, _, stderr) = home.run_with(&["pub", "d", "-D", "|%"], b"a\nb|%c|%d");
    assert_eq!(code, 0, "{stderr}");
    // On output, -N writes nothing between messages and -D what is asked (escapes included).
    let (_, out, _) = home.run(&["sub", "d", "-o", "start", "-e", "-N", "--format", "raw"]);
    assert_eq!(out, "a\nbcd");
    let (_, out, _) = home.run(&["tail", "d", "-n", "2", "-D", "\\t", "--format", "raw"]);
    assert_eq!(out, "c\td\t");
    // kcat's -c and -J, mosquitto's -W.
    let (code, out, stderr) = home.run(&["sub", "d", "-F", "start", "-c", "1", "-J", "-W", "5s"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["payload"], "a\nb");
}

#[test]
fn from_on_an_existing_subscription_and_topic_delete_say_what_they_do() {
    // Issue 19 point 12: `sub -s NAME --from end` on an existing subscription ignored --from silently,
    // and `topic delete` deleted subscriptions without saying so.
    let home = Home::with_daemon("say-so");
    home.run(&["subs", "create", "keep", "--topic", "said", "--from", "start"]);
    home.run(&["pub", "said", "one"]);
    let (code, out, stderr) =
        home.run(&["sub", "said", "-s", "keep", "--from", "end", "-c", "1", "--format", "raw"]);
    assert_eq!((code, out.as_str()), (0, "one\n"), "{stderr}");
    assert!(stderr.contains("already exists and keeps its own position"), "{stderr}");
    assert!(stderr.contains("pubsub seek keep POSITION"), "{stderr}");
    let (code, _, stderr) = home.run(&["topic", "delete", "said", "-y"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("deleted topic said and its 1 subscription(s): keep"), "{stderr}");
}

#[test]
fn subs_create_where_filters_by_headers_and_key_through_the_daemon_and_a_restart() {
    let home = Home::with_daemon("where");
    let run = |args: &[&str]| {
        let (code, stdout, stderr) = home.run(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        stdout
    };
    run(&["topic", "create", "orders"]);
    let expr = r#"attributes.region = "eu" AND NOT hasPrefix(key, "test")"#;
    run(&["subs", "create", "eu", "--topic", "orders", "--from", "start", "--where", expr]);
    let (code, _, stderr) =
        home.run(&["subs", "create", "bad", "--topic", "orders", "--where", "attributes.region = eu"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--where: filter error at column 21: expected a string in double quotes"),
        "{stderr}"
    );
    run(&["pub", "orders", "-H", "region=eu", "-k", "a", "one"]);
    run(&["pub", "orders", "-H", "region=us", "two"]);
    run(&["pub", "orders", "-H", "region=eu", "-k", "test-1", "three"]);
    run(&["pub", "orders", "-H", "region=eu", "four"]);
    assert_eq!(run(&["sub", "-s", "eu", "--count", "2", "--format", "{{payload}}", "orders"]), "one\nfour\n");
    run(&["serve", "stop"]);
    let info = run(&["sub-info", "eu"]);
    assert!(info.contains(expr), "{info}");
    assert!(info.contains("ack floor 4") && info.contains("filtered 2"), "{info}");
    let json = run(&["sub-info", "eu", "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["attribute_filter"], expr);
}

#[test]
fn snapshot_create_ls_rm_and_seek_snapshot_through_the_daemon_and_a_restart() {
    let home = Home::with_daemon("snapshots");
    let run = |args: &[&str]| {
        let (code, stdout, stderr) = home.run(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        (stdout, stderr)
    };
    run(&["topic", "create", "orders"]);
    run(&["subs", "create", "billing", "--topic", "orders", "--from", "start"]);
    run(&["subs", "create", "audit", "--topic", "orders", "--from", "start"]);
    run(&["topic", "create", "other"]);
    run(&["subs", "create", "elsewhere", "--topic", "other"]);
    run(&["pub", "orders", "a", "b", "c", "d"]);
    run(&["sub", "-s", "billing", "--count", "2", "--format", "{{payload}}", "orders"]);
    let (_, said) = run(&["snapshot", "create", "after-two", "--subscription", "billing"]);
    assert!(said.contains("ack floor 2"), "{said}");
    let (code, _, stderr) = home.run(&["snapshot", "create", "after-two", "-s", "audit"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    run(&["serve", "stop"]);
    let (listed, _) = run(&["snapshot", "ls"]);
    assert!(listed.contains("after-two") && listed.contains("billing"), "{listed}");
    let (json, _) = run(&["snapshot", "ls", "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["partitions"][0]["ack_floor"], 2);
    run(&["seek", "audit", "--snapshot", "after-two"]);
    let (rest, _) = run(&["sub", "-s", "audit", "--count", "2", "--format", "{{payload}}", "orders"]);
    assert_eq!(rest, "c\nd\n");
    let (code, _, stderr) = home.run(&["seek", "elsewhere", "--snapshot", "after-two"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("applies only to subscriptions of its own topic"), "{stderr}");
    run(&["snapshot", "rm", "after-two"]);
    let (code, _, stderr) = home.run(&["seek", "audit", "--snapshot", "after-two"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no snapshot named"), "{stderr}");
    let (code, _, stderr) = home.run(&["seek", "audit"]);
    assert_eq!(code, 2, "{stderr}");
}

/// `snapshot create --ttl`: how long a snapshot lives (7 days by default, `never` until `snapshot rm`,
/// 0 refused), shown by `snapshot ls` as EXPIRES and in `--json` as `expires` (µs; null for never).
#[test]
fn snapshot_create_ttl_sets_when_it_expires_and_ls_shows_it() {
    let home = Home::with_daemon("snapshot-ttl");
    let run = |args: &[&str]| {
        let (code, stdout, stderr) = home.run(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        (stdout, stderr)
    };
    run(&["subs", "create", "billing", "--topic", "orders", "--from", "start"]);
    run(&["pub", "orders", "a"]);
    let (_, said) = run(&["snapshot", "create", "short", "-s", "billing", "--ttl", "2h"]);
    assert!(said.contains("expires in 2h0m"), "{said}");
    run(&["snapshot", "create", "kept", "-s", "billing", "--ttl", "never"]);
    let (_, said) = run(&["snapshot", "create", "default", "-s", "billing"]);
    assert!(said.contains("expires in 7d0h"), "{said}");
    let (code, _, stderr) = home.run(&["snapshot", "create", "zero", "-s", "billing", "--ttl", "0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("would expire the snapshot at once") && stderr.contains("never"), "{stderr}");
    let (listed, _) = run(&["snapshot", "ls"]);
    assert!(listed.lines().next().is_some_and(|h| h.contains("EXPIRES")), "{listed}");
    let row = |name: &str| listed.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string();
    assert!(row("short").contains("in 1h59m") || row("short").contains("in 2h0m"), "{listed}");
    assert!(row("kept").trim_end().ends_with("never"), "{listed}");
    assert!(row("default").contains("in 6d23h") || row("default").contains("in 7d0h"), "{listed}");
    let (json, _) = run(&["snapshot", "ls", "--json"]);
    let by_name: std::collections::HashMap<String, serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["name"].as_str().unwrap().to_string(), v))
        .collect();
    let lifetime =
        |n: &str| by_name[n]["expires"].as_i64().map(|e| e - by_name[n]["created"].as_i64().unwrap());
    assert_eq!(lifetime("short"), Some(2 * 3600 * 1_000_000));
    assert_eq!(lifetime("default"), Some(7 * 24 * 3600 * 1_000_000));
    assert!(by_name["kept"]["expires"].is_null(), "{json}");
    // Kept across a restart of the daemon.
    run(&["serve", "stop"]);
    let (again, _) = run(&["snapshot", "ls", "--json"]);
    assert_eq!(again, json);
}

/// `sub --process-time`: each message is shown when it arrives and acked only when its work is done,
/// and the consumer holds one message at a time (so competing consumers share the work by their speed).
#[test]
fn sub_process_time_holds_one_message_and_acks_it_after_the_work() {
    let home = Home::with_daemon("process-time");
    home.run(&["subs", "create", "jobs-w", "--topic", "jobs", "--from", "start"]);
    home.run(&["pub", "jobs", "a", "b", "c"]);
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let mut child = std::process::Command::new(bin)
        .args(["sub", "jobs", "-s", "jobs-w", "--process-time", "60s", "--format", "raw"])
        .env("PUBSUB_HOME", &home.0)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = crate::support::stdout_lines(&mut child);
    // Shown as soon as it arrives, before its work is done.
    let first = lines.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
    assert_eq!(first, "a");
    let (_, out, _) = home.run(&["sub-info", "jobs-w", "--json"]);
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // One held (the one being worked on), not acked; the other two wait for the next free consumer.
    assert_eq!(
        (info["in_flight"].as_u64(), info["pending"].as_u64(), info["counters"]["acked"].as_u64()),
        (Some(1), Some(2), Some(0)),
        "{info}"
    );
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    // Interrupted mid-work: not acked, so it goes back.
    let (_, out, _) = home.run(&["sub-info", "jobs-w", "--json"]);
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(info["counters"]["acked"].as_u64(), Some(0), "{info}");
    // A short time runs through: every message shown, then acked.
    let (code, out, err) =
        home.run(&["sub", "jobs", "-s", "jobs-w", "--process-time", "10ms", "--format", "raw", "-n", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["a", "b", "c"]);
    let (_, out, _) = home.run(&["sub-info", "jobs-w", "--json"]);
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((info["counters"]["acked"].as_u64(), info["backlog"].as_u64()), (Some(3), Some(0)), "{info}");
    let (code, _, err) = home.run(&["sub", "jobs", "-s", "jobs-w", "--process-time", "1s", "--exec", "true"]);
    assert_eq!(code, 2, "{err}");
}

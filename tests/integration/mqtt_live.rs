//! The MQTT backend against the real Mosquitto on 127.0.0.1:1883, with the real `mosquitto_pub` and
//! `mosquitto_sub` on the other side, and against a Mosquitto each restart/auth test starts itself.
//! Skips (with the reason printed) when Mosquitto or its clients are missing; fails instead when
//! PUBSUB_REQUIRE_BROKERS=1.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Home, outcome};

const URL: &str = "mqtt://127.0.0.1:1883";

/// Whether Mosquitto and its clients are here; panics when they must be.
fn mosquitto_here() -> bool {
    let up = std::net::TcpStream::connect_timeout(&"127.0.0.1:1883".parse().unwrap(), Duration::from_secs(1))
        .is_ok();
    let clients = Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if up && clients {
        return true;
    }
    let reason = if up {
        "mosquitto_pub/mosquitto_sub are not installed"
    } else {
        "Mosquitto is not running on 127.0.0.1:1883"
    };
    assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "live MQTT tests required: {reason}");
    eprintln!("skipping live MQTT test: {reason}");
    false
}

fn topic(tag: &str) -> String {
    format!("pubsub-test/{tag}/{}", std::process::id())
}

/// Runs `publish` every 100 ms until `child` exits (a subscriber has no other way to say it listens).
fn publish_until_exit(child: Child, mut publish: impl FnMut()) -> Output {
    let mut child = child;
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the subscriber never received anything");
        publish();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What `pubsub sub FILTER` prints (`subject payload`) for the first message mosquitto_pub sends to `topic`.
fn first_received(home: &Home, filter: &str, topic: &str, payload: &str) -> String {
    let format = ["--format", "{{subject}} {{payload}}", "--timeout", "15s"];
    let sub =
        home.at(URL, &["sub", filter, "--count", "1"]).args(format).stdout(Stdio::piped()).spawn().unwrap();
    let out = publish_until_exit(sub, || {
        Command::new("mosquitto_pub").args(["-t", topic, "-m", payload]).status().unwrap();
    });
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn mosquitto_pub_reaches_pubsub_sub_through_a_wildcard_and_back() {
    if !mosquitto_here() {
        return;
    }
    let home = Home::new("mqtt-interop");
    let base = topic("interop");
    let filter = format!("{base}/+/temp");
    let sent = format!("{base}/kitchen/temp");
    assert_eq!(first_received(&home, &filter, &sent, "21.5"), format!("{sent} 21.5"));

    let back = format!("{base}/reply");
    let listener = Command::new("mosquitto_sub")
        .args(["-t", &format!("{base}/#"), "-C", "1", "-v", "-q", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = publish_until_exit(listener, || {
        let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &back, "from pubsub", "--qos", "1"]));
        assert_eq!(code, 0, "{stderr}");
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{back} from pubsub"));
}

#[test]
fn retained_messages_arrive_flagged_can_be_skipped_and_cleared() {
    if !mosquitto_here() {
        return;
    }
    let home = Home::new("mqtt-retained");
    let t = topic("retained");
    let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &t, "on", "--retain", "--qos", "1"]));
    assert_eq!(code, 0, "{stderr}");
    let (code, out, stderr) =
        outcome(&mut home.at(URL, &["sub", &t, "--count", "1", "--timeout", "5s", "--format", "json"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("\"payload\":\"on\"") && out.contains("\"mqtt-retained\":\"true\""), "{out}");
    // mosquitto_sub sees the same retained message.
    let out = Command::new("mosquitto_sub").args(["-t", &t, "-C", "1", "-W", "5"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "on");
    // ?retained=false skips it: nothing arrives, so the timeout ends the command with exit 4.
    let skip = format!("{URL}?retained=false");
    let (code, out, _) = outcome(&mut home.at(&skip, &["sub", &t, "--count", "1", "--timeout", "1s"]));
    assert_eq!((code, out.as_str()), (4, ""));
    let (code, out, _) =
        outcome(&mut home.at(URL, &["sub", &t, "--no-retained", "--count", "1", "--timeout", "1s"]));
    assert_eq!((code, out.as_str()), (4, ""));
    // An empty retained publish clears it.
    let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &t, "", "--retain", "--qos", "1"]));
    assert_eq!(code, 0, "{stderr}");
    let out = Command::new("mosquitto_sub").args(["-t", &t, "-C", "1", "-W", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(27), "a retained message is still there: {:?}", out.stdout);
}

#[test]
fn bad_input_gets_clear_errors_and_exit_codes() {
    if !mosquitto_here() {
        return;
    }
    let home = Home::new("mqtt-bad");
    let (code, _, stderr) = outcome(&mut home.at("mqtt://127.0.0.1:1", &["pub", "x", "y"]));
    assert_eq!(code, 3, "{stderr}");
    // A pattern MQTT cannot express is a bad argument: exit 2 (issue 19).
    let (code, _, stderr) = outcome(&mut home.at(URL, &["sub", "orders.*", "--timeout", "1s"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("'/' levels"), "{stderr}");
    let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &topic("h"), "x", "-H", "a=b"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no headers"), "{stderr}");
    let (code, _, stderr) = outcome(&mut home.at("mqtt://127.0.0.1:1883?version=4.5", &["pub", "x", "y"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("use 3.1.1 or 5"), "{stderr}");
    let (code, _, stderr) = outcome(&mut home.at("mem://", &["pub", "x", "y", "--retain"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("MQTT settings"), "{stderr}");
}

/// A Mosquitto of the test's own, on a free port, with a password file and persistence.
struct OwnMosquitto {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl OwnMosquitto {
    fn start(tag: &str) -> Option<OwnMosquitto> {
        if Command::new("mosquitto").arg("-h").output().is_err() {
            assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "the mosquitto binary is required");
            eprintln!("skipping: the mosquitto binary is not installed");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("pubsub-mosquitto-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Started as root, mosquitto drops to its own user, which must be able to save its database here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let passwords = dir.join("passwd");
        let status = Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&passwords)
            .args(["tester", "secret"])
            .status()
            .unwrap();
        assert!(status.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut conf = std::fs::File::create(dir.join("mosquitto.conf")).unwrap();
        writeln!(
            conf,
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence true\npersistence_location {}/\nmax_packet_size 65536\n",
            passwords.display(),
            dir.display()
        )
        .unwrap();
        let mut own = OwnMosquitto { child: None, port, dir };
        own.run();
        Some(own)
    }

    fn run(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        crate::support::wait_until_listening(self.port, "mosquitto");
    }

    /// Stops it with SIGTERM (it saves its persistence file) and starts it again on the same port.
    fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let mut child = child;
            let _ = child.wait();
        }
    }

    fn url(&self, user: &str, password: &str) -> String {
        format!("mqtt://{user}:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnMosquitto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn refused_credentials_exit_5() {
    let Some(broker) = OwnMosquitto::start("auth") else {
        return;
    };
    let home = Home::new("mqtt-auth");
    let (code, _, stderr) = outcome(&mut home.at(&broker.url("tester", "wrong"), &["pub", "x", "y"]));
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("refused the login") && !stderr.contains("wrong"), "{stderr}");
    let (code, _, stderr) = outcome(&mut home.at(&broker.url("tester", "secret"), &["pub", "x", "y"]));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_persistent_session_gets_what_was_published_while_it_was_away_even_across_a_broker_restart() {
    let Some(mut broker) = OwnMosquitto::start("session") else {
        return;
    };
    let home = Home::new("mqtt-session");
    let url = broker.url("tester", "secret");
    let t = "plant/line1/events";
    // The first visit creates the session and its QoS 1 subscription; nothing is there yet.
    let (code, _, stderr) = outcome(&mut home.at(&url, &["sub", "-s", "line-watcher", t, "--timeout", "1s"]));
    assert_eq!(code, 4, "{stderr}");
    for m in ["while-away-1", "while-away-2"] {
        let status = Command::new("mosquitto_pub")
            .args([
                "-p",
                &broker.port.to_string(),
                "-u",
                "tester",
                "-P",
                "secret",
                "-q",
                "1",
                "-t",
                t,
                "-m",
                m,
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
    broker.restart();
    let (code, out, stderr) = outcome(&mut home.at(
        &url,
        &["sub", "-s", "line-watcher", t, "--count", "2", "--timeout", "10s", "--format", "{{payload}}"],
    ));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out, "while-away-1\nwhile-away-2\n");
}

#[test]
fn a_live_subscriber_resubscribes_after_the_broker_restarts() {
    let Some(mut broker) = OwnMosquitto::start("reconnect") else {
        return;
    };
    let home = Home::new("mqtt-reconnect");
    let url = broker.url("tester", "secret");
    let sub = home
        .at(&url, &["sub", "alerts/#", "--count", "1", "--timeout", "30s", "--format", "{{payload}}"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    broker.restart();
    let port = broker.port.to_string();
    let out = publish_until_exit(sub, || {
        let _ = Command::new("mosquitto_pub")
            .args(["-p", &port, "-u", "tester", "-P", "secret", "-t", "alerts/fire", "-m", "after restart"])
            .status();
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "after restart");
}

#[test]
fn the_last_will_is_published_when_a_client_dies() {
    if !mosquitto_here() {
        return;
    }
    let home = Home::new("mqtt-will");
    let t = topic("will");
    let listener = Command::new("mosquitto_sub")
        .args(["-t", &t, "-C", "1", "-W", "15"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let url = format!("{URL}?will_topic={t}&will_payload=gone&keep_alive=5s");
    // A command that ends normally disconnects cleanly: no will.
    let (code, _, stderr) = outcome(&mut home.at(&url, &["pub", &topic("calm"), "fine"]));
    assert_eq!(code, 0, "{stderr}");
    std::thread::sleep(Duration::from_millis(500));
    let mut listener = listener;
    assert!(listener.try_wait().unwrap().is_none(), "the will was published after a clean exit");
    let mut doomed = home.at(&url, &["sub", &topic("quiet"), "--timeout", "30s"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    doomed.kill().unwrap(); // SIGKILL: no DISCONNECT, so the broker publishes the will
    let _ = doomed.wait();
    let out = listener.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "gone");
}

#[test]
fn mqtt5_user_properties_travel_as_headers_both_ways_and_sessions_persist() {
    if !mosquitto_here() {
        return;
    }
    let home = Home::new("mqtt-v5");
    let v5 = format!("{URL}?version=5");
    let base = topic("v5");
    let inbound = format!("{base}/in");
    let sub = home
        .at(&v5, &["sub", &inbound, "--count", "1", "--timeout", "15s", "--format", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = publish_until_exit(sub, || {
        let args =
            ["-V", "5", "-D", "publish", "user-property", "trace", "abc", "-D", "publish", "content-type"];
        Command::new("mosquitto_pub")
            .args(args)
            .args(["text/plain", "-t", &inbound, "-m", "hi"])
            .status()
            .unwrap();
    });
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("\"trace\":\"abc\"") && json.contains("\"content-type\":\"text/plain\""), "{json}");

    let outbound = format!("{base}/out");
    let listener = Command::new("mosquitto_sub")
        .args(["-V", "5", "-t", &outbound, "-C", "1", "-F", "%P|%p"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = publish_until_exit(listener, || {
        let (code, _, stderr) = outcome(&mut home.at(&v5, &["pub", &outbound, "hello", "-H", "trace=xyz"]));
        assert_eq!(code, 0, "{stderr}");
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "trace:xyz|hello");

    // An MQTT 5 session needs an expiry to outlive its connection; the backend sets one.
    let kept = format!("{base}/kept");
    let session = format!("v5-session-{}", std::process::id());
    let (code, _, stderr) = outcome(&mut home.at(&v5, &["sub", "-s", &session, &kept, "--timeout", "1s"]));
    assert_eq!(code, 4, "{stderr}");
    let status = Command::new("mosquitto_pub")
        .args(["-V", "5", "-q", "1", "-t", &kept, "-m", "away"])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, out, stderr) = outcome(&mut home.at(
        &v5,
        &["sub", "-s", &session, &kept, "--count", "1", "--timeout", "10s", "--format", "{{payload}}"],
    ));
    assert_eq!((code, out.as_str()), (0, "away\n"), "{stderr}");
}

#[test]
fn a_payload_over_the_brokers_maximum_is_refused_clearly() {
    let Some(broker) = OwnMosquitto::start("too-large") else {
        return;
    };
    let home = Home::new("mqtt-too-large");
    let big = broker.dir.join("big");
    std::fs::write(&big, vec![b'x'; 100_000]).unwrap();
    let big = big.display().to_string();
    // MQTT 5: the broker announces its maximum, and the client refuses before sending.
    let v5 = format!("{}?version=5", broker.url("tester", "secret"));
    let (code, _, stderr) = outcome(&mut home.at(&v5, &["pub", "big/t", "--file", &big]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("maximum packet size of: '65536'"), "{stderr}");
    // MQTT 3.1.1 at QoS 1: the broker closes the connection instead of acknowledging; the error says so.
    let v3 = format!("{}?qos=1", broker.url("tester", "secret"));
    let (code, _, stderr) = outcome(&mut home.at(&v3, &["pub", "big/t", "--file", &big]));
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("maximum packet size"), "{stderr}");
    // Smaller messages still go through.
    let (code, _, stderr) = outcome(&mut home.at(&v3, &["pub", "big/t", "small"]));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn mqtts_checks_the_broker_certificate_and_accepts_a_private_ca() {
    if Command::new("openssl").arg("version").output().is_err()
        || Command::new("mosquitto").arg("-h").output().is_err()
    {
        assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "openssl and mosquitto are required");
        eprintln!("skipping: openssl or mosquitto is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("pubsub-mqtts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let crate::support::TestCerts { ca, key, cert } = crate::support::test_certificates(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        dir.join("m.conf"),
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        ),
    )
    .unwrap();
    let mut broker = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("m.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    crate::support::wait_until_listening(port, "mosquitto with TLS");
    let home = Home::new("mqtts");
    let plain = format!("mqtts://127.0.0.1:{port}");
    let (unverified, _, unverified_err) = outcome(&mut home.at(&plain, &["pub", "secure/t", "x"]));
    let trusted = format!("mqtts://127.0.0.1:{port}?ca={ca}");
    let (verified, _, verified_err) =
        outcome(&mut home.at(&trusted, &["pub", "secure/t", "x", "--qos", "1"]));
    let _ = broker.kill();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(unverified, 3, "a certificate from an unknown CA was accepted: {unverified_err}");
    assert_eq!(verified, 0, "{verified_err}");
}

#[test]
fn topics_with_dots_are_routed_by_mqtt_rules() {
    if !mosquitto_here() {
        return;
    }
    let home = Home::new("mqtt-dots");
    let base = topic("dots");
    let filter = format!("{base}/#");
    let dotted = format!("{base}/v1.2/temp");
    assert_eq!(first_received(&home, &filter, &dotted, "ok"), format!("{dotted} ok"));
}

//! Interoperability: a client written in Python from docs/PROTOCOL.md alone (tests/interop/client.py)
//! publishes, subscribes, receives and acks against a real server.

use std::process::Command;

use crate::server::start;

/// Whether Python with the `websockets` package can be had; installs it from PyPI when missing.
fn python_with_websockets() -> Result<(), String> {
    let has = || {
        Command::new("python3").args(["-c", "import websockets"]).output().is_ok_and(|o| o.status.success())
    };
    if has() {
        return Ok(());
    }
    let install = Command::new("python3").args(["-m", "pip", "install", "--quiet", "websockets"]).output();
    match install {
        Ok(o) if o.status.success() && has() => Ok(()),
        Ok(o) => Err(format!("pip install websockets failed: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => Err(format!("python3 not available: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_written_from_the_protocol_doc_works() {
    if let Err(reason) = python_with_websockets() {
        assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "interop test cannot run: {reason}");
        eprintln!("skipping the Python interop test: {reason}");
        return;
    }
    let server = start(pubsub::server::ServeConfig::default()).await;
    crate::support::python_script_says_ok("client.py", vec![server.url.clone()]).await;
}

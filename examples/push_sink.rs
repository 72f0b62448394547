//! A fast HTTP endpoint for `scripts/bench-push.sh`: answers every POST with 204 on kept-alive
//! connections, prints its address, and once it has answered N requests prints how long they took
//! from the first one and exits.
//!
//!   push_sink [ADDR] [N]      (default 127.0.0.1:0 and 200,000)

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OnceCell;

struct Tally {
    n: u64,
    answered: AtomicU64,
    first: OnceCell<Instant>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let listener = TcpListener::bind(&addr).await?;
    println!("http://{}/push", listener.local_addr()?);
    let tally = Arc::new(Tally { n, answered: AtomicU64::new(0), first: OnceCell::new() });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, tally.clone()));
    }
}

async fn serve(mut stream: TcpStream, tally: Arc<Tally>) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Answer every complete request in the buffer, then read more.
        let mut out = Vec::new();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let Ok(httparse::Status::Complete(head)) = req.parse(&buf) else { break };
            let length = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() < head + length {
                break;
            }
            buf.drain(..head + length);
            out.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
            let _ = tally.first.get_or_init(|| async { Instant::now() }).await;
            let done = tally.answered.fetch_add(1, Ordering::Relaxed) + 1;
            if done == tally.n {
                let secs = tally.first.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
                println!("{done} requests in {secs:.2} s: {:.0} msgs/s", done as f64 / secs);
                std::process::exit(0);
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

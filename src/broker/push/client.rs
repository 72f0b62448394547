//! A small HTTP/1.1 POST client for one push endpoint, on hyper's connection API: a pool of kept-alive
//! connections (one request at a time on each, so the pool grows to the concurrency the pusher uses),
//! `http://` over TCP and `https://` over rustls with the system's roots. Redirects are answers like any
//! other (never followed); an answer's body is read, up to [`BODY_LIMIT`], only to keep the connection,
//! and thrown away.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::model::PushConfig;

/// The most of an answer's body read (and discarded) to keep its connection; past it the connection is
/// dropped instead.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Idle connections kept at most.
const MAX_IDLE: usize = 256;

/// How a POST ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An answer came with this status.
    Status(u16),
    /// No answer: the connection could not be made or broke.
    Failed(String),
}

/// One endpoint and its idle connections.
pub struct Endpoint {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// What the request line names: the path and query.
    target: Uri,
    /// Host, content type, user agent and the subscription's own headers.
    headers: HeaderMap,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("host", &self.host).field("port", &self.port).finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The endpoint of a push configuration (checked again here: a record from elsewhere may be bad).
    pub fn new(config: &PushConfig) -> Result<Endpoint, String> {
        if let Some(problem) = config.problem() {
            return Err(problem);
        }
        let uri: Uri = config.endpoint.parse().map_err(|e| format!("push endpoint: {e}"))?;
        let https = uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let authority = uri.authority().ok_or_else(|| "push endpoint has no host".to_string())?.clone();
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let target: Uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| format!("push endpoint path: {e}"))?;
        let tls = if https {
            let config = crate::broker::kit::tls::verified(None)?;
            let name = ServerName::try_from(host.clone()).map_err(|e| format!("push endpoint host: {e}"))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let mut headers = HeaderMap::new();
        let host_value =
            HeaderValue::from_str(authority.as_str()).map_err(|e| format!("push endpoint host: {e}"))?;
        headers.insert(HOST, host_value);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers
            .insert(USER_AGENT, HeaderValue::from_static(concat!("pubsub-push/", env!("CARGO_PKG_VERSION"))));
        for (name, value) in &config.headers {
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("push header {name}: {e}"))?;
            let value = HeaderValue::from_str(value).map_err(|e| format!("push header {name}: {e}"))?;
            headers.append(name, value);
        }
        Ok(Endpoint { host, port, tls, target, headers, idle: Mutex::new(Vec::new()) })
    }

    /// POSTs `body`; the caller bounds the time it may take. A kept connection that turns out to be
    /// closed by the server is replaced by a new one once.
    pub async fn post(&self, body: Bytes) -> Outcome {
        let mut reused = self.take_idle();
        loop {
            let was_reused = reused.is_some();
            let mut sender = match reused.take() {
                Some(s) => s,
                None => match self.connect().await {
                    Ok(s) => s,
                    Err(e) => return Outcome::Failed(e),
                },
            };
            if let Err(e) = sender.ready().await {
                if was_reused {
                    continue;
                }
                return Outcome::Failed(format!("connection: {e}"));
            }
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = Method::POST;
            *request.uri_mut() = self.target.clone();
            *request.headers_mut() = self.headers.clone();
            let response = match sender.send_request(request).await {
                Ok(r) => r,
                // A kept connection the server closed meanwhile: nothing was answered, try a fresh one.
                Err(e) if was_reused && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) => {
                    continue;
                }
                Err(e) => return Outcome::Failed(describe(&e)),
            };
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut read = 0usize;
            let mut whole = false;
            while read <= BODY_LIMIT {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                    Some(Err(_)) => break,
                    None => {
                        whole = true;
                        break;
                    }
                }
            }
            if whole {
                self.put_idle(sender);
            }
            return Outcome::Status(status);
        }
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE && !sender.is_closed() {
            idle.push(sender);
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect to {}:{}: {e}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| format!("TLS: {e}"))?;
                handshake(tls).await
            }
        }
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection's task ends when the sender is dropped (or the server closes it).
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn describe(e: &hyper::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

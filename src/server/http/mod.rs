//! Plain HTTP on the server's port, for scripts and browsers without a WebSocket client: `POST
//! /topics/NAME` publishes, `GET /topics/NAME/events` streams Server-Sent Events, `GET
//! /subscriptions/NAME` describes a subscription. HTTP/1.1 connections persist (keep-alive, pipelining
//! answered in order); the same token, limits and pre-authentication allowance as a WebSocket
//! connection (docs/PROTOCOL.md, "HTTP").

pub(crate) mod head;
mod publish;
mod response;
mod sse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::admission::{Allowance, Metered, PendingSlot, lift};
use super::auth::tokens_match;
use super::{Served, Shared};
use crate::broker::url::percent_decode_bytes;
use crate::broker::{Broker, SubscribeRequest};
use crate::engine::ByteBudget;
use crate::model::{AckMode, Name, Pattern, StartPosition};
use crate::protocol::ErrorCode;
use head::{Head, HeadError, Rewind};
pub(crate) use response::HttpError;

/// The socket of a connection whose head has been read.
pub(crate) type Socket = Rewind<Metered<TcpStream>>;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Publish(Name),
    Events(Name),
    Subscription(Name),
    /// The page of `ServeConfig::page`.
    Page,
    /// A browser's CORS preflight for a path that takes this method (only with `allow_origin`).
    Preflight(&'static str),
}

const ROUTES: &str = "POST /topics/NAME, GET /topics/NAME/events and GET /subscriptions/NAME";

/// The route of a request, or why there is none (404 path, 405 method, 400 name).
fn route(head: &Head, cors: bool, page: bool) -> Result<Route, HttpError> {
    if page && (head.path == "/" || head.path == "/index.html") && head.method == "GET" {
        return Ok(Route::Page);
    }
    let segments: Vec<&str> = head.path.strip_prefix('/').unwrap_or(&head.path).split('/').collect();
    let (want, make): (&'static str, fn(Name) -> Route) = match segments.as_slice() {
        ["topics", _] => ("POST", Route::Publish),
        ["topics", _, "events"] => ("GET", Route::Events),
        ["subscriptions", _] => ("GET", Route::Subscription),
        _ => {
            let msg = format!("no such path: {}; the HTTP routes are {ROUTES}", head.path);
            return Err(HttpError::with_status(404, ErrorCode::UnknownOp, msg));
        }
    };
    if cors && head.method == "OPTIONS" {
        return Ok(Route::Preflight(want));
    }
    if head.method != want {
        let msg = format!("{} is not allowed on {}; use {want}", head.method, head.path);
        return Err(HttpError::with_status(405, ErrorCode::UnknownOp, msg).header("Allow", want));
    }
    Ok(make(name(segments[1])?))
}

/// A name from a path segment, percent-decoded.
fn name(segment: &str) -> Result<Name, HttpError> {
    let Ok(text) = String::from_utf8(percent_decode_bytes(segment)) else {
        let msg = format!("the name \"{segment}\" is not UTF-8 once decoded");
        return Err(HttpError::new(ErrorCode::InvalidName, msg));
    };
    Name::new(&text).map_err(|e| HttpError::new(ErrorCode::InvalidName, e.to_string()))
}

/// Checks the request's token (`Authorization: Bearer T`, or `?token=T` for clients that cannot set
/// headers, such as a browser's `EventSource`) against the server's.
fn authorize(head: &Head, expected: Option<&str>) -> Result<(), HttpError> {
    let Some(expected) = expected else { return Ok(()) };
    let bearer = head.header("authorization").and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let given = bearer.or_else(|| head.param("token")).unwrap_or("");
    if tokens_match(expected, given) {
        return Ok(());
    }
    let msg = if given.is_empty() {
        "this server needs a token: send Authorization: Bearer TOKEN, or ?token=TOKEN"
    } else {
        "wrong token"
    };
    Err(HttpError::new(ErrorCode::Unauthorized, msg).header("WWW-Authenticate", "Bearer"))
}

/// Answers a connection whose first bytes were not a request head we could read: 400 or 431, when
/// there is a client to tell.
pub(crate) async fn refuse_head(socket: &mut Socket, e: &HeadError, timeout: Duration) {
    let answer = match e {
        HeadError::TooLarge(_) | HeadError::TooManyHeaders => {
            HttpError::with_status(431, ErrorCode::FrameTooLarge, e.to_string())
        }
        HeadError::Malformed(_) => HttpError::new(ErrorCode::BadFrame, e.to_string()),
        HeadError::Closed | HeadError::Io(_) => return,
    };
    let mut answer = answer.response();
    response::closing(&mut answer);
    let _ = tokio::time::timeout(timeout, socket.write_all(&answer)).await;
    let _ = tokio::time::timeout(timeout, socket.shutdown()).await;
}

/// What the HTTP side of a connection needs.
pub(crate) struct Request {
    pub socket: Socket,
    pub head: Head,
    /// Bytes of the head, to skip in the socket's replay.
    pub head_len: usize,
    pub allowance: Allowance,
    pub slot: PendingSlot,
    pub peer: SocketAddr,
}

/// Serves the HTTP requests of one connection. The first is admitted as a WebSocket's `hello` is (the
/// token, then a place among the served connections); while the client keeps the connection open
/// (HTTP/1.1 without `Connection: close`, HTTP/1.0 with `Connection: keep-alive`), the next requests are read and answered in order, pipelined
/// ones included, each with its own token check. The connection closes when the client asks, after
/// `idle_timeout` without a request, after an event stream, a refused token, or an answer sent before
/// the request's body was read.
pub(crate) async fn serve(request: Request, shared: Arc<Shared>, cancel: CancellationToken) {
    let Request { mut socket, head, head_len, allowance, slot, peer } = request;
    socket.skip(head_len);
    let limits = shared.config.limits;
    // A preflight carries no credentials: it is answered before the token is asked for.
    if let Ok(Route::Preflight(method)) = route(&head, shared.config.allow_origin.is_some(), false) {
        return refuse(socket, &response::preflight(method), &shared, &cancel, &slot).await;
    }
    let admitted = authorize(&head, shared.config.token.as_deref())
        .and_then(|()| route(&head, false, shared.config.page.is_some()))
        .and_then(|r| {
            let served = Served::take(&shared).ok_or_else(|| {
                HttpError::new(ErrorCode::TooManyConnections, "the server has reached its connection limit")
            })?;
            Ok((r, served))
        });
    let (first, served) = match admitted {
        Ok(pair) => pair,
        Err(e) => return refuse(socket, &e.response(), &shared, &cancel, &slot).await,
    };
    // From here the client counts among the served connections, as after `hello`.
    drop(slot);
    lift(&allowance);
    let mut head = head;
    let mut next: Result<Route, HttpError> = Ok(first);
    loop {
        tracing::debug!(%peer, route = ?next, "http request");
        let (answer, body_read) = match next {
            Ok(route) => match answer(route, &mut socket, &head, &shared, peer).await {
                Answer::Done { answer, body_read } => (answer, body_read),
                Answer::Events { stream, ids, budget } => {
                    let config = sse::StreamConfig {
                        keep_alive: shared.config.keep_alive,
                        write_timeout: shared.config.write_timeout,
                        allow_origin: shared.config.allow_origin.clone(),
                    };
                    let tcp = socket.into_inner().into_inner();
                    sse::run(tcp, stream, budget, config, ids, cancel).await;
                    drop(served);
                    return;
                }
            },
            Err(e) => {
                let unauthorized = e.status == 401;
                (e.response(), !unauthorized && bodiless(&head))
            }
        };
        let keep = head.persistent && body_read && !answer.is_empty() && !cancel.is_cancelled();
        if !keep {
            drop(served);
            return finish(socket, &answer, &shared, &cancel).await;
        }
        let mut answer = dressed(answer, &shared);
        if head.keep_alive_1_0 {
            response::keeping(&mut answer);
        }
        if !matches!(
            tokio::time::timeout(shared.config.write_timeout, socket.write_all(&answer)).await,
            Ok(Ok(()))
        ) {
            return;
        }
        let read = tokio::select! {
            () = cancel.cancelled() => return,
            read = tokio::time::timeout(shared.config.idle_timeout, socket.next_head(limits.max_hello_bytes)) => read,
        };
        match read {
            Err(_) => {
                tracing::debug!(%peer, "no further request within {:?}", shared.config.idle_timeout);
                let _ = tokio::time::timeout(shared.config.write_timeout, socket.shutdown()).await;
                return;
            }
            Ok(Err(e)) => return refuse_head(&mut socket, &e, shared.config.write_timeout).await,
            Ok(Ok((read, len))) => {
                socket.skip(len);
                head = read;
            }
        }
        next = next_route(&head, &shared);
    }
}

/// The route of a request after the first on a connection: a preflight as it is, anything else with
/// its token; a WebSocket upgrade only as a connection's first request.
fn next_route(head: &Head, shared: &Shared) -> Result<Route, HttpError> {
    if let Ok(preflight @ Route::Preflight(_)) = route(head, shared.config.allow_origin.is_some(), false) {
        return Ok(preflight);
    }
    if head.is_websocket() {
        let msg = "a WebSocket upgrade must be the first request of a connection; open a new one";
        return Err(HttpError::new(ErrorCode::BadFrame, msg));
    }
    authorize(head, shared.config.token.as_deref())?;
    route(head, false, shared.config.page.is_some())
}

/// Whether a request has no body (none announced), so that the connection can carry another request
/// after an answer given without reading one.
fn bodiless(head: &Head) -> bool {
    head.header("transfer-encoding").is_none() && publish::body_length(head).is_ok_and(|n| n == 0)
}

/// What a request gets.
enum Answer {
    /// A whole answer; `body_read` is false when the request's body was left unread.
    Done { answer: Vec<u8>, body_read: bool },
    /// An event stream, which takes the rest of the connection.
    Events { stream: crate::broker::DeliveryStream, ids: sse::EventIds, budget: Arc<ByteBudget> },
}

/// Answers one admitted request.
async fn answer(route: Route, socket: &mut Socket, head: &Head, shared: &Shared, peer: SocketAddr) -> Answer {
    let done = |answer| Answer::Done { answer, body_read: bodiless(head) };
    match route {
        Route::Publish(subject) => {
            let (answer, body_read) = publish(socket, subject, head, shared).await;
            Answer::Done { answer, body_read }
        }
        Route::Subscription(name) => done(match shared.broker.subscription_info(&name).await {
            Ok(info) => response::json(&info),
            Err(e) => HttpError::of(&e).response(),
        }),
        Route::Preflight(method) => done(response::preflight(method)),
        Route::Page => {
            let page = shared.config.page.unwrap_or_default();
            done(response::response(200, &[], "text/html; charset=utf-8", page.as_bytes()))
        }
        Route::Events(topic) => {
            let connection = shared.connection_budget();
            let budget = ByteBudget::child(&connection, shared.config.limits.max_stream_bytes as u64);
            match open_events(&topic, head, shared, peer, &budget).await {
                Ok((stream, ids)) => Answer::Events { stream, ids, budget },
                Err(e) => done(e.response()),
            }
        }
    }
}

/// `answer` with the CORS header, when the server sends one.
fn dressed(mut answer: Vec<u8>, shared: &Shared) -> Vec<u8> {
    if let Some(origin) = &shared.config.allow_origin {
        response::allow_origin(&mut answer, origin);
    }
    answer
}

/// The event stream of `topic` from where the request asks, and how its events are numbered; a topic
/// that does not exist yet is made as a publish to it would make it (a 404 when auto-create is off or
/// the name is a subject inside another topic). `?partition=P` streams one partition of
/// the topic; without it a topic of several partitions streams them all, its event ids naming a
/// position in each.
async fn open_events(
    topic: &Name,
    head: &Head,
    shared: &Shared,
    peer: SocketAddr,
    budget: &Arc<ByteBudget>,
) -> Result<(crate::broker::DeliveryStream, sse::EventIds), HttpError> {
    let start = sse::start_of(head)?;
    let info = shared
        .broker
        .engine()
        .topic_info_or_create(topic)
        .map_err(|e| HttpError::of(&crate::broker::BrokerError::from(e)))?;
    let parts = info.positions();
    let only = match head.param("partition") {
        None => None,
        Some(p) => {
            let p = p.parse::<u32>().ok().filter(|&p| (p as usize) < parts.len()).ok_or_else(|| {
                let msg = format!("partition={p}: topic \"{topic}\" has partitions 0 to {}", parts.len() - 1);
                HttpError::new(ErrorCode::NoSuchPartition, msg)
            })?;
            Some(p)
        }
    };
    let consumer = format!("http-{peer}");
    let read = |starts: &[(u32, u64)], only| {
        shared.broker.read_from_positions(
            topic.clone(),
            starts,
            consumer.clone(),
            EVENTS_PREFETCH,
            only,
            Some(budget.clone()),
        )
    };
    let (stream, ids) = match only {
        Some(p) => (read(&[(p, start.first_seq(&parts[p as usize]))], Some(p)), sse::EventIds::Seq),
        None if parts.len() > 1 => {
            let starts: Vec<(u32, u64)> =
                parts.iter().map(|part| (part.partition, start.first_seq(part))).collect();
            let sent = starts.iter().map(|&(p, first)| (p, first.saturating_sub(1))).collect();
            (read(&starts, None), sse::EventIds::Positions(sent))
        }
        None => {
            let req = SubscribeRequest {
                patterns: vec![Pattern::from(topic)],
                subscription: None,
                from: Some(parts.first().map_or(start.from, |p| StartPosition::Seq(start.first_seq(p)))),
                ack: AckMode::None,
                consumer: Some(consumer.clone()),
                prefetch: Some(EVENTS_PREFETCH),
                limit: None,
                partition: None,
                until_end: false,
            };
            (shared.broker.subscribe_within(req, Some(budget.clone())), sse::EventIds::Seq)
        }
    };
    Ok((stream.map_err(|e| HttpError::of(&e))?, ids))
}

/// Messages the engine may push to an event stream ahead of its writes (its bytes are capped by the
/// stream's budget as well).
const EVENTS_PREFETCH: u32 = 8192;

/// Reads the body and publishes it; the answer is the receipt. The flag says whether the body was read
/// (an answer given before it leaves it unread, so the connection cannot carry another request).
async fn publish(socket: &mut Socket, subject: Name, head: &Head, shared: &Shared) -> (Vec<u8>, bool) {
    let limits = shared.config.limits;
    let max = limits.max_message_bytes;
    let length = match publish::body_length(head).and_then(|n| {
        // Headers are checked before the body is read, so a refusal need not wait for it.
        publish::message_headers(head).map(|_| n)
    }) {
        Ok(n) => n,
        Err(e) => return (e.response(), false),
    };
    if length > max {
        let msg =
            format!("a body of {length} bytes is larger than the server's limit of {max} bytes per message");
        return (HttpError::new(ErrorCode::MessageTooLarge, msg).response(), false);
    }
    if head.header("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue")) {
        let _ = socket.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
    }
    let mut body = vec![0u8; length];
    match tokio::time::timeout(limits.hello_timeout, socket.read_exact(&mut body)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return (Vec::new(), false),
        Err(_) => {
            let msg = format!("the body did not arrive within {:?}", limits.hello_timeout);
            return (HttpError::with_status(408, ErrorCode::BadFrame, msg).response(), false);
        }
    }
    let req = match publish::request(subject, head, body) {
        Ok(req) => req,
        Err(e) => return (e.response(), true),
    };
    if req.size() > max {
        let msg = format!(
            "message of {} bytes (payload, key and headers) is larger than the server's limit of {max} bytes",
            req.size()
        );
        return (HttpError::new(ErrorCode::MessageTooLarge, msg).response(), true);
    }
    let answer = match shared.broker.publish(req).await {
        Ok(receipt) => response::json(&receipt),
        Err(e) => HttpError::of(&e).response(),
    };
    (answer, true)
}

/// Answers a request that was not admitted: it still holds its pending slot, and gives way as soon as
/// a newer connection needs the slot.
async fn refuse(
    socket: Socket,
    answer: &[u8],
    shared: &Shared,
    cancel: &CancellationToken,
    slot: &PendingSlot,
) {
    tokio::select! {
        () = slot.evicted.cancelled() => {}
        () = finish(socket, answer, shared, cancel) => {}
    }
}

/// Writes the answer and closes: the write side first, then whatever the client still sends is read
/// and dropped for a while (until `stop` fires at the latest), so that closing with unread bytes does
/// not reset the connection before the client has read the answer (a refused body it is still
/// sending, say).
async fn finish(mut socket: Socket, answer: &[u8], shared: &Shared, stop: &CancellationToken) {
    let timeout = shared.config.write_timeout;
    if answer.is_empty() {
        return;
    }
    let mut answer = dressed(answer.to_vec(), shared);
    response::closing(&mut answer);
    if tokio::time::timeout(timeout, socket.write_all(&answer)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(timeout, socket.shutdown()).await;
    let drain = async {
        let mut sink = [0u8; 8192];
        while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        () = stop.cancelled() => {}
        _ = tokio::time::timeout(shared.config.limits.hello_timeout, drain) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        head::parse(raw.as_bytes()).unwrap().unwrap().0
    }

    fn route_of(head: &Head) -> Result<Route, HttpError> {
        route(head, false, false)
    }

    #[test]
    fn the_page_is_a_route_only_where_one_is_served() {
        let get = head("GET /?token=t HTTP/1.1\r\n\r\n");
        assert_eq!(route(&get, false, true).unwrap(), Route::Page);
        assert_eq!(route(&get, false, false).unwrap_err().status, 404);
        let post = head("POST / HTTP/1.1\r\n\r\n");
        assert_eq!(route(&post, false, true).unwrap_err().status, 404);
    }

    #[test]
    fn a_preflight_is_a_route_only_when_cors_is_on() {
        let options = head("OPTIONS /topics/t HTTP/1.1\r\n\r\n");
        assert_eq!(route(&options, true, false).unwrap(), Route::Preflight("POST"));
        assert_eq!(route(&options, false, false).unwrap_err().status, 405);
    }

    #[test]
    fn requests_are_routed_by_path_and_method() {
        let n = |s: &str| Name::new(s).unwrap();
        assert_eq!(route_of(&head("POST /topics/a.b HTTP/1.1\r\n\r\n")).unwrap(), Route::Publish(n("a.b")));
        assert_eq!(route_of(&head("GET /topics/a/events HTTP/1.1\r\n\r\n")).unwrap(), Route::Events(n("a")));
        assert_eq!(
            route_of(&head("GET /subscriptions/s?token=x HTTP/1.1\r\n\r\n")).unwrap(),
            Route::Subscription(n("s"))
        );
        assert_eq!(route_of(&head("GET /elsewhere HTTP/1.1\r\n\r\n")).unwrap_err().status, 404);
        let wrong = route_of(&head("GET /topics/a HTTP/1.1\r\n\r\n")).unwrap_err();
        assert_eq!((wrong.status, wrong.headers.clone()), (405, vec![("Allow", "POST".to_string())]));
        let bad = route_of(&head("POST /topics/a%20b HTTP/1.1\r\n\r\n")).unwrap_err();
        assert_eq!((bad.status, bad.code), (400, ErrorCode::InvalidName));
    }

    #[test]
    fn the_token_comes_from_a_bearer_header_or_the_query() {
        let with = |raw: &str| authorize(&head(raw), Some("s3cret"));
        assert!(with("GET / HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n").is_ok());
        assert!(with("GET / HTTP/1.1\r\nauthorization: bearer  s3cret \r\n\r\n").is_ok());
        assert!(with("GET /?token=s3cret HTTP/1.1\r\n\r\n").is_ok());
        let wrong = with("GET / HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n").unwrap_err();
        assert_eq!((wrong.status, wrong.message.as_str()), (401, "wrong token"));
        let missing = with("GET / HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(missing.message.contains("needs a token"), "{}", missing.message);
        assert!(authorize(&head("GET / HTTP/1.1\r\n\r\n"), None).is_ok(), "no token, no check");
    }
}

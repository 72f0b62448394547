//! Codec tests: every frame shape round trips, and bad input is classified with its request id.

use super::*;
use crate::engine::{AckMode, Name, Pattern, StartPosition};

fn round_trip(frame: ClientFrame) {
    let text = encode_client(&frame).unwrap();
    assert_eq!(decode_client(&text).unwrap(), frame, "{text}");
}

#[test]
fn client_frames_round_trip() {
    let name = |s: &str| Name::new(s).unwrap();
    let lease = LeaseRef { subscription: name("s"), partition: 0, seq: 4, lease: 9 };
    for request in [
        Request::Hello { version: VERSION, token: Some("t".into()), client: None },
        Request::Ping,
        Request::Topics,
        Request::Subscribe(SubscribeSpec {
            patterns: vec![Pattern::parse("orders.>").unwrap()],
            subscription: Some(name("s")),
            from: Some(StartPosition::Seq(5)),
            ack: AckMode::Explicit,
            consumer: Some("c1".into()),
            prefetch: Some(10),
        }),
        Request::Ack(lease.clone()),
        Request::Nack { lease: lease.clone(), delay_ms: Some(1500) },
        Request::Extend { lease: lease.clone(), by_ms: 100 },
        Request::Term { lease, reason: "bad".into() },
        Request::Seek {
            subscription: name("s"),
            target: SeekSpec::Time(crate::engine::Timestamp::from_micros(5)),
        },
        Request::Browse { topic: name("t"), from: BrowseSpec::Last(3), max: 3 },
        Request::CreateTopic {
            spec: TopicSpec { name: Some(name("t")), max_msgs: Some(5), ..TopicSpec::default() },
        },
    ] {
        round_trip(ClientFrame { id: Some(7), request });
    }
}

#[test]
fn hand_written_frames_decode() {
    let frame =
        decode_client(r#"{"op":"publish","id":3,"message":{"subject":"a.b","payload":"hi"}}"#).unwrap();
    let Request::Publish { message } = frame.request else { panic!("wrong op") };
    assert_eq!(message.payload_bytes().unwrap().as_ref(), b"hi");
    let frame = decode_client(r#"{"op":"ack","subscription":"s","seq":3,"lease":4}"#).unwrap();
    assert!(matches!(frame.request, Request::Ack(LeaseRef { seq: 3, lease: 4, partition: 0, .. })));
}

#[test]
fn bad_input_is_classified_with_the_request_id() {
    let (id, e) = decode_client("{not json").unwrap_err();
    assert_eq!((id, e.code()), (None, ErrorCode::BadFrame));
    let (_, e) = decode_client("[1,2]").unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadFrame);
    let (id, e) = decode_client(r#"{"op":"teleport","id":5}"#).unwrap_err();
    assert_eq!((id, e.code()), (Some(5), ErrorCode::UnknownOp));
    assert!(e.to_string().contains("teleport"));
    let (id, e) = decode_client(r#"{"op":"ack","id":6,"seq":"three"}"#).unwrap_err();
    assert_eq!((id, e.code()), (Some(6), ErrorCode::BadField));
    let (_, e) = decode_client(r#"{"op":"topic_info","id":8,"topic":"a..b"}"#).unwrap_err();
    assert!(e.to_string().contains("a..b"), "{e}");
    let (_, e) = decode_client(r#"{"id":1}"#).unwrap_err();
    assert!(e.to_string().contains("missing \"op\""));
}

#[test]
fn server_frames_round_trip() {
    let frame =
        ServerFrame::Error { id: Some(1), code: ErrorCode::StaleLease.number(), message: "stale".into() };
    assert_eq!(decode_server(&encode_server(&frame)).unwrap(), frame);
    let frame = ServerFrame::Lagged { sid: 2, skipped: 9 };
    assert_eq!(decode_server(&encode_server(&frame)).unwrap(), frame);
}

#[test]
fn known_ops_match_the_request_enum() {
    // Every known op decodes to its variant (with fields missing it is a field error, not unknown).
    for op in KNOWN_OPS {
        let (_, e) = match decode_client(&format!(r#"{{"op":"{op}","id":1,"zzz":1}}"#)) {
            Ok(_) => continue,
            Err(err) => err,
        };
        assert_ne!(e.code(), ErrorCode::UnknownOp, "{op}");
    }
}

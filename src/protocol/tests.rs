//! Codec tests: every frame shape round trips, and bad input is classified with its request id.

use super::*;
use crate::model::{AckMode, Name, Pattern, StartPosition};

fn round_trip(frame: ClientFrame) {
    let text = encode_client(&frame).unwrap();
    assert_eq!(decode_client(&text).unwrap(), frame, "{text}");
}

#[test]
fn client_frames_round_trip() {
    let name = |s: &str| Name::new(s).unwrap();
    let lease = LeaseRef { subscription: name("s"), partition: 0, seq: 4, lease: 9 };
    for request in [
        Request::Hello {
            version: VERSION,
            token: Some("t".into()),
            client: None,
            binary: true,
            binary_settle: true,
            assignments: true,
        },
        Request::Ping,
        Request::Topics,
        Request::Subscribe(SubscribeSpec {
            patterns: vec![Pattern::parse("orders.>").unwrap()],
            subscription: Some(name("s")),
            from: Some(StartPosition::Seq(5)),
            ack: AckMode::Explicit,
            consumer: Some("c1".into()),
            prefetch: Some(10),
            prefetch_bytes: Some(1 << 20),
            credit: true,
            limit: Some(3),
            partition: None,
        }),
        Request::Credit { sid: 3, n: 500 },
        Request::Ack(lease.clone()),
        Request::Nack { lease: lease.clone(), delay_ms: Some(1500) },
        Request::Extend { lease: lease.clone(), by_ms: 100 },
        Request::Term { lease: lease.clone(), reason: "bad".into() },
        Request::Release { leases: vec![lease] },
        Request::Seek {
            subscription: name("s"),
            target: SeekSpec::Time(crate::model::Timestamp::from_micros(5)),
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
    let frame = decode_client(r#"{"op":"credit","sid":2,"n":50}"#).unwrap();
    assert_eq!(frame.request, Request::Credit { sid: 2, n: 50 });
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
    let frame = ServerFrame::Error {
        id: Some(1),
        code: ErrorCode::StaleLease.number(),
        message: "stale".into(),
        index: None,
    };
    assert_eq!(decode_server(&encode_server(&frame)).unwrap(), frame);
    let frame = ServerFrame::Lagged { sid: 2, skipped: 9 };
    assert_eq!(decode_server(&encode_server(&frame)).unwrap(), frame);
}

#[test]
fn assignment_frames_have_the_documented_shape_and_hello_offers_them_only_when_asked() {
    let frame = ServerFrame::Assigned { sid: 3, partitions: vec![0, 2] };
    assert_eq!(encode_server(&frame), r#"{"op":"assigned","sid":3,"partitions":[0,2]}"#);
    assert_eq!(decode_server(&encode_server(&frame)).unwrap(), frame);
    let frame = ServerFrame::Revoked { sid: 3, partitions: vec![1] };
    assert_eq!(encode_server(&frame), r#"{"op":"revoked","sid":3,"partitions":[1]}"#);
    assert_eq!(decode_server(&encode_server(&frame)).unwrap(), frame);
    // An older client's hello (no flag) asks for none; the flag is written only when set.
    let old = decode_client(r#"{"op":"hello","id":1,"version":1}"#).unwrap();
    assert!(matches!(old.request, Request::Hello { assignments: false, .. }));
    let hello = ClientFrame {
        id: Some(1),
        request: Request::Hello {
            version: VERSION,
            token: None,
            client: None,
            binary: false,
            binary_settle: false,
            assignments: false,
        },
    };
    assert!(!encode_client(&hello).unwrap().contains("assignments"));
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

/// A small deterministic generator, so a failure names a reproducible case number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Valid frames to mutate, so that fuzzing reaches deep into field decoding, not just the JSON parser.
const SEEDS: &[&str] = &[
    r#"{"op":"hello","id":1,"version":1,"token":"t"}"#,
    r#"{"op":"publish","id":2,"message":{"subject":"a.b","payload":"aGk=","payload_encoding":"base64","headers":{"k":"v"},"key":"x"}}"#,
    r#"{"op":"subscribe","id":3,"patterns":["a.>","glob:x*"],"subscription":"s","from":{"seq":4},"ack":"explicit","prefetch":5}"#,
    r#"{"op":"nack","id":4,"subscription":"s","seq":1,"lease":2,"delay_ms":100}"#,
    r#"{"op":"create_topic","id":5,"spec":{"name":"t","subjects":["t.*"],"max_msgs":5,"discard":"new"}}"#,
    r#"{"op":"seek","id":6,"subscription":"s","target":{"time":12345}}"#,
    r#"{"op":"browse","id":7,"topic":"t","from":{"last":3},"max":3}"#,
];

#[test]
fn a_million_random_and_mutated_frames_never_panic_the_decoder() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet: &[u8] = br#"{}[]":,.0123456789-+eE abcdefghijklmnopqrstuvwxyz_\\/$*>#"#;
    let mut decoded = 0u32;
    for case in 0..1_000_000u32 {
        let text = if case % 4 == 0 {
            // Random bytes, made into a string the way a WebSocket text frame would be.
            let len = rng.below(64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            let mut bytes = SEEDS[rng.below(SEEDS.len())].as_bytes().to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len().max(1));
                match rng.below(3) {
                    0 if !bytes.is_empty() => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, alphabet[rng.below(alphabet.len())]),
                    _ => bytes.truncate(at),
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        };
        if decode_client(&text).is_ok() {
            decoded += 1;
        }
    }
    // Some mutations stay valid; most do not. Both paths were exercised without a panic.
    assert!(decoded > 1000, "only {decoded} frames decoded");
}

#[test]
fn a_subscription_spec_carries_its_assignment_and_leaves_shared_out() {
    use crate::model::{Assignment, SubscriptionConfig};
    let name = |s: &str| Name::new(s).unwrap();
    let mut config = SubscriptionConfig::new(name("g"), name("t"));
    let shared = serde_json::to_value(SubscriptionSpec::from_config(&config)).unwrap();
    assert!(shared.get("assignment").is_none(), "{shared}");
    for (assignment, wire) in
        [(Assignment::PartitionExclusive, "partition_exclusive"), (Assignment::SingleActive, "single_active")]
    {
        config.assignment = assignment;
        let spec = SubscriptionSpec::from_config(&config);
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["assignment"], wire);
        let back: SubscriptionSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back.to_config().assignment, assignment);
    }
    let written: SubscriptionSpec =
        serde_json::from_str(r#"{"name": "g", "topic": "t", "assignment": "single_active"}"#).unwrap();
    assert_eq!(written.to_config().assignment, Assignment::SingleActive);
}

#[test]
fn retention_settings_travel_in_specs() {
    use crate::model::{RetentionPolicy, SubscriptionConfig, TopicConfig};
    let name = |s: &str| Name::new(s).unwrap();
    let mut sub = SubscriptionConfig::new(name("s"), name("t"));
    sub.start = StartPosition::LastPerKey;
    sub.message_retention = Some(std::time::Duration::from_millis(1500));
    sub.dead_letter = Some(name("t.dlq"));
    sub.dead_letter_on_expiry = true;
    sub.retain_acked = true;
    let spec = SubscriptionSpec::from_config(&sub);
    let json = serde_json::to_string(&spec).unwrap();
    assert!(json.contains("\"message_retention_ms\":1500") && json.contains("\"last_per_key\""), "{json}");
    let back: SubscriptionSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back.to_config(), sub);

    let spec = TopicSpec {
        name: Some(name("t")),
        retention: Some(RetentionPolicy::WorkQueue),
        max_msgs_per_key: Some(3),
        ..TopicSpec::default()
    };
    let json = serde_json::to_string(&spec).unwrap();
    assert!(json.contains("\"retention\":\"work_queue\""), "{json}");
    let config: TopicConfig = serde_json::from_str::<TopicSpec>(&json).unwrap().to_config().unwrap();
    assert_eq!((config.retention, config.limits.max_msgs_per_key), (RetentionPolicy::WorkQueue, Some(3)));
}

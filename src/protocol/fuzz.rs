//! Fuzzing the decoders that read what a peer sent: JSON client frames ([`super::decode_client`]),
//! binary frames ([`super::binary`]) and envelopes ([`super::Envelope`]). Each test feeds a fixed number
//! of generated cases from a fixed seed (the same cases every run, in bounded time): valid encodings,
//! which must round-trip, the same encodings mutated byte by byte, and random bytes, on which a
//! decoder must return `Ok` or `Err` and never panic.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::RngSeed;

use super::binary;
use super::*;
use crate::model::{
    AckMode, Headers, Message, MessageExtra, Name, Pattern, PublishReceipt, PublishRequest, StartPosition,
    Timestamp,
};
use crate::model::{AckToken, BrokerDelivery};

/// `cases` cases from a fixed seed, without writing regression files into the source tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x7075_6273_7562),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn name() -> impl Strategy<Value = Name> {
    prop::collection::vec("[a-z0-9é_:/-]{1,6}", 1..4)
        .prop_filter_map("a valid name", |tokens| Name::new(&tokens.join(".")).ok())
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop_oneof![
        "[ -~]{0,40}".prop_map(Bytes::from),
        prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from),
    ]
}

fn headers() -> impl Strategy<Value = Headers> {
    prop::collection::btree_map("[a-z-]{1,8}", "\\PC{0,12}", 0..4)
}

/// One edit of an encoded frame: delete, insert, overwrite or cut at a position.
#[derive(Debug, Clone)]
struct Edit {
    at: Index,
    kind: u8,
    byte: u8,
}

fn edits(alphabet: &'static [u8]) -> impl Strategy<Value = Vec<Edit>> {
    let byte = prop_oneof![any::<u8>(), prop::sample::select(alphabet)];
    prop::collection::vec(
        (any::<Index>(), 0u8..4, byte).prop_map(|(at, kind, byte)| Edit { at, kind, byte }),
        1..5,
    )
}

fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let i = e.at.index(bytes.len() + 1);
        match e.kind {
            0 if i < bytes.len() => {
                bytes.remove(i);
            }
            1 => bytes.insert(i, e.byte),
            2 if i < bytes.len() => bytes[i] = e.byte,
            _ => bytes.truncate(i),
        }
    }
    bytes
}

const JSON_BYTES: &[u8] = br#"{}[]":,.-+0123456789eE tfnul\/$*>#"#;
const BINARY_BYTES: &[u8] = &[0, 1, 2, 3, 4, 7, 8, 16, 32, 0x7f, 0x80, 0xff, b'.', b' '];

// --- JSON client frames -------------------------------------------------------------------------------

fn lease() -> impl Strategy<Value = LeaseRef> {
    (name(), any::<u32>(), any::<u64>(), any::<u64>())
        .prop_map(|(subscription, partition, seq, lease)| LeaseRef { subscription, partition, seq, lease })
}

fn input_envelope() -> impl Strategy<Value = Envelope> {
    (name(), "\\PC{0,30}", prop::option::of("[a-z0-9]{1,8}"), headers(), any::<bool>()).prop_map(
        |(subject, payload, msg_id, headers, base64)| Envelope {
            topic: String::new(),
            subject: subject.to_string(),
            seq: 0,
            partition: 0,
            timestamp: None,
            key: None,
            key_encoding: None,
            msg_id,
            headers,
            attempt: None,
            payload: serde_json::Value::String(payload),
            payload_encoding: if base64 { Encoding::Base64 } else { Encoding::Utf8 },
        },
    )
}

fn start() -> impl Strategy<Value = StartPosition> {
    prop_oneof![
        Just(StartPosition::All),
        Just(StartPosition::New),
        Just(StartPosition::Last),
        any::<u64>().prop_map(StartPosition::Seq),
        any::<i64>().prop_map(|t| StartPosition::Time(Timestamp::from_micros(t))),
    ]
}

fn subscribe() -> impl Strategy<Value = Request> {
    (
        prop::collection::vec(name(), 1..3),
        prop::option::of(name()),
        prop::option::of(start()),
        prop::sample::select(vec![AckMode::None, AckMode::Explicit, AckMode::Cumulative]),
        prop::option::of("[a-z0-9-]{1,10}"),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u64>()),
        any::<bool>(),
        prop::option::of(any::<u64>()),
    )
        .prop_map(
            |(patterns, subscription, from, ack, consumer, prefetch, prefetch_bytes, credit, limit)| {
                Request::Subscribe(SubscribeSpec {
                    patterns: patterns.iter().filter_map(|n| Pattern::parse(n.as_str()).ok()).collect(),
                    subscription,
                    from,
                    ack,
                    consumer,
                    prefetch,
                    prefetch_bytes,
                    credit,
                    limit,
                    partition: None,
                })
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            any::<u32>(),
            prop::option::of("\\PC{0,20}"),
            prop::option::of("[a-z/0-9.]{0,10}"),
            any::<bool>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(version, token, client, binary, binary_settle, assignments)| {
                Request::Hello { version, token, client, binary, binary_settle, assignments }
            }),
        Just(Request::Ping),
        Just(Request::Topics),
        Just(Request::Stats),
        input_envelope().prop_map(|message| Request::Publish { message }),
        prop::collection::vec(input_envelope(), 0..4).prop_map(|messages| Request::PublishBatch { messages }),
        name().prop_map(|topic| Request::TopicInfo { topic }),
        subscribe(),
        any::<u64>().prop_map(|sid| Request::Unsubscribe { sid }),
        (any::<u64>(), any::<u64>()).prop_map(|(sid, n)| Request::Credit { sid, n }),
        lease().prop_map(Request::Ack),
        (lease(), prop::option::of(any::<u64>()))
            .prop_map(|(lease, delay_ms)| Request::Nack { lease, delay_ms }),
        (lease(), any::<u64>()).prop_map(|(lease, by_ms)| Request::Extend { lease, by_ms }),
        (lease(), "\\PC{0,20}").prop_map(|(lease, reason)| Request::Term { lease, reason }),
        prop::collection::vec(lease(), 0..3).prop_map(|leases| Request::Release { leases }),
        (
            name(),
            "[a-z0-9]{1,8}",
            0usize..1000,
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>())
        )
            .prop_map(|(subscription, consumer, max_msgs, max_bytes, wait_ms)| Request::Fetch {
                subscription,
                consumer,
                max_msgs,
                max_bytes,
                wait_ms
            }),
        (name(), any::<u64>(), 0usize..1000).prop_map(|(topic, seq, max)| Request::Browse {
            topic,
            from: BrowseSpec::Seq(seq),
            max
        }),
        (name(), any::<u64>())
            .prop_map(|(subscription, seq)| Request::Seek { subscription, target: SeekSpec::Seq(seq) }),
    ]
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn json_client_frames_round_trip_and_mutated_ones_never_panic_the_decoder(
        id in prop::option::of(any::<u64>()),
        request in request(),
        edits in edits(JSON_BYTES),
    ) {
        let frame = ClientFrame { id, request };
        let text = encode_client(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decode_client(&text).ok(), Some(frame), "{}", text);
        let mutated = String::from_utf8_lossy(&mutate(text.into_bytes(), &edits)).into_owned();
        if let Ok(frame) = decode_client(&mutated) {
            // Whatever decodes can be encoded again.
            prop_assert!(encode_client(&frame).is_ok());
        }
    }
}

// --- Envelopes ----------------------------------------------------------------------------------------

fn message() -> impl Strategy<Value = Message> {
    (
        name(),
        prop::option::of(name()),
        any::<u32>(),
        any::<u64>(),
        prop_oneof![0i64..253_402_300_800_000_000, any::<i64>()],
        prop::option::of(bytes(32)),
        prop::option::of("\\PC{0,16}"),
        headers(),
        bytes(256),
    )
        .prop_map(|(topic, subject, partition, seq, time, key, msg_id, headers, payload)| {
            let subject = subject.unwrap_or_else(|| topic.clone());
            let extra = MessageExtra::pack(key, msg_id, headers);
            Message::new(topic, partition, seq, Timestamp::from_micros(time), subject, extra, payload)
        })
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn envelopes_round_trip_and_mutated_ones_never_panic_the_decoder(
        message in message(),
        attempt in prop::option::of(any::<u32>()),
        edits in edits(JSON_BYTES),
    ) {
        let envelope = Envelope::from_message(&message, attempt);
        let text = serde_json::to_string(&envelope).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Envelope = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &envelope);
        let rebuilt = back.to_message().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let in_range = (0..=253_402_300_799_999_999).contains(&message.publish_time.as_micros());
        if in_range {
            prop_assert_eq!(&rebuilt, &message);
        } else {
            // Times RFC 3339 cannot hold come back as the nearest it can; everything else is exact.
            prop_assert_eq!(rebuilt.payload.clone(), message.payload.clone());
            prop_assert_eq!(rebuilt.subject(), message.subject());
        }
        let mutated = mutate(text.into_bytes(), &edits);
        if let Ok(envelope) = serde_json::from_slice::<Envelope>(&mutated) {
            let _ = envelope.payload_bytes();
            let _ = envelope.key_bytes();
            let _ = envelope.time();
            let _ = envelope.to_request();
            if let Ok(m) = envelope.to_message() {
                let _ = Envelope::from_message(&m, None);
            }
        }
    }
}

// --- Binary frames ------------------------------------------------------------------------------------

fn publish_request() -> impl Strategy<Value = PublishRequest> {
    (name(), prop::option::of(bytes(16)), prop::option::of("\\PC{0,16}"), headers(), bytes(256)).prop_map(
        |(subject, key, msg_id, headers, payload)| PublishRequest {
            subject,
            key,
            msg_id,
            headers,
            payload,
            options: Default::default(),
        },
    )
}

fn delivery(subscription: Option<Name>) -> impl Strategy<Value = BrokerDelivery> {
    (message(), prop::option::of(any::<u32>()), any::<u64>(), any::<i64>(), any::<bool>()).prop_map(
        move |(message, attempt, lease, deadline, leased)| {
            let token = match (&subscription, leased) {
                (Some(sub), true) => Some(AckToken {
                    subscription: sub.clone(),
                    partition: message.partition,
                    seq: message.seq,
                    lease,
                    reply: None,
                }),
                _ => None,
            };
            let deadline = token.as_ref().map(|_| Timestamp::from_micros(deadline));
            BrokerDelivery { message, attempt, deadline, token }
        },
    )
}

fn deliveries() -> impl Strategy<Value = (Option<Name>, Vec<BrokerDelivery>)> {
    prop::option::of(name())
        .prop_flat_map(|sub| (Just(sub.clone()), prop::collection::vec(delivery(sub), 0..5)))
}

fn receipt() -> impl Strategy<Value = PublishReceipt> {
    (prop::option::of(name()), any::<u32>(), any::<u64>(), any::<u32>(), any::<bool>()).prop_map(
        |(topic, partition, seq, taps, duplicate)| PublishReceipt {
            topic,
            partition,
            seq,
            taps,
            duplicate,
            unrouted: false,
        },
    )
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn binary_publish_batches_round_trip_and_mutated_ones_never_panic_the_decoder(
        id in any::<u64>(),
        msgs in prop::collection::vec(publish_request(), 0..6),
        edits in edits(BINARY_BYTES),
    ) {
        let frame = binary::encode_publish_batch(id, &msgs);
        prop_assert_eq!(binary::frame_id(&frame), Some(id));
        prop_assert_eq!(binary::decode_publish_batch(&Bytes::from(frame.clone())).ok(), Some((id, msgs)));
        let mutated = Bytes::from(mutate(frame, &edits));
        let _ = binary::frame_id(&mutated);
        if let Ok((id, msgs)) = binary::decode_publish_batch(&mutated) {
            // What decodes is a batch that encodes to a frame decoding to the same.
            let again = Bytes::from(binary::encode_publish_batch(id, &msgs));
            prop_assert_eq!(binary::decode_publish_batch(&again).ok(), Some((id, msgs)));
        }
    }

    #[test]
    fn binary_deliveries_and_receipts_round_trip_and_mutated_ones_never_panic_the_decoder(
        sid in any::<u64>(),
        (subscription, deliveries) in deliveries(),
        receipts in prop::collection::vec(receipt(), 0..5),
        edits in edits(BINARY_BYTES),
    ) {
        let frame = binary::encode_deliver(sid, subscription.as_ref(), &deliveries);
        prop_assert_eq!(binary::decode_deliver(&Bytes::from(frame.clone())).ok(), Some((sid, deliveries)));
        let _ = binary::decode_deliver(&Bytes::from(mutate(frame, &edits)));
        let frame = binary::encode_receipts(sid, &receipts);
        prop_assert_eq!(binary::decode_receipts(&Bytes::from(frame.clone())).ok(), Some((sid, receipts)));
        let _ = binary::decode_receipts(&Bytes::from(mutate(frame, &edits)));
    }

    #[test]
    fn random_bytes_never_panic_any_decoder(
        kind in 0u8..5,
        rest in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut raw = vec![kind];
        raw.extend_from_slice(&rest);
        let raw = Bytes::from(raw);
        let _ = binary::frame_id(&raw);
        let _ = binary::decode_publish_batch(&raw);
        let _ = binary::decode_receipts(&raw);
        let _ = binary::decode_deliver(&raw);
        let text = String::from_utf8_lossy(&rest);
        let _ = decode_client(&text);
        let _ = decode_server(&text);
        if let Ok(envelope) = serde_json::from_slice::<Envelope>(&rest) {
            let _ = envelope.to_message();
        }
    }
}

//! Fuzzing of every decoder the store reads its files with, as part of `cargo test`: a fixed number of
//! generated cases each, random bytes and valid encodings with bytes flipped, cut or appended. Each
//! decoder must answer (a value or a refusal) without panicking, and a valid encoding must round-trip.

use std::fs;
use std::path::PathBuf;

use bytes::Bytes;
use proptest::prelude::*;

use super::frame::{self, put_frame};
use super::journal::{SubJournal, SubOp, SubSnapshot};
use super::segment::{self, IDX_ENTRY};
use super::{MetaOp, read_meta};
use crate::model::{Headers, MessageExtra, Name, Timestamp, TopicConfig};

/// A mutation of a valid encoding: flip bytes, cut it, or append to it.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Cut(usize),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Mutation::Flip(at, bits)),
        any::<usize>().prop_map(Mutation::Cut),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
    ]
}

fn mutate(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Flip(at, bits) if !data.is_empty() => {
                let at = at % data.len();
                data[at] ^= bits;
            }
            Mutation::Cut(at) if !data.is_empty() => data.truncate(at % data.len()),
            Mutation::Append(more) => data.extend_from_slice(more),
            _ => {}
        }
    }
    data
}

fn scratch(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pubsub-fuzz-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_default();
    dir
}

fn segment_bytes(payloads: &[Vec<u8>], keyed: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let mut headers = Headers::new();
        headers.insert("h".into(), "v".into());
        let extra =
            keyed.then(|| MessageExtra { key: Some(Bytes::from_static(b"k")), msg_id: None, headers });
        let seq = 1 + i as u64;
        let time = Timestamp::from_micros(1_000 + i as i64);
        let encoded = segment::encode(&mut out, seq, time, None, extra.as_ref(), payload);
        assert!(encoded.is_ok());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn segment_records_decode_or_refuse(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..6),
        keyed in any::<bool>(),
        mutations in proptest::collection::vec(mutation(), 0..4),
        noise in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let valid = segment_bytes(&payloads, keyed);
        let mut pos = 0;
        for (i, payload) in payloads.iter().enumerate() {
            let (record, len) = segment::decode(&Bytes::from(valid.clone()), pos).map_err(TestCaseError::fail)?;
            prop_assert_eq!(record.seq, 1 + i as u64);
            prop_assert_eq!(&record.payload[..], &payload[..]);
            pos += len;
        }
        for data in [mutate(valid, &mutations), noise] {
            let data = Bytes::from(data);
            let mut pos = 0;
            while let Ok((_, len)) = segment::decode(&data, pos) {
                prop_assert!(len > 0);
                pos += len;
            }
        }
    }

    #[test]
    fn journal_records_and_checkpoints_decode_or_refuse(
        body in proptest::collection::vec(any::<u8>(), 0..64),
        seqs in proptest::collection::vec((1u64..1_000_000, 1u32..50), 0..20),
        mutations in proptest::collection::vec(mutation(), 0..4),
    ) {
        let _ = SubOp::decode(&body);
        let _ = SubSnapshot::decode(&body);
        let mut snap = SubSnapshot::starting_at(1);
        for &(seq, attempt) in &seqs {
            snap.apply(SubOp::Attempt { seq, attempt });
        }
        let encoded = snap.encode(3);
        prop_assert_eq!(SubSnapshot::decode(&encoded), Some((3, snap)));
        let _ = SubSnapshot::decode(&mutate(encoded, &mutations));
    }

    #[test]
    fn frames_split_and_salvage_any_bytes(
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..8),
        mutations in proptest::collection::vec(mutation(), 0..4),
    ) {
        let mut data = Vec::new();
        for body in &bodies {
            put_frame(&mut data, body);
        }
        let whole = frame::read_frames(&data);
        prop_assert_eq!(whole.bodies.len(), bodies.len());
        prop_assert_eq!(whole.valid_len, data.len());
        let data = mutate(data, &mutations);
        let frames = frame::read_frames(&data);
        prop_assert!(frames.valid_len <= data.len());
        if let Some(at) = frame::readable_after(&data, frames.valid_len) {
            prop_assert!(at > frames.valid_len && at < data.len());
        }
        let (salvaged, _) = frame::salvage(&data);
        prop_assert!(salvaged.len() >= frames.bodies.len());
    }

    #[test]
    fn metadata_records_parse_or_refuse(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = serde_json::from_slice::<MetaOp>(&body);
    }
}

proptest! {
    // These write files, so fewer cases.
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_segment_files_rescan_without_panicking(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..8),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let dir = scratch("segment");
        let log = dir.join(format!("{:020}.log", 1));
        fs::write(&log, mutate(segment_bytes(&payloads, true), &mutations)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let scan = segment::rescan(&log, 1).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(scan.index.len() as u64 % IDX_ENTRY, 0);
        prop_assert_eq!(scan.index.len() as u64 / IDX_ENTRY, scan.next_seq - 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn damaged_subscription_files_are_read_or_refused(
        checkpoint in proptest::collection::vec(any::<u8>(), 0..80),
        journal in proptest::collection::vec(any::<u8>(), 0..200),
        keep_checkpoint in any::<bool>(),
    ) {
        let dir = scratch("journal");
        if keep_checkpoint {
            fs::write(dir.join("checkpoint"), &checkpoint).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        fs::write(dir.join("journal.log"), &journal).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let _ = SubJournal::inspect(&dir, &[1], &[1_000]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn damaged_metadata_files_are_read_or_refused(
        names in proptest::collection::vec("[a-z]{1,8}", 1..4),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let dir = scratch("meta");
        let mut data = Vec::new();
        for name in &names {
            let config = TopicConfig::new(Name::new(name).map_err(|e| TestCaseError::fail(e.to_string()))?);
            let body = serde_json::to_vec(&MetaOp::CreateTopic { config, created: None }).map_err(|e| TestCaseError::fail(e.to_string()))?;
            put_frame(&mut data, &body);
        }
        fs::write(dir.join("meta.log"), mutate(data, &mutations)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let _ = read_meta(&dir);
        let _ = fs::remove_dir_all(&dir);
    }
}

//! A read-only check of a whole data directory: every record of every segment against its CRC and its
//! index entry, every journal and checkpoint against its frames. Opening a directory reads only what it
//! must (the active segments), so damage inside sealed segments is found here, or when a reader reaches
//! the record (which is then not served).

use std::fs;
use std::path::Path;

use bytes::Bytes;

use super::frame::Reader;
use super::journal::SubJournal;
use super::segment::{IDX_ENTRY, decode};
use super::{MetaState, StoreError, dir_name};
use crate::model::Lifetime;

/// Checks every file under `dir`; returns one line per problem, naming the file and the offset. It reads
/// what recovery reads with recovery's own readers (metadata, leftovers, checkpoints and journals), so
/// whatever would make an open refuse, or repair something, is a line here; and every record of every
/// segment against its CRC and index, which an open does not read.
pub fn verify(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut findings = Vec::new();
    match super::read_meta(dir) {
        Ok(meta) => {
            if let Some(torn) = meta.torn {
                findings.push(format!(
                    "{}: a torn tail of {torn} bytes at offset {} (cut at open)",
                    dir.join("meta.log").display(),
                    meta.valid_len
                ));
            }
            check_owners(dir, &meta.state, &mut findings)?;
        }
        Err(e) => findings.push(e.to_string()),
    }
    for partition in super::partition_dirs(dir)? {
        let mut files = list(&partition)?;
        files.sort();
        let has = |path: &Path, ext: &str| path.extension().is_some_and(|e| e == ext);
        for log in files.iter().filter(|p| has(p, "log")) {
            check_segment(log, &mut findings)?;
        }
        for idx in files.iter().filter(|p| has(p, "idx") && !p.with_extension("log").exists()) {
            findings.push(format!(
                "{}: an index without its segment (the segment's messages are gone)",
                idx.display()
            ));
        }
    }
    Ok(findings)
}

/// What the metadata names against what is on disk, and each durable subscription's files as recovery
/// reads them.
fn check_owners(dir: &Path, state: &MetaState, findings: &mut Vec<String>) -> Result<(), StoreError> {
    let found = super::leftovers(dir, state);
    if !found.unowned.is_empty() {
        findings.push(StoreError::Unowned { dir: dir.to_path_buf(), paths: found.unowned }.to_string());
    }
    for path in found.deleted {
        findings
            .push(format!("{}: left by a delete that had not finished (removed at open)", path.display()));
    }
    for topic in &state.topics {
        let path = dir.join("topics").join(dir_name(&topic.name));
        if !path.is_dir() {
            findings.push(format!(
                "topic {}: {} is missing (created again, empty, at open)",
                topic.name,
                path.display()
            ));
            continue;
        }
        // One directory per partition, numbered from 0, as many as the metadata says.
        let partitions = topic.partitions.max(1);
        for p in 0..partitions {
            let part = path.join(p.to_string());
            if !part.is_dir() {
                findings.push(format!(
                    "topic {}: partition {p} of {partitions}: {} is missing (created again, empty, at open)",
                    topic.name,
                    part.display()
                ));
            }
        }
        for entry in list(&path)?.into_iter().filter(|p| p.is_dir()) {
            let number = entry.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok());
            if number.is_none_or(|n| n >= partitions) {
                findings.push(format!(
                    "{}: not one of the {partitions} partition(s) topic {} has (ignored at open)",
                    entry.display(),
                    topic.name
                ));
            }
        }
    }
    for snap in &state.snapshots {
        if !state.topics.iter().any(|t| t.name == snap.topic) {
            findings.push(format!(
                "snapshot {}: its topic {} is not in the metadata (it is dropped at open)",
                snap.name, snap.topic
            ));
        }
        for part in &snap.partitions {
            let mut above = part.ack_floor;
            for range in &part.acked {
                if range[0] <= above || range[1] < range[0] {
                    findings.push(format!(
                        "snapshot {}: partition {} has acked range {}..={} out of order (floor {})",
                        snap.name, part.partition, range[0], range[1], part.ack_floor
                    ));
                    break;
                }
                above = range[1];
            }
        }
    }
    check_settings(state, findings);
    for sub in &state.subscriptions {
        if let Some(problem) = sub.push.as_ref().and_then(crate::model::PushConfig::problem) {
            findings.push(format!("subscription {}: {problem} (it will not push)", sub.name));
        }
    }
    for sub in state.subscriptions.iter().filter(|s| s.lifetime == Lifetime::Durable) {
        let path = dir.join("subs").join(dir_name(&sub.name));
        if !path.is_dir() {
            findings.push(format!(
                "subscription {}: {} is missing (at open it starts again from the oldest retained message)",
                sub.name,
                path.display()
            ));
            continue;
        }
        let partitions = state.topics.iter().find(|t| t.name == sub.topic).map_or(1, |t| t.partitions.max(1));
        match SubJournal::inspect(&path, &[1], &[u64::MAX]) {
            Err(e) => findings.push(e.to_string()),
            Ok(found) => {
                if found.state.partitions() > partitions {
                    findings.push(format!(
                        "{}: positions in {} partitions, but topic {} has {partitions}",
                        path.display(),
                        found.state.partitions(),
                        sub.topic
                    ));
                }
                if found.missing_checkpoint {
                    findings.push(format!(
                        "{}: missing (at open the state is rebuilt from the journal; acked messages may come back)",
                        path.join("checkpoint").display()
                    ));
                }
                if found.missing_journal {
                    findings.push(format!(
                        "{}: missing (at open the state is the checkpoint's; messages acked since may come back)",
                        path.join("journal.log").display()
                    ));
                }
                if let Some((file, offset, bytes)) = found.truncated {
                    findings.push(format!(
                        "{}: a torn tail of {bytes} bytes at offset {offset} (cut at open)",
                        file.display()
                    ));
                }
            }
        }
    }
    Ok(())
}

fn list(dir: &Path) -> Result<Vec<std::path::PathBuf>, StoreError> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.path()).map_err(|e| StoreError::io(dir, e))).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::io(dir, e)),
    }
}

fn check_segment(log: &Path, findings: &mut Vec<String>) -> Result<(), StoreError> {
    let base: u64 = log.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).unwrap_or(0);
    let data = Bytes::from(fs::read(log).map_err(|e| StoreError::io(log, e))?);
    let idx_path = log.with_extension("idx");
    let index = match fs::read(&idx_path) {
        Ok(index) if (index.len() as u64).is_multiple_of(IDX_ENTRY) => Some(index),
        Ok(_) => {
            findings.push(format!("{}: length is not a whole number of entries", idx_path.display()));
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            findings.push(format!("{}: missing (it is rebuilt at open)", idx_path.display()));
            None
        }
        Err(e) => return Err(StoreError::io(&idx_path, e)),
    };
    let mut end = 0;
    match index {
        // With an index, every record is checked on its own, so one damaged record does not hide the rest.
        Some(index) => {
            for (i, entry) in index.chunks_exact(IDX_ENTRY as usize).enumerate() {
                let mut r = Reader::new(entry);
                let (Some(rel), Some(pos)) = (r.u32(), r.u32()) else {
                    continue;
                };
                let (pos, seq) = (pos as usize, base + i as u64);
                if rel as usize != i {
                    findings.push(format!("{}: entry {i} says rel_seq {rel}", idx_path.display()));
                }
                match decode(&data, pos) {
                    Ok((record, len)) if record.seq == seq => end = end.max(pos + len),
                    Ok((record, _)) => findings.push(format!(
                        "{}: corrupt at offset {pos}: seq {seq} expected, seq {} found",
                        log.display(),
                        record.seq
                    )),
                    Err(why) => {
                        findings
                            .push(format!("{}: corrupt at offset {pos}: {why} (seq {seq})", log.display()));
                        end = end.max(next_record(&data, pos));
                    }
                }
            }
        }
        None => {
            while end < data.len() {
                match decode(&data, end) {
                    Ok((_, len)) => end += len,
                    Err(why) => {
                        findings.push(format!("{}: corrupt at offset {end}: {why}", log.display()));
                        break;
                    }
                }
            }
            return Ok(());
        }
    }
    if end < data.len() {
        findings.push(format!(
            "{}: {} bytes after the last indexed record at offset {end} (a torn tail is cut at open)",
            log.display(),
            data.len() - end
        ));
    }
    Ok(())
}

/// Where the record at `pos` ends according to its (unverified) length field.
fn next_record(data: &Bytes, pos: usize) -> usize {
    data.get(pos..pos + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .map_or(data.len(), |len| (pos + 8 + len as usize).min(data.len()))
}

/// Settings a metadata record carries that the engine would refuse (a hand-edited or foreign record),
/// and a work-queue topic with two subscriptions whose filters overlap.
fn check_settings(state: &MetaState, findings: &mut Vec<String>) {
    for topic in &state.topics {
        if let Err(e) = topic.check() {
            findings.push(format!("topic {}: {e} (the engine would refuse this setting)", topic.name));
        }
    }
    for sub in &state.subscriptions {
        if let Err(e) = sub.check() {
            findings.push(format!("subscription {}: {e}", sub.name));
        }
    }
    let queues = state
        .topics
        .iter()
        .filter(|t| t.retention == crate::model::RetentionPolicy::WorkQueue)
        .map(|t| &t.name);
    for queue in queues {
        let subs: Vec<_> = state.subscriptions.iter().filter(|s| &s.topic == queue).collect();
        for (i, a) in subs.iter().enumerate() {
            for b in subs.iter().skip(i + 1) {
                let overlap = a.filter.is_empty()
                    || b.filter.is_empty()
                    || a.filter.iter().any(|x| b.filter.iter().any(|y| x.overlaps(y)));
                if overlap {
                    findings.push(format!(
                        "work-queue topic {queue}: subscriptions {} and {} read overlapping subjects",
                        a.name, b.name
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;
    use crate::model::{Name, Pattern, RetentionPolicy, SubscriptionConfig, TopicConfig};

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn overlapping_work_queue_readers_and_refused_settings_are_findings() {
        let mut state = MetaState::default();
        let mut queue = TopicConfig::new(name("q"));
        queue.retention = RetentionPolicy::WorkQueue;
        let mut bad = TopicConfig::new(name("bad"));
        bad.limits.max_msgs_per_key = Some(0);
        state.topics = vec![queue, bad];
        let one = SubscriptionConfig::new(name("one"), name("q"));
        let mut two = SubscriptionConfig::new(name("two"), name("q"));
        two.filter = vec![Pattern::parse("q").unwrap()];
        let mut expiring = SubscriptionConfig::new(name("expiring"), name("bad"));
        expiring.dead_letter_on_expiry = true;
        state.subscriptions = vec![one, two, expiring];
        let mut findings = Vec::new();
        check_settings(&state, &mut findings);
        assert_eq!(findings.len(), 3, "{findings:?}");
        assert!(
            findings[0].contains("topic bad") && findings[0].contains("max_msgs_per_key"),
            "{findings:?}"
        );
        assert!(
            findings[1].contains("expiring") && findings[1].contains("dead-letter topic"),
            "{findings:?}"
        );
        assert!(findings[2].contains("work-queue topic q: subscriptions one and two"), "{findings:?}");

        // The settings this engine writes pass.
        let mut fine = MetaState::default();
        let mut interest = TopicConfig::new(name("i"));
        interest.retention = RetentionPolicy::Interest;
        interest.limits.max_msgs_per_key = Some(1);
        fine.topics = vec![interest];
        let mut sub = SubscriptionConfig::new(name("s"), name("i"));
        sub.retain_acked = true;
        sub.message_retention = Some(std::time::Duration::from_secs(60));
        fine.subscriptions = vec![sub];
        let mut none = Vec::new();
        check_settings(&fine, &mut none);
        assert!(none.is_empty(), "{none:?}");
    }
}

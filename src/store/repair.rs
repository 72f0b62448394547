//! `pubsub store repair`: sets aside what recovery cannot read, so the rest of a data directory opens.
//!
//! It never deletes. A file it changes is first copied, and a file or directory it takes out of use is
//! moved, under `DIR/quarantine/<seconds since the epoch>/`, at the same path relative to `DIR`. It holds
//! the directory's lock while it works, so it refuses to run beside the process that has the directory
//! open. What it does, by what it finds:
//!
//! - metadata (`meta.snap`, `meta.log`) with damage that is not a torn tail: every readable record of
//!   both is kept (replayed in order, the damaged stretches passed over) and written as a new snapshot;
//! - topic directories that no metadata names: the topic is recovered from its files under its own name,
//!   with default settings (its subjects, limits and durability were in the lost metadata);
//! - subscription directories that no metadata names: moved aside (the subscription's topic and settings
//!   were in the lost metadata, so it cannot be rebuilt);
//! - a subscription's unreadable checkpoint: moved aside (recovery then rebuilds the state from the
//!   journal, at-least-once); a journal damaged in the middle: its readable records are kept;
//! - a segment with damaged records among readable ones: indexed around the damage, so every readable
//!   record stays and the damaged ones are never served (they count as unreadable, as in a sealed
//!   segment); a damaged active segment is sealed that way and a new, empty one started after it.

use std::fs;
use std::path::{Path, PathBuf};

use super::frame::{self, Reader};
use super::journal::{SubJournal, SubOp};
use super::segment::{self, IDX_ENTRY};
use super::{
    MetaOp, MetaState, StoreError, dir_name, leftovers, partition_dirs, read_meta, read_optional, take_lock,
};
use crate::model::{Lifetime, Name, StorageKind, TopicConfig};

/// Repairs `dir` as the module says; returns one line per thing done (empty when nothing needed it).
pub fn repair(dir: &Path) -> Result<Vec<String>, StoreError> {
    let _lock = take_lock(dir)?;
    let mut quarantine = Quarantine::new(dir);
    let mut done = Vec::new();

    let mut state = match read_meta(dir) {
        Ok(read) => read.state,
        Err(StoreError::Corrupt { .. }) => salvage_meta(dir, &mut quarantine, &mut done)?,
        Err(e) => return Err(e),
    };
    if adopt_leftovers(dir, &mut state, &mut quarantine, &mut done)? {
        write_meta(dir, &state, &mut quarantine)?;
    }
    for sub in state.subscriptions.iter().filter(|s| s.lifetime == Lifetime::Durable) {
        let path = dir.join("subs").join(dir_name(&sub.name));
        if path.is_dir() {
            repair_subscription(&path, &sub.name, &mut quarantine, &mut done)?;
        }
    }
    for partition in partition_dirs(dir)? {
        repair_partition(&partition, &mut quarantine, &mut done)?;
    }
    if let Some(root) = &quarantine.root {
        done.push(format!("the originals of what changed are in {}", root.display()));
    }
    Ok(done)
}

/// Where originals go, made on first use.
struct Quarantine {
    dir: PathBuf,
    root: Option<PathBuf>,
}

impl Quarantine {
    fn new(dir: &Path) -> Self {
        Quarantine { dir: dir.to_path_buf(), root: None }
    }

    /// The place for `path` (a path under the data directory) inside the quarantine.
    fn place_for(&mut self, path: &Path) -> Result<PathBuf, StoreError> {
        let root = match &self.root {
            Some(root) => root.clone(),
            None => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let mut root = self.dir.join("quarantine").join(secs.to_string());
                let mut n = 1;
                while root.exists() {
                    root = self.dir.join("quarantine").join(format!("{secs}-{n}"));
                    n += 1;
                }
                self.root = Some(root.clone());
                root
            }
        };
        let relative = path.strip_prefix(&self.dir).unwrap_or(path);
        let place = root.join(relative);
        if let Some(parent) = place.parent() {
            frame::create_dirs(parent).map_err(|e| StoreError::io(parent, e))?;
        }
        Ok(place)
    }

    /// Copies a file in, leaving the original where it is.
    fn copy(&mut self, path: &Path) -> Result<PathBuf, StoreError> {
        let place = self.place_for(path)?;
        fs::copy(path, &place).map_err(|e| StoreError::io(path, e))?;
        Ok(place)
    }

    /// Moves a file or directory in.
    fn take(&mut self, path: &Path) -> Result<PathBuf, StoreError> {
        let place = self.place_for(path)?;
        fs::rename(path, &place).map_err(|e| StoreError::io(path, e))?;
        if let Some(parent) = path.parent() {
            frame::sync_dir(parent).map_err(|e| StoreError::io(parent, e))?;
        }
        Ok(place)
    }
}

/// Replays every readable record of the snapshot, then of the journal, and writes the result as the new
/// snapshot with an empty journal.
fn salvage_meta(
    dir: &Path,
    quarantine: &mut Quarantine,
    done: &mut Vec<String>,
) -> Result<MetaState, StoreError> {
    let mut state = MetaState::default();
    for file in ["meta.snap", "meta.log"] {
        let path = dir.join(file);
        let Some(data) = read_optional(&path)? else {
            continue;
        };
        let (bodies, skipped) = frame::salvage(&data);
        let mut kept = 0;
        let mut unparsed = 0;
        for body in bodies {
            match serde_json::from_slice::<MetaOp>(body) {
                Ok(op) => {
                    state.apply(op);
                    kept += 1;
                }
                Err(_) => unparsed += 1,
            }
        }
        if skipped + unparsed > 0 {
            quarantine.copy(&path)?;
            done.push(format!(
                "{}: kept {kept} readable record(s), passed over {skipped} damaged stretch(es) and {unparsed} record(s) that do not parse",
                path.display()
            ));
        }
    }
    write_meta(dir, &state, quarantine)?;
    Ok(state)
}

/// Writes `state` as the whole metadata: a new snapshot and an empty journal.
fn write_meta(dir: &Path, state: &MetaState, quarantine: &mut Quarantine) -> Result<(), StoreError> {
    let mut snap = Vec::new();
    for op in state.ops() {
        let body = serde_json::to_vec(&op).map_err(|e| StoreError::Invalid(e.to_string()))?;
        frame::put_frame(&mut snap, &body);
    }
    frame::write_atomic(&dir.join("meta.snap"), &snap)?;
    let log = dir.join("meta.log");
    if read_optional(&log)?.is_some_and(|d| !d.is_empty()) {
        quarantine.copy(&log)?;
    }
    frame::write_atomic(&log, &[])
}

/// Topic directories nothing names become topics again; subscription directories nothing names are
/// moved aside. Returns whether the metadata changed.
fn adopt_leftovers(
    dir: &Path,
    state: &mut MetaState,
    quarantine: &mut Quarantine,
    done: &mut Vec<String>,
) -> Result<bool, StoreError> {
    let mut changed = false;
    for path in leftovers(dir, state).unowned {
        let in_topics = path.parent().is_some_and(|p| p.ends_with("topics"));
        // The NAME file says it; directories made before it existed have the escaped name itself.
        let written = read_optional(&path.join("NAME"))?.and_then(|n| String::from_utf8(n).ok());
        let name = written
            .or_else(|| path.file_name().and_then(|n| n.to_str()).and_then(unescape))
            .and_then(|n| Name::new(&n).ok());
        match name {
            Some(name) if in_topics && !state.topics.iter().any(|t| t.name == name) => {
                let mut config = TopicConfig::new(name.clone());
                config.storage = StorageKind::File;
                state.apply(MetaOp::CreateTopic { config, created: None });
                changed = true;
                done.push(format!(
                    "topic {name}: recovered from {} with default settings (its subjects, limits and durability were in the lost metadata; set them again if they differed)",
                    path.display()
                ));
            }
            _ => {
                let place = quarantine.take(&path)?;
                let what = if in_topics { "topic" } else { "subscription" };
                done.push(format!(
                    "{}: {what} files that no metadata names, moved to {}",
                    path.display(),
                    place.display()
                ));
            }
        }
    }
    Ok(changed)
}

/// Sets aside an unreadable checkpoint, or keeps the readable records of a journal damaged in the middle.
fn repair_subscription(
    path: &Path,
    name: &Name,
    quarantine: &mut Quarantine,
    done: &mut Vec<String>,
) -> Result<(), StoreError> {
    let checkpoint = path.join("checkpoint");
    let journal = path.join("journal.log");
    for _ in 0..2 {
        let bad = match SubJournal::inspect(path, &[1], &[u64::MAX]) {
            Ok(_) => return Ok(()),
            Err(StoreError::Corrupt { path: bad, .. }) => bad,
            Err(e) => return Err(e),
        };
        if bad == checkpoint {
            let place = quarantine.take(&checkpoint)?;
            done.push(format!(
                "subscription {name}: unreadable checkpoint moved to {}; its state is rebuilt from the journal (messages acked before may be delivered again)",
                place.display()
            ));
        } else if bad == journal {
            let data = fs::read(&journal).map_err(|e| StoreError::io(&journal, e))?;
            let (bodies, skipped) = frame::salvage(&data);
            let mut kept = Vec::new();
            let mut dropped = 0;
            for (i, body) in bodies.into_iter().enumerate() {
                let header = i == 0 && Reader::new(body).u8() == Some(0);
                if header || (i > 0 && SubOp::decode(body).is_some()) {
                    frame::put_frame(&mut kept, body);
                } else {
                    dropped += 1;
                }
            }
            let place = quarantine.copy(&journal)?;
            frame::write_atomic(&journal, &kept)?;
            done.push(format!(
                "subscription {name}: journal damaged in {skipped} place(s); kept its readable records ({dropped} unusable dropped; a missed ack means a redelivery), original in {}",
                place.display()
            ));
        } else {
            break;
        }
    }
    // Still unreadable: the subscription starts again from its topic's oldest message.
    let place = quarantine.take(path)?;
    done.push(format!(
        "subscription {name}: state unreadable, moved to {}; it starts again from the oldest retained message",
        place.display()
    ));
    Ok(())
}

/// Indexes every segment with damage among readable records around that damage; a damaged active
/// segment is sealed and followed by a new, empty one.
fn repair_partition(
    dir: &Path,
    quarantine: &mut Quarantine,
    done: &mut Vec<String>,
) -> Result<(), StoreError> {
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .map_err(|e| StoreError::io(dir, e))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".log")?;
            (stem.len() == 20).then(|| stem.parse().ok()).flatten()
        })
        .collect();
    bases.sort_unstable();
    let last = bases.last().copied();
    // Where each segment's records end, to find gaps between segments.
    let mut ends = Vec::with_capacity(bases.len());
    for &base in &bases {
        let (log, idx) = segment::segment_files(dir, base);
        let scan = segment::rescan(&log, base)?;
        ends.push(scan.next_seq);
        let active = Some(base) == last;
        let len = fs::metadata(&log).map_err(|e| StoreError::io(&log, e))?.len();
        let stale_index = !active && read_optional(&idx)?.is_none_or(|on_disk| on_disk != scan.index);
        // A torn tail of the active segment and its index are mended by recovery itself; a sealed
        // segment whose index already points around its damage needs nothing (the damage is never served).
        let sealed_needs = !active && (stale_index || scan.end < len);
        let active_needs = active && !scan.damaged.is_empty();
        if !sealed_needs && !active_needs {
            continue;
        }
        quarantine.copy(&log)?;
        if idx.exists() {
            quarantine.copy(&idx)?;
        }
        if scan.end < len && !active {
            let file = frame::options().write(true).open(&log).map_err(|e| StoreError::io(&log, e))?;
            file.set_len(scan.end).map_err(|e| StoreError::io(&log, e))?;
            file.sync_all().map_err(|e| StoreError::io(&log, e))?;
            done.push(format!("{}: {} bytes after its last record cut", log.display(), len - scan.end));
        }
        frame::write_atomic(&idx, &scan.index)?;
        if !active && !stale_index {
            continue;
        }
        if scan.damaged.is_empty() {
            done.push(format!("{}: rebuilt from its segment", idx.display()));
            continue;
        }
        let offsets: Vec<String> = scan.damaged.iter().map(|(at, why)| format!("{at} ({why})")).collect();
        let records = scan.index.len() as u64 / IDX_ENTRY;
        done.push(format!(
            "{}: damaged at offset {}; indexed around the damage, so its {records} record(s) keep their seqs and the damaged ones are never served (counted unreadable)",
            log.display(),
            offsets.join(", ")
        ));
        if active {
            // Recovery reads the active segment whole and refuses damage in it: seal this one instead.
            let (next_log, next_idx) = segment::segment_files(dir, scan.next_seq);
            for path in [&next_log, &next_idx] {
                frame::options()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| StoreError::io(path, e))?;
            }
            frame::sync_dir(dir).map_err(|e| StoreError::io(dir, e))?;
            done.push(format!("{}: sealed; new messages go to {}", log.display(), next_log.display()));
        }
    }
    // Seqs are dense across segments. Records lost inside a sealed segment leave a gap that no index can
    // bridge: the segments before the gap are moved aside (as retention would remove them, oldest first),
    // so the partition starts after it.
    if let Some(gap) = (1..bases.len()).rev().find(|&i| ends[i - 1] != bases[i]) {
        for &base in &bases[..gap] {
            let (log, idx) = segment::segment_files(dir, base);
            quarantine.take(&log)?;
            if idx.exists() {
                quarantine.take(&idx)?;
            }
        }
        done.push(format!(
            "{}: seqs {} to {} are missing; the {gap} segment(s) before the gap moved aside, the partition now starts at seq {}",
            dir.display(),
            ends[gap - 1],
            bases[gap] - 1,
            bases[gap]
        ));
    }
    Ok(())
}

/// The name a directory was made for (the reverse of [`dir_name`]).
fn unescape(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = escaped.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_unescape_to_the_names_they_were_made_for() {
        for name in ["orders.eu", "graphql:user:42", "ünï.cödé", "a%b"] {
            let name = Name::new(name).unwrap();
            assert_eq!(unescape(&dir_name(&name)).as_deref(), Some(name.as_str()));
        }
        assert_eq!(unescape("bad%zz"), None);
    }
}

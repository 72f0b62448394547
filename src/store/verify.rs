//! A read-only check of a whole data directory: every record of every segment against its CRC and its
//! index entry, every journal and checkpoint against its frames. Opening a directory reads only what it
//! must (the active segments), so damage inside sealed segments is found here, or when a reader reaches
//! the record (which is then not served).

use std::fs;
use std::path::Path;

use bytes::Bytes;

use super::StoreError;
use super::frame::{self, Reader};
use super::segment::{IDX_ENTRY, decode};

/// Checks every file under `dir`; returns one line per problem, naming the file and the offset.
pub fn verify(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut findings = Vec::new();
    for journal in ["meta.snap", "meta.log"] {
        check_frames(&dir.join(journal), &mut findings)?;
    }
    for topic in list(&dir.join("topics"))? {
        for partition in list(&topic)? {
            let mut logs: Vec<_> =
                list(&partition)?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "log")).collect();
            logs.sort();
            for log in logs {
                check_segment(&log, &mut findings)?;
            }
        }
    }
    for sub in list(&dir.join("subs"))? {
        check_frames(&sub.join("journal.log"), &mut findings)?;
        check_frames(&sub.join("checkpoint"), &mut findings)?;
    }
    Ok(findings)
}

fn list(dir: &Path) -> Result<Vec<std::path::PathBuf>, StoreError> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.path()).map_err(|e| StoreError::io(dir, e))).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::io(dir, e)),
    }
}

fn check_frames(path: &Path, findings: &mut Vec<String>) -> Result<(), StoreError> {
    let data = match fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let frames = frame::read_frames(&data);
    if frames.valid_len != data.len() {
        findings.push(format!(
            "{}: invalid frame at offset {} ({} bytes to the end)",
            path.display(),
            frames.valid_len,
            data.len() - frames.valid_len
        ));
    }
    Ok(())
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

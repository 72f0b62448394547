//! CRC-32C framing shared by every journal the store writes (`meta.log`, subscription journals and
//! checkpoints), and the write-temp-fsync-rename dance for files that must change atomically.
//!
//! A frame is `len u32 | crc32c u32 | body`, little-endian, with the CRC over the body. Topic segments use
//! their own, richer record layout (see `segment/`) but the same checksum.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::StoreError;

/// Directories the store creates are its owner's alone: messages are private data.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Files the store creates: read and written by their owner only.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Open options for a file of the store: created (when asked to) with [`FILE_MODE`].
pub(crate) fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates `path` and its missing parents with [`DIR_MODE`].
pub(crate) fn create_dirs(path: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)
}

/// Bytes before a frame's body.
pub(crate) const FRAME_HEADER: usize = 8;
/// The largest body any journal writes; a length above this marks a damaged frame.
pub(crate) const MAX_FRAME: usize = 256 << 20;

/// Appends one frame holding `body` to `out`.
pub(crate) fn put_frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// The frames of a journal, in order, and where the valid prefix ends.
#[derive(Debug)]
pub(crate) struct Frames<'a> {
    pub bodies: Vec<&'a [u8]>,
    /// Length of the prefix made of whole, valid frames; anything after it is a torn or damaged tail.
    pub valid_len: usize,
}

/// Splits `data` into frames, stopping at the first that is incomplete or fails its CRC.
pub(crate) fn read_frames(data: &[u8]) -> Frames<'_> {
    let mut bodies = Vec::new();
    let mut pos = 0;
    while let Some(body) = frame_at(data, pos) {
        bodies.push(body);
        pos += FRAME_HEADER + body.len();
    }
    Frames { bodies, valid_len: pos }
}

/// Where the first valid frame after `from` starts, if any: when one does, the damage at `from` is not a
/// torn tail (a torn write cannot leave a whole frame after it) but corruption among readable records.
pub(crate) fn readable_after(data: &[u8], from: usize) -> Option<usize> {
    (from + 1..data.len().saturating_sub(FRAME_HEADER)).find(|&p| frame_at(data, p).is_some())
}

/// Splits a journal's bytes into frames like [`read_frames`], refusing damage that a torn write cannot
/// explain: an invalid frame with a valid one after it. What is left after the valid prefix is then a
/// torn tail, which the caller may cut.
pub(crate) fn read_journal<'a>(path: &Path, data: &'a [u8]) -> Result<Frames<'a>, StoreError> {
    let frames = read_frames(data);
    if frames.valid_len != data.len()
        && let Some(at) = readable_after(data, frames.valid_len)
    {
        return Err(StoreError::corrupt(
            path,
            frames.valid_len as u64,
            &format!("invalid frame; readable records follow at offset {at}, so this is not a torn tail"),
        ));
    }
    Ok(frames)
}

/// Every valid frame of a damaged journal, skipping what fails its CRC: what `store repair` keeps.
/// Returns the bodies and how many damaged stretches were skipped.
pub(crate) fn salvage(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut bodies = Vec::new();
    let mut skipped = 0;
    let mut pos = 0;
    while pos < data.len() {
        match frame_at(data, pos) {
            Some(body) => {
                bodies.push(body);
                pos += FRAME_HEADER + body.len();
            }
            None => {
                skipped += 1;
                match readable_after(data, pos) {
                    Some(next) => pos = next,
                    None => break,
                }
            }
        }
    }
    (bodies, skipped)
}

/// The body of the frame at `pos`, when it is whole and its CRC matches.
fn frame_at(data: &[u8], pos: usize) -> Option<&[u8]> {
    let header = data.get(pos..pos + FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    // No journal writes an empty body, and eight zero bytes (a zero-filled tail) would pass the CRC.
    if len == 0 || len > MAX_FRAME {
        return None;
    }
    let body = data.get(pos + FRAME_HEADER..pos + FRAME_HEADER + len)?;
    (crc32c::crc32c(body) == crc).then_some(body)
}

/// Replaces `path` with `contents` so that a crash leaves either the old file or the new one: write a
/// temporary file, fsync it, rename it over the target, fsync the directory.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut file = options().write(true).create(true).truncate(true).open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| StoreError::io(path, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A little-endian reader over a record body; every read fails cleanly at the end of the input.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.bytes(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }

    pub fn i64(&mut self) -> Option<i64> {
        self.bytes(8).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_stop_at_damage() {
        let mut data = Vec::new();
        put_frame(&mut data, b"one");
        put_frame(&mut data, b"two");
        let whole = data.len();
        put_frame(&mut data, b"three");
        data.truncate(data.len() - 2); // torn tail
        let frames = read_frames(&data);
        assert_eq!(frames.bodies, vec![&b"one"[..], &b"two"[..]]);
        assert_eq!(frames.valid_len, whole);

        let mut flipped = data.clone();
        flipped[FRAME_HEADER] ^= 0x40; // a bit of "one"
        let frames = read_frames(&flipped);
        assert!(frames.bodies.is_empty());
        assert_eq!(frames.valid_len, 0);
    }

    #[test]
    fn damage_with_frames_after_it_is_told_from_a_torn_tail_and_salvaged_around() {
        let mut data = Vec::new();
        for body in [&b"one"[..], b"two", b"three"] {
            put_frame(&mut data, body);
        }
        let torn = &data[..data.len() - 2];
        assert_eq!(readable_after(torn, read_frames(torn).valid_len), None);
        let mut flipped = data.clone();
        flipped[FRAME_HEADER + 3 + FRAME_HEADER] ^= 0x01; // a byte of "two"
        let frames = read_frames(&flipped);
        assert_eq!(frames.valid_len, FRAME_HEADER + 3);
        assert_eq!(readable_after(&flipped, frames.valid_len), Some(2 * FRAME_HEADER + 6));
        assert_eq!(salvage(&flipped), (vec![&b"one"[..], &b"three"[..]], 1));
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("pubsub-frame-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("checkpoint");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!tmp_path(&path).exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}

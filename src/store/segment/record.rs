//! One record's bytes: [`encode`] writes the layout the module documentation describes, [`decode`]
//! reads it back and checks its CRC.

use bytes::Bytes;

use super::{FIXED_AFTER_CRC, FLAG_KEY, FLAG_MSG_ID, FLAG_SUBJECT, MAX_RECORD, RECORD_HEADER, StoredRecord};
use crate::model::{MessageExtra, Name, Timestamp};
use crate::store::frame::Reader;

/// Encodes one record onto `out`; returns its content size.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    seq: u64,
    time: Timestamp,
    subject: Option<&Name>,
    extra: Option<&MessageExtra>,
    payload: &[u8],
) -> Result<u64, String> {
    if extra.is_none() && subject.is_none() {
        // The common plain message: the header is known up front and written in one piece.
        let len = FIXED_AFTER_CRC + payload.len();
        if len > MAX_RECORD {
            return Err("record larger than 1 GiB".into());
        }
        let start = out.len();
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&time.as_micros().to_le_bytes());
        out.extend_from_slice(&[0; 7]); // flags, key_len, hdr_len
        out.extend_from_slice(payload);
        let crc = crc32c::crc32c(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        return Ok(payload.len() as u64);
    }
    let key = extra.and_then(|e| e.key.as_ref());
    let msg_id = extra.and_then(|e| e.msg_id.as_deref());
    let key_len = u16::try_from(key.map_or(0, |k| k.len())).map_err(|_| "key longer than 65535 bytes")?;
    let mut flags = 0;
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER as usize]);
    if let Some(key) = key {
        flags |= FLAG_KEY;
        out.extend_from_slice(key);
    }
    let hdr_start = out.len();
    for (flag, text) in [(FLAG_SUBJECT, subject.map(Name::as_str)), (FLAG_MSG_ID, msg_id)] {
        if let Some(text) = text {
            flags |= flag;
            let len = u16::try_from(text.len()).map_err(|_| "subject or msg_id longer than 65535 bytes")?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }
    for (k, v) in extra.map(|e| &e.headers).into_iter().flatten() {
        let klen = u16::try_from(k.len()).map_err(|_| "header name longer than 65535 bytes")?;
        out.extend_from_slice(&klen.to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    let hdr_len = (out.len() - hdr_start) as u32;
    out.extend_from_slice(payload);
    let len = out.len() - start - 8;
    if len > MAX_RECORD {
        out.truncate(start);
        return Err("record larger than 1 GiB".into());
    }
    let header = &mut out[start..start + RECORD_HEADER as usize];
    header[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[8..16].copy_from_slice(&seq.to_le_bytes());
    header[16..24].copy_from_slice(&time.as_micros().to_le_bytes());
    header[24] = flags;
    header[25..27].copy_from_slice(&key_len.to_le_bytes());
    header[27..31].copy_from_slice(&hdr_len.to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok((len - FIXED_AFTER_CRC) as u64)
}

/// Decodes the record at `pos` of `data`; returns it and the frame's total length. Payload and key
/// share `data`'s buffer.
pub(crate) fn decode(data: &Bytes, pos: usize) -> Result<(StoredRecord, usize), &'static str> {
    let head = data.get(pos..pos + 8).ok_or("incomplete record header")?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(FIXED_AFTER_CRC..=MAX_RECORD).contains(&len) {
        return Err("record length out of bounds");
    }
    let body = data.get(pos + 8..pos + 8 + len).ok_or("incomplete record")?;
    if crc32c::crc32c(body) != crc {
        return Err("CRC mismatch");
    }
    let mut r = Reader::new(body);
    let bad = "malformed record fields";
    let (seq, time, flags) = (r.u64().ok_or(bad)?, r.i64().ok_or(bad)?, r.u8().ok_or(bad)?);
    let (key_len, hdr_len) = (r.u16().ok_or(bad)? as usize, r.u32().ok_or(bad)? as usize);
    let key_at = pos + 8 + FIXED_AFTER_CRC;
    let key = r.bytes(key_len).ok_or(bad)?;
    let key = (flags & FLAG_KEY != 0).then(|| data.slice(key_at..key_at + key.len()));
    let mut h = Reader::new(r.bytes(hdr_len).ok_or(bad)?);
    let mut text = |flag: u8| -> Result<Option<String>, &'static str> {
        if flags & flag == 0 {
            return Ok(None);
        }
        let n = h.u16().ok_or(bad)? as usize;
        let raw = h.bytes(n).ok_or(bad)?;
        String::from_utf8(raw.to_vec()).map(Some).map_err(|_| "invalid UTF-8 in a record field")
    };
    let subject = match text(FLAG_SUBJECT)? {
        Some(s) => Some(Name::new(&s).map_err(|_| "invalid subject in a record")?),
        None => None,
    };
    let msg_id = text(FLAG_MSG_ID)?;
    let mut headers = crate::model::Headers::new();
    while !h.is_empty() {
        let k = h.u16().ok_or(bad)? as usize;
        let k = h.bytes(k).ok_or(bad)?;
        let v = h.u32().ok_or(bad)? as usize;
        let v = h.bytes(v).ok_or(bad)?;
        let k = String::from_utf8(k.to_vec()).map_err(|_| "invalid UTF-8 in a header")?;
        let v = String::from_utf8(v.to_vec()).map_err(|_| "invalid UTF-8 in a header")?;
        headers.insert(k, v);
    }
    let payload_at = key_at + key_len + hdr_len;
    let payload = data.slice(payload_at..pos + 8 + len);
    let record = StoredRecord {
        seq,
        time: Timestamp::from_micros(time),
        subject,
        extra: MessageExtra::pack(key, msg_id, headers),
        payload,
        content: (len - FIXED_AFTER_CRC) as u64,
    };
    Ok((record, 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Headers;

    #[test]
    fn records_round_trip_with_every_field() {
        let mut headers = Headers::new();
        headers.insert("trace".into(), "abc".into());
        let extra =
            MessageExtra { key: Some(Bytes::from_static(b"k\0")), msg_id: Some("m-1".into()), headers };
        let subject = Name::new("orders.eu").unwrap();
        let mut out = Vec::new();
        let content =
            encode(&mut out, 7, Timestamp::from_micros(42), Some(&subject), Some(&extra), b"\xffpay")
                .unwrap();
        let (record, frame) = decode(&Bytes::from(out.clone()), 0).unwrap();
        assert_eq!(frame, out.len());
        assert_eq!(content, out.len() as u64 - RECORD_HEADER);
        assert_eq!((record.seq, record.time.as_micros()), (7, 42));
        assert_eq!(record.subject, Some(subject));
        assert_eq!(record.extra.as_deref(), Some(&extra));
        assert_eq!(&record.payload[..], b"\xffpay");
    }

    #[test]
    fn plain_records_encode_like_the_general_layout() {
        let mut fast = Vec::new();
        encode(&mut fast, 9, Timestamp::from_micros(5), None, None, b"abc").unwrap();
        let (record, len) = decode(&Bytes::from(fast.clone()), 0).unwrap();
        assert_eq!((record.seq, record.content, len), (9, 3, fast.len()));
        assert!(record.extra.is_none() && record.subject.is_none());
        assert_eq!(&record.payload[..], b"abc");
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let mut out = Vec::new();
        encode(&mut out, 1, Timestamp::ZERO, None, None, b"payload").unwrap();
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x01;
            assert!(decode(&Bytes::from(bad), 0).is_err(), "flip at {i} went unnoticed");
        }
    }
}

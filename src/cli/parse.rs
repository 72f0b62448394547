//! Parsing of command-line values: positions (`start`, `end`, a seq, a time, `-5m`), rates, headers,
//! and the templates `pub --count` expands.

use std::time::Duration;

use crate::model::Timestamp;

/// Parses a rate such as `500/s`, `30/m`, `2/h` or a plain number (per second) into messages per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (n, unit) = text.split_once('/').unwrap_or((text, "s"));
    // `10k/s` and `1M/s` read as thousands and millions.
    let n = n.trim();
    let (n, scale) = match n.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1e3),
        None => n.strip_suffix('M').map_or((n, 1.0), |n| (n, 1e6)),
    };
    let n: f64 =
        n.parse::<f64>().map_err(|_| format!("\"{text}\" is not a rate such as 500/s or 10k/s"))? * scale;
    let per = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => return Err(format!("unknown rate unit \"{other}\": use /s, /m or /h")),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("rate \"{text}\" must be positive"));
    }
    Ok(n / per)
}

/// Parses `NAME=VALUE`.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("\"{text}\" is not a header: use NAME=VALUE")),
    }
}

/// Parses a duration such as `500ms`, `5s`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("\"{text}\" is not a duration such as 5s or 2m: {e}"))
}

/// A delimiter as `-D`/`-K` take it (kcat's habit): the text's bytes, with `\\n`, `\\r`, `\\t`, `\\0`,
/// `\\\\` and `\\xHH` escapes, so that a shell without `$'…'` can still give a tab or a NUL.
pub fn parse_delimiter(text: &str) -> Result<Delimiter, String> {
    delimiter_bytes(text).map(Delimiter)
}

/// Bytes that separate records (`-D`, `-K`); a type of its own so that clap takes it as one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delimiter(pub Vec<u8>);

fn delimiter_bytes(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some((&e, tail)) = rest.split_first() else {
            return Err(format!("delimiter {text:?} ends with a lone backslash (write \\\\ for one)"));
        };
        rest = tail;
        match e {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = rest.get(..2).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("delimiter {text:?}: \\x needs two hex digits"))?;
                out.push(byte);
                rest = rest.get(2..).unwrap_or_default();
            }
            other => {
                return Err(format!(
                    "delimiter {text:?}: unknown escape \\{}; known are \\n \\r \\t \\0 \\\\ \\xHH",
                    other as char
                ));
            }
        }
    }
    Ok(out)
}

/// A redelivery backoff as `subs create --backoff` takes it: `none` (at once), `MIN..MAX` (doubling
/// from MIN up to MAX), `MIN..MAX*FACTOR` (growing by FACTOR), or a list `1s,5s,30s` (the n-th failure
/// waits the n-th delay, the last one from then on).
pub fn parse_backoff(text: &str) -> Result<crate::model::Backoff, String> {
    use crate::model::Backoff;
    let usage = "a backoff is none, MIN..MAX (doubling, e.g. 1s..1m), MIN..MAX*FACTOR (e.g. 1s..1m*3) or a list (1s,5s,30s)";
    let text = text.trim();
    if text == "none" || text == "0" {
        return Ok(Backoff::Immediate);
    }
    if let Some((min, rest)) = text.split_once("..") {
        let (max, factor) = match rest.split_once('*') {
            Some((max, f)) => {
                let f: f64 = f.trim().parse().map_err(|_| format!("\"{f}\" is not a factor: {usage}"))?;
                if !(f >= 1.0 && f.is_finite()) {
                    return Err(format!("backoff factor {f} must be 1 or more: {usage}"));
                }
                (max, f)
            }
            None => (rest, 2.0),
        };
        let (min, max) = (parse_duration(min.trim())?, parse_duration(max.trim())?);
        if min > max {
            return Err(format!("backoff \"{text}\" starts above its largest delay: {usage}"));
        }
        return Ok(Backoff::Exponential { min, max, factor, jitter: 0.1 });
    }
    let list = text
        .split(',')
        .map(|d| parse_duration(d.trim()).map_err(|e| format!("{e}; {usage}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Backoff::List(list))
}

/// Refuses a `pub --count` template with a placeholder that [`expand_publish_template`] does not know
/// (or an unclosed `{{`), so that a typo is an error rather than literal braces in every message.
pub fn check_publish_template(template: &str) -> Result<(), String> {
    let known = "pub --count knows {{seq}}, {{now}}, {{uuid}} and {{random A B}}";
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            return Err(format!("template {template:?} opens a {{{{ that it never closes; {known}"));
        };
        let inner = rest[start + 2..start + end].trim();
        let words: Vec<&str> = inner.split_whitespace().collect();
        let ok = match words.as_slice() {
            ["seq" | "now" | "uuid"] => true,
            ["random", a, b] => matches!((a.parse::<i64>(), b.parse::<i64>()), (Ok(lo), Ok(hi)) if lo <= hi),
            _ => false,
        };
        if !ok {
            return Err(format!("template {template:?} has an unknown placeholder {{{{{inner}}}}}; {known}"));
        }
        rest = &rest[start + end + 2..];
    }
    Ok(())
}

/// Expands `{{seq}}`, `{{now}}`, `{{uuid}}` and `{{random A B}}` in a `pub --count` template.
pub fn expand_publish_template(template: &str, seq: u64, now: Timestamp, rng: &mut u64) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = rest[start + 2..start + end].trim();
        let mut words = inner.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("seq"), None, _) => out.push_str(&seq.to_string()),
            (Some("now"), None, _) => out.push_str(&crate::protocol::envelope::format_time(now)),
            (Some("uuid"), None, _) => out.push_str(&uuid_v4(rng)),
            (Some("random"), Some(a), Some(b)) => match (a.parse::<i64>(), b.parse::<i64>()) {
                (Ok(lo), Ok(hi)) if lo <= hi => {
                    let span = u64::try_from(hi - lo).unwrap_or(0).saturating_add(1);
                    let pick = i64::try_from(next(rng) % span.max(1)).unwrap_or(0);
                    out.push_str(&(lo + pick).to_string());
                }
                _ => out.push_str(&rest[start..start + end + 2]),
            },
            _ => out.push_str(&rest[start..start + end + 2]),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

/// A seed for template randomness from the OS, falling back to the clock.
pub fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes) | 1,
        Err(_) => {
            u64::try_from(crate::model::Clock::now(&crate::model::SystemClock).as_micros()).unwrap_or(1) | 1
        }
    }
}

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn uuid_v4(rng: &mut u64) -> String {
    let (a, b) = (next(rng), next(rng));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_micros(1_780_000_000_000_000);

    #[test]
    fn rates_and_headers_parse() {
        assert_eq!(parse_rate("500/s"), Ok(500.0));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        assert_eq!(parse_rate("10"), Ok(10.0));
        assert_eq!(parse_rate("10k/s"), Ok(10_000.0));
        assert_eq!(parse_rate("1.5M/s"), Ok(1_500_000.0));
        assert!(parse_rate("k/s").is_err());
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/fortnight").is_err());
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_header("novalue").is_err());
    }

    #[test]
    fn publish_templates_expand() {
        let mut rng = 7;
        let text = expand_publish_template(
            r#"{"n":{{seq}},"r":{{random 5 5}},"id":"{{uuid}}","x":"{{nope}}"}"#,
            3,
            NOW,
            &mut rng,
        );
        assert!(text.starts_with(r#"{"n":3,"r":5,"id":""#), "{text}");
        assert!(text.ends_with(r#"","x":"{{nope}}"}"#), "{text}");
        let uuid = text.split('"').nth(7).unwrap();
        assert_eq!((uuid.len(), &uuid[14..15]), (36, "4"), "{uuid}");
        assert!(expand_publish_template("{{now}}", 1, NOW, &mut rng).starts_with("2026-05-28T20:26:40"));
    }

    #[test]
    fn publish_templates_with_unknown_placeholders_are_refused() {
        assert!(
            check_publish_template(r#"{"n":{{seq}},"r":{{random 1 6}},"at":"{{ now }}","id":"{{uuid}}"}"#)
                .is_ok()
        );
        for bad in ["{{nosuch}}", "{{random 6 1}}", "{{random a b}}", "{{seq 2}}", "x {{seq"] {
            let err = check_publish_template(bad).unwrap_err();
            assert!(err.contains("{{seq}}, {{now}}"), "{bad}: {err}");
        }
    }

    #[test]
    fn backoffs_parse_in_their_three_forms() {
        use crate::model::Backoff;
        use std::time::Duration;
        let s = Duration::from_secs;
        assert_eq!(parse_backoff("none"), Ok(Backoff::Immediate));
        assert_eq!(
            parse_backoff("1s..1m"),
            Ok(Backoff::Exponential { min: s(1), max: s(60), factor: 2.0, jitter: 0.1 })
        );
        assert_eq!(
            parse_backoff("2s..10s*3"),
            Ok(Backoff::Exponential { min: s(2), max: s(10), factor: 3.0, jitter: 0.1 })
        );
        assert_eq!(parse_backoff("1s, 5s,30s"), Ok(Backoff::List(vec![s(1), s(5), s(30)])));
        for bad in ["10s..1s", "1s..1m*0.5", "1s..1m*x", "soon", "1s,,2s"] {
            assert!(parse_backoff(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn delimiters_take_escapes() {
        assert_eq!(delimiter_bytes(":"), Ok(b":".to_vec()));
        assert_eq!(delimiter_bytes("\\n--\\t"), Ok(b"\n--\t".to_vec()));
        assert_eq!(delimiter_bytes("\\0\\x1f\\\\"), Ok(vec![0, 0x1f, b'\\']));
        assert_eq!(delimiter_bytes(""), Ok(Vec::new()));
        for bad in ["\\", "\\q", "\\x1"] {
            assert!(parse_delimiter(bad).is_err(), "{bad}");
        }
    }
}

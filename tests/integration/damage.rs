//! Damage to every kind of file in a data directory (flip a byte, cut the file, zero it, delete it), and
//! the outcome each must have: recovery repairs what it can without losing readable data, and refuses,
//! naming the file, what it cannot; `store verify` reports every case; after a refusal `store repair`
//! sets the damage aside so the directory opens. docs/STORAGE.md has the same table in words.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pubsub::engine::{
    BrowseFrom, Engine, EngineConfig, FetchOptions, ManualClock, PublishRequest, StartPosition,
    SubscriptionConfig, Timestamp, TopicConfig,
};

use crate::support::name;

#[derive(Debug, Clone, Copy)]
enum Damage {
    Flip,
    Cut,
    Zero,
    Delete,
}

/// What opening a damaged directory must do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    /// It opens (repairing or reporting).
    Opens,
    /// It refuses, naming what is damaged, and `store repair` makes it open.
    Refuses,
}

fn clock() -> Arc<ManualClock> {
    ManualClock::new(Timestamp::from_micros(1_780_000_000_000_000))
}

fn open(dir: &Path) -> Result<(Engine, pubsub::store::RecoveryReport), String> {
    Engine::open(dir, clock(), EngineConfig::default()).map_err(|e| e.to_string())
}

fn fetch_acking(engine: &Engine, sub: &str, max: usize) -> Vec<u64> {
    let opts = FetchOptions { max_msgs: 1, ..FetchOptions::default() };
    let mut seqs = Vec::new();
    while seqs.len() < max {
        let got = engine.try_fetch(&name(sub), "c", &opts).unwrap();
        let Some(d) = got.into_iter().next() else { break };
        engine.ack(&name(sub), d.lease.unwrap()).unwrap();
        seqs.push(d.message.seq);
    }
    seqs
}

/// A directory with every kind of file in use: topic `t` with two sealed segments and an active one,
/// subscription `s` with a checkpoint and a journal of acks after it, and `meta.log` holding the
/// creation of topic `u` and subscription `s2` after the snapshot.
fn build(dir: &Path) {
    {
        let (engine, _) = open(dir).unwrap();
        let mut t = TopicConfig::new(name("t"));
        t.segment_bytes = 4096;
        engine.create_topic(t).unwrap();
        let mut s = SubscriptionConfig::new(name("s"), name("t"));
        s.start = StartPosition::All;
        engine.create_subscription(s).unwrap();
        for i in 1..=120 {
            engine
                .publish(PublishRequest::new(name("t"), format!("message {i:03} {}", "x".repeat(40))))
                .unwrap();
        }
    } // dropped: meta.log keeps the creates until the next open compacts them
    let (engine, _) = open(dir).unwrap();
    let mut u = TopicConfig::new(name("u"));
    u.segment_bytes = 4096;
    engine.create_topic(u).unwrap();
    let mut s2 = SubscriptionConfig::new(name("s2"), name("u"));
    s2.start = StartPosition::All;
    engine.create_subscription(s2).unwrap();
    engine.publish(PublishRequest::new(name("u"), "on u")).unwrap();
    assert_eq!(fetch_acking(&engine, "s", 20), (1..=20).collect::<Vec<u64>>());
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn segments(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join("topics/t/0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

fn damage(path: &Path, how: Damage) {
    let data = fs::read(path).unwrap();
    assert!(!data.is_empty(), "{} is empty before the damage", path.display());
    match how {
        Damage::Flip => {
            let mut data = data;
            let at = data.len() / 2;
            data[at] ^= 0x10;
            fs::write(path, data).unwrap();
        }
        Damage::Cut => fs::write(path, &data[..data.len() / 2]).unwrap(),
        Damage::Zero => fs::write(path, vec![0; data.len()]).unwrap(),
        Damage::Delete => fs::remove_file(path).unwrap(),
    }
}

#[test]
fn every_kind_of_damage_to_every_kind_of_file_has_its_outcome() {
    let base = std::env::temp_dir().join(format!("pubsub-damage-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let _cleanup = RemoveOnDrop(base.clone());
    let pristine = base.join("pristine");
    build(&pristine);
    assert!(pristine.join("meta.log").metadata().unwrap().len() > 0);
    assert_eq!(segments(&pristine, "log").len(), 3, "two sealed segments and an active one");

    use Damage::*;
    use Open::*;
    type Pick = fn(&Path) -> PathBuf;
    let files: [(&str, Pick, [Open; 4]); 8] = [
        ("meta.snap", |d| d.join("meta.snap"), [Refuses, Refuses, Refuses, Refuses]),
        ("meta.log", |d| d.join("meta.log"), [Refuses, Refuses, Refuses, Refuses]),
        ("sealed segment", |d| segments(d, "log")[0].clone(), [Opens, Refuses, Refuses, Opens]),
        ("sealed index", |d| segments(d, "idx")[0].clone(), [Opens, Opens, Opens, Opens]),
        ("active segment", |d| segments(d, "log")[2].clone(), [Refuses, Opens, Opens, Opens]),
        ("active index", |d| segments(d, "idx")[2].clone(), [Opens, Opens, Opens, Opens]),
        ("checkpoint", |d| d.join("subs/s/checkpoint"), [Refuses, Refuses, Refuses, Opens]),
        ("journal", |d| d.join("subs/s/journal.log"), [Refuses, Opens, Opens, Opens]),
    ];
    let mut outcomes = Vec::new();
    for (i, (kind, pick, expected)) in files.iter().enumerate() {
        for (how, want) in [Flip, Cut, Zero, Delete].into_iter().zip(expected) {
            let dir = base.join(format!("case-{i}-{how:?}"));
            copy_dir(&pristine, &dir);
            let target = pick(&dir);
            damage(&target, how);
            let case = format!("{kind} {how:?}");

            let findings = pubsub::store::verify(&dir).unwrap();
            assert!(!findings.is_empty(), "{case}: verify found nothing");

            let opened = open(&dir);
            let got = if opened.is_ok() { Opens } else { Refuses };
            assert_eq!(got, *want, "{case}: {opened:?}");
            let engine = match opened {
                Ok((engine, report)) => {
                    // Open reads a sealed segment's last index entry only (constant time), so a flip in the
                    // middle of a sealed segment or its index is found by verify and by the reader that
                    // reaches the record, not at open. Every other damage that opens is reported.
                    let unseen_at_open = matches!((i, how), (2 | 3, Flip));
                    assert!(
                        unseen_at_open || !report.findings().is_empty(),
                        "{case}: recovery reported nothing"
                    );
                    engine
                }
                Err(refusal) => {
                    // The refusal names the damaged file, or the directories its loss left unnamed.
                    let folder = target.parent().unwrap().display().to_string();
                    let named =
                        refusal.contains(&folder) || refusal.contains("no topic or subscription names");
                    assert!(named, "{case}: {refusal}");
                    assert!(refusal.contains("pubsub store repair"), "{case}: {refusal}");
                    let done = pubsub::store::repair(&dir).unwrap();
                    assert!(!done.is_empty(), "{case}: repair did nothing");
                    let quarantined = dir.join("quarantine");
                    assert!(quarantined.is_dir(), "{case}: nothing set aside: {done:?}");
                    let (engine, _) = open(&dir).unwrap_or_else(|e| panic!("{case}: after repair: {e}"));
                    engine.close().unwrap();
                    assert_eq!(
                        pubsub::store::repair(&dir).unwrap(),
                        Vec::<String>::new(),
                        "{case}: a second repair"
                    );
                    open(&dir).unwrap().0
                }
            };
            // Nothing that was readable is silently gone: both topics are still there, and the messages
            // that `s` had not acked are all still delivered (segment damage aside: those lose what the
            // damage took).
            for topic in ["t", "u"] {
                assert!(engine.topic_info(&name(topic)).is_ok(), "{case}: topic {topic} vanished");
            }
            let t = engine.browse(&name("t"), BrowseFrom::Seq(0), usize::MAX).unwrap();
            if !matches!(i, 2..=5) {
                assert_eq!(t.len(), 120, "{case}");
                if engine.subscription_info(&name("s")).is_ok() {
                    let seqs = fetch_acking(&engine, "s", 1000);
                    assert!(
                        (21..=120).all(|seq| seqs.contains(&seq)),
                        "{case}: unacked messages lost: {seqs:?}"
                    );
                }
            } else {
                assert!(t.len() >= 40, "{case}: only {} messages left", t.len());
            }
            engine.close().unwrap();
            outcomes.push(format!("{case}: {got:?}"));
        }
    }
    assert_eq!(outcomes.len(), 32);
}

/// Removes the cases' directories even when an assertion fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

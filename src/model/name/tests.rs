//! Tests of names and patterns: the SEMANTICS.md §9.3 table, refusals, globs, overlap and cover.
use super::*;
use proptest::prelude::*;

fn pat(s: &str) -> Pattern {
    Pattern::parse(s).unwrap_or_else(|e| unreachable!("test patterns are valid: {e}"))
}

fn message<T>(r: Result<T, NameError>) -> String {
    r.err().map(|e| e.to_string()).unwrap_or_default()
}

#[test]
fn matching_table_from_semantics() {
    let table = [
        ("a.*", [false, true, false]),
        ("a.>", [false, true, true]),
        ("a.#", [true, true, true]),
        ("#", [true, true, true]),
        ("*.b.#", [false, true, true]),
        ("glob:a*", [true, true, true]),
    ];
    for (p, want) in table {
        for (subject, want) in ["a", "a.b", "a.b.c"].into_iter().zip(want) {
            assert_eq!(pat(p).matches(subject), want, "{p} vs {subject}");
        }
    }
}

#[test]
fn invalid_names_say_why_and_quote_the_value() {
    let (long, many) = ("a".repeat(256), ["a"; 33].join("."));
    let full = "invalid name \"a..b\": empty token at position 2 (names are tokens separated by '.')";
    assert_eq!(message(Name::new("a..b")), full);
    let cases = [
        ("", "invalid name \"\": it is empty"),
        (&long, "256 bytes, over the limit of 255"),
        (&many, "33 tokens, over the limit of 32"),
        (".a", "empty token at position 1"),
        ("a.", "empty token at position 2"),
        ("a b", "invalid name \"a b\": token 1 contains ' '"),
        ("a.\0", "invalid name \"a.\\0\": token 2 contains '\\0'"),
        ("a.*", "invalid name \"a.*\": token 2 contains the wildcard '*'"),
        ("a#", "token 1 contains the wildcard '#'"),
        ("$sys.x", "\"$sys.x\": names starting with '$' are reserved for engine events"),
        ("glob:x", "\"glob:x\": a leading \"glob:\" marks a glob pattern"),
    ];
    for (value, expected) in cases {
        let got = message(Name::new(value));
        assert!(got.contains(expected), "{value:?} gave {got:?}");
    }
}

#[test]
fn names_keep_punctuation_case_and_unicode() -> Result<(), NameError> {
    let name = Name::new("graphql:user:42.Événements")?;
    assert_eq!(name.tokens().collect::<Vec<_>>(), ["graphql:user:42", "Événements"]);
    assert_eq!(format!("{name:?} {name}"), "\"graphql:user:42.Événements\" graphql:user:42.Événements");
    assert!(!name.is_reserved() && Name::system("$sys.lag")?.is_reserved());
    assert_ne!(Name::new("A")?, "a".parse()?);
    assert_eq!(Name::new(&format!("{}b", "a.".repeat(31)))?.tokens().count(), 32);
    assert_eq!(Pattern::from(&name), pat(name.as_str()));
    Ok(())
}

#[test]
fn gt_must_be_last_token() {
    let problem = NameProblem::GtNotLast(2);
    assert_eq!(Pattern::parse("a.>.b"), Err(NameError::Pattern { value: "a.>.b".into(), problem }));
    assert!(Pattern::parse("#.>").is_ok());
}

#[test]
fn token_mixing_wildcard_suggests_glob() {
    let got = message(Pattern::parse("user.a*"));
    assert!(got.starts_with("invalid pattern \"user.a*\": token \"a*\" mixes a wildcard"), "{got}");
    assert!(got.contains("prefix the pattern with \"glob:\""), "{got}");
}

#[test]
fn patterns_follow_name_rules_but_may_start_with_dollar() {
    let got = message(Pattern::parse("a..#"));
    assert_eq!(
        got,
        "invalid pattern \"a..#\": empty token at position 2 (names are tokens separated by '.')"
    );
    assert!(message(Pattern::parse(&["*"; 33].join("."))).contains("33 tokens"));
    assert!(pat("$sys.>").matches("$sys.lag.orders"));
}

#[test]
fn glob_features_follow_redis() {
    let cases = concat!(
        r"h?llo hello y|h?llo hllo n|h*llo heeello y|h[ae]llo hallo y|h[ae]llo hillo n|",
        r"h[^e]llo hallo y|h[^e]llo hello n|h[!e]llo hello n|h[a-c]llo hbllo y|h[c-a]llo hallo y|",
        r"h[a-]llo h-llo y|h[\]]llo h]llo y|h\*llo h*llo y|h\*llo hello n|é? éü y|",
        r"graphql:user:* graphql:user:42 y",
    );
    for case in cases.split('|') {
        let [glob, subject, want] = case.split(' ').collect::<Vec<_>>()[..] else { unreachable!() };
        let p = pat(&format!("glob:{glob}"));
        assert_eq!(p.matches(subject), want == "y", "{glob} vs {subject}");
    }
    for (bad, why) in [("glob:a[bc", "unterminated '['"), ("glob:a\\", "trailing '\\'"), ("glob:", "empty")] {
        let got = message(Pattern::parse(bad));
        assert!(got.starts_with(&format!("invalid pattern {bad:?}: ")) && got.contains(why), "{got}");
    }
}

#[test]
fn matching_is_not_exponential() {
    let subject = ["a"; 32].join(".");
    assert!(!pat("#.a.#.a.#.a.#.a.#.a.#.a.#.a.#.a.#.b").matches(&subject));
    assert!(!pat(&format!("glob:{}b", "a*".repeat(20))).matches(&"a".repeat(255)));
}

#[test]
fn covers_gives_up_conservatively_on_contrived_patterns() {
    let contrived = pat(&format!("#.a{}", ".*".repeat(30)));
    assert!(!contrived.covers(&contrived), "the subset construction would need 2^30 states");
    assert!(contrived.overlaps(&contrived));
}

#[test]
fn only_wildcard_free_token_patterns_are_literal() {
    assert_eq!(pat("a.b").literal(), Some("a.b"));
    assert!(pat("a.b").is_literal() && !pat("a.*").is_literal() && !pat("glob:ab").is_literal());
    assert!(pat("glob:a*").is_glob() && pat("glob:a*").to_string() == "glob:a*");
}

fn pairs(cases: &str) -> Vec<(Pattern, Pattern)> {
    cases.split(", ").filter_map(|c| c.split_once(' ')).map(|(p, q)| (pat(p), pat(q))).collect()
}

#[test]
fn overlaps_handle_wildcards_anywhere() {
    for (p, q) in pairs("a.# *.b, # x.y.z, #.a.# #.b.#, a.> *.*.c, #.a a.#, #.a.#.b b.#.a.#, glob:a.* a.b") {
        assert!(p.overlaps(&q) && q.overlaps(&p), "{p} / {q}");
    }
    for (p, q) in pairs("a.> a, a.* a.*.*, a.#.b a.#.c, a.# b.#, * *.#.*, glob:a.* b.a, glob:ab a.#") {
        assert!(!p.overlaps(&q) && !q.overlaps(&p), "{p} / {q}");
    }
    assert!(!pat("glob:a b").overlaps(&pat("#")), "no valid subject contains a space");
    assert!(pat("glob:a*").overlaps(&pat("glob:b*")), "undecided globs are assumed to overlap");
}

#[test]
fn covers_is_pattern_containment() {
    for (p, q) in pairs("# a.#.b, a.# a.>, #.b.# a.#.b.#.c, *.# >, #.# #, a.* a.b, # glob:x?, glob:* a.#") {
        assert!(p.covers(&q), "{p} should cover {q}");
    }
    for (p, q) in pairs("a.> a.#, #.a.# #, *.* *.#, a.#.b.# #.b.a.#, a.* a.*.*, a.# glob:a*") {
        assert!(!p.covers(&q), "{p} should not cover {q}");
    }
}

fn token_pattern() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec!["a", "b", "*", "#"]);
    (prop::collection::vec(token, 1..4), any::<bool>())
        .prop_map(|(t, gt)| t.join(".") + if gt { ".>" } else { "" })
}

fn any_pattern() -> impl Strategy<Value = String> {
    let glob = prop::collection::vec(prop::sample::select(vec!["a", "b", ".", "*", "?"]), 1..5)
        .prop_map(|t| format!("glob:{}", t.concat()));
    prop_oneof![3 => token_pattern(), 1 => glob]
}

/// Every subject of up to `max` tokens over `a`, `b` and `z`, a token no generated pattern names.
fn subjects(max: usize) -> Vec<String> {
    let mut layer = vec![String::new()];
    let mut all = Vec::new();
    for _ in 0..max {
        layer = layer.iter().flat_map(|s| ["a", "b", "z"].map(|t| format!("{s}.{t}"))).collect();
        all.extend(layer.iter().map(|s| s[1..].to_owned()));
    }
    all
}

static SUBJECTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| subjects(9));

proptest! {
    #[test]
    fn overlaps_is_symmetric_and_covers_is_sound(p in any_pattern(), q in any_pattern(), s in 0..1092usize) {
        let (p, q, s) = (pat(&p), pat(&q), &SUBJECTS[s]); // up to 6 tokens
        prop_assert_eq!(p.overlaps(&q), q.overlaps(&p));
        prop_assert!(!(p.matches(s) && q.matches(s)) || p.overlaps(&q));
        prop_assert!(!(p.covers(&q) && q.matches(s)) || p.matches(s));
    }

    #[test]
    fn token_overlaps_and_covers_are_exact(p in token_pattern(), q in token_pattern()) {
        let (p, q) = (pat(&p), pat(&q));
        prop_assert_eq!(p.overlaps(&q), SUBJECTS.iter().any(|s| p.matches(s) && q.matches(s)));
        prop_assert_eq!(p.covers(&q), SUBJECTS.iter().all(|s| !q.matches(s) || p.matches(s)));
    }
}

#[test]
fn mqtt_level_filters_match_slash_separated_topics() {
    let plus = Pattern::parse("sensors/+/temp").unwrap();
    assert!(plus.matches("sensors/kitchen/temp"));
    assert!(!plus.matches("sensors/kitchen/hall/temp"));
    let hash = Pattern::parse("sensors/#").unwrap();
    assert!(hash.matches("sensors") && hash.matches("sensors/a/b/c"));
    assert!(!hash.matches("sensorsx/a"));
    assert!(hash.has_levels() && !hash.is_literal());
    // A level wildcard that is not a whole level stays an error, as do other wildcards mixed in.
    assert!(Pattern::parse("sensors/te#").is_err());
    assert!(Pattern::parse("sensors/#/x").is_err());
    // Without '/', '+' is an ordinary character.
    assert!(Pattern::parse("a+b").unwrap().is_literal());
    assert!(hash.overlaps(&Pattern::parse("sensors/x").unwrap()));
    assert!(!hash.overlaps(&Pattern::parse("other/x").unwrap()));
}

//! Subject names and the patterns that select them (SEMANTICS §9.3): validation, matching, overlap.

use std::borrow::{Borrow, Cow};
use std::collections::HashSet;
use std::fmt;
use std::str::{Chars, FromStr};
use std::sync::Arc;

/// Longest accepted name or pattern, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Most tokens accepted in a name or token pattern.
pub const MAX_TOKENS: usize = 32;

const GLOB_PREFIX: &str = "glob:";
/// States [`Pattern::covers`] explores before giving up with `false`; real patterns need a few dozen.
const COVERS_BUDGET: usize = 4096;

/// A refused name or pattern: the message quotes the value, says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A subject or topic name that breaks the rules.
    #[error("invalid name {value:?}: {problem}")]
    Name {
        /// The refused text.
        value: String,
        /// The rule it broke.
        problem: NameProblem,
    },
    /// A subscription or tap pattern that breaks the rules.
    #[error("invalid pattern {value:?}: {problem}")]
    Pattern {
        /// The refused text, `glob:` prefix included.
        value: String,
        /// The rule it broke.
        problem: NameProblem,
    },
}

/// The rule a refused name or pattern broke; positions count tokens from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    /// Nothing to match.
    #[error("it is empty; write one or more tokens separated by '.'")]
    Empty,
    /// Longer than [`MAX_NAME_BYTES`]; holds the length.
    #[error("{0} bytes, over the limit of {max}; shorten it", max = MAX_NAME_BYTES)]
    TooLong(usize),
    /// More than [`MAX_TOKENS`] tokens; holds the count.
    #[error("{0} tokens, over the limit of {max}; use fewer '.'-separated tokens", max = MAX_TOKENS)]
    TooManyTokens(usize),
    /// Two dots in a row, or a dot at either end; holds the position.
    #[error("empty token at position {0} (names are tokens separated by '.')")]
    EmptyToken(usize),
    /// NUL or whitespace inside a token; holds the position and the character.
    #[error("token {0} contains {1:?}; NUL and whitespace are not allowed in tokens")]
    BadChar(usize, char),
    /// A wildcard inside a name; holds the position and the wildcard.
    #[error("token {0} contains the wildcard {1:?}; '*', '>' and '#' belong in patterns, not names")]
    Wildcard(usize, char),
    /// A user name starting with `$`, which only engine events may use.
    #[error("names starting with '$' are reserved for engine events; drop the '$'")]
    Reserved,
    /// A name starting with `glob:`, which written as a pattern would read as a glob.
    #[error("a leading \"glob:\" marks a glob pattern, so no name may start with it; rename it")]
    GlobPrefix,
    /// `>` before the last token; holds the position.
    #[error("'>' at position {0} must be the last token; use '#' for zero or more tokens elsewhere")]
    GtNotLast(usize),
    /// A token such as `a*` mixing a wildcard with other characters; holds the token.
    #[error(
        "token {0:?} mixes a wildcard with other characters; wildcards are whole tokens, \
         or prefix the pattern with \"glob:\" to match characters"
    )]
    MixedWildcard(String),
    /// A glob `[` class without its closing `]`.
    #[error("unterminated '[' class; close it with ']' or escape the bracket as \\[")]
    UnterminatedClass,
    /// A glob ending in a lone backslash.
    #[error("a trailing '\\' escapes nothing; write \\\\ for a backslash")]
    TrailingEscape,
}

fn is_wildcard(c: char) -> bool {
    matches!(c, '*' | '>' | '#')
}

/// Limits shared by names and token patterns, checked before any token is looked at.
fn check_shape(value: &str) -> Result<(), NameProblem> {
    if value.is_empty() {
        return Err(NameProblem::Empty);
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(NameProblem::TooLong(value.len()));
    }
    match value.split('.').count() {
        count if count > MAX_TOKENS => Err(NameProblem::TooManyTokens(count)),
        _ => Ok(()),
    }
}

/// Checks one literal token; wildcards are left to the caller, which knows whether they are allowed.
fn check_token(position: usize, token: &str) -> Result<(), NameProblem> {
    if token.is_empty() {
        return Err(NameProblem::EmptyToken(position));
    }
    match token.chars().find(|&c| c == '\0' || c.is_whitespace()) {
        Some(ch) => Err(NameProblem::BadChar(position, ch)),
        None => Ok(()),
    }
}

fn check_name(value: &str, allow_reserved: bool) -> Result<(), NameProblem> {
    check_shape(value)?;
    if !allow_reserved && value.starts_with('$') {
        return Err(NameProblem::Reserved);
    }
    if value.starts_with(GLOB_PREFIX) {
        return Err(NameProblem::GlobPrefix);
    }
    for (i, token) in value.split('.').enumerate() {
        check_token(i + 1, token)?;
        if let Some(ch) = token.chars().find(|&c| is_wildcard(c)) {
            return Err(NameProblem::Wildcard(i + 1, ch));
        }
    }
    Ok(())
}

/// A validated subject/topic name: `.`-separated tokens; cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    /// Validates a user-supplied name; names starting with `$` are refused as reserved.
    pub fn new(s: &str) -> Result<Name, NameError> {
        Name::checked(s, false)
    }

    /// Validates an engine name, which may start with `$` (as `$sys.…` events do).
    pub fn system(s: &str) -> Result<Name, NameError> {
        Name::checked(s, true)
    }

    fn checked(s: &str, allow_reserved: bool) -> Result<Name, NameError> {
        match check_name(s, allow_reserved) {
            Ok(()) => Ok(Name(Arc::from(s))),
            Err(problem) => Err(NameError::Name { value: s.to_owned(), problem }),
        }
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `.`-separated tokens, in order.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }

    /// Whether this is an engine name (starts with `$`).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::new(s)
    }
}

/// One token of a [`TokenPattern`].
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum PatternToken {
    /// Exactly this token.
    Literal(Box<str>),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more tokens; only ever last.
    OneOrMore,
    /// `#`: zero or more tokens, anywhere.
    ZeroOrMore,
    /// One token matched as an MQTT topic filter over its `/`-separated levels (`+` one level, a final
    /// `#` any number), e.g. `sensors/+/temp` or `sensors/#`.
    Levels(Box<str>),
}

/// A '/'-level token with `*` levels written as MQTT's `+` and a final `>` level as `#`; any other
/// token as it is.
fn mqtt_spelling(token: &str) -> Cow<'_, str> {
    if !token.contains('/') {
        return Cow::Borrowed(token);
    }
    let levels: Vec<&str> = token.split('/').collect();
    let last = levels.len() - 1;
    let spelled: Vec<&str> = levels
        .iter()
        .enumerate()
        .map(|(i, level)| match *level {
            "*" => "+",
            ">" if i == last => "#",
            other => other,
        })
        .collect();
    Cow::Owned(spelled.join("/"))
}

/// Whether `token` is written as an MQTT filter: it has `/` levels, at least one of which is `+` or a
/// final `#`, and no other wildcard.
fn is_level_filter(token: &str) -> bool {
    if !token.contains('/') {
        return false;
    }
    let levels: Vec<&str> = token.split('/').collect();
    let last = levels.len() - 1;
    let mut wild = false;
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "+" => wild = true,
            "#" if i == last => wild = true,
            _ if level.contains(['#', '+', '*', '>']) => return false,
            _ => {}
        }
    }
    wild
}

/// MQTT filter matching of one token's `/` levels.
pub(crate) fn levels_match(filter: &str, topic: &str) -> bool {
    // MQTT: a filter that starts with a wildcard does not match `$` topics (`$SYS/…`).
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (l, Some(t)) if l == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// A NATS/AMQP-style pattern over `.`-separated tokens.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenPattern {
    text: Box<str>,
    tokens: Vec<PatternToken>,
    literal: bool,
}

impl TokenPattern {
    fn parse(text: &str) -> Result<TokenPattern, NameProblem> {
        check_shape(text)?;
        let count = text.split('.').count();
        let mut tokens = Vec::with_capacity(count);
        for (i, token) in text.split('.').enumerate() {
            // `sensors/kitchen/*` means what MQTT writes `sensors/kitchen/+`, and a final `>` what it
            // writes `#`: users bring the wildcards they know to '/' levels.
            let spelled = mqtt_spelling(token);
            tokens.push(match token {
                "*" => PatternToken::One,
                "#" => PatternToken::ZeroOrMore,
                ">" if i + 1 == count => PatternToken::OneOrMore,
                ">" => return Err(NameProblem::GtNotLast(i + 1)),
                _ if is_level_filter(&spelled) => {
                    check_token(i + 1, &spelled)?;
                    PatternToken::Levels(spelled.into())
                }
                _ if token.contains(is_wildcard) => return Err(NameProblem::MixedWildcard(token.into())),
                _ => check_token(i + 1, token).map(|()| PatternToken::Literal(token.into()))?,
            });
        }
        let literal = tokens.iter().all(|t| matches!(t, PatternToken::Literal(_)));
        Ok(TokenPattern { text: text.into(), tokens, literal })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed tokens.
    pub fn tokens(&self) -> &[PatternToken] {
        &self.tokens
    }

    /// Whether `subject` matches: a string compare for literals, else linear backtracking that
    /// allocates nothing.
    pub fn matches(&self, subject: &str) -> bool {
        if self.literal {
            return *self.text == *subject;
        }
        let (items, open_tail) = match self.tokens.split_last() {
            Some((PatternToken::OneOrMore, rest)) => (rest, true),
            _ => (&self.tokens[..], false),
        };
        wildcard_match(
            items,
            (open_tail, subject.len() + 1),
            |t| matches!(t, PatternToken::ZeroOrMore),
            |t, token: &str| match t {
                PatternToken::Literal(lit) => **lit == *token,
                PatternToken::Levels(filter) => levels_match(filter, token),
                _ => true,
            },
            |pos| next_token(subject, pos),
        )
    }
}

/// Wildcard matching shared by token patterns (units are tokens) and globs (units are chars).
///
/// Every item but a star consumes exactly one unit, so only the latest star ever needs to take one
/// more unit: retrying an earlier one cannot succeed where the latest failed. The work is therefore
/// bounded by items × units. `unit_at(pos)` yields the unit at `pos` and where the next one starts;
/// `end` is the position past the last unit, and an open tail (a trailing `>`) asks for at least one
/// more unit after the items.
fn wildcard_match<I, U: Copy>(
    items: &[I],
    (open_tail, end): (bool, usize),
    is_star: impl Fn(&I) -> bool,
    accepts: impl Fn(&I, U) -> bool,
    unit_at: impl Fn(usize) -> Option<(U, usize)>,
) -> bool {
    let (mut pi, mut pos, mut resume) = (0, 0, None);
    loop {
        match items.get(pi) {
            Some(item) if is_star(item) => {
                (resume, pi) = (Some((pi + 1, pos)), pi + 1);
                continue;
            }
            Some(item) => {
                if let Some((_, next)) = unit_at(pos).filter(|&(unit, _)| accepts(item, unit)) {
                    (pi, pos) = (pi + 1, next);
                    continue;
                }
            }
            None if (open_tail && pos < end) || (!open_tail && pos == end) => return true,
            None => {}
        }
        match resume.and_then(|(rp, rs)| Some((rp, unit_at(rs)?.1))) {
            Some((rp, next)) => (resume, pi, pos) = (Some((rp, next)), rp, next),
            None => return false,
        }
    }
}

/// The token starting at byte `pos` and where the next one starts; `len + 1` means past the end.
fn next_token(s: &str, pos: usize) -> Option<(&str, usize)> {
    let rest = s.get(pos..)?;
    Some(match rest.find('.') {
        Some(k) => (rest.get(..k)?, pos + k + 1),
        None => (rest, s.len() + 1),
    })
}

impl fmt::Debug for TokenPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum GlobItem {
    Char(char),
    AnyOne,
    AnyRun,
    Class { negated: bool, ranges: Box<[(char, char)]> },
}

impl GlobItem {
    fn accepts(&self, c: char) -> bool {
        match self {
            GlobItem::Char(x) => *x == c,
            GlobItem::AnyOne | GlobItem::AnyRun => true,
            GlobItem::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// A Redis-style glob (`glob:` prefix) over the whole subject string, not token aware; `?` and
/// classes match one Unicode scalar where Redis would match one byte.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GlobPattern {
    text: Box<str>,
    items: Vec<GlobItem>,
}

impl GlobPattern {
    fn parse(text: &str) -> Result<GlobPattern, NameProblem> {
        let body = text.get(GLOB_PREFIX.len()..).unwrap_or_default();
        if body.is_empty() {
            return Err(NameProblem::Empty);
        }
        if body.len() > MAX_NAME_BYTES {
            return Err(NameProblem::TooLong(body.len()));
        }
        let mut items = Vec::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            let item = match c {
                '?' => GlobItem::AnyOne,
                '*' => GlobItem::AnyRun,
                '\\' => GlobItem::Char(chars.next().ok_or(NameProblem::TrailingEscape)?),
                '[' => parse_class(&mut chars)?,
                c => GlobItem::Char(c),
            };
            // A run of `*` means what one `*` does; keeping one lets `covers` spot the match-all glob.
            if !(item == GlobItem::AnyRun && items.last() == Some(&GlobItem::AnyRun)) {
                items.push(item);
            }
        }
        Ok(GlobPattern { text: text.into(), items })
    }

    /// The pattern as written, `glob:` prefix included.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `subject` matches; linear backtracking that allocates nothing.
    pub fn matches(&self, subject: &str) -> bool {
        wildcard_match(
            &self.items,
            (false, subject.len()),
            |item| *item == GlobItem::AnyRun,
            GlobItem::accepts,
            |pos| subject.get(pos..)?.chars().next().map(|c| (c, pos + c.len_utf8())),
        )
    }

    /// The one string a glob without wildcards matches.
    fn exact_text(&self) -> Option<String> {
        self.items.iter().map(|i| if let GlobItem::Char(c) = i { Some(*c) } else { None }).collect()
    }
}

/// Reads a class after its `[`. As in Redis, `]` always closes it, `[a-]` keeps the dash literal and
/// reversed ranges are swapped; `[!a]` is accepted as a synonym of `[^a]`.
fn parse_class(chars: &mut Chars<'_>) -> Result<GlobItem, NameProblem> {
    let negated = chars.as_str().starts_with(['^', '!']);
    if negated {
        chars.next();
    }
    let escaped = |chars: &mut Chars<'_>| match chars.next() {
        Some('\\') => chars.next(),
        c => c,
    };
    let mut ranges = Vec::new();
    loop {
        if chars.as_str().starts_with(']') {
            chars.next();
            break;
        }
        let lo = escaped(chars).ok_or(NameProblem::UnterminatedClass)?;
        let rest = chars.as_str();
        let hi = match rest.strip_prefix('-') {
            Some(after) if !after.is_empty() && !after.starts_with(']') => {
                chars.next();
                escaped(chars).ok_or(NameProblem::UnterminatedClass)?
            }
            _ => lo,
        };
        ranges.push((lo.min(hi), lo.max(hi)));
    }
    Ok(GlobItem::Class { negated, ranges: ranges.into() })
}

impl fmt::Debug for GlobPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

/// A subscription / tap pattern.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Pattern {
    /// Token wildcards `*`, `>`, `#`, or a plain name.
    Tokens(TokenPattern),
    /// A `glob:` pattern.
    Glob(GlobPattern),
}

impl Pattern {
    /// Parses `glob:…` as a glob and anything else as a token pattern.
    pub fn parse(s: &str) -> Result<Pattern, NameError> {
        let parsed = if s.starts_with(GLOB_PREFIX) {
            GlobPattern::parse(s).map(Pattern::Glob)
        } else {
            TokenPattern::parse(s).map(Pattern::Tokens)
        };
        parsed.map_err(|problem| NameError::Pattern { value: s.to_owned(), problem })
    }

    /// Whether `subject` (assumed to be a valid name) matches; a literal is a plain string compare.
    pub fn matches(&self, subject: &str) -> bool {
        match self {
            Pattern::Tokens(p) => p.matches(subject),
            Pattern::Glob(g) => g.matches(subject),
        }
    }

    /// Whether this is a token pattern without wildcards, i.e. one exact subject.
    pub fn is_literal(&self) -> bool {
        matches!(self, Pattern::Tokens(p) if p.literal)
    }

    /// The one subject this pattern matches, if it is literal.
    pub fn literal(&self) -> Option<&str> {
        match self {
            Pattern::Tokens(p) if p.literal => Some(&p.text),
            _ => None,
        }
    }

    /// Whether a token is an MQTT-style level filter (`a/+/c`, `a/#`).
    pub fn has_levels(&self) -> bool {
        matches!(self, Pattern::Tokens(p) if p.tokens.iter().any(|t| matches!(t, PatternToken::Levels(_))))
    }

    /// Whether this is a `glob:` pattern.
    pub fn is_glob(&self) -> bool {
        matches!(self, Pattern::Glob(_))
    }

    /// The pattern as written, `glob:` prefix included.
    pub fn as_str(&self) -> &str {
        match self {
            Pattern::Tokens(p) => &p.text,
            Pattern::Glob(g) => &g.text,
        }
    }

    /// Whether the pattern matches exactly one string (a literal or a wildcard-free glob), and which.
    fn exact_text(&self) -> Option<String> {
        match self {
            Pattern::Tokens(_) => self.literal().map(str::to_owned),
            Pattern::Glob(g) => g.exact_text(),
        }
    }

    /// Whether some valid subject could match both patterns (used to refuse topics whose captured
    /// subjects overlap, as JetStream does).
    ///
    /// Exact when both are token patterns, except that the 255-byte and 32-token limits are ignored
    /// (patterns whose only common subjects are too long still overlap), and exact when either side
    /// matches a single string. Any other pair with a glob answers `true`, the safe side.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        if self.has_levels() || other.has_levels() {
            // MQTT-style level filters are not modelled by the token automaton; say they may overlap.
            return self.exact_text().or(other.exact_text()).is_none_or(|text| {
                check_name(&text, true).is_ok() && self.matches(&text) && other.matches(&text)
            });
        }
        match (self.exact_text(), other.exact_text()) {
            (Some(text), _) => check_name(&text, true).is_ok() && other.matches(&text),
            (None, Some(text)) => check_name(&text, true).is_ok() && self.matches(&text),
            (None, None) => match (self, other) {
                (Pattern::Tokens(p), Pattern::Tokens(q)) => token_overlaps(&p.tokens, &q.tokens),
                _ => true,
            },
        }
    }

    /// Whether every valid subject matching `other` also matches `self` (pattern containment).
    ///
    /// Exact when both are token patterns (length limits ignored, as in [`Pattern::overlaps`]) or when
    /// `other` matches a single string. The token check is a subset construction capped at a few
    /// thousand states, which only contrived patterns reach; past it, and for any other pair with a
    /// glob (unless the two are equal or `self` matches everything), the answer is `false`.
    pub fn covers(&self, other: &Pattern) -> bool {
        if let Some(text) = other.exact_text() {
            return check_name(&text, true).is_err() || self.matches(&text);
        }
        if self.has_levels() || other.has_levels() {
            return self == other;
        }
        match (self, other) {
            (Pattern::Tokens(p), Pattern::Tokens(q)) => token_covers(&p.tokens, &q.tokens),
            (Pattern::Tokens(p), Pattern::Glob(_)) => token_covers(&p.tokens, &[PatternToken::ZeroOrMore]),
            (Pattern::Glob(p), _) => p.items == [GlobItem::AnyRun] || self == other,
        }
    }
}

impl From<&Name> for Pattern {
    /// The literal pattern for exactly this name; safe because no name starts with `glob:`.
    fn from(name: &Name) -> Pattern {
        let tokens = name.tokens().map(|t| PatternToken::Literal(t.into())).collect();
        Pattern::Tokens(TokenPattern { text: name.as_str().into(), tokens, literal: true })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Pattern {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

// `overlaps` and `covers` run token patterns as NFAs whose states are positions 0..=len, held as bit
// masks (at most 33 positions). Tokens are only ever compared for equality, so the literals of both
// patterns plus one token neither names (`None`) stand for every token there is.

fn closure(items: &[PatternToken], mut i: usize) -> u64 {
    let mut mask = 1u64 << i;
    while let Some(PatternToken::ZeroOrMore) = items.get(i) {
        i += 1;
        mask |= 1 << i;
    }
    mask
}

fn step(items: &[PatternToken], mask: u64, token: Option<&str>) -> u64 {
    let mut next = 0;
    for (i, item) in items.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0) {
        next |= match item {
            PatternToken::Literal(lit) if Some(&**lit) != token => 0,
            PatternToken::Literal(_) | PatternToken::One | PatternToken::Levels(_) => closure(items, i + 1),
            PatternToken::ZeroOrMore => closure(items, i),
            PatternToken::OneOrMore => closure(items, i) | closure(items, i + 1),
        };
    }
    next
}

fn bits(mask: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |b| mask & (1 << b) != 0)
}

fn alphabet<'a>(p: &'a [PatternToken], q: &'a [PatternToken]) -> Vec<Option<&'a str>> {
    let mut symbols = vec![None];
    for token in p.iter().chain(q) {
        match token {
            PatternToken::Literal(lit) if !symbols.contains(&Some(&**lit)) => symbols.push(Some(&**lit)),
            _ => {}
        }
    }
    symbols
}

/// Walks pairs of single positions, so the cost stays polynomial.
fn token_overlaps(p: &[PatternToken], q: &[PatternToken]) -> bool {
    let symbols = alphabet(p, q);
    let width = q.len() + 1;
    let mut seen = vec![false; (p.len() + 1) * width];
    let mut stack = Vec::new();
    let mut push = |stack: &mut Vec<(usize, usize)>, a: u64, b: u64| {
        for (i, j) in bits(a).flat_map(|i| bits(b).map(move |j| (i, j))) {
            if let Some(slot) = seen.get_mut(i * width + j).filter(|s| !**s) {
                *slot = true;
                stack.push((i, j));
            }
        }
    };
    push(&mut stack, closure(p, 0), closure(q, 0));
    while let Some((i, j)) = stack.pop() {
        if i == p.len() && j == q.len() {
            return true;
        }
        for &s in &symbols {
            push(&mut stack, step(p, 1 << i, s), step(q, 1 << j, s));
        }
    }
    false
}

/// Looks for a non-empty subject that `q` accepts and `p` rejects, following `p` as a state set.
fn token_covers(p: &[PatternToken], q: &[PatternToken]) -> bool {
    let symbols = alphabet(p, q);
    let mut seen = HashSet::new();
    let mut stack: Vec<_> = bits(closure(q, 0)).map(|j| (j, closure(p, 0), false)).collect();
    while let Some((j, set, consumed)) = stack.pop() {
        // From any position `q` can still reach its end, so a dead `p` is already a counterexample.
        if (consumed && j == q.len() && set & (1 << p.len()) == 0) || set == 0 || seen.len() > COVERS_BUDGET {
            return false;
        }
        for &s in &symbols {
            let next = step(p, set, s);
            for j in bits(step(q, 1 << j, s)).filter(|&j| seen.insert((j, next))) {
                stack.push((j, next, true));
            }
        }
    }
    true
}

// Names and patterns travel as their text and are validated again when read back.
impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `system` so that persisted `$sys.…` names read back; user input goes through `Name::new`.
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Name::system(&text).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Pattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;

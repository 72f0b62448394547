//! Attribute filters: the small expression language a subscription can select messages with
//! (SEMANTICS.md §9.3, Google Pub/Sub's filter syntax plus `key` and `subject`).
//!
//! ```text
//! expr    := term ("AND" term)*  |  term ("OR" term)*      ; mixing AND and OR needs parentheses
//! term    := "NOT" term  |  "(" expr ")"  |  pred
//! pred    := "attributes:" name                              ; the header is present
//!          | "key:*"                                         ; the message has a key
//!          | field ("=" | "!=") string                      ; exact, case-sensitive
//!          | "hasPrefix(" field "," string ")"
//! field   := "attributes." name  |  "key"  |  "subject"
//! name    := [A-Za-z0-9_-]+  |  string
//! string  := '"' chars '"'                                   ; escapes \" \\ \n \t
//! ```
//!
//! `!=` is the negation of `=`: a message without the header (or without a key) matches
//! `attributes.k != "v"` (and `key != "v"`). A key is compared byte for byte with the string's UTF-8.
//! Keywords are upper case. An expression is at most [`MAX_FILTER_BYTES`] bytes.
//!
//! An expression is parsed once into a [`FilterExpr`]; [`FilterExpr::matches`] walks it without
//! allocating.

use std::fmt;

use super::message::Headers;

/// The longest filter expression accepted, in bytes (Pub/Sub's limit).
pub const MAX_FILTER_BYTES: usize = 256;

/// What a predicate looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A header (attribute) by name.
    Attribute(String),
    /// The message key.
    Key,
    /// The subject it was published to.
    Subject,
}

/// A parsed attribute filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterExpr {
    /// All of these.
    And(Vec<FilterExpr>),
    /// Any of these.
    Or(Vec<FilterExpr>),
    /// Not this.
    Not(Box<FilterExpr>),
    /// The header is present (`attributes:k`).
    HasAttribute(String),
    /// The message has a key (`key:*`).
    HasKey,
    /// The field equals the string.
    Eq(Field, String),
    /// The field is absent or differs from the string.
    Ne(Field, String),
    /// The field starts with the string.
    HasPrefix(Field, String),
}

/// The parts of a message a filter reads.
#[derive(Debug, Clone, Copy)]
pub struct FilterInput<'a> {
    /// The subject it was published to.
    pub subject: &'a str,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its headers.
    pub headers: &'a Headers,
}

impl FilterInput<'_> {
    fn field(&self, field: &Field) -> Option<&[u8]> {
        match field {
            Field::Attribute(name) => self.headers.get(name.as_str()).map(String::as_bytes),
            Field::Key => self.key,
            Field::Subject => Some(self.subject.as_bytes()),
        }
    }
}

impl FilterExpr {
    /// Parses an expression, with an error that says where and what was expected.
    pub fn parse(text: &str) -> Result<FilterExpr, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError {
                column: 1,
                message: format!("the filter is {} bytes; the most is {MAX_FILTER_BYTES}", text.len()),
            });
        }
        let mut p = Parser { text, pos: 0 };
        let expr = p.expr()?;
        p.skip_space();
        if p.pos < text.len() {
            return Err(p.error("AND, OR or the end of the filter"));
        }
        Ok(expr)
    }

    /// Whether a message passes.
    pub fn matches(&self, m: &FilterInput<'_>) -> bool {
        match self {
            FilterExpr::And(terms) => terms.iter().all(|t| t.matches(m)),
            FilterExpr::Or(terms) => terms.iter().any(|t| t.matches(m)),
            FilterExpr::Not(t) => !t.matches(m),
            FilterExpr::HasAttribute(name) => m.headers.contains_key(name.as_str()),
            FilterExpr::HasKey => m.key.is_some(),
            FilterExpr::Eq(f, v) => m.field(f) == Some(v.as_bytes()),
            FilterExpr::Ne(f, v) => m.field(f) != Some(v.as_bytes()),
            FilterExpr::HasPrefix(f, v) => m.field(f).is_some_and(|x| x.starts_with(v.as_bytes())),
        }
    }
}

/// A filter that does not parse: where (1-based column, in characters) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// Column of the offending character, counting from 1.
    pub column: usize,
    /// What was expected and what was found.
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "filter error at column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for FilterError {}

/// Deepest nesting of parentheses and NOT accepted (the length cap already bounds it; this keeps the
/// recursion shallow whatever the cap becomes).
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn column(&self, at: usize) -> usize {
        self.text[..at].chars().count() + 1
    }

    fn found(&self) -> String {
        let rest = self.rest();
        match rest.chars().next() {
            None => "the end of the filter".into(),
            Some(c) if c.is_alphanumeric() || c == '_' => {
                let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                format!("`{word}`")
            }
            Some(c) => format!("`{c}`"),
        }
    }

    fn error(&self, expected: &str) -> FilterError {
        FilterError {
            column: self.column(self.pos),
            message: format!("expected {expected}, found {}", self.found()),
        }
    }

    /// Consumes `word` when it is next and not the start of a longer identifier.
    fn keyword(&mut self, word: &str) -> bool {
        self.skip_space();
        let rest = self.rest();
        if rest.starts_with(word)
            && !rest[word.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn punct(&mut self, p: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(p) {
            self.pos += p.len();
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<FilterExpr, FilterError> {
        self.expr_at(0)
    }

    fn expr_at(&mut self, depth: usize) -> Result<FilterExpr, FilterError> {
        let first = self.term(depth)?;
        let mut terms = vec![first];
        let mut op: Option<&str> = None;
        loop {
            self.skip_space();
            let at = self.pos;
            let next = if self.keyword("AND") {
                "AND"
            } else if self.keyword("OR") {
                "OR"
            } else {
                for lower in ["and", "or"] {
                    if self.keyword(lower) {
                        self.pos = at;
                        return Err(FilterError {
                            column: self.column(at),
                            message: format!(
                                "`{lower}`: operators are upper case, write {}",
                                lower.to_uppercase()
                            ),
                        });
                    }
                }
                break;
            };
            if let Some(prev) = op
                && prev != next
            {
                return Err(FilterError {
                    column: self.column(at),
                    message: format!("{next} after {prev}: mixing AND and OR needs parentheses"),
                });
            }
            op = Some(next);
            terms.push(self.term(depth)?);
        }
        Ok(match (op, terms.len()) {
            (_, 1) => terms.pop().unwrap_or(FilterExpr::And(Vec::new())),
            (Some("OR"), _) => FilterExpr::Or(terms),
            _ => FilterExpr::And(terms),
        })
    }

    fn term(&mut self, depth: usize) -> Result<FilterExpr, FilterError> {
        if depth >= MAX_DEPTH {
            return Err(FilterError {
                column: self.column(self.pos),
                message: format!("nested deeper than {MAX_DEPTH} levels"),
            });
        }
        if self.keyword("NOT") {
            return Ok(FilterExpr::Not(Box::new(self.term(depth + 1)?)));
        }
        if self.punct("(") {
            let inner = self.expr_at(depth + 1)?;
            if !self.punct(")") {
                return Err(self.error("`)`, AND or OR"));
            }
            return Ok(inner);
        }
        if self.keyword("hasPrefix") {
            if !self.punct("(") {
                return Err(self.error("`(` after hasPrefix"));
            }
            let field = self.field()?;
            if !self.punct(",") {
                return Err(self.error("`,` between the field and the prefix"));
            }
            let prefix = self.string()?;
            if !self.punct(")") {
                return Err(self.error("`)` closing hasPrefix"));
            }
            return Ok(FilterExpr::HasPrefix(field, prefix));
        }
        self.pred()
    }

    fn pred(&mut self) -> Result<FilterExpr, FilterError> {
        self.skip_space();
        if self.rest().starts_with("attributes:") {
            self.pos += "attributes:".len();
            return Ok(FilterExpr::HasAttribute(self.name()?));
        }
        if self.rest().starts_with("key:") {
            self.pos += "key:".len();
            if !self.punct("*") {
                return Err(self.error("`*` (`key:*` tests that a message has a key)"));
            }
            return Ok(FilterExpr::HasKey);
        }
        let field = self.field()?;
        let negate = if self.punct("!=") {
            true
        } else if self.punct("=") {
            false
        } else {
            return Err(self.error("`=` or `!=`"));
        };
        let value = self.string()?;
        Ok(if negate { FilterExpr::Ne(field, value) } else { FilterExpr::Eq(field, value) })
    }

    fn field(&mut self) -> Result<Field, FilterError> {
        self.skip_space();
        if self.rest().starts_with("attributes.") {
            self.pos += "attributes.".len();
            return Ok(Field::Attribute(self.name()?));
        }
        if self.keyword("key") {
            return Ok(Field::Key);
        }
        if self.keyword("subject") {
            return Ok(Field::Subject);
        }
        Err(self.error("attributes.NAME, attributes:NAME, key, key:*, subject, hasPrefix(…), NOT or `(`"))
    }

    /// An attribute name right after `attributes.` or `attributes:` (no space allowed before it).
    fn name(&mut self) -> Result<String, FilterError> {
        if self.rest().starts_with('"') {
            return self.string();
        }
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("an attribute name ([A-Za-z0-9_-]+ or a quoted string)"));
        }
        let name = self.rest()[..len].to_string();
        self.pos += len;
        Ok(name)
    }

    fn string(&mut self) -> Result<String, FilterError> {
        self.skip_space();
        let start = self.pos;
        if !self.rest().starts_with('"') {
            return Err(self.error("a string in double quotes"));
        }
        let mut out = String::new();
        let mut chars = self.rest().char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, '"')) => out.push('"'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((j, other)) => {
                        return Err(FilterError {
                            column: self.column(self.pos + j - 1),
                            message: format!("unknown escape `\\{other}`; use \\\", \\\\, \\n or \\t"),
                        });
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(FilterError { column: self.column(start), message: "this string is not closed with `\"`".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    fn eval(expr: &str, subject: &str, key: Option<&str>, pairs: &[(&str, &str)]) -> bool {
        let h = headers(pairs);
        let parsed = FilterExpr::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        parsed.matches(&FilterInput { subject, key: key.map(str::as_bytes), headers: &h })
    }

    fn err(expr: &str) -> String {
        match FilterExpr::parse(expr) {
            Ok(e) => panic!("{expr} parsed as {e:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn scenario_15_expression_selects_region_and_excludes_test_kinds() {
        let f = r#"attributes.region = "eu" AND NOT hasPrefix(attributes.kind, "test")"#;
        assert!(eval(f, "o", None, &[("region", "eu"), ("kind", "order")]));
        assert!(eval(f, "o", None, &[("region", "eu")]));
        assert!(!eval(f, "o", None, &[("region", "eu"), ("kind", "test-1")]));
        assert!(!eval(f, "o", None, &[("region", "us"), ("kind", "order")]));
        assert!(!eval(f, "o", None, &[]));
    }

    #[test]
    fn predicates_over_attributes_key_and_subject() {
        assert!(eval("attributes:k", "s", None, &[("k", "")]));
        assert!(!eval("attributes:k", "s", None, &[("j", "")]));
        assert!(eval(r#"attributes.k != "v""#, "s", None, &[]), "absent is not equal");
        assert!(!eval(r#"attributes.k != "v""#, "s", None, &[("k", "v")]));
        assert!(eval(r#"key = "user-1""#, "s", Some("user-1"), &[]));
        assert!(!eval(r#"key = "user-1""#, "s", None, &[]));
        assert!(eval(r#"key != "user-1""#, "s", None, &[]));
        assert!(eval("key:*", "s", Some(""), &[]));
        assert!(!eval("key:*", "s", None, &[]));
        assert!(eval(r#"hasPrefix(key, "user-")"#, "s", Some("user-9"), &[]));
        assert!(eval(r#"subject = "orders.eu""#, "orders.eu", None, &[]));
        assert!(eval(r#"hasPrefix(subject, "orders.")"#, "orders.eu", None, &[]));
        assert!(!eval(r#"hasPrefix(subject, "orders.")"#, "orders", None, &[]));
        assert!(eval(r#"attributes."x.y" = "1""#, "s", None, &[("x.y", "1")]));
        assert!(eval(r#"attributes:"x y""#, "s", None, &[("x y", "1")]));
        assert!(eval(r#"attributes.q = "say \"hi\"\\""#, "s", None, &[("q", "say \"hi\"\\")]));
    }

    #[test]
    fn and_or_not_and_parentheses() {
        let f = r#"(attributes.a = "1" OR attributes.b = "1") AND NOT (attributes:c)"#;
        assert!(eval(f, "s", None, &[("a", "1")]));
        assert!(eval(f, "s", None, &[("b", "1")]));
        assert!(!eval(f, "s", None, &[("a", "1"), ("c", "")]));
        assert!(!eval(f, "s", None, &[]));
        assert!(eval(r#"attributes:a OR attributes:b OR attributes:c"#, "s", None, &[("c", "")]));
        assert!(eval("NOT NOT attributes:a", "s", None, &[("a", "")]));
        assert!(eval("  attributes:a   AND\tattributes:b ", "s", None, &[("a", ""), ("b", "")]));
    }

    #[test]
    fn errors_say_where_and_what_was_expected() {
        assert_eq!(
            err(r#"attributes.a = "1" AND attributes.b = "2" OR attributes:c"#),
            "filter error at column 43: OR after AND: mixing AND and OR needs parentheses"
        );
        assert_eq!(
            err(r#"attributes.region = eu"#),
            "filter error at column 21: expected a string in double quotes, found `eu`"
        );
        assert_eq!(
            err(r#"attributes.region == "eu""#),
            "filter error at column 20: expected a string in double quotes, found `=`"
        );
        assert_eq!(
            err(r#"attributes.region "eu""#),
            "filter error at column 19: expected `=` or `!=`, found `\"`"
        );
        assert_eq!(
            err(r#"region = "eu""#),
            "filter error at column 1: expected attributes.NAME, attributes:NAME, key, key:*, subject, hasPrefix(…), NOT or `(`, found `region`"
        );
        assert_eq!(
            err(r#"attributes:a and attributes:b"#),
            "filter error at column 14: `and`: operators are upper case, write AND"
        );
        assert_eq!(
            err(r#"(attributes:a"#),
            "filter error at column 14: expected `)`, AND or OR, found the end of the filter"
        );
        assert_eq!(
            err(r#"attributes.a = "open"#),
            "filter error at column 16: this string is not closed with `\"`"
        );
        assert_eq!(
            err(r#"attributes. = "x""#),
            "filter error at column 12: expected an attribute name ([A-Za-z0-9_-]+ or a quoted string), found ` `"
        );
        assert_eq!(
            err(r#"hasPrefix(attributes.k "p")"#),
            "filter error at column 24: expected `,` between the field and the prefix, found `\"`"
        );
        assert_eq!(
            err("key:"),
            "filter error at column 5: expected `*` (`key:*` tests that a message has a key), found the end of the filter"
        );
        assert_eq!(
            err(r#"attributes:a attributes:b"#),
            "filter error at column 14: expected AND, OR or the end of the filter, found `attributes`"
        );
        assert_eq!(
            err(r#"attributes.a = "\x""#),
            "filter error at column 17: unknown escape `\\x`; use \\\", \\\\, \\n or \\t"
        );
        assert_eq!(
            err(""),
            "filter error at column 1: expected attributes.NAME, attributes:NAME, key, key:*, subject, hasPrefix(…), NOT or `(`, found the end of the filter"
        );
        assert!(err(&format!("attributes:{}", "a".repeat(300))).contains("the most is 256"));
        assert!(err(&"(".repeat(100)).contains("nested deeper than 64 levels"));
        // Columns count characters, not bytes.
        assert_eq!(
            err(r#"attributes.é = "x""#),
            "filter error at column 12: expected an attribute name ([A-Za-z0-9_-]+ or a quoted string), found `é`"
        );
    }
}

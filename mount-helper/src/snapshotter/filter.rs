//! `List` filters in containerd's filter syntax (containerd's `filters` package):
//! a filter is selectors joined by `,` (all must match); a snapshot is listed when any
//! filter matches. A selector is a field path, alone (the field is present) or followed by
//! `==`, `!=` or `~=` (a regular expression) and a value. Field paths are `name`, `parent`,
//! `kind` (`active`, `view`, `committed`) and `labels.KEY`; a path component or a value may
//! be quoted with `"` (escapes `\"`, `\\`, `\n`, `\t`), or a value with `/` or `|` (raw, for
//! regular expressions).
//!
//! ```text
//! kind==committed
//! parent==sha256:abc,labels."containerd.io/snapshot.ref"
//! name~=/^sha256:/
//! ```

use regex::Regex;

use super::error::{Error, Result};
use super::store::Info;

#[derive(Debug)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// Parsed filters: any one of them must match (none: everything matches).
#[derive(Debug, Default)]
pub struct Filters(Vec<Vec<Selector>>);

fn bad(filter: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("filter {filter:?}: {why}"))
}

struct Scanner<'a> {
    src: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, s: &str) -> bool {
        let n = s.chars().count();
        let ahead: String = self.chars.iter().skip(self.pos).take(n).collect();
        if ahead == s {
            self.pos += n;
            true
        } else {
            false
        }
    }

    fn quoted(&mut self, quote: char, escapes: bool) -> Result<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(bad(self.src, "a quoted string is not closed"));
            };
            self.pos += 1;
            if c == quote {
                return Ok(out);
            }
            if c == '\\' {
                let Some(n) = self.peek() else {
                    return Err(bad(self.src, "a quoted string is not closed"));
                };
                self.pos += 1;
                match (n, escapes) {
                    ('n', true) => out.push('\n'),
                    ('t', true) => out.push('\t'),
                    (c, true) if c == quote || c == '\\' => out.push(c),
                    (c, false) if c == quote => out.push(c),
                    (c, false) => {
                        out.push('\\');
                        out.push(c);
                    }
                    _ => return Err(bad(self.src, "an unknown escape in a quoted string")),
                }
                continue;
            }
            out.push(c);
        }
    }

    fn field(&mut self) -> Result<String> {
        if self.peek() == Some('"') {
            return self.quoted('"', true);
        }
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.pos += 1;
        }
        let f: String = self.chars[start..self.pos].iter().collect();
        if !f.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(bad(self.src, "a field name must start with a letter"));
        }
        Ok(f)
    }

    fn value(&mut self) -> Result<String> {
        match self.peek() {
            Some('"') => self.quoted('"', true),
            Some(q @ ('/' | '|')) => self.quoted(q, false),
            _ => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| !c.is_whitespace() && !",=!~\"".contains(c))
                {
                    self.pos += 1;
                }
                if start == self.pos {
                    return Err(bad(self.src, "a value is missing"));
                }
                Ok(self.chars[start..self.pos].iter().collect())
            }
        }
    }

    fn selector(&mut self) -> Result<Selector> {
        self.skip_space();
        let mut path = vec![self.field()?];
        while self.eat(".") {
            path.push(self.field()?);
        }
        self.skip_space();
        let op = if self.eat("==") {
            self.skip_space();
            Op::Equal(self.value()?)
        } else if self.eat("!=") {
            self.skip_space();
            Op::NotEqual(self.value()?)
        } else if self.eat("~=") {
            self.skip_space();
            let v = self.value()?;
            Op::Matches(
                Regex::new(&v)
                    .map_err(|e| bad(self.src, &format!("bad regular expression: {e}")))?,
            )
        } else {
            Op::Present
        };
        self.skip_space();
        Ok(Selector { path, op })
    }
}

fn parse_one(src: &str) -> Result<Vec<Selector>> {
    let mut s = Scanner {
        src,
        chars: src.chars().collect(),
        pos: 0,
    };
    let mut sels = vec![s.selector()?];
    while s.eat(",") {
        sels.push(s.selector()?);
    }
    if s.peek().is_some() {
        return Err(bad(src, "unexpected text after a selector"));
    }
    Ok(sels)
}

/// The value of a field of a snapshot, and whether it is present.
fn field<'a>(info: &'a Info, path: &[String]) -> Option<&'a str> {
    let present = |s: &'a str| (!s.is_empty()).then_some(s);
    match path.first().map(String::as_str) {
        Some("name") if path.len() == 1 => present(&info.name),
        Some("parent") if path.len() == 1 => present(&info.parent),
        Some("kind") if path.len() == 1 => Some(info.kind.name()),
        Some("labels") if path.len() > 1 => info.labels.get(&path[1..].join(".")).map(|s| &**s),
        _ => None,
    }
}

impl Selector {
    fn matches(&self, info: &Info) -> bool {
        let v = field(info, &self.path);
        match &self.op {
            Op::Present => v.is_some(),
            Op::Equal(want) => v == Some(want.as_str()),
            Op::NotEqual(want) => v.unwrap_or("") != want,
            Op::Matches(re) => v.is_some_and(|v| re.is_match(v)),
        }
    }
}

impl Filters {
    /// Parses `List`'s filters; a malformed one is InvalidArgument.
    pub fn parse(filters: &[String]) -> Result<Filters> {
        filters
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| parse_one(f))
            .collect::<Result<Vec<_>>>()
            .map(Filters)
    }

    /// Whether `info` matches.
    pub fn matches(&self, info: &Info) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.iter().all(|s| s.matches(info)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::snapshotter::store::{Kind, Time};

    fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        let t = Time { secs: 0, nanos: 0 };
        Info {
            name: name.into(),
            parent: parent.into(),
            kind,
            created: t,
            updated: t,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn m(filters: &[&str], i: &Info) -> bool {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filters::parse(&f).unwrap().matches(i)
    }

    #[test]
    fn selectors() {
        let a = info(
            "a",
            "",
            Kind::Active,
            &[("containerd.io/gc.root", "x"), ("k", "v")],
        );
        let c = info("sha256:1", "sha256:0", Kind::Committed, &[]);
        assert!(m(&[], &a));
        assert!(m(&["kind==active"], &a));
        assert!(!m(&["kind==active"], &c));
        assert!(m(&["kind==active", "kind==committed"], &c));
        assert!(m(&["kind!=active"], &c));
        assert!(m(&["parent"], &c) && !m(&["parent"], &a));
        assert!(m(&["labels.k==v,kind==active"], &a));
        assert!(!m(&["labels.k==v,kind==view"], &a));
        assert!(m(&[r#"labels."containerd.io/gc.root""#], &a));
        assert!(m(&["labels.\"containerd.io/gc.root\"==x"], &a));
        assert!(m(&["name~=/^sha256:/"], &c) && !m(&["name~=/^sha256:/"], &a));
        assert!(m(&["name~=^sha"], &c));
        assert!(m(&["parent==\"sha256:0\""], &c));
        assert!(m(&[" name == a "], &a));
    }

    #[test]
    fn malformed() {
        for f in [
            "==a",
            "name==",
            "name=a",
            "labels.\"x",
            "name~=/(/",
            "1abc",
            "name==a b",
            "name,",
        ] {
            assert!(
                matches!(
                    Filters::parse(&[f.to_string()]),
                    Err(Error::InvalidArgument(_))
                ),
                "{f}"
            );
        }
    }
}

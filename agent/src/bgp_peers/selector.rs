//! Calico's selector syntax, as BGPPeer `nodeSelector` and `peerSelector` use it:
//! `all()`, `has(k)`, `k == 'v'`, `k != 'v'`, `k in {'a', 'b'}`, `k not in {...}`, negation
//! with `!`, `&&` binding tighter than `||`, and parentheses.
//!
//! ipam/src/selector.rs parses the smaller subset IPPool `nodeSelector` needs (terms joined
//! with `&&` only).

use std::collections::{BTreeMap, BTreeSet};

/// A parsed selector. The empty string selects everything, as `all()` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Not(Box<Selector>),
    And(Box<Selector>, Box<Selector>),
    Or(Box<Selector>, Box<Selector>),
}

/// Why a selector does not parse: where, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {text:?}: at offset {offset}: expected {expected}")]
pub struct SelectorError {
    pub text: String,
    pub offset: usize,
    pub expected: &'static str,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser { text, pos: 0 };
        p.skip_space();
        if p.at_end() {
            return Ok(Selector::All);
        }
        let s = p.or()?;
        p.skip_space();
        if !p.at_end() {
            return Err(p.error("&&, || or the end"));
        }
        Ok(s)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::All => true,
            Selector::Has(k) => labels.contains_key(k),
            Selector::Eq(k, v) => labels.get(k) == Some(v),
            Selector::Ne(k, v) => labels.get(k) != Some(v),
            Selector::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Selector::NotIn(k, vs) => !labels.get(k).is_some_and(|v| vs.contains(v)),
            Selector::Not(s) => !s.matches(labels),
            Selector::And(a, b) => a.matches(labels) && b.matches(labels),
            Selector::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

/// A recursive-descent parser over the selector text; `pos` is a byte offset.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos == self.text.len()
    }

    fn error(&self, expected: &'static str) -> SelectorError {
        SelectorError {
            text: self.text.to_owned(),
            offset: self.pos,
            expected,
        }
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    /// Consumes `token` (after any space) if it comes next.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// Consumes the keyword `word` if it comes next as a whole word.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_space();
        let rest = self.rest();
        let whole =
            rest.starts_with(word) && !rest[word.len()..].chars().next().is_some_and(is_label_char);
        if whole {
            self.pos += word.len();
        }
        whole
    }

    /// Consumes `name(` if it comes next: `all` or `has` alone is a label key.
    fn eat_call(&mut self, name: &str) -> bool {
        let start = self.pos;
        if self.eat_word(name) && self.eat("(") {
            return true;
        }
        self.pos = start;
        false
    }

    fn or(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Selector::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            left = Selector::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        // `!=` never starts a term, so a leading `!` is always negation.
        if self.eat("!") {
            return Ok(Selector::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let inner = self.or()?;
            if !self.eat(")") {
                return Err(self.error(")"));
            }
            return Ok(inner);
        }
        if self.eat_call("all") {
            if !self.eat(")") {
                return Err(self.error(")"));
            }
            return Ok(Selector::All);
        }
        if self.eat_call("has") {
            let key = self.label_key()?;
            if !self.eat(")") {
                return Err(self.error(")"));
            }
            return Ok(Selector::Has(key));
        }
        let key = self.label_key()?;
        if self.eat("==") {
            return Ok(Selector::Eq(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(key, self.string()?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(key, self.set()?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.error("in after not"));
            }
            return Ok(Selector::NotIn(key, self.set()?));
        }
        Err(self.error("==, !=, in or not in"))
    }

    /// A label key: letters, digits and `-_./` (a prefix such as `kubernetes.io/` included).
    fn label_key(&mut self) -> Result<String, SelectorError> {
        self.skip_space();
        let len = self
            .rest()
            .find(|c: char| !is_label_char(c))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("a label key"));
        }
        let key = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(key)
    }

    /// A quoted value: `'v'` or `"v"`, no escapes.
    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_space();
        let Some(quote) = self
            .rest()
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"')
        else {
            return Err(self.error("a quoted value"));
        };
        let body = &self.rest()[1..];
        let Some(end) = body.find(quote) else {
            return Err(self.error("a closing quote"));
        };
        let value = body[..end].to_owned();
        self.pos += end + 2;
        Ok(value)
    }

    /// `{'a', 'b'}`; `{}` is an empty set.
    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        if !self.eat("{") {
            return Err(self.error("{"));
        }
        let mut values = BTreeSet::new();
        if self.eat("}") {
            return Ok(values);
        }
        loop {
            values.insert(self.string()?);
            if self.eat("}") {
                return Ok(values);
            }
            if !self.eat(",") {
                return Err(self.error(", or }"));
            }
        }
    }
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_./".contains(c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn evaluates_every_form_against_labels() {
        let l = labels(&[("rack", "r1"), ("zone", "a"), ("kubernetes.io/os", "linux")]);
        let sel = |s: &str| Selector::parse(s).unwrap().matches(&l);
        assert!(sel(""));
        assert!(sel("  all()  "));
        assert!(sel("has(rack)"));
        assert!(!sel("!has(rack)"));
        assert!(sel("!has(gpu)"));
        assert!(sel("zone == 'a'"));
        assert!(!sel("zone == \"b\""));
        assert!(sel("zone != 'b'"));
        assert!(sel("gpu != 'yes'"), "!= holds when the key is absent");
        assert!(sel("rack in {'r1', 'r2'}"));
        assert!(!sel("rack in {}"));
        assert!(!sel("gpu in {'yes'}"));
        assert!(sel("gpu not in {'yes'}"));
        assert!(!sel("rack not in {'r1'}"));
        assert!(sel("kubernetes.io/os == 'linux' && has(rack)"));
        assert!(!sel("zone == 'b' && has(rack)"));
        assert!(sel("zone == 'b' || has(rack)"));
        // && binds tighter than ||: false || (true && true).
        assert!(sel("zone == 'b' || has(rack) && zone == 'a'"));
        // Parentheses override it: (false || true) && false.
        assert!(!sel("(zone == 'b' || has(rack)) && zone == 'c'"));
        assert!(sel("!(zone == 'b')"));
        // `in` inside a key is part of the key, not the keyword.
        assert!(!sel("index == 'x'"));
    }

    #[test]
    fn a_bad_selector_says_where_and_what_was_expected() {
        let err = |s: &str| Selector::parse(s).unwrap_err();
        assert_eq!(
            err("rack == r1"),
            SelectorError {
                text: "rack == r1".into(),
                offset: 8,
                expected: "a quoted value"
            }
        );
        assert_eq!(err("has(rack").expected, ")");
        assert_eq!(err("rack in {'a' 'b'}").expected, ", or }");
        assert_eq!(err("has(rack) &&").expected, "a label key");
        assert_eq!(err("has(rack) zone").expected, "&&, || or the end");
        assert_eq!(err("rack").expected, "==, !=, in or not in");
        assert_eq!(err("all(").expected, ")");
        assert!(
            Selector::parse("has == 'x'")
                .unwrap()
                .matches(&labels(&[("has", "x")]))
        );
        assert_eq!(err("(has(a)").expected, ")");
        assert_eq!(
            err("zone == 'a").to_string(),
            "selector \"zone == 'a\": at offset 8: expected a closing quote"
        );
    }
}

//! The subset of Calico's selector syntax that IPPool `nodeSelector` needs:
//! `all()`, `has(k)`, `!has(k)`, `k == 'v'`, `k != 'v'`, joined with `&&`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node selector {source_text:?}: cannot parse {term:?}; supported: all(), has(k), !has(k), k == 'v', k != 'v', joined with &&"
)]
pub struct SelectorError {
    pub source_text: String,
    pub term: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Has(String),
    NotHas(String),
    Eq(String, String),
    Ne(String, String),
}

/// A parsed node selector. The empty string and `all()` select every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    text: String,
    terms: Vec<Term>,
}

impl Selector {
    pub fn all() -> Selector {
        Selector {
            text: "all()".into(),
            terms: Vec::new(),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Has(k) => labels.contains_key(k),
            Term::NotHas(k) => !labels.contains_key(k),
            Term::Eq(k, v) => labels.get(k) == Some(v),
            Term::Ne(k, v) => labels.get(k) != Some(v),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Default for Selector {
    fn default() -> Self {
        Selector::all()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    s.strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|r| r.strip_suffix('"')))
}

fn label_key(s: &str) -> Option<String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    ok.then(|| s.to_owned())
}

fn parse_term(t: &str) -> Option<Option<Term>> {
    let t = t.trim();
    if t == "all()" {
        return Some(None);
    }
    if let Some(inner) = t.strip_prefix("!has(").and_then(|r| r.strip_suffix(')')) {
        return label_key(inner).map(|k| Some(Term::NotHas(k)));
    }
    if let Some(inner) = t.strip_prefix("has(").and_then(|r| r.strip_suffix(')')) {
        return label_key(inner).map(|k| Some(Term::Has(k)));
    }
    if let Some((k, v)) = t.split_once("==") {
        return Some(Some(Term::Eq(label_key(k)?, unquote(v)?.to_owned())));
    }
    if let Some((k, v)) = t.split_once("!=") {
        return Some(Some(Term::Ne(label_key(k)?, unquote(v)?.to_owned())));
    }
    None
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Selector::all());
        }
        let mut terms = Vec::new();
        for part in s.split("&&") {
            match parse_term(part) {
                Some(Some(term)) => terms.push(term),
                Some(None) => {}
                None => {
                    return Err(SelectorError {
                        source_text: s.to_owned(),
                        term: part.trim().to_owned(),
                    });
                }
            }
        }
        Ok(Selector {
            text: s.trim().to_owned(),
            terms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matches_calico_style_terms() {
        let l = labels(&[("zone", "a"), ("rack", "1")]);
        let ok = |s: &str| s.parse::<Selector>().unwrap().matches(&l);
        assert!(ok(""));
        assert!(ok("all()"));
        assert!(ok("zone == 'a'"));
        assert!(!ok("zone == \"b\""));
        assert!(ok("zone != 'b' && has(rack)"));
        assert!(!ok("!has(rack)"));
        assert!(ok("!has(gpu) && all()"));
    }

    #[test]
    fn rejects_what_it_cannot_evaluate() {
        let err = "zone in {'a'}".parse::<Selector>().unwrap_err();
        assert_eq!(err.term, "zone in {'a'}");
        assert!("zone == a".parse::<Selector>().is_err());
        assert!("has()".parse::<Selector>().is_err());
    }
}

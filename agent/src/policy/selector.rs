//! Label selectors (`matchLabels`, `matchExpressions`) against a set of labels, with the
//! semantics of Kubernetes' `metav1.LabelSelectorAsSelector`: every requirement must hold;
//! `NotIn` and `DoesNotExist` hold when the key is absent; `{}` selects everything.
//!
//! A selector the apiserver would have refused (an unknown operator, `In` without values,
//! `Exists` with values) does not parse: the caller makes it match nothing and reports the
//! [`InvalidSelector`], so a bad selector never lets traffic through.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::model::Labels;

/// One requirement on one label key. `matchLabels` entries become `In` with one value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requirement {
    In {
        key: String,
        values: BTreeSet<String>,
    },
    NotIn {
        key: String,
        values: BTreeSet<String>,
    },
    Exists {
        key: String,
    },
    DoesNotExist {
        key: String,
    },
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn { key, values } => {
                !labels.get(key).is_some_and(|v| values.contains(v))
            }
            Requirement::Exists { key } => labels.contains_key(key),
            Requirement::DoesNotExist { key } => !labels.contains_key(key),
        }
    }
}

/// `kubectl`'s selector syntax: `app in (web)`, `tier notin (db,cache)`, `team`, `!legacy`.
impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |values: &BTreeSet<String>| {
            values
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Requirement::In { key, values } => write!(f, "{key} in ({})", join(values)),
            Requirement::NotIn { key, values } => write!(f, "{key} notin ({})", join(values)),
            Requirement::Exists { key } => write!(f, "{key}"),
            Requirement::DoesNotExist { key } => write!(f, "!{key}"),
        }
    }
}

/// A checked selector: its requirements sorted and deduplicated, so two selectors that say
/// the same thing in the same words print the same (the compiler names ipsets after that
/// text). The default selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// Why a `LabelSelector` was refused; its index is the one in `matchExpressions`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSelector {
    #[error(
        "matchExpressions[{index}]: operator {operator:?} for key {key:?} is not In, NotIn, Exists or DoesNotExist"
    )]
    UnknownOperator {
        index: usize,
        key: String,
        operator: String,
    },
    #[error(
        "matchExpressions[{index}]: operator {operator} for key {key:?} needs at least one value"
    )]
    MissingValues {
        index: usize,
        key: String,
        operator: String,
    },
    #[error("matchExpressions[{index}]: operator {operator} for key {key:?} takes no values")]
    UnexpectedValues {
        index: usize,
        key: String,
        operator: String,
    },
}

impl Selector {
    pub fn parse(selector: &LabelSelector) -> Result<Selector, InvalidSelector> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::In {
                key: key.clone(),
                values: BTreeSet::from([value.clone()]),
            });
        }
        for (index, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let key = expr.key.clone();
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let operator = expr.operator.clone();
            let requirement = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(InvalidSelector::MissingValues {
                        index,
                        key,
                        operator,
                    });
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(InvalidSelector::UnexpectedValues {
                        index,
                        key,
                        operator,
                    });
                }
                "In" => Requirement::In { key, values },
                "NotIn" => Requirement::NotIn { key, values },
                "Exists" => Requirement::Exists { key },
                "DoesNotExist" => Requirement::DoesNotExist { key },
                _ => {
                    return Err(InvalidSelector::UnknownOperator {
                        index,
                        key,
                        operator,
                    });
                }
            };
            requirements.push(requirement);
        }
        requirements.sort();
        requirements.dedup();
        Ok(Selector { requirements })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// The requirements joined by `,`; the empty string for the selector of everything.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn selector(json: serde_json::Value) -> Result<Selector, InvalidSelector> {
        let raw: LabelSelector = serde_json::from_value(json).unwrap();
        Selector::parse(&raw)
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = selector(serde_json::json!({})).unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("app", "web")])));
        let s = selector(serde_json::json!({"matchLabels": {}, "matchExpressions": []})).unwrap();
        assert!(s.matches(&labels(&[])));
        assert_eq!(s.to_string(), "");
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let s = selector(serde_json::json!({"matchLabels": {"app": "web", "tier": "fe"}})).unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "be")])));
    }

    #[test]
    fn operator_in() {
        let s = selector(serde_json::json!({"matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod", "staging"]}]}))
        .unwrap();
        assert!(s.matches(&labels(&[("env", "prod")])));
        assert!(s.matches(&labels(&[("env", "staging")])));
        assert!(!s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[])), "In needs the key");
    }

    #[test]
    fn operator_not_in_matches_an_absent_key() {
        let s = selector(serde_json::json!({"matchExpressions": [
            {"key": "env", "operator": "NotIn", "values": ["prod"]}]}))
        .unwrap();
        assert!(!s.matches(&labels(&[("env", "prod")])));
        assert!(s.matches(&labels(&[("env", "dev")])));
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn operator_exists() {
        let s = selector(serde_json::json!({"matchExpressions": [
            {"key": "team", "operator": "Exists"}]}))
        .unwrap();
        assert!(s.matches(&labels(&[("team", "")])));
        assert!(s.matches(&labels(&[("team", "a")])));
        assert!(!s.matches(&labels(&[("other", "a")])));
    }

    #[test]
    fn operator_does_not_exist() {
        let s = selector(serde_json::json!({"matchExpressions": [
            {"key": "legacy", "operator": "DoesNotExist", "values": []}]}))
        .unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("legacy", "true")])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = selector(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}))
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("env", "prod")])));
    }

    #[test]
    fn unknown_operator_is_refused() {
        let err = selector(serde_json::json!({"matchExpressions": [
            {"key": "app", "operator": "Exists"},
            {"key": "env", "operator": "in", "values": ["prod"]}]}))
        .unwrap_err();
        assert_eq!(
            err,
            InvalidSelector::UnknownOperator {
                index: 1,
                key: "env".into(),
                operator: "in".into()
            }
        );
        assert!(err.to_string().contains("matchExpressions[1]"), "{err}");
    }

    #[test]
    fn values_must_fit_the_operator() {
        let err = selector(serde_json::json!({"matchExpressions": [
            {"key": "env", "operator": "In", "values": []}]}))
        .unwrap_err();
        assert!(
            matches!(err, InvalidSelector::MissingValues { index: 0, .. }),
            "{err:?}"
        );
        let err = selector(serde_json::json!({"matchExpressions": [
            {"key": "env", "operator": "Exists", "values": ["x"]}]}))
        .unwrap_err();
        assert!(
            matches!(err, InvalidSelector::UnexpectedValues { index: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn text_is_canonical() {
        let a = selector(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "NotIn", "values": ["db", "cache"]},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "team", "operator": "Exists"}]}))
        .unwrap();
        let b = selector(serde_json::json!({
            "matchExpressions": [
                {"key": "team", "operator": "Exists"},
                {"key": "tier", "operator": "NotIn", "values": ["cache", "db", "db"]},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "app", "operator": "In", "values": ["web"]}]}))
        .unwrap();
        assert_eq!(
            a.to_string(),
            "app in (web),tier notin (cache,db),team,!legacy"
        );
        assert_eq!(a, b);
    }
}

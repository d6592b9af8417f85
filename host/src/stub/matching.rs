//! Partial matching of expected JSON against what a guest returned.
//!
//! - An expected object matches an actual object that has at least its keys
//!   (each matching); other keys are ignored.
//! - An expected array matches an actual array of the same length, element
//!   by element, in order.
//! - `"<any>"` matches any value (present, even `null`).
//! - Any other `"<name>"` (e.g. `"<id:customer>"`) matches any value the
//!   first time and binds it: later uses of the same name in the same
//!   [`Bindings`] must see the same value.
//! - Anything else matches an equal value.
//!
//! [`project`] returns the actual value cut to the shape of the expectation,
//! with matched placeholders written back, so that a diff of expected vs
//! projected shows only what really differs.

use serde_json::{Map, Value};
use similar::TextDiff;
use std::collections::BTreeMap;

/// Values bound to named placeholders, kept across the checks of one scenario.
pub type Bindings = BTreeMap<String, Value>;

/// The name of a placeholder (`"<id:customer>"` → `id:customer`), if `value` is one.
fn placeholder(value: &Value) -> Option<&str> {
    let s = value.as_str()?;
    let name = s.strip_prefix('<')?.strip_suffix('>')?;
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.'));
    ok.then_some(name)
}

/// The actual value in the shape of `expected`; equal to `expected` exactly when it matches.
pub fn project(expected: &Value, actual: &Value, bindings: &mut Bindings) -> Value {
    if let Some(name) = placeholder(expected) {
        if name == "any" {
            return expected.clone();
        }
        return match bindings.get(name) {
            Some(bound) if bound == actual => expected.clone(),
            Some(_) => actual.clone(),
            None => {
                bindings.insert(name.to_owned(), actual.clone());
                expected.clone()
            }
        };
    }
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let mut out = Map::new();
            for (key, e) in e {
                if let Some(a) = a.get(key) {
                    out.insert(key.clone(), project(e, a, bindings));
                }
            }
            // A key is missing: show what is there instead (a different
            // variant, say `emit` for `reject`), so the diff explains itself.
            if e.keys().any(|k| !a.contains_key(k)) {
                for (key, a) in a {
                    out.entry(key.clone()).or_insert_with(|| a.clone());
                }
            }
            Value::Object(out)
        }
        (Value::Array(e), Value::Array(a)) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, a)| match e.get(i) {
                    Some(e) => project(e, a, bindings),
                    None => a.clone(),
                })
                .collect(),
        ),
        // Integers and floats of equal value are equal (a TOML `1.0` vs a guest's `1`).
        (Value::Number(e), Value::Number(a)) if e.as_f64().is_some() && e.as_f64() == a.as_f64() => {
            expected.clone()
        }
        _ => actual.clone(),
    }
}

/// Whether `actual` matches `expected`, binding placeholders on the way.
pub fn matches(expected: &Value, actual: &Value, bindings: &mut Bindings) -> bool {
    &project(expected, actual, bindings) == expected
}

/// Pretty JSON, for messages and diffs.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// A unified diff of expected vs actual (projected), `-` expected, `+` actual.
pub fn diff(expected: &Value, actual: &Value) -> String {
    let (e, a) = (pretty(expected) + "\n", pretty(actual) + "\n");
    TextDiff::from_lines(&e, &a).unified_diff().context_radius(3).header("expected", "actual").to_string()
}

/// Checks `actual` against `expected`; the diff when they differ.
pub fn check(expected: &Value, actual: &Value, bindings: &mut Bindings) -> Result<(), String> {
    let projected = project(expected, actual, bindings);
    if &projected == expected { Ok(()) } else { Err(diff(expected, &projected)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_match_on_a_subset_of_keys() {
        let mut b = Bindings::new();
        assert!(matches(&json!({ "a": 1 }), &json!({ "a": 1, "b": 2 }), &mut b));
        assert!(!matches(&json!({ "a": 1, "c": 3 }), &json!({ "a": 1, "b": 2 }), &mut b));
        assert!(!matches(&json!({ "a": 2 }), &json!({ "a": 1 }), &mut b));
    }

    #[test]
    fn arrays_match_in_order_and_length() {
        let mut b = Bindings::new();
        assert!(matches(&json!([{ "a": 1 }, 2]), &json!([{ "a": 1, "z": 0 }, 2]), &mut b));
        assert!(!matches(&json!([1]), &json!([1, 2]), &mut b));
        assert!(!matches(&json!([1, 2]), &json!([1]), &mut b));
        assert!(!matches(&json!([2, 1]), &json!([1, 2]), &mut b));
    }

    #[test]
    fn placeholders_match_anything_and_named_ones_bind() {
        let mut b = Bindings::new();
        assert!(matches(&json!({ "id": "<any>" }), &json!({ "id": null }), &mut b));
        assert!(matches(&json!("<id:c>"), &json!("x-1"), &mut b));
        assert!(matches(&json!({ "k": "<id:c>" }), &json!({ "k": "x-1" }), &mut b));
        assert!(!matches(&json!("<id:c>"), &json!("x-2"), &mut b));
        assert!(matches(&json!("<id:d>"), &json!("x-2"), &mut b));
        // Not a placeholder: compared as text.
        assert!(!matches(&json!("<not one>"), &json!("x"), &mut b));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(matches(&json!(1.0), &json!(1), &mut Bindings::new()));
        assert!(!matches(&json!(1.5), &json!(1), &mut Bindings::new()));
    }

    #[test]
    fn the_diff_shows_only_what_differs() {
        let mut b = Bindings::new();
        let err = check(
            &json!({ "kind": "A", "id": "<any>" }),
            &json!({ "kind": "B", "id": "q", "extra": true }),
            &mut b,
        )
        .unwrap_err();
        assert!(err.contains("-  \"kind\": \"A\""), "{err}");
        assert!(err.contains("+  \"kind\": \"B\""), "{err}");
        assert!(!err.contains("extra"), "{err}");
        // Another variant: the diff shows it.
        let err = check(&json!({ "reject": "no" }), &json!({ "emit": [] }), &mut b).unwrap_err();
        assert!(err.contains("+  \"emit\": []"), "{err}");
    }
}

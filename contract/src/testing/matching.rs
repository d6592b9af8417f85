//! Partial matching of expected JSON against actual values, for the
//! `then_*_matching` assertions.

use serde::Serialize;
use serde_json::Value;

/// `value` as JSON; a note in its place if it cannot be (a test must show
/// something rather than fail to report).
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| Value::String(format!("<not serialisable: {e}>")))
}

/// Pretty JSON for a failure message.
pub(crate) fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Whether `actual` matches `expected`: an object matches an object with at
/// least its keys (each matching), an array an array of the same length
/// (element by element, in order), a number an equal number (`1` and `1.0`
/// alike), anything else an equal value.
pub(crate) fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            e.iter().all(|(key, e)| a.get(key).is_some_and(|a| matches(e, a)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| matches(e, a))
        }
        (Value::Number(e), Value::Number(a)) => {
            e == a || ((e.is_f64() || a.is_f64()) && e.as_f64() == a.as_f64())
        }
        _ => expected == actual,
    }
}

#[cfg(test)]
mod tests {
    use super::matches;
    use serde_json::json;

    #[test]
    fn objects_match_on_a_subset_of_keys_arrays_on_every_element() {
        assert!(matches(&json!({ "a": { "b": 1 } }), &json!({ "a": { "b": 1, "c": 2 }, "d": 3 })));
        assert!(!matches(&json!({ "a": 1, "z": 0 }), &json!({ "a": 1 })));
        assert!(!matches(&json!({ "a": 2 }), &json!({ "a": 1 })));
        assert!(matches(&json!([{ "k": 1 }, 2]), &json!([{ "k": 1, "x": 0 }, 2])));
        assert!(!matches(&json!([1]), &json!([1, 2])));
        assert!(!matches(&json!([2, 1]), &json!([1, 2])));
        assert!(matches(&json!(1.0), &json!(1)));
        assert!(!matches(&json!(1.5), &json!(1)));
        assert!(!matches(&json!(null), &json!({})));
        assert!(matches(&json!({}), &json!({ "anything": true })));
    }
}

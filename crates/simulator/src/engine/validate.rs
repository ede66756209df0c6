//! Request validation shared by the endpoints: unknown parameters, missing required
//! ones, and numeric ranges, each answered with the 400 body OpenAI sends (message
//! wording, `param` and `code` as observed on the live API).

use serde_json::Value;
use tollgate_wire::Extra;

use crate::error::ApiError;

/// Rejects the first field of `extra` (fields the wire type does not model) that is
/// not in `allowed`: 400 `unknown_parameter`.
pub fn reject_unknown(extra: &Extra, allowed: &[&str]) -> Result<(), ApiError> {
    match extra.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(ApiError::unknown_parameter(key)),
        None => Ok(()),
    }
}

/// 400 `missing_required_parameter`.
pub fn missing(param: &str) -> ApiError {
    ApiError::invalid_request(
        format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

/// 400 `unsupported_parameter` for a parameter that moved elsewhere in this API.
pub fn moved(param: &str, new_place: &str) -> ApiError {
    ApiError::invalid_request(
        format!(
            "Unsupported parameter: '{param}'. In the Responses API, this parameter has moved to \
             '{new_place}'. Try again with the new parameter. See the API documentation for more \
             information."
        ),
        Some(param),
        Some("unsupported_parameter"),
    )
}

/// An integer at least `min`: otherwise 400 `integer_below_min_value`.
pub fn int_at_least(param: &str, value: Option<u64>, min: u64) -> Result<(), ApiError> {
    match value {
        Some(v) if v < min => Err(ApiError::invalid_request(
            format!(
                "Invalid '{param}': integer below minimum value. Expected a value >= {min}, but \
                 got {v} instead."
            ),
            Some(param),
            Some("integer_below_min_value"),
        )),
        _ => Ok(()),
    }
}

/// An integer at most `max`: otherwise 400 `integer_above_max_value`.
pub fn int_at_most(param: &str, value: Option<u64>, max: u64) -> Result<(), ApiError> {
    match value {
        Some(v) if v > max => Err(ApiError::invalid_request(
            format!(
                "Invalid '{param}': integer above maximum value. Expected a value <= {max}, but \
                 got {v} instead."
            ),
            Some(param),
            Some("integer_above_max_value"),
        )),
        _ => Ok(()),
    }
}

/// A number within `min..=max`: otherwise 400 `decimal_below_min_value` /
/// `decimal_above_max_value`.
pub fn decimal_in(param: &str, value: Option<f64>, min: f64, max: f64) -> Result<(), ApiError> {
    let Some(v) = value else {
        return Ok(());
    };
    let (kind, relation, limit) = if v < min {
        ("below minimum", ">=", min)
    } else if v > max {
        ("above maximum", "<=", max)
    } else {
        return Ok(());
    };
    let code = if v < min {
        "decimal_below_min_value"
    } else {
        "decimal_above_max_value"
    };
    Err(ApiError::invalid_request(
        format!(
            "Invalid '{param}': decimal {kind} value. Expected a value {relation} {limit}, but got \
             {v} instead."
        ),
        Some(param),
        Some(code),
    ))
}

/// A numeric field kept in `extra` (e.g. `presence_penalty`) within `min..=max`.
pub fn extra_decimal_in(extra: &Extra, param: &str, min: f64, max: f64) -> Result<(), ApiError> {
    decimal_in(param, extra.get(param).and_then(Value::as_f64), min, max)
}

/// `metadata`: at most 16 pairs, keys ≤ 64 characters, values ≤ 512 characters.
pub fn metadata<'a>(
    pairs: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), ApiError> {
    let len = pairs.len();
    if len > 16 {
        return Err(ApiError::invalid_request(
            format!(
                "Invalid 'metadata': too many properties. Expected an object with at most 16 \
                 properties, but got an object with {len} properties instead."
            ),
            Some("metadata"),
            Some("object_above_max_properties"),
        ));
    }
    for (key, value) in pairs {
        if key.chars().count() > 64 {
            return Err(ApiError::invalid_request(
                format!(
                    "Invalid 'metadata': string too long. Expected a string with maximum length \
                     64, but got a string with length {} instead.",
                    key.chars().count()
                ),
                Some("metadata"),
                Some("string_above_max_length"),
            ));
        }
        if value.chars().count() > 512 {
            return Err(ApiError::invalid_request(
                format!(
                    "Invalid 'metadata.{key}': string too long. Expected a string with maximum \
                     length 512, but got a string with length {} instead.",
                    value.chars().count()
                ),
                Some(&format!("metadata.{key}")),
                Some("string_above_max_length"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_named() {
        let mut extra = Extra::new();
        extra.insert("seed".into(), json!(1));
        assert!(reject_unknown(&extra, &["seed"]).is_ok());
        extra.insert("bogus".into(), json!(1));
        let e = reject_unknown(&extra, &["seed"]).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.body.error.message, "Unknown parameter: 'bogus'.");
        assert_eq!(e.body.error.param.as_deref(), Some("bogus"));
        assert_eq!(e.body.error.code.as_deref(), Some("unknown_parameter"));
    }

    #[test]
    fn range_messages_match_the_api() {
        let e = int_at_least("max_output_tokens", Some(8), 16).unwrap_err();
        assert_eq!(
            e.body.error.message,
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, \
             but got 8 instead."
        );
        assert_eq!(
            e.body.error.code.as_deref(),
            Some("integer_below_min_value")
        );
        assert!(int_at_least("max_output_tokens", Some(16), 16).is_ok());
        let e = decimal_in("temperature", Some(3.0), 0.0, 2.0).unwrap_err();
        assert_eq!(
            e.body.error.message,
            "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 \
             instead."
        );
        assert_eq!(
            e.body.error.code.as_deref(),
            Some("decimal_above_max_value")
        );
        let e = decimal_in("top_p", Some(-0.5), 0.0, 1.0).unwrap_err();
        assert_eq!(
            e.body.error.code.as_deref(),
            Some("decimal_below_min_value")
        );
        assert!(decimal_in("temperature", Some(2.0), 0.0, 2.0).is_ok());
    }

    #[test]
    fn metadata_limits() {
        let many: std::collections::BTreeMap<String, String> =
            (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(metadata(many.iter()).is_err());
        let ok: std::collections::BTreeMap<String, String> =
            [("k".to_owned(), "v".to_owned())].into();
        assert!(metadata(ok.iter()).is_ok());
    }
}

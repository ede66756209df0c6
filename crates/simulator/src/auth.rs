//! Authentication: the bearer key, checked as OpenAI does. A missing key is a 401 with
//! `code: null`; a key outside the configured list is a 401 `invalid_api_key` whose
//! message shows the key masked, never whole.

use std::collections::HashSet;

use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::error::ApiError;

const WWW_AUTHENTICATE: &str = "Bearer realm=\"OpenAI API\"";

/// The bearer token of the request, if it carries a non-empty one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks the request's key against `allowed` (`None`: any non-empty key).
pub fn authenticate<'a>(
    headers: &'a HeaderMap,
    allowed: Option<&HashSet<String>>,
) -> Result<&'a str, ApiError> {
    let Some(key) = bearer(headers) else {
        return Err(missing_key());
    };
    match allowed {
        Some(keys) if !keys.contains(key) => Err(incorrect_key(key)),
        _ => Ok(key),
    }
}

fn missing_key() -> ApiError {
    ApiError::new(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization \
         header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field \
         (with blank username) if you're accessing the API from your browser and are prompted for \
         a username and password. You can obtain an API key from \
         https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        None,
        None,
    )
    .with_header("www-authenticate", WWW_AUTHENTICATE)
}

fn incorrect_key(key: &str) -> ApiError {
    ApiError::new(
        401,
        format!(
            "Incorrect API key provided: {}. You can find your API key at \
             https://platform.openai.com/account/api-keys.",
            mask(key)
        ),
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    )
    .with_header("www-authenticate", WWW_AUTHENTICATE)
}

/// `sk-abc***wxyz`: a short prefix and the last four characters of long keys, less of
/// shorter ones, so the key is recognisable but never disclosed.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let (head, tail) = match chars.len() {
        n if n >= 16 => (6, 4),
        n if n >= 8 => (2, 2),
        _ => (0, 0),
    };
    let mut out: String = chars[..head].iter().collect();
    out.push_str("***");
    out.extend(&chars[chars.len() - tail..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_without_disclosing() {
        assert_eq!(mask("sk-abcdefghijklmnopwxyz"), "sk-abc***wxyz");
        assert_eq!(mask("wrong-key"), "wr***ey");
        assert_eq!(mask("abc"), "***");
        assert_eq!(mask("ключ-ключ-ключ-ключ"), "ключ-к***ключ");
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "Bearer   ".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "bearer sk-1".parse().unwrap());
        assert_eq!(bearer(&h), Some("sk-1"));
        h.insert(AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&h), None);
        let keys: HashSet<String> = ["good".to_owned()].into();
        h.insert(AUTHORIZATION, "Bearer bad-key-123".parse().unwrap());
        let err = authenticate(&h, Some(&keys)).unwrap_err();
        assert_eq!(err.body.error.code.as_deref(), Some("invalid_api_key"));
        assert!(!err.body.error.message.contains("bad-key-123"));
        assert!(authenticate(&h, None).is_ok());
    }
}

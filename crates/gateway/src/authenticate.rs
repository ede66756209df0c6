//! Stage 2, authenticate: `Authorization: Bearer <tollgate key>` → [`Principal`], from
//! the in-memory key cache only (no store access on the request path). The caller's
//! key never goes upstream: dispatch substitutes the provider key.

use std::sync::Arc;

use http::HeaderMap;
use tollgate_store::Role;

use crate::error::GatewayError;
use crate::keys::{KeyCache, Principal};

/// What the caller wants to do, for the role check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Inference endpoints and model listing.
    CallModels,
}

/// Resolves the caller and checks its role allows `action`.
pub fn run(
    keys: &KeyCache,
    headers: &HeaderMap,
    action: Action,
) -> Result<Arc<Principal>, GatewayError> {
    let secret = bearer(headers).ok_or(GatewayError::MissingKey)?;
    let principal = keys
        .lookup(secret)
        .ok_or_else(|| GatewayError::UnknownKey {
            prefix: display_prefix(secret),
        })?;
    match (action, principal.role) {
        (Action::CallModels, Role::Admin | Role::Member) => Ok(principal),
        (Action::CallModels, Role::Viewer) => Err(GatewayError::Forbidden {
            role: principal.role.to_string(),
            action: "call models",
        }),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Enough of a presented key to recognise it, never enough to use it: OpenAI's
/// `sk-abc***wxyz` style.
fn display_prefix(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 12 {
        return "***".into();
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing_and_masking() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer  tg-dev-abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("tg-dev-abc"));
        h.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&h), None);
        assert_eq!(display_prefix("tg-dev-0123456789abcdef"), "tg-dev-0***cdef");
        assert_eq!(display_prefix("short"), "***");
    }

    #[test]
    fn missing_unknown_and_viewer_are_refused() {
        let cache = KeyCache::default();
        let h = HeaderMap::new();
        assert_eq!(
            run(&cache, &h, Action::CallModels),
            Err(GatewayError::MissingKey)
        );
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "Bearer tg-dev-nope-nope-nope".parse().unwrap(),
        );
        assert!(matches!(
            run(&cache, &h, Action::CallModels),
            Err(GatewayError::UnknownKey { .. })
        ));
    }
}

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

/// Resolves the caller from its bearer key.
pub fn run(keys: &KeyCache, headers: &HeaderMap) -> Result<Arc<Principal>, GatewayError> {
    let secret = bearer(headers).ok_or(GatewayError::MissingKey)?;
    keys.lookup(secret).ok_or_else(|| GatewayError::UnknownKey {
        prefix: display_prefix(secret),
    })
}

/// Checks the caller's role allows `action`.
pub fn authorize(principal: &Principal, action: Action) -> Result<(), GatewayError> {
    match (action, principal.role) {
        (Action::CallModels, Role::Admin | Role::Member) => Ok(()),
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
        assert_eq!(
            run(&cache, &HeaderMap::new()),
            Err(GatewayError::MissingKey)
        );
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "Bearer tg-dev-nope-nope-nope".parse().unwrap(),
        );
        assert!(matches!(
            run(&cache, &h),
            Err(GatewayError::UnknownKey { .. })
        ));
        let viewer = Principal {
            key_id: "key_1".into(),
            project: "p".into(),
            env: "dev".into(),
            role: Role::Viewer,
        };
        assert!(matches!(
            authorize(&viewer, Action::CallModels),
            Err(GatewayError::Forbidden { .. })
        ));
        let member = Principal {
            role: Role::Member,
            ..viewer
        };
        assert_eq!(authorize(&member, Action::CallModels), Ok(()));
    }
}

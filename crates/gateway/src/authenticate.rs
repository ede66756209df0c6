//! Stage 2, authenticate: `Authorization: Bearer <tollgate key>` → [`Principal`], from
//! the in-memory key cache only (no store access on the request path). The caller's
//! key never goes upstream: dispatch substitutes the provider key.
//!
//! A known key is then checked against the clock: a rotated key whose grace period
//! has ended, an expired key (401, saying how to rotate) and a suspended key (403,
//! saying who may resume it) are refused.

use std::sync::Arc;

use http::HeaderMap;
use tollgate_store::Role;

use crate::error::GatewayError;
use crate::keys::{CachedKey, KeyCache, Principal};

/// What the caller wants to do, for the role check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Inference endpoints and model listing.
    CallModels,
}

/// Resolves the caller from its bearer key, now.
pub fn run(keys: &KeyCache, headers: &HeaderMap) -> Result<Arc<Principal>, GatewayError> {
    run_at(keys, headers, crate::accept::now_ms())
}

/// Resolves the caller from its bearer key at `now_ms`.
pub fn run_at(
    keys: &KeyCache,
    headers: &HeaderMap,
    now_ms: i64,
) -> Result<Arc<Principal>, GatewayError> {
    let secret = bearer(headers).ok_or(GatewayError::MissingKey)?;
    let key = keys
        .lookup(secret)
        .ok_or_else(|| GatewayError::UnknownKey {
            prefix: display_prefix(secret),
        })?;
    check_lifecycle(&key, now_ms)?;
    Ok(key.principal.clone())
}

/// Refuses a key whose rotation grace has ended, that has expired, or is suspended.
fn check_lifecycle(key: &CachedKey, now_ms: i64) -> Result<(), GatewayError> {
    let key_id = || key.principal.key_id.clone();
    if let (Some(successor), Some(retire_at)) = (&key.rotated_to, key.retire_at_ms) {
        if now_ms >= retire_at {
            return Err(GatewayError::RotatedKey {
                key_id: key_id(),
                successor: successor.clone(),
            });
        }
    }
    if now_ms >= key.expires_at_ms {
        return Err(GatewayError::ExpiredKey { key_id: key_id() });
    }
    if key.suspended {
        return Err(GatewayError::SuspendedKey { key_id: key_id() });
    }
    Ok(())
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
/// `sk-abc***wxyz` style for a key of real length (32 characters or more: at most
/// 12 of them, 37.5 %, shown), only its first four for a shorter one (at most a
/// quarter), nothing of one shorter than 16.
fn display_prefix(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let shown = |range: std::ops::Range<usize>| chars[range].iter().collect::<String>();
    match chars.len() {
        n if n >= 32 => format!("{}***{}", shown(0..8), shown(n - 4..n)),
        n if n >= 16 => format!("{}***", shown(0..4)),
        _ => "***".into(),
    }
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
        assert_eq!(
            display_prefix("tg-dev-0123456789abcdefghijklmnopqrstuv"),
            "tg-dev-0***stuv"
        );
        assert_eq!(display_prefix("tg-dev-0123456789abcdef"), "tg-d***");
        assert_eq!(display_prefix("sk-0123456789a"), "***");
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
            upstream_ref: None,
            lane: tollgate_store::Lane::Interactive,
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

    #[test]
    fn expired_suspended_and_retired_keys_are_refused_by_the_clock() {
        let key = CachedKey {
            principal: Arc::new(Principal {
                key_id: "key_1".into(),
                project: "p".into(),
                env: "dev".into(),
                role: Role::Member,
                upstream_ref: None,
                lane: tollgate_store::Lane::Interactive,
            }),
            prefix: "tg-dev-x".into(),
            expires_at_ms: 1_000,
            suspended: false,
            rotated_to: None,
            retire_at_ms: None,
            wanted_ref: None,
        };
        assert_eq!(check_lifecycle(&key, 999), Ok(()));
        assert!(matches!(
            check_lifecycle(&key, 1_000),
            Err(GatewayError::ExpiredKey { .. })
        ));
        let suspended = CachedKey {
            suspended: true,
            ..key.clone()
        };
        assert!(matches!(
            check_lifecycle(&suspended, 10),
            Err(GatewayError::SuspendedKey { .. })
        ));
        let rotated = CachedKey {
            rotated_to: Some("key_2".into()),
            retire_at_ms: Some(500),
            ..key
        };
        assert_eq!(check_lifecycle(&rotated, 499), Ok(()));
        assert_eq!(
            check_lifecycle(&rotated, 500),
            Err(GatewayError::RotatedKey {
                key_id: "key_1".into(),
                successor: "key_2".into()
            })
        );
    }
}

//! The records the store keeps, independent of the backend.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A project: the unit that owns keys, environments and (later) limits and budgets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manage keys and projects, call models.
    Admin,
    /// Call models, read its own usage.
    Member,
    /// Read usage and key metadata of its project; no model calls.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            "viewer" => Ok(Self::Viewer),
            other => Err(format!(
                "unknown role {other:?}: use admin, member or viewer"
            )),
        }
    }
}

/// A key to insert: everything but the secret, which never reaches the store.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub project: String,
    pub env: String,
    pub role: Role,
    pub name: Option<String>,
    /// The visible start of the secret, for humans (`tg-dev-AbC1…`).
    pub prefix: String,
    /// Lowercase hex SHA-256 of the full secret.
    pub digest_hex: String,
    pub created_at_ms: i64,
}

/// Lifecycle state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Active,
    Revoked,
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
        })
    }
}

/// A stored key (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    pub id: String,
    pub project: String,
    pub env: String,
    pub role: Role,
    pub name: Option<String>,
    pub prefix: String,
    #[serde(skip)]
    pub digest_hex: String,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub revoke_reason: Option<String>,
}

impl KeyRecord {
    pub fn state(&self) -> KeyState {
        if self.revoked_at_ms.is_some() {
            KeyState::Revoked
        } else {
            KeyState::Active
        }
    }
}

/// One proxied request, success or failure or client disconnect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub upstream_request_id: Option<String>,
    pub response_id: Option<String>,
    pub key_id: Option<String>,
    pub project: Option<String>,
    pub env: Option<String>,
    pub endpoint: String,
    pub model_requested: Option<String>,
    /// The `model` the upstream answered with: the version that actually served.
    pub model_served: Option<String>,
    pub status: u16,
    pub error_code: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub streamed: bool,
    /// The client went away before the answer was complete.
    pub client_disconnected: bool,
    pub attempts: u32,
    pub ttfb_ms: Option<u64>,
    pub latency_ms: u64,
    pub created_at_ms: i64,
}

/// How `usage` totals are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Key,
    Project,
    Model,
    Day,
}

/// What totals to compute.
#[derive(Debug, Clone)]
pub struct UsageFilter {
    pub group: UsageGroup,
    pub since_ms: i64,
}

/// Totals for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    pub group: String,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
}

/// The newest `created_at_ms` of each key in a usage batch, ordered by key id: the
/// writer issues one `last_used` update per key rather than one per record, and the
/// fixed order means two concurrent batches lock key rows in the same order (no
/// deadlock on PostgreSQL).
pub(crate) fn last_used_by_key(records: &[UsageRecord]) -> Vec<(&str, i64)> {
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    for r in records {
        if let Some(key_id) = r.key_id.as_deref() {
            let at = newest.entry(key_id).or_insert(r.created_at_ms);
            *at = (*at).max(r.created_at_ms);
        }
    }
    newest.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_used_is_the_newest_record_per_key() {
        let rec = |key: Option<&str>, at: i64| UsageRecord {
            key_id: key.map(str::to_owned),
            created_at_ms: at,
            ..UsageRecord::default()
        };
        let batch = [
            rec(Some("key_b"), 5),
            rec(Some("key_a"), 9),
            rec(None, 100),
            rec(Some("key_b"), 7),
            rec(Some("key_a"), 3),
        ];
        assert_eq!(last_used_by_key(&batch), vec![("key_a", 9), ("key_b", 7)]);
        assert!(last_used_by_key(&[]).is_empty());
    }
}

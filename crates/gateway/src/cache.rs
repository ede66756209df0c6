//! Stage 5, cache: the exact-match response cache. Not built yet — the resilience
//! issue fills this in; until then nothing is served from cache.

use axum::response::Response;

use crate::keys::Principal;
use crate::preflight::Preflight;

/// A cached answer for this request, if any (never, for now).
pub fn lookup(_principal: &Principal, _preflight: &Preflight) -> Option<Response> {
    None
}

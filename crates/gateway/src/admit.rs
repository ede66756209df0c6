//! Stage 4, admit: rate limits, spend budgets and priority lanes. Not built yet — the
//! limits issue fills this in; until then every authenticated request is admitted.

use crate::error::GatewayError;
use crate::keys::Principal;
use crate::preflight::Preflight;

/// Admits the request (always, for now).
pub fn run(_principal: &Principal, _preflight: &Preflight) -> Result<(), GatewayError> {
    Ok(())
}

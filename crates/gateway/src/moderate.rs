//! Stage 6, moderate: the optional safety check before the upstream sees the prompt.
//! Not built yet — a later issue fills this in; until then every prompt passes.

use crate::error::GatewayError;
use crate::keys::Principal;
use crate::preflight::Preflight;

/// Checks the prompt (passes everything, for now).
pub fn run(_principal: &Principal, _preflight: &Preflight) -> Result<(), GatewayError> {
    Ok(())
}

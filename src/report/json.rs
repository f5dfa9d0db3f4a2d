//! `results.json`: the phase's outcomes for machines, and the input of `report merge`.

use super::PhaseReport;

/// Renders the phase's results as pretty JSON.
pub(super) fn render(report: &PhaseReport<'_>) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

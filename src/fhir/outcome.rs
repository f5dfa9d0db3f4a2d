//! OperationOutcome: the body of every FHIR error answer.

use serde_json::{Value, json};

/// An OperationOutcome with one issue.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }]
    })
}

/// The first issue's diagnostics of an OperationOutcome, if the value is one.
pub fn diagnostics(value: &Value) -> Option<&str> {
    if value["resourceType"] != "OperationOutcome" {
        return None;
    }
    value["issue"][0]["diagnostics"].as_str()
}

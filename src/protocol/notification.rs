//! The Notification Task (protocol.md §2) and the workflow Task (§1): building them as the
//! sender and reading them as the receiver. Reading accepts every coding variant the
//! protocol lists; building emits the defaults.

use serde_json::{Value, json};

use super::{IDENTIFIER_SYSTEM, PULL_NOTIFICATION, TANP_CODE_SYSTEM, TASK_CODE_SYSTEM};
use crate::fhir::BSN_SYSTEM;
use crate::fhir::bsn::Bsn;
use crate::fhir::catalogue::{NotifiedQuery, TASK_PARAMETER_SYSTEM};

/// `system` and `value` of an Identifier.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ident {
    pub system: String,
    pub value: String,
}

impl Ident {
    /// Builds an identifier.
    pub fn new(system: &str, value: &str) -> Self {
        Self {
            system: system.to_owned(),
            value: value.to_owned(),
        }
    }

    fn to_json(&self) -> Value {
        json!({ "system": self.system, "value": self.value })
    }

    fn from_json(value: &Value) -> Option<Self> {
        Some(Self {
            system: value["system"].as_str()?.to_owned(),
            value: value["value"].as_str()?.to_owned(),
        })
    }
}

/// What a sender puts in a notification.
#[derive(Debug, Clone)]
pub struct NotificationSpec {
    pub identifier: Ident,
    pub group_identifier: Ident,
    /// Id of the workflow Task, when one is offered.
    pub workflow_task_id: Option<String>,
    pub bsn: String,
    pub requester_agent: Ident,
    pub requester_agent_display: String,
    /// The sending organisation (URA).
    pub on_behalf_of: Ident,
    /// The addressed receiver: a department identifier or the organisation's URA.
    pub owner: Option<Ident>,
    pub authored_on: String,
    pub period_end: String,
    /// `None` leaves the authorization base out (a fault of the sending side).
    pub authorization_base: Option<String>,
    pub queries: Vec<NotifiedQuery>,
    /// Read inputs as `Type/id`.
    pub reads: Vec<String>,
}

fn parameter(code: &str) -> Value {
    json!({ "coding": [{ "system": TASK_PARAMETER_SYSTEM, "code": code }] })
}

/// Builds the Notification Task as JSON.
pub fn build_notification(spec: &NotificationSpec) -> Value {
    let mut inputs = Vec::new();
    if let Some(base) = &spec.authorization_base {
        inputs.push(json!({ "type": parameter("authorization-base"), "valueString": base }));
    }
    if spec.workflow_task_id.is_some() {
        inputs.push(json!({ "type": parameter("get-workflow-task"), "valueBoolean": true }));
    }
    for query in &spec.queries {
        inputs.push(json!({
            "type": { "coding": [{ "system": query.code_system, "code": query.code }], "text": query.section },
            "valueString": query.query,
        }));
    }
    for read in &spec.reads {
        inputs.push(
            json!({ "type": parameter("read-resource"), "valueReference": { "reference": read } }),
        );
    }

    let mut task = json!({
        "resourceType": "Task",
        "identifier": [spec.identifier.to_json()],
        "groupIdentifier": spec.group_identifier.to_json(),
        "status": "requested",
        "intent": "proposal",
        "code": { "coding": [{ "system": TASK_CODE_SYSTEM, "code": PULL_NOTIFICATION }] },
        "for": { "identifier": { "system": BSN_SYSTEM, "value": spec.bsn } },
        "authoredOn": spec.authored_on,
        "requester": {
            "agent": { "identifier": spec.requester_agent.to_json(), "display": spec.requester_agent_display },
            "onBehalfOf": { "identifier": spec.on_behalf_of.to_json() }
        },
        "restriction": { "period": { "end": spec.period_end } },
        "input": inputs,
    });
    if let Some(id) = &spec.workflow_task_id {
        task["basedOn"] = json!([{ "reference": format!("Task/{id}") }]);
    }
    if let Some(owner) = &spec.owner {
        task["owner"] = json!({ "identifier": owner.to_json() });
    }
    task
}

/// Builds the cancellation body (protocol.md §7): the same identifier, status cancelled.
pub fn build_cancellation(identifier: &Ident, bsn: &str) -> Value {
    json!({
        "resourceType": "Task",
        "identifier": [identifier.to_json()],
        "status": "cancelled",
        "intent": "proposal",
        "code": { "coding": [{ "system": TASK_CODE_SYSTEM, "code": PULL_NOTIFICATION }] },
        "for": { "identifier": { "system": BSN_SYSTEM, "value": bsn } },
    })
}

/// Builds the workflow Task the sender serves (BgZ-verwijzing-Task).
pub fn build_workflow_task(
    id: &str,
    patient_ref: &str,
    focus_ref: &str,
    period_end: &str,
) -> Value {
    json!({
        "resourceType": "Task",
        "id": id,
        "meta": { "profile": ["http://nictiz.nl/fhir/StructureDefinition/BgZ-verwijzing-Task"] },
        "status": "requested",
        "intent": "order",
        "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "3457005", "display": "verwijzen van patiënt" }], "text": "Verwijzing" },
        "focus": { "reference": focus_ref, "display": "Verwijzing" },
        "for": { "reference": patient_ref, "display": "Patiënt" },
        "restriction": { "period": { "end": period_end } },
    })
}

/// A query input as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedQuery {
    pub code_system: String,
    pub code: String,
    pub value: String,
}

/// A Notification Task as a receiver reads it.
#[derive(Debug, Clone)]
pub struct ReceivedNotification {
    pub identifier: Ident,
    pub group_identifier: Option<Ident>,
    pub based_on: Option<String>,
    pub bsn: String,
    pub on_behalf_of: Option<Ident>,
    pub owner: Option<Ident>,
    pub authorization_base: Option<String>,
    pub get_workflow_task: bool,
    pub queries: Vec<ReceivedQuery>,
    pub reads: Vec<String>,
}

fn is_parameter_system(system: &str) -> bool {
    system == TASK_PARAMETER_SYSTEM
        || system == TANP_CODE_SYSTEM
        || system == "http://fhir.nl/fhir/NamingSystem/TaskCodes"
}

/// Reads a Notification Task, collecting every rule it breaks. Generic and section codings
/// are both accepted for query and read inputs, under either code system.
pub fn read_notification(task: &Value) -> Result<ReceivedNotification, Vec<String>> {
    let mut problems = Vec::new();
    if task["resourceType"] != "Task" {
        problems.push("resourceType is not Task".to_owned());
    }
    if task["status"] != "requested" {
        problems.push(format!(
            "status must be `requested`, found {}",
            task["status"]
        ));
    }
    if task["intent"] != "proposal" {
        problems.push(format!(
            "intent must be `proposal`, found {}",
            task["intent"]
        ));
    }
    let code_ok = task["code"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["code"] == PULL_NOTIFICATION
                && matches!(
                    c["system"].as_str(),
                    Some(TASK_CODE_SYSTEM | TANP_CODE_SYSTEM)
                )
        });
    if !code_ok {
        problems
            .push("code must be `pull-notification` (TaskCode or tanp-codes system)".to_owned());
    }

    let identifier = task["identifier"]
        .as_array()
        .and_then(|ids| ids.first())
        .and_then(Ident::from_json);
    if identifier.is_none() {
        problems.push("identifier with system and value is missing".to_owned());
    }

    let bsn_value = &task["for"]["identifier"]["value"];
    let bsn = match (task["for"]["identifier"]["system"].as_str(), bsn_value) {
        (Some(BSN_SYSTEM), Value::String(text)) => match Bsn::parse(text) {
            Ok(bsn) => Some(bsn.as_str().to_owned()),
            Err(e) => {
                problems.push(format!("for.identifier: {e}"));
                None
            }
        },
        (Some(BSN_SYSTEM), Value::Number(_)) => {
            problems.push("for.identifier.value must be a JSON string, not a number".to_owned());
            None
        }
        _ => {
            problems.push(format!("for.identifier must be a BSN ({BSN_SYSTEM})"));
            None
        }
    };

    let mut authorization_base = None;
    let mut get_workflow_task = false;
    let mut queries = Vec::new();
    let mut reads = Vec::new();
    for (index, input) in task["input"].as_array().into_iter().flatten().enumerate() {
        let coding = &input["type"]["coding"][0];
        let system = coding["system"].as_str().unwrap_or_default();
        let code = coding["code"].as_str().unwrap_or_default();
        if is_parameter_system(system) && code == "authorization-base" {
            match input["valueString"].as_str() {
                Some(value) if !value.is_empty() => authorization_base = Some(value.to_owned()),
                _ => problems.push(format!(
                    "input[{index}]: authorization-base without valueString"
                )),
            }
        } else if is_parameter_system(system) && code == "get-workflow-task" {
            get_workflow_task = input["valueBoolean"] == true;
        } else if let Some(value) = input["valueString"].as_str() {
            queries.push(ReceivedQuery {
                code_system: system.to_owned(),
                code: code.to_owned(),
                value: value.to_owned(),
            });
        } else if let Some(reference) = input["valueReference"]["reference"].as_str() {
            reads.push(reference.to_owned());
        } else {
            problems.push(format!(
                "input[{index}] ({system}|{code}) has neither valueString nor valueReference"
            ));
        }
    }
    if authorization_base.is_none() {
        problems.push("no authorization-base input".to_owned());
    }
    if queries.is_empty() && reads.is_empty() {
        problems.push("no query or read input".to_owned());
    }

    let based_on = task["basedOn"][0]["reference"].as_str().map(str::to_owned);
    if get_workflow_task && based_on.is_none() {
        problems.push("get-workflow-task is true but basedOn names no Task".to_owned());
    }

    match (identifier, bsn) {
        (Some(identifier), Some(bsn)) if problems.is_empty() => Ok(ReceivedNotification {
            identifier,
            group_identifier: Ident::from_json(&task["groupIdentifier"]),
            based_on,
            bsn,
            on_behalf_of: Ident::from_json(&task["requester"]["onBehalfOf"]["identifier"]),
            owner: Ident::from_json(&task["owner"]["identifier"]),
            authorization_base,
            get_workflow_task,
            queries,
            reads,
        }),
        _ => Err(problems),
    }
}

/// A fresh `urn:uuid:` identifier in the default system.
pub fn new_identifier() -> Ident {
    Ident::new(
        IDENTIFIER_SYSTEM,
        &format!("urn:uuid:{}", uuid::Uuid::new_v4()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::catalogue::{QueryOptions, notified_queries};

    fn spec() -> NotificationSpec {
        NotificationSpec {
            identifier: new_identifier(),
            group_identifier: new_identifier(),
            workflow_task_id: Some("wf-1".into()),
            bsn: "999000019".into(),
            requester_agent: Ident::new(IDENTIFIER_SYSTEM, "urn:oid:2.999.1"),
            requester_agent_display: "GtK".into(),
            on_behalf_of: Ident::new(crate::fhir::URA_SYSTEM, "90000123"),
            owner: None,
            authored_on: "2026-12-01T10:00:00+01:00".into(),
            period_end: "2026-12-08T10:00:00+01:00".into(),
            authorization_base: Some("ab-1".into()),
            queries: notified_queries("999000019", QueryOptions::default()),
            reads: vec![],
        }
    }

    #[test]
    fn a_built_notification_reads_back() {
        let task = build_notification(&spec());
        let read = read_notification(&task).unwrap();
        assert_eq!(read.bsn, "999000019");
        assert_eq!(read.authorization_base.as_deref(), Some("ab-1"));
        assert!(read.get_workflow_task);
        assert_eq!(read.based_on.as_deref(), Some("Task/wf-1"));
        assert_eq!(read.queries.len(), 27);
    }

    #[test]
    fn the_protocol_example_with_section_codes_is_accepted() {
        let text = r#"{"resourceType":"Task","status":"requested","intent":"proposal",
 "identifier":[{"system":"urn:ietf:rfc:3986","value":"urn:uuid:6f0c2a8e-0000-4000-8000-000000000001"}],
 "code":{"coding":[{"system":"https://www.twiin.nl/tanp/CodeSystem/tanp-codes","code":"pull-notification"}]},
 "for":{"identifier":{"system":"http://fhir.nl/fhir/NamingSystem/bsn","value":"999000019"}},
 "input":[
  {"type":{"coding":[{"system":"https://www.twiin.nl/tanp/CodeSystem/tanp-codes","code":"authorization-base"}]},"valueString":"ab-7Q2x"},
  {"type":{"coding":[{"system":"http://fhir.nl/fhir/NamingSystem/TaskParameter","code":"search-resource"}]},"valueString":"Condition"},
  {"type":{"coding":[{"system":"http://loinc.org","code":"77599-9"}]},"valueString":"DocumentReference?status=current"},
  {"type":{"coding":[{"system":"http://fhir.nl/fhir/NamingSystem/TaskParameter","code":"read-resource"}]},"valueReference":{"reference":"DocumentReference/d1"}}]}"#;
        let read = read_notification(&serde_json::from_str(text).unwrap()).unwrap();
        assert_eq!(read.queries.len(), 2);
        assert_eq!(read.reads, ["DocumentReference/d1"]);
    }

    #[test]
    fn a_numeric_or_invalid_bsn_and_a_missing_base_are_reported() {
        let mut task = build_notification(&spec());
        task["for"]["identifier"]["value"] = json!(999000019);
        let problems = read_notification(&task).unwrap_err();
        assert!(problems.iter().any(|p| p.contains("JSON string")));

        let mut spec = spec();
        spec.bsn = "999000010".into();
        spec.authorization_base = None;
        let problems = read_notification(&build_notification(&spec)).unwrap_err();
        assert!(problems.iter().any(|p| p.contains("11-proef")));
        assert!(problems.iter().any(|p| p.contains("authorization-base")));
    }
}

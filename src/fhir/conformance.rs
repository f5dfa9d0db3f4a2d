//! Content checks for pulled FHIR resources and searchset Bundles: the Nictiz
//! qualification rules of protocol.md §6. Elements are found by their declared STU3 types
//! (from the FHIR element tables in `data/fhir-stu3-model`), not by guessing from shape.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::Value;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Reported, never failing (protocol.md §6 tolerances).
    Warning,
    Error,
}

/// One broken rule, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule's name, e.g. `reference-display`.
    pub rule: &'static str,
    pub severity: Severity,
    /// `Type/id` and the element path, e.g. `Condition/c1 subject`.
    pub location: String,
    pub message: String,
}

/// The zib value-set OID prefix that must never appear as a Coding system (rule 7).
const ZIB_VALUE_SET_OID: &str = "urn:oid:2.16.840.1.113883.2.4.3.11.60.40.2";

struct Model {
    types: HashMap<String, Value>,
    choices: HashMap<String, Vec<String>>,
    elsewhere: HashMap<String, String>,
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or_default();
        let types = parse(include_str!("../../data/fhir-stu3-model/path2Type.json"));
        let choices = parse(include_str!(
            "../../data/fhir-stu3-model/choiceTypePaths.json"
        ));
        let elsewhere = parse(include_str!(
            "../../data/fhir-stu3-model/pathsDefinedElsewhere.json"
        ));
        Model {
            types: types
                .as_object()
                .map(|m| m.clone().into_iter().collect())
                .unwrap_or_default(),
            choices: choices
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(|t| t.as_str().map(str::to_owned))
                                    .collect(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            elsewhere: elsewhere
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    })
}

/// The declared type of `path.key`, resolving choice elements (`valueQuantity`).
fn element_type(path: &str, key: &str) -> Option<(String, String)> {
    let model = model();
    let path = model
        .elsewhere
        .get(path)
        .map(String::as_str)
        .unwrap_or(path);
    let child = format!("{path}.{key}");
    if let Some(declared) = model.types.get(&child) {
        let name = match declared {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            _ => return None,
        };
        return Some((child, name));
    }
    // Choice: the key is the base name followed by the type name.
    for (choice, types) in &model.choices {
        let Some(base) = choice.strip_prefix(&format!("{path}.")) else {
            continue;
        };
        if let Some(suffix) = key.strip_prefix(base)
            && let Some(found) = types.iter().find(|t| t.eq_ignore_ascii_case(suffix))
        {
            return Some((choice.clone(), found.clone()));
        }
    }
    None
}

/// Checks one resource: profiles, Codings, CodeableConcepts, References, Identifiers.
pub fn check_resource(resource: &Value) -> Vec<Finding> {
    let mut findings = Vec::new();
    let rtype = resource["resourceType"].as_str().unwrap_or("?");
    let label = format!("{rtype}/{}", resource["id"].as_str().unwrap_or("?"));
    let has_profile = resource["meta"]["profile"]
        .as_array()
        .is_some_and(|p| !p.is_empty());
    if !has_profile && rtype != "OperationOutcome" && rtype != "Binary" {
        findings.push(Finding {
            rule: "meta-profile",
            severity: Severity::Error,
            location: label.clone(),
            message: "the resource claims no profile in meta.profile".to_owned(),
        });
    }
    walk(resource, rtype, &label, "", &mut findings);
    findings
}

fn walk(value: &Value, path: &str, label: &str, shown: &str, findings: &mut Vec<Finding>) {
    let Value::Object(map) = value else { return };
    for (key, child) in map {
        if key.starts_with('_') || key == "resourceType" || key == "contained" {
            continue;
        }
        let Some((child_path, type_name)) = element_type(path, key) else {
            continue;
        };
        let items: Vec<&Value> = match child {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for (index, item) in items.iter().enumerate() {
            let here = if child.is_array() {
                format!("{shown}{key}[{index}]")
            } else {
                format!("{shown}{key}")
            };
            check_typed(item, &type_name, label, &here, findings);
            let next_path = match type_name.as_str() {
                "BackboneElement" | "Element" => child_path.clone(),
                other => other.to_owned(),
            };
            walk(item, &next_path, label, &format!("{here}."), findings);
        }
    }
}

fn finding(rule: &'static str, label: &str, here: &str, message: String) -> Finding {
    Finding {
        rule,
        severity: Severity::Error,
        location: format!("{label} {here}"),
        message,
    }
}

fn check_typed(
    value: &Value,
    type_name: &str,
    label: &str,
    here: &str,
    findings: &mut Vec<Finding>,
) {
    let has_extension = value["extension"].as_array().is_some_and(|e| !e.is_empty());
    match type_name {
        "Coding" => {
            let (system, code) = (value["system"].as_str(), value["code"].as_str());
            if system.is_none() || code.is_none() {
                findings.push(finding(
                    "coding-system-code",
                    label,
                    here,
                    "a Coding needs both system and code".to_owned(),
                ));
            }
            if let Some(system) = system.filter(|s| s.starts_with(ZIB_VALUE_SET_OID)) {
                findings.push(finding(
                    "coding-no-valueset-oid",
                    label,
                    here,
                    format!("the system `{system}` is a zib value-set OID, not a code system"),
                ));
            }
        }
        "CodeableConcept" => {
            let display = value["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["display"].is_string());
            if !display && !value["text"].is_string() && !has_extension {
                findings.push(finding(
                    "codeableconcept-display",
                    label,
                    here,
                    "a CodeableConcept needs a coding display, a text or an extension".to_owned(),
                ));
            }
        }
        "Reference" if !value["display"].is_string() && !has_extension => {
            findings.push(finding(
                "reference-display",
                label,
                here,
                "a Reference needs a display (or a data-absent-reason or nullFlavor extension)"
                    .to_owned(),
            ));
        }
        "Identifier" => {
            let named = value["system"].is_string() || value["type"].is_object();
            if !named || !value["value"].is_string() {
                findings.push(finding(
                    "identifier-system-value",
                    label,
                    here,
                    "an Identifier needs a system (or a type) and a value".to_owned(),
                ));
            }
        }
        _ => {}
    }
}

/// What a client knows about the search a Bundle answers.
#[derive(Debug, Clone)]
pub struct SearchContext<'a> {
    /// The searched resource type.
    pub resource_type: &'a str,
    /// Profiles a match must claim (one of them), empty when not known.
    pub match_profiles: &'a [&'a str],
}

/// Checks one searchset page: Bundle rules 2-4 and 11-13 of protocol.md §6 plus every
/// entry's resource rules. `total` across pages is checked by the caller.
pub fn check_searchset(bundle: &Value, context: &SearchContext<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let bundle_label = "Bundle";
    let bundle_finding = |rule, severity, message: String| Finding {
        rule,
        severity,
        location: bundle_label.to_owned(),
        message,
    };
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "searchset" {
        findings.push(bundle_finding(
            "searchset",
            Severity::Error,
            format!(
                "expected a Bundle of type searchset, found {} {}",
                bundle["resourceType"], bundle["type"]
            ),
        ));
        return findings;
    }
    let has_self = bundle["link"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|l| l["relation"] == "self");
    if !has_self {
        findings.push(bundle_finding(
            "self-link",
            Severity::Warning,
            "the Bundle has no self link".to_owned(),
        ));
    }

    let mut matches = 0;
    for (index, entry) in bundle["entry"].as_array().into_iter().flatten().enumerate() {
        let resource = &entry["resource"];
        let rtype = resource["resourceType"].as_str().unwrap_or("?");
        let full_url = entry["fullUrl"].as_str().unwrap_or_default();
        let here = format!("entry[{index}]");
        let opaque = full_url.starts_with("urn:uuid:") || full_url.starts_with("urn:oid:");
        let id = resource["id"].as_str();
        if id.is_none() && !opaque {
            findings.push(finding(
                "entry-id",
                bundle_label,
                &here,
                format!("the {rtype} has no id and its fullUrl is not a urn:uuid or urn:oid"),
            ));
        }
        let well_formed = opaque
            || ((full_url.starts_with("http://") || full_url.starts_with("https://"))
                && id.is_some_and(|id| full_url.ends_with(&format!("{rtype}/{id}"))));
        if !well_formed {
            findings.push(finding(
                "entry-fullurl",
                bundle_label,
                &here,
                format!(
                    "fullUrl `{full_url}` is not an absolute URL ending in {rtype}/{}",
                    id.unwrap_or("?")
                ),
            ));
        }

        let mode = entry["search"]["mode"].as_str();
        let is_searched_type = rtype == context.resource_type;
        match mode {
            Some("match") if !is_searched_type => findings.push(finding("include-mode", bundle_label, &here, format!("a {rtype} in a {} search is marked match; entries added by _include or _revinclude are marked include", context.resource_type))),
            Some("match") => matches += 1,
            Some("include") if is_searched_type && context.resource_type != "Observation" => findings.push(finding("include-mode", bundle_label, &here, format!("a {rtype} in a {rtype} search is marked include, not match"))),
            Some("include") | Some("outcome") => {}
            _ => findings.push(finding("search-mode", bundle_label, &here, "the entry has no search.mode".to_owned())),
        }
        if mode == Some("match") && is_searched_type && !context.match_profiles.is_empty() {
            let claimed: Vec<&str> = resource["meta"]["profile"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !claimed.iter().any(|p| context.match_profiles.contains(p)) {
                findings.push(finding(
                    "section-profile",
                    &format!("{rtype}/{}", id.unwrap_or("?")),
                    "meta.profile",
                    format!(
                        "claims {claimed:?}, expected one of {:?}",
                        context.match_profiles
                    ),
                ));
            }
        }
        findings.extend(check_resource(resource));
    }

    let has_next = bundle["link"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|l| l["relation"] == "next");
    match bundle["total"].as_u64() {
        Some(total) if !has_next && total != matches as u64 => {
            let severity = if total > matches as u64 {
                Severity::Warning
            } else {
                Severity::Error
            };
            findings.push(bundle_finding(
                "total-matches",
                severity,
                format!("total is {total} but the page holds {matches} match entries"),
            ));
        }
        _ => {}
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.rule).collect()
    }

    #[test]
    fn the_shipped_fixtures_satisfy_every_resource_rule() {
        for key in ["known", "unknown", "other"] {
            let path = format!(
                "{}/fixtures/patients/{key}/bgz.json",
                env!("CARGO_MANIFEST_DIR")
            );
            let bundle: Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            for entry in bundle["entry"].as_array().unwrap() {
                let findings = check_resource(&entry["resource"]);
                assert!(findings.is_empty(), "{key}: {findings:#?}");
            }
        }
    }

    #[test]
    fn each_resource_rule_catches_its_defect() {
        let resource = json!({
            "resourceType": "Condition", "id": "c1",
            "code": { "coding": [{ "system": "http://snomed.info/sct" }] },
            "subject": { "reference": "Patient/p1" },
            "identifier": [{ "value": "x" }],
            "category": [{ "coding": [{ "system": "urn:oid:2.16.840.1.113883.2.4.3.11.60.40.2.5.1.1", "code": "1" }] }]
        });
        let found = rules(&check_resource(&resource));
        for rule in [
            "meta-profile",
            "coding-system-code",
            "codeableconcept-display",
            "reference-display",
            "identifier-system-value",
            "coding-no-valueset-oid",
        ] {
            assert!(found.contains(&rule), "{rule} not found in {found:?}");
        }
    }

    #[test]
    fn choice_elements_and_extensions_are_checked_too() {
        let resource = json!({
            "resourceType": "Observation", "id": "o1", "meta": { "profile": ["x"] },
            "valueCodeableConcept": { "coding": [{ "code": "1" }] },
            "extension": [{ "url": "u", "valueReference": { "reference": "Patient/p" } }]
        });
        let found = rules(&check_resource(&resource));
        assert!(found.contains(&"coding-system-code"), "{found:?}");
        assert!(found.contains(&"reference-display"), "{found:?}");
    }

    #[test]
    fn searchset_rules_catch_wrong_modes_totals_and_urls() {
        let resource =
            json!({ "resourceType": "Condition", "id": "c1", "meta": { "profile": ["p"] } });
        let provenance =
            json!({ "resourceType": "Provenance", "id": "v1", "meta": { "profile": ["p"] } });
        let bundle = json!({
            "resourceType": "Bundle", "type": "searchset", "total": 3,
            "entry": [
                { "fullUrl": "http://x/fhir/Condition/c1", "resource": resource, "search": { "mode": "match" } },
                { "fullUrl": "Provenance/v1", "resource": provenance, "search": { "mode": "match" } }
            ]
        });
        let context = SearchContext {
            resource_type: "Condition",
            match_profiles: &["zib-Problem"],
        };
        let found = rules(&check_searchset(&bundle, &context));
        for rule in [
            "include-mode",
            "entry-fullurl",
            "total-matches",
            "self-link",
            "section-profile",
        ] {
            assert!(found.contains(&rule), "{rule} not in {found:?}");
        }
    }
}

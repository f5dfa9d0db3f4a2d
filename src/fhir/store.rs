//! An in-memory store of FHIR STU3 resources and the BgZ searches over it. It serves the
//! harness's simulated sender and the reference node's sender role; the parameters it knows
//! are the ones the BgZ catalogues (protocol.md §4) use, and anything else is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::BSN_SYSTEM;
use super::search::SearchUrl;

/// A shared, read-only resource.
pub type Resource = Arc<Value>;

/// Resources keyed by `Type/id`, in the order they were added.
#[derive(Debug, Default, Clone)]
pub struct ResourceStore {
    order: Vec<String>,
    by_key: BTreeMap<String, Resource>,
}

/// Why a fixture could not be loaded into a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: not valid JSON: {message}")]
    Json {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Shape { path: String, message: String },
}

/// Why a search was refused; each maps to an HTTP status with an OperationOutcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("the search parameter `{0}` is not supported for {1}")]
    UnsupportedParam(String, String),
    #[error("the value `{value}` of `{param}` is not valid: {why}")]
    BadValue {
        param: String,
        value: String,
        why: String,
    },
    #[error("the search names a patient other than the authorized one")]
    OtherPatient,
    #[error("the resource type `{0}` is not available in this exchange")]
    TypeNotAvailable(String),
}

impl SearchError {
    /// The HTTP status a FHIR server answers with.
    pub fn status(&self) -> u16 {
        match self {
            SearchError::OtherPatient => 403,
            _ => 400,
        }
    }
}

/// The patient a search is restricted to.
#[derive(Debug, Clone)]
pub struct PatientScope {
    /// `Patient/{id}` in the store.
    pub patient_ref: String,
    /// The BSN digits of that patient.
    pub bsn: String,
}

/// The result of a search before paging: the matches in result order.
#[derive(Debug, Default)]
pub struct SearchHits {
    pub matches: Vec<Resource>,
}

impl ResourceStore {
    /// Loads a FHIR JSON Bundle (any type) or a single resource from a file.
    pub fn load_file(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| StoreError::Read {
            path: shown.clone(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| StoreError::Json {
            path: shown.clone(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        let mut store = Self::default();
        store
            .add_bundle_or_resource(value)
            .map_err(|message| StoreError::Shape {
                path: shown,
                message,
            })?;
        Ok(store)
    }

    /// Adds every entry of a Bundle, or one resource.
    pub fn add_bundle_or_resource(&mut self, value: Value) -> Result<(), String> {
        if value["resourceType"] == "Bundle" {
            let entries = value["entry"].as_array().cloned().unwrap_or_default();
            for (index, entry) in entries.into_iter().enumerate() {
                let resource = entry
                    .get("resource")
                    .cloned()
                    .ok_or_else(|| format!("Bundle.entry[{index}] has no resource"))?;
                self.add(resource)
                    .map_err(|e| format!("Bundle.entry[{index}]: {e}"))?;
            }
            Ok(())
        } else {
            self.add(value)
        }
    }

    /// Adds one resource; it needs a `resourceType` and an `id`, unique in the store.
    pub fn add(&mut self, resource: Value) -> Result<(), String> {
        let key = resource_key(&resource)
            .ok_or_else(|| "a resource has no resourceType or no id".to_owned())?;
        if self.by_key.contains_key(&key) {
            return Err(format!("{key} appears twice"));
        }
        self.order.push(key.clone());
        self.by_key.insert(key, Arc::new(resource));
        Ok(())
    }

    /// Merges another store into this one.
    pub fn extend(&mut self, other: &ResourceStore) -> Result<(), String> {
        for resource in other.iter() {
            self.add(resource.as_ref().clone())?;
        }
        Ok(())
    }

    /// Reads `Type/id`.
    pub fn get(&self, key: &str) -> Option<&Resource> {
        self.by_key.get(key)
    }

    /// All resources in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.order.iter().filter_map(|k| self.by_key.get(k))
    }

    /// All resources of one type.
    pub fn of_type<'a>(&'a self, resource_type: &'a str) -> impl Iterator<Item = &'a Resource> {
        self.iter()
            .filter(move |r| r["resourceType"].as_str() == Some(resource_type))
    }

    /// Patients with the given BSN.
    pub fn patient_by_bsn(&self, bsn: &str) -> Option<&Resource> {
        self.of_type("Patient")
            .find(|p| identifiers(p).any(|(s, v)| s == BSN_SYSTEM && v == bsn))
    }

    /// Runs a search restricted to `scope`. Includes are resolved per page with [`Self::includes`].
    pub fn search(&self, url: &SearchUrl, scope: &PatientScope) -> Result<SearchHits, SearchError> {
        let rtype = url.resource_type.as_str();
        let mut filters: Vec<(&str, &str)> = Vec::new();
        let mut sort: Option<&str> = None;

        for (name, value) in &url.params {
            match name.as_str() {
                "_include" | "_revinclude" => check_include(rtype, name, value)?,
                "_count" | "_getpagesoffset" | "max" => check_number(name, value)?,
                "_format" => {}
                "_sort" => sort = Some(value.as_str()),
                "patient.identifier" | "subject.identifier" | "beneficiary.identifier" => {
                    check_token_names_patient(name, value, scope)?
                }
                "patient" | "subject" | "beneficiary" => {
                    if !value.split(',').any(|v| v == scope.patient_ref) {
                        return Err(SearchError::OtherPatient);
                    }
                }
                "identifier" if rtype == "Patient" => {
                    check_token_names_patient(name, value, scope)?
                }
                "category" | "code" | "status" | "class" => filters.push((name, value)),
                _ => {
                    return Err(SearchError::UnsupportedParam(
                        name.clone(),
                        rtype.to_owned(),
                    ));
                }
            }
        }

        let mut matches: Vec<Resource> = self
            .of_type(rtype)
            .filter(|r| belongs_to(r, scope))
            .filter(|r| filters.iter().all(|(p, v)| token_matches(r, p, v)))
            .cloned()
            .collect();

        if let Some(sort) = sort {
            let descending = sort.starts_with('-');
            if sort.trim_start_matches('-') != "date" {
                return Err(SearchError::UnsupportedParam(
                    format!("_sort={sort}"),
                    rtype.to_owned(),
                ));
            }
            matches.sort_by_key(|r| clinical_date(r));
            if descending {
                matches.reverse();
            }
        }

        match url.operation.as_deref() {
            None => {}
            Some("$lastn") if rtype == "Observation" => {
                let max: usize = url
                    .values("max")
                    .next()
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(1);
                matches = last_n_per_code(matches, max);
            }
            Some(other) => {
                return Err(SearchError::UnsupportedParam(
                    other.to_owned(),
                    rtype.to_owned(),
                ));
            }
        }
        Ok(SearchHits { matches })
    }

    /// The resources that `_include` and `_revinclude` add for one page of matches, without
    /// duplicates and without resources that are already matches on that page.
    pub fn includes(&self, url: &SearchUrl, page: &[Resource]) -> Vec<Resource> {
        let page_keys: BTreeSet<String> = page.iter().filter_map(|r| resource_key(r)).collect();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut push = |resource: &Resource, out: &mut Vec<Resource>| {
            if let Some(key) = resource_key(resource)
                && !page_keys.contains(&key)
                && seen.insert(key)
            {
                out.push(resource.clone());
            }
        };

        for value in url.values("_include") {
            let mut parts = value.split(':');
            let (_, param, target) = (parts.next(), parts.next(), parts.next());
            let Some(param) = param else { continue };
            for resource in page {
                for reference in include_references(resource, param) {
                    let wanted_type =
                        target.is_none_or(|t| reference.starts_with(&format!("{t}/")));
                    if let Some(found) = self.get(&reference).filter(|_| wanted_type) {
                        push(found, &mut out);
                    }
                }
            }
        }

        if url.values("_revinclude").any(|v| v == "Provenance:target") {
            for provenance in self.of_type("Provenance") {
                let targets = references_at(provenance, &["target"]);
                if page_keys.iter().any(|k| targets.contains(k)) {
                    push(provenance, &mut out);
                }
            }
        }
        out
    }

    /// Every resource key that a patient's exchange may expose: the resources that point at
    /// the patient, what those reference (one hop), and Binaries their attachments name.
    pub fn reachable_from_patient(&self, scope: &PatientScope) -> BTreeSet<String> {
        let mut keys: BTreeSet<String> = self
            .iter()
            .filter(|r| belongs_to(r, scope))
            .filter_map(|r| resource_key(r))
            .collect();
        let owned: Vec<String> = keys.iter().cloned().collect();
        for key in owned {
            let Some(resource) = self.get(&key) else {
                continue;
            };
            let mut refs = Vec::new();
            collect_references(resource, &mut refs);
            keys.extend(refs.into_iter().filter(|r| self.by_key.contains_key(r)));
        }
        for provenance in self.of_type("Provenance") {
            if references_at(provenance, &["target"])
                .iter()
                .any(|t| keys.contains(t))
                && let Some(key) = resource_key(provenance)
            {
                keys.insert(key);
            }
        }
        keys
    }
}

/// `Type/id` of a resource.
pub fn resource_key(resource: &Value) -> Option<String> {
    let rtype = resource["resourceType"].as_str()?;
    let id = resource["id"].as_str()?;
    Some(format!("{rtype}/{id}"))
}

/// The (system, value) pairs of a resource's `identifier` list.
pub fn identifiers(resource: &Value) -> impl Iterator<Item = (&str, &str)> {
    resource["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i["system"].as_str()?, i["value"].as_str()?)))
}

/// The elements that link each BgZ resource type to its patient (the STU3 `patient` and
/// `beneficiary` search parameters).
fn patient_link_paths(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "AllergyIntolerance"
        | "Consent"
        | "NutritionOrder"
        | "Immunization"
        | "ImmunizationRecommendation" => &["patient"],
        "Coverage" => &["beneficiary"],
        "Appointment" => &["participant", "actor"],
        "Provenance" => &[],
        _ => &["subject"],
    }
}

/// True when the resource is the scoped patient or is linked to it.
fn belongs_to(resource: &Value, scope: &PatientScope) -> bool {
    let rtype = resource["resourceType"].as_str().unwrap_or_default();
    if rtype == "Patient" {
        return resource_key(resource).as_deref() == Some(scope.patient_ref.as_str());
    }
    let path = patient_link_paths(rtype);
    !path.is_empty() && references_at(resource, path).contains(&scope.patient_ref)
}

/// Relative references found by walking `path` (arrays are flattened at every step).
pub fn references_at(resource: &Value, path: &[&str]) -> Vec<String> {
    let mut nodes = vec![resource];
    for step in path {
        nodes = nodes
            .into_iter()
            .flat_map(|n| match &n[*step] {
                Value::Array(items) => items.iter().collect::<Vec<_>>(),
                Value::Null => Vec::new(),
                other => vec![other],
            })
            .collect();
    }
    nodes
        .into_iter()
        .filter_map(|n| n["reference"].as_str())
        .map(str::to_owned)
        .collect()
}

fn collect_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "reference" {
                    if let Some(r) = child.as_str() {
                        out.push(r.to_owned());
                    }
                } else if key == "url" {
                    // Attachment URLs point at Binary resources.
                    if let Some(u) = child.as_str().filter(|u| u.starts_with("Binary/")) {
                        out.push(u.to_owned());
                    }
                } else {
                    collect_references(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_references(i, out)),
        _ => {}
    }
}

/// The references that `_include=Type:param` follows from one resource (the BgZ catalogue
/// parameters only).
pub fn include_references(resource: &Value, param: &str) -> Vec<String> {
    let path: &[&str] = match param {
        "general-practitioner" => &["generalPractitioner"],
        "payor" => &["payor"],
        "medication" => &["medicationReference"],
        "device" if resource["resourceType"] == "DeviceRequest" => &["codeReference"],
        "device" => &["device"],
        "related-target" => &["related", "target"],
        "specimen" => &["specimen"],
        "based-on" => &["basedOn"],
        "participant" => &["participant", "member"],
        _ => &[],
    };
    references_at(resource, path)
}

fn check_include(rtype: &str, name: &str, value: &str) -> Result<(), SearchError> {
    let known_include = [
        "Patient:general-practitioner",
        "Coverage:payor",
        "Coverage:payor:Patient",
        "Coverage:payor:Organization",
        "MedicationStatement:medication",
        "MedicationRequest:medication",
        "MedicationDispense:medication",
        "DeviceUseStatement:device",
        "DeviceRequest:device",
        "Observation:related-target",
        "Observation:specimen",
        "Procedure:based-on",
        "CareTeam:participant",
    ];
    let ok = if name == "_include" {
        known_include.contains(&value) && value.starts_with(&format!("{rtype}:"))
    } else {
        value == "Provenance:target"
    };
    if ok {
        Ok(())
    } else {
        Err(SearchError::UnsupportedParam(
            format!("{name}={value}"),
            rtype.to_owned(),
        ))
    }
}

fn check_number(name: &str, value: &str) -> Result<(), SearchError> {
    value
        .parse::<u32>()
        .map(|_| ())
        .map_err(|_| SearchError::BadValue {
            param: name.to_owned(),
            value: value.to_owned(),
            why: "expected a whole number".to_owned(),
        })
}

/// A token parameter naming the patient by BSN must name the authorized patient.
fn check_token_names_patient(
    name: &str,
    value: &str,
    scope: &PatientScope,
) -> Result<(), SearchError> {
    let Some((system, bsn)) = value.split_once('|') else {
        return Err(SearchError::BadValue {
            param: name.to_owned(),
            value: value.to_owned(),
            why: format!("expected `{BSN_SYSTEM}|<bsn>`"),
        });
    };
    if system != BSN_SYSTEM {
        return Err(SearchError::BadValue {
            param: name.to_owned(),
            value: value.to_owned(),
            why: format!("expected the BSN system `{BSN_SYSTEM}`"),
        });
    }
    if bsn != scope.bsn {
        return Err(SearchError::OtherPatient);
    }
    Ok(())
}

/// Token search: a comma-separated list of `system|code`, `|code`, `code` or `system|`.
fn token_matches(resource: &Value, param: &str, value: &str) -> bool {
    let element = &resource[param];
    let codings = codings_of(element);
    let plain = element.as_str();
    value.split(',').any(|alternative| {
        let (system, code) = match alternative.split_once('|') {
            Some((s, c)) => (Some(s), c),
            None => (None, alternative),
        };
        if let Some(plain) = plain {
            return system.is_none() && plain == code;
        }
        codings.iter().any(|(s, c)| {
            let system_ok = match system {
                None => true,
                Some("") => s.is_none(),
                Some(wanted) => *s == Some(wanted),
            };
            system_ok && (code.is_empty() || *c == Some(code))
        })
    })
}

/// (system, code) pairs of a Coding, a CodeableConcept or a list of either.
fn codings_of(element: &Value) -> Vec<(Option<&str>, Option<&str>)> {
    match element {
        Value::Array(items) => items.iter().flat_map(codings_of).collect(),
        Value::Object(map) if map.contains_key("coding") => element["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["system"].as_str(), c["code"].as_str()))
            .collect(),
        Value::Object(_) => vec![(element["system"].as_str(), element["code"].as_str())],
        _ => Vec::new(),
    }
}

/// The clinically relevant date used by `_sort=date` and `$lastn`, as a sortable string.
/// FHIR dateTimes with an offset compare correctly as text only within one offset; the
/// fixtures use one offset, and real targets are never sorted by the harness.
fn clinical_date(resource: &Value) -> String {
    [
        &resource["effectiveDateTime"],
        &resource["effectivePeriod"]["start"],
        &resource["issued"],
        &resource["authoredOn"],
        &resource["date"],
    ]
    .into_iter()
    .find_map(|v| v.as_str())
    .unwrap_or_default()
    .to_owned()
}

/// `$lastn`: the newest `max` results per observation code.
fn last_n_per_code(mut matches: Vec<Resource>, max: usize) -> Vec<Resource> {
    matches.sort_by_key(|r| std::cmp::Reverse(clinical_date(r)));
    let mut per_code: BTreeMap<String, usize> = BTreeMap::new();
    matches
        .into_iter()
        .filter(|r| {
            let code = codings_of(&r["code"])
                .first()
                .map(|(s, c)| format!("{}|{}", s.unwrap_or(""), c.unwrap_or("")))
                .unwrap_or_default();
            let count = per_code.entry(code).or_default();
            *count += 1;
            *count <= max
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> (ResourceStore, PatientScope) {
        let mut store = ResourceStore::default();
        for r in [
            json!({"resourceType":"Patient","id":"p1","identifier":[{"system":BSN_SYSTEM,"value":"999000019"}],
                   "generalPractitioner":[{"reference":"Practitioner/gp","display":"GP"}]}),
            json!({"resourceType":"Practitioner","id":"gp"}),
            json!({"resourceType":"Patient","id":"p2","identifier":[{"system":BSN_SYSTEM,"value":"999000020"}]}),
            json!({"resourceType":"Observation","id":"bp-old","subject":{"reference":"Patient/p1"},
                   "code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]},"effectiveDateTime":"2020-01-01T10:00:00+01:00"}),
            json!({"resourceType":"Observation","id":"bp-new","subject":{"reference":"Patient/p1"},
                   "code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]},"effectiveDateTime":"2021-01-01T10:00:00+01:00"}),
            json!({"resourceType":"Observation","id":"other","subject":{"reference":"Patient/p2"},
                   "code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]}}),
            json!({"resourceType":"Provenance","id":"prov","target":[{"reference":"Observation/bp-new"}]}),
        ] {
            store.add(r).unwrap();
        }
        let scope = PatientScope {
            patient_ref: "Patient/p1".into(),
            bsn: "999000019".into(),
        };
        (store, scope)
    }

    fn ids(hits: &[Resource]) -> Vec<&str> {
        hits.iter().map(|r| r["id"].as_str().unwrap()).collect()
    }

    #[test]
    fn searches_stay_inside_the_authorized_patient() {
        let (store, scope) = store();
        let url = SearchUrl::parse_relative("Observation?code=http://loinc.org|85354-9").unwrap();
        assert_eq!(
            ids(&store.search(&url, &scope).unwrap().matches),
            ["bp-old", "bp-new"]
        );
    }

    #[test]
    fn a_search_for_another_bsn_is_forbidden() {
        let (store, scope) = store();
        let url = SearchUrl::parse_relative(
            "Observation?patient.identifier=http://fhir.nl/fhir/NamingSystem/bsn|999000020",
        )
        .unwrap();
        assert_eq!(
            store.search(&url, &scope).unwrap_err(),
            SearchError::OtherPatient
        );
    }

    #[test]
    fn lastn_and_sort_with_count_give_the_newest() {
        let (store, scope) = store();
        let lastn =
            SearchUrl::parse_relative("Observation/$lastn?code=http://loinc.org|85354-9").unwrap();
        assert_eq!(
            ids(&store.search(&lastn, &scope).unwrap().matches),
            ["bp-new"]
        );
        let sorted = SearchUrl::parse_relative("Observation?_sort=-date&_count=1").unwrap();
        assert_eq!(
            ids(&store.search(&sorted, &scope).unwrap().matches)[0],
            "bp-new"
        );
    }

    #[test]
    fn includes_and_revincludes_are_resolved_per_page() {
        let (store, scope) = store();
        let url =
            SearchUrl::parse_relative("Patient?_include=Patient:general-practitioner").unwrap();
        let hits = store.search(&url, &scope).unwrap();
        assert_eq!(ids(&store.includes(&url, &hits.matches)), ["gp"]);

        let url = SearchUrl::parse_relative("Observation?_revinclude=Provenance:target").unwrap();
        let hits = store.search(&url, &scope).unwrap();
        assert_eq!(
            ids(&store.includes(&url, &hits.matches[..1])),
            Vec::<&str>::new()
        );
        assert_eq!(ids(&store.includes(&url, &hits.matches)), ["prov"]);
    }

    #[test]
    fn unknown_parameters_are_refused() {
        let (store, scope) = store();
        let url = SearchUrl::parse_relative("Observation?name=x").unwrap();
        assert!(matches!(
            store.search(&url, &scope),
            Err(SearchError::UnsupportedParam(..))
        ));
    }

    #[test]
    fn reachable_set_covers_references_and_provenance() {
        let (store, scope) = store();
        let reachable = store.reachable_from_patient(&scope);
        assert!(reachable.contains("Practitioner/gp"));
        assert!(reachable.contains("Provenance/prov"));
        assert!(!reachable.contains("Observation/other"));
        assert!(!reachable.contains("Patient/p2"));
    }
}

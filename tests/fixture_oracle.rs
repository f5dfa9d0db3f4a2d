//! The search engine of the simulated sender against an independent oracle: for every
//! catalogue row, `fixtures/patients/<key>/expected.json` lists by hand which resources
//! match and which are included. The engine must agree exactly.

use std::collections::BTreeSet;
use std::path::PathBuf;

use bgz_harness::fhir::search::SearchUrl;
use bgz_harness::fhir::store::{PatientScope, ResourceStore, resource_key};
use serde_json::Value;

fn keys(resources: &[std::sync::Arc<Value>]) -> BTreeSet<String> {
    resources.iter().filter_map(|r| resource_key(r)).collect()
}

fn listed(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn check_patient(key: &str) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/patients")
        .join(key);
    let store = ResourceStore::load_file(&dir.join("bgz.json")).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let bsn = expected["bsn"].as_str().unwrap();
    let patient = store.patient_by_bsn(bsn).unwrap();
    let scope = PatientScope {
        patient_ref: resource_key(patient).unwrap(),
        bsn: bsn.to_owned(),
    };

    let mut compared = 0;
    let rows = expected["msz2"]
        .as_array()
        .unwrap()
        .iter()
        .chain(expected["np1"].as_array().unwrap());
    for row in rows.chain(std::iter::once(&expected["documentreference"])) {
        let query = row["query"].as_str().unwrap();
        let url = SearchUrl::parse_relative(query).unwrap();
        let hits = store
            .search(&url, &scope)
            .unwrap_or_else(|e| panic!("{key}: `{query}` refused: {e}"));
        let (want_match, want_include) = if url.operation.as_deref() == Some("$lastn") {
            (listed(&row["lastn_match"]), listed(&row["lastn_include"]))
        } else {
            (listed(&row["match"]), listed(&row["include"]))
        };
        assert_eq!(
            keys(&hits.matches),
            want_match,
            "{key}: matches of `{query}`"
        );
        assert_eq!(
            keys(&store.includes(&url, &hits.matches)),
            want_include,
            "{key}: includes of `{query}`"
        );
        compared += 1;

        if row.get("count1_match").is_some() && url.operation.is_none() {
            let sorted =
                SearchUrl::parse_relative(&format!("{query}&_sort=-date&_count=1")).unwrap();
            let hits = store.search(&sorted, &scope).unwrap();
            assert_eq!(
                keys(&hits.matches[..1]),
                listed(&row["count1_match"]),
                "{key}: newest of `{query}`"
            );
            assert_eq!(
                keys(&store.includes(&sorted, &hits.matches[..1])),
                listed(&row["count1_include"]),
                "{key}: includes of the newest of `{query}`"
            );
        }
    }

    for (target, provenances) in expected["provenance"].as_object().unwrap() {
        let (rtype, _) = target.split_once('/').unwrap();
        let url =
            SearchUrl::parse_relative(&format!("{rtype}?_revinclude=Provenance:target")).unwrap();
        let page = vec![store.get(target).unwrap().clone()];
        let found: BTreeSet<String> = keys(&store.includes(&url, &page));
        assert_eq!(found, listed(provenances), "{key}: Provenance of {target}");
    }
    compared
}

#[test]
fn the_known_patients_searches_agree_with_the_hand_written_oracle() {
    assert!(check_patient("known") >= 56);
}

#[test]
fn the_unknown_patients_searches_agree_with_the_hand_written_oracle() {
    assert!(check_patient("unknown") >= 56);
}

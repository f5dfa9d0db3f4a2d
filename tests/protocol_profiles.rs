//! The protocol profile of a target selects the query catalogue and the "last known" form;
//! the reference node, serving and sending, handles every choice.

use assert_cmd::Command;

/// Runs known-patient in both directions with `profile`; returns the exit code, junit.xml
/// and the URLs of every exchange in results.json.
fn run_with_profile(profile: &str) -> (Option<i32>, String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("embedded.yaml");
    let text = format!(
        "name: profile-test\nkind: embedded\norganisation: {{ name: Ref, ura: \"90000456\" }}\n\
         departments:\n  - {{ id: cardiologie, name: Cardiologie, identifier: {{ system: \"urn:oid:2.999.90000456.1\", value: cardiologie }} }}\n\
         known-patients: [known, other]\nprotocol: {profile}\n"
    );
    std::fs::write(&target, text).unwrap();
    let output = Command::cargo_bin("bgz-harness")
        .unwrap()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "--progress",
            "never",
            "--phase",
            "technical-test",
            "--scenario",
            "known-patient",
            "--scenario",
            "known-patient-sends",
            "--target",
        ])
        .arg(&target)
        .arg("--reports")
        .arg(dir.path().join("reports"))
        .output()
        .unwrap();
    let junit = std::fs::read_to_string(dir.path().join("reports/technical-test/junit.xml"))
        .unwrap_or_default();
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("reports/technical-test/results.json")).unwrap(),
    )
    .unwrap();
    let urls = results["cases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["exchanges"].as_array().unwrap().iter())
        .filter_map(|x| x["url"].as_str().map(str::to_owned))
        .collect();
    (output.status.code(), junit, urls)
}

#[test]
fn every_catalogue_and_last_known_form_passes_against_the_reference_node() {
    for profile in [
        "{ catalogue: msz-2.0, last-known: sort-count, provenance: true }",
        "{ catalogue: msz-2.0, last-known: lastn, provenance: true }",
        "{ catalogue: msz-2.0, last-known: all, provenance: false }",
        "{ catalogue: np-1 }",
    ] {
        let (code, junit, _) = run_with_profile(profile);
        assert_eq!(code, Some(0), "profile {profile} failed:\n{junit}");
    }
}

#[test]
fn the_np1_catalogue_scopes_by_token_and_msz2_by_bsn() {
    let (_, _, urls) = run_with_profile("{ catalogue: np-1 }");
    let searches: Vec<&String> = urls
        .iter()
        .filter(|u| u.contains("/fhir/Condition"))
        .collect();
    assert!(!searches.is_empty(), "{urls:#?}");
    assert!(
        searches.iter().all(|u| !u.contains("patient.identifier")),
        "{searches:#?}"
    );
    assert!(
        urls.iter().any(|u| u.contains("/fhir/Observation/$lastn?")),
        "np-1 asks $lastn"
    );

    let (_, _, urls) = run_with_profile("{ catalogue: msz-2.0, last-known: sort-count }");
    let searches: Vec<&String> = urls
        .iter()
        .filter(|u| u.contains("/fhir/Condition"))
        .collect();
    assert!(
        searches.iter().all(|u| u.contains("patient.identifier")),
        "{searches:#?}"
    );
    assert!(
        urls.iter()
            .any(|u| u.contains("_sort=-date") && u.contains("_count=1"))
    );
}

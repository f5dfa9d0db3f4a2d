//! Runs the binary against the embedded reference node: the clean node passes, every fault
//! switch is caught by the check that guards its rule, and no report leaks patient data.

use std::path::Path;

use assert_cmd::Command;

mod common;
use common::fixture_secrets;

fn harness() -> Command {
    let mut command = Command::cargo_bin("bgz-harness").expect("the binary is built by cargo test");
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

fn run_into(reports: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    harness()
        .args([
            "run",
            "--progress",
            "never",
            "--phase",
            "technical-test",
            "--reports",
        ])
        .arg(reports)
        .args(extra)
        .assert()
}

fn junit(reports: &Path) -> String {
    let path = reports.join("technical-test").join("junit.xml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{} missing: {e}", path.display()))
}

/// (check name, message) of every failed check in a JUnit file.
fn failures(xml: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(xml).expect("junit.xml is well-formed XML");
    doc.descendants()
        .filter(|n| n.has_tag_name("failure"))
        .map(|n| n.text().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_clean_reference_node_passes_and_all_three_reports_are_written() {
    let dir = tempfile::tempdir().unwrap();
    run_into(dir.path(), &[]).code(0);

    let xml = junit(dir.path());
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert!(!cases.is_empty());
    assert!(failures(&xml).is_empty(), "{xml}");

    let html = std::fs::read_to_string(dir.path().join("technical-test/report.html")).unwrap();
    assert!(html.contains("notification-accepted") && html.contains("TT-1"));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("technical-test/results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["totals"]["passed"], cases.len());
    assert_eq!(json["totals"]["failed"], 0);
}

#[test]
fn every_exchange_of_an_embedded_run_goes_over_https() {
    let dir = tempfile::tempdir().unwrap();
    run_into(dir.path(), &[]).code(0);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("technical-test/results.json")).unwrap(),
    )
    .unwrap();
    let urls: Vec<&str> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|case| case["exchanges"].as_array().unwrap())
        .map(|exchange| exchange["url"].as_str().unwrap())
        .collect();
    assert!(urls.len() > 10, "{urls:?}");
    for url in urls {
        assert!(url.starts_with("https://"), "{url}");
    }
    assert!(junit(dir.path()).contains(r#"name="server-certificates" value="verified""#));
}

#[test]
fn skipping_server_verification_warns_and_marks_every_report() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_into(dir.path(), &["--insecure-skip-verify"]).code(0);
    let stderr = String::from_utf8_lossy(&output.get_output().stderr).into_owned();
    assert!(
        stderr.contains("warning: --insecure-skip-verify"),
        "{stderr}"
    );
    let html = std::fs::read_to_string(dir.path().join("technical-test/report.html")).unwrap();
    assert!(html.contains("INSECURE"));
    assert!(junit(dir.path()).contains(r#"name="server-certificates" value="skipped""#));
    let json = std::fs::read_to_string(dir.path().join("technical-test/results.json")).unwrap();
    assert!(json.contains(r#""insecure_skip_verify": true"#), "{json}");
}

/// Each fault, the scenario that exposes it, the check it must trip, and a phrase its
/// message must contain.
const FAULTS: [(&str, &str, &str, &str); 42] = [
    (
        "no-location",
        "known-patient",
        "notification-accepted",
        "instead of 201 Created",
    ),
    (
        "omit-authorization-base",
        "known-patient",
        "token-carries-authorization-base",
        "had no authorization_base field",
    ),
    (
        "skip-workflow-task",
        "known-patient",
        "workflow-task-read",
        "never read Task/",
    ),
    (
        "partial-searches",
        "known-patient",
        "every-notified-search-run",
        "were never run",
    ),
    (
        "ignore-paging",
        "known-patient",
        "every-page-fetched",
        "did not follow",
    ),
    (
        "skip-letter",
        "known-patient",
        "letter-retrieved-intact",
        "never retrieved the letter",
    ),
    (
        "corrupt-letter",
        "known-patient",
        "letter-retrieved-intact",
        "stored different bytes",
    ),
    (
        "wrong-patient",
        "known-patient",
        "referral-filed",
        "filed under patient",
    ),
    (
        "wrong-department",
        "known-patient",
        "referral-filed",
        "filed in department",
    ),
    (
        "ignore-cancellation",
        "cancel-after-pull",
        "referral-cancelled",
        "still Filed after the cancellation",
    ),
    (
        "repull-on-cancel",
        "cancel-after-pull",
        "pull-stopped",
        "new pull token(s) after the cancellation",
    ),
    (
        "no-authorization-base",
        "known-patient-sends",
        "notification-valid",
        "no authorization-base input",
    ),
    (
        "drop-includes",
        "known-patient-sends",
        "bundles-conform",
        "include-present",
    ),
    (
        "include-as-match",
        "known-patient-sends",
        "bundles-conform",
        "include-mode",
    ),
    (
        "wrong-profile",
        "known-patient-sends",
        "bundles-conform",
        "section-profile",
    ),
    (
        "omit-display",
        "known-patient-sends",
        "bundles-conform",
        "reference-display",
    ),
    (
        "serve-after-cancel",
        "cancel-sends",
        "pull-refused-after-cancel",
        "a new token was issued for the revoked authorization base",
    ),
    (
        "serve-after-cancel",
        "probe-pull-after-cancel",
        "probe-refused",
        "accepted the probe",
    ),
    (
        "truncate-pdf",
        "known-patient-sends",
        "letter-served-intact",
        "raw PDF",
    ),
    (
        "accept-any-token",
        "probe-notify-without-token",
        "probe-refused",
        "accepted the probe",
    ),
    (
        "ignore-audience",
        "probe-token-wrong-audience",
        "probe-refused",
        "accepted the probe",
    ),
    (
        "accept-replayed-assertion",
        "probe-token-replayed-assertion",
        "probe-refused",
        "accepted the probe",
    ),
    (
        "accept-expired-assertion",
        "probe-token-expired-assertion",
        "probe-refused",
        "accepted the probe",
    ),
    (
        "accept-invalid-bsn",
        "probe-notify-invalid-bsn",
        "probe-refused",
        "accepted the probe",
    ),
    (
        "accept-any-owner",
        "probe-notify-unknown-department",
        "probe-refused",
        "accepted the probe",
    ),
    (
        "answer-other-patients",
        "probe-search-other-patient",
        "probe-refused",
        "served data",
    ),
    (
        "serve-any-search",
        "probe-search-outside-notified-set",
        "probe-refused",
        "served data",
    ),
    (
        "serve-unreferenced",
        "probe-read-unreferenced-binary",
        "probe-refused",
        "accepted the probe",
    ),
    (
        "register-without-sbvz",
        "unknown-patient",
        "sbvz-checked-before-registration",
        "never asked SBV-Z",
    ),
    (
        "register-despite-sbvz",
        "unknown-patient-sbvz-not-found",
        "registration-follows-sbvz",
        "although SBV-Z did not verify",
    ),
    (
        "omit-birth-date",
        "unknown-patient-sends",
        "patient-verifiable",
        "does not allow an SBV-Z question",
    ),
    (
        "accept-expired-token",
        "probe-notify-with-expired-token",
        "probe-refused",
        "accepted the probe",
    ),
    (
        "accept-expired-token",
        "probe-search-with-expired-token",
        "probe-refused",
        "served data",
    ),
    (
        "accept-token-of-another-client",
        "probe-notify-with-token-of-another-client",
        "probe-refused",
        "accepted the probe",
    ),
    (
        "accept-token-of-another-client",
        "probe-search-with-token-of-another-client",
        "probe-refused",
        "served data",
    ),
    (
        "accept-foreign-ca",
        "probe-client-cert-foreign-ca",
        "probe-refused",
        "accepted a token request with a client certificate from a foreign CA",
    ),
    (
        "ignore-revocation",
        "probe-client-cert-revoked",
        "probe-refused",
        "accepted a token request with a revoked client certificate",
    ),
    (
        "accept-expired-certificate",
        "probe-client-cert-expired",
        "probe-refused",
        "accepted a token request with an expired client certificate",
    ),
    (
        "log-patient-data",
        "probe-log-free-of-patient-data",
        "log-free-of-patient-data",
        "the BSN of the patient on line",
    ),
    (
        "ignore-authorization-assertion",
        "probe-token-without-authorization-assertion",
        "probe-refused",
        "accepted the probe",
    ),
    (
        "accept-any-requester",
        "probe-notify-on-behalf-of-another",
        "probe-refused",
        "accepted the probe",
    ),
    (
        "accept-base-from-anyone",
        "probe-pull-token-for-another-care-provider",
        "probe-refused",
        "accepted the probe",
    ),
];

#[test]
fn every_fault_switch_is_caught_by_its_named_check() {
    let listed = harness().args(["node", "faults"]).output().unwrap();
    let listed: Vec<String> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut covered: Vec<&str> = FAULTS.iter().map(|(f, _, _, _)| *f).collect();
    covered.dedup();
    assert_eq!(listed, covered, "every listed fault needs a row in FAULTS");

    // Four runs at a time: most of a run is waiting (the expired-token probes wait seconds).
    for chunk in FAULTS.chunks(4) {
        std::thread::scope(|scope| {
            for (fault, scenario, check, phrase) in chunk {
                scope.spawn(move || {
                    let dir = tempfile::tempdir().unwrap();
                    run_into(dir.path(), &["--node-fault", fault, "--scenario", scenario]).code(1);
                    let failures = failures(&junit(dir.path()));
                    let caught = failures.iter().any(|f| {
                        f.contains(&format!("check {check} [FAIL]")) && f.contains(phrase)
                    });
                    assert!(
                        caught,
                        "fault {fault}: expected {check} to fail with `{phrase}`, got {failures:#?}"
                    );
                });
            }
        });
    }
}

/// Cases that check one BSN at SBV-Z take turns; a case that waited for its turn with its
/// notification token in hand (4 s on the embedded node) had it run out, and the node's
/// right refusal was reported as the target's failure. A fault that slows those cases
/// down made it show.
#[test]
fn no_notification_is_refused_for_a_token_that_ran_out_while_the_harness_waited() {
    // Before the fix, two of three runs showed it.
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        run_into(dir.path(), &["--node-fault", "omit-authorization-base"]).code(1);
        for failure in failures(&junit(dir.path())) {
            assert!(
                !failure.contains("access token has expired"),
                "the harness let its own token run out: {failure}"
            );
        }
    }
}

#[test]
fn repeated_clean_runs_never_fail_falsely() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        run_into(dir.path(), &["--jobs", "8"]).code(0);
    }
}

/// BSNs, names and birth dates of every fixture patient.

#[test]
fn no_report_contains_a_fixture_bsn_name_birth_date_or_token() {
    let secrets = fixture_secrets();
    let dir = tempfile::tempdir().unwrap();
    // Every phase of a clean run, and a failing run, which shows the most evidence.
    harness()
        .args(["run", "--progress", "never", "--reports"])
        .arg(dir.path().join("clean"))
        .assert()
        .code(0);
    run_into(
        &dir.path().join("faulty"),
        &["--node-fault", "wrong-patient"],
    )
    .code(1);

    let mut checked = 0;
    for run in ["clean", "faulty"] {
        for phase in std::fs::read_dir(dir.path().join(run)).unwrap() {
            let phase = phase.unwrap().path();
            for file in ["junit.xml", "report.html", "results.json"] {
                let path = phase.join(file);
                let text = std::fs::read_to_string(&path).unwrap();
                checked += 1;
                for secret in &secrets {
                    assert!(
                        !text.contains(secret.as_str()),
                        "{} leaks a fixture value",
                        path.display()
                    );
                }
                let tokens = [
                    "\"ab-",
                    "\"at-",
                    "\"nt-",
                    "\"pt-",
                    "\"rt-",
                    "Bearer at-",
                    "Bearer nt-",
                    "Bearer pt-",
                    "Bearer rt-",
                    "eyJ",
                ];
                for marker in tokens.iter().chain(&["PRIVATE KEY"]) {
                    assert!(
                        !text.contains(marker),
                        "{} leaks a token or key ({marker})",
                        path.display()
                    );
                }
            }
        }
    }
    assert_eq!(
        checked, 15,
        "4 phases of the clean run and 1 of the faulty run, 3 files each"
    );
}

#[test]
fn an_unredacted_run_says_so_in_every_report() {
    let dir = tempfile::tempdir().unwrap();
    run_into(dir.path(), &["--unredacted"]).code(0);
    let html = std::fs::read_to_string(dir.path().join("technical-test/report.html")).unwrap();
    assert!(html.contains("UNREDACTED"));
    assert!(junit(dir.path()).contains(r#"name="redacted" value="no""#));
}

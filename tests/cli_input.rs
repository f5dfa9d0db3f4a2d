//! Bad input gets a clear error that names the file, line and column, and exit code 2.

use assert_cmd::Command;

fn harness() -> Command {
    let mut command = Command::cargo_bin("bgz-harness").expect("the binary is built by cargo test");
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

#[test]
fn validate_accepts_the_shipped_project() {
    harness().arg("validate").assert().code(0);
}

#[test]
fn validate_names_file_line_and_column_of_a_broken_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    let good = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/known-patient.yaml"
    ))
    .unwrap();
    let broken = good.replace("    await-pull:", "    await-pul:");
    let line = broken
        .lines()
        .position(|l| l.contains("await-pul:"))
        .unwrap()
        + 1;
    std::fs::write(&path, broken).unwrap();

    let output = harness().arg("validate").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let expected = format!("{}:{line}:5: unknown field `await-pul`", path.display());
    assert!(
        stderr.contains(&expected),
        "expected `{expected}` in:\n{stderr}"
    );
}

#[test]
fn a_run_with_a_broken_target_file_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.yaml");
    std::fs::write(
        &path,
        "name: x\nkind: remote\norganisation: { name: y, ura: 123 }\ndepartments: []\n",
    )
    .unwrap();
    let output = harness()
        .args(["run", "--progress", "never", "--target"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("{}:3:", path.display())),
        "{stderr}"
    );
}

#[test]
fn unknown_filters_and_faults_are_input_errors() {
    harness()
        .args(["run", "--phase", "no-such-phase"])
        .assert()
        .code(2);
    harness()
        .args(["run", "--node-fault", "no-such-fault"])
        .assert()
        .code(2);
    harness().args(["list", "--shard", "3/2"]).assert().code(2);
    harness().args(["run", "--jobs", "0"]).assert().code(2);
    for command in ["list", "run"] {
        let output = harness()
            .args([command, "--tag", "no-such-tag"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.contains("no-such-tag")
                && stderr.contains("known tags:")
                && stderr.contains("probe"),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn a_filtered_run_leaves_the_reports_of_phases_it_did_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let earlier = dir.path().join("1-op-1");
    std::fs::create_dir_all(&earlier).unwrap();
    std::fs::write(earlier.join("junit.xml"), "earlier results").unwrap();
    let output = harness()
        .args(["run", "--progress", "never", "--tag", "probe", "--reports"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("in phase(s) technical-test\n"),
        "probes run in the technical test only: {stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(earlier.join("junit.xml")).unwrap(),
        "earlier results"
    );
    // The reports say they cover a selection, not the whole phase.
    let junit = std::fs::read_to_string(dir.path().join("technical-test/junit.xml")).unwrap();
    assert!(
        junit.contains(r#"name="filters" value="--tag probe""#),
        "{junit}"
    );
    let html = std::fs::read_to_string(dir.path().join("technical-test/report.html")).unwrap();
    assert!(html.contains("Filtered run (--tag probe)"));
}

#[test]
fn an_unredacted_run_warns_on_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let output = harness()
        .args(["run", "--progress", "never", "--scenario", "known-patient"])
        .args(["--phase", "technical-test", "--unredacted", "--reports"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("warning: --unredacted"), "{stderr}");
}

#[test]
fn list_shows_the_expanded_cases() {
    let output = harness().arg("list").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("technical-test/known-patient/90000123-verwijzer-interne/cardiologie"),
        "{stdout}"
    );
}

#[test]
fn node_faults_lists_one_name_per_line() {
    let output = harness().args(["node", "faults"]).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.lines().count() >= 9);
    assert!(stdout.lines().all(|l| !l.contains(' ')));
    // --verbose: the descriptions start in one column, after the longest name.
    let verbose = harness()
        .args(["node", "faults", "--verbose"])
        .output()
        .unwrap();
    let verbose = String::from_utf8(verbose.stdout).unwrap();
    let columns: std::collections::BTreeSet<usize> = verbose
        .lines()
        .map(|l| l.find("  ").unwrap() + l[l.find("  ").unwrap()..].find(|c| c != ' ').unwrap())
        .collect();
    assert_eq!(columns.len(), 1, "{verbose}");
}

#[test]
fn check_passes_the_fixtures_and_names_each_broken_rule() {
    harness()
        .args(["check", "fixtures/patients/known/bgz.json"])
        .assert()
        .code(0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("condition.json");
    std::fs::write(&path, r#"{"resourceType":"Condition","id":"x","subject":{"reference":"Patient/1"},"code":{"coding":[{"code":"1"}]}}"#).unwrap();
    let output = harness().arg("check").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    for rule in [
        "meta-profile",
        "reference-display",
        "coding-system-code",
        "codeableconcept-display",
    ] {
        assert!(stdout.contains(rule), "{rule} missing in {stdout}");
    }

    std::fs::write(&path, "{ not json").unwrap();
    let output = harness().arg("check").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("condition.json:1:")
    );
}

//! The reference node as a separate process (`node serve`) driven through a target file,
//! and confirm steps answered from an answers file or at the terminal when the target has
//! no inspection API.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("bgz-harness")
}

/// Starts `node serve` with its test PKI in `dir/pki` (the target file copy in
/// `dir/targets` finds it there as `../pki`).
fn serve(dir: &Path) -> (Server, String, u16) {
    // A free port for the harness's SBV-Z double, which the node must know in advance.
    let sbvz_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "node",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--target",
            "targets/reference-node.yaml",
            "--certs",
        ])
        .arg(dir.join("pki"))
        .arg("--sbvz")
        .arg(format!("https://127.0.0.1:{sbvz_port}"))
        .stdout(Stdio::piped())
        // The node's log, which the tests read back.
        .stderr(std::fs::File::create(dir.join("node.log")).unwrap())
        .spawn()
        .expect("node serve starts");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("node serve prints its address")
            .unwrap();
        if let Some(addr) = line.strip_prefix("reference node listening on ") {
            break addr.trim().to_owned();
        }
    };
    assert!(addr.starts_with("127.0.0.1:"), "unexpected address: {addr}");
    (server, addr, sbvz_port)
}

/// A copy of targets/reference-node.yaml pointing at `addr`, optionally without the
/// inspection API (as a real node would be).
fn target_file(dir: &Path, addr: &str, sbvz_port: u16, inspect: bool) -> PathBuf {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/targets/reference-node.yaml"
    ))
    .unwrap();
    let mut text = text
        .replace("127.0.0.1:8301", addr)
        .replace("127.0.0.1:8400", "127.0.0.1:0")
        .replace("127.0.0.1:8500", &format!("127.0.0.1:{sbvz_port}"));
    if !inspect {
        text = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("inspect:"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    let targets = dir.join("targets");
    std::fs::create_dir_all(&targets).unwrap();
    let path = targets.join("node.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(target: &Path, reports: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "--progress",
            "never",
            "--phase",
            "technical-test",
            "--tag",
            "core",
            "--target",
        ])
        .arg(target)
        .arg("--reports")
        .arg(reports)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_separately_served_reference_node_passes_through_its_target_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, sbvz_port) = serve(dir.path());
    let target = target_file(dir.path(), &addr, sbvz_port, true);
    // The probes too: the certificate probes read their certificates through the target file.
    let output = run(&target, &dir.path().join("reports"), &["--tag", "probe"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let results =
        std::fs::read_to_string(dir.path().join("reports/technical-test/results.json")).unwrap();
    for probe in [
        "probe-client-cert-revoked",
        "probe-search-with-expired-token",
    ] {
        assert!(results.contains(probe), "{probe} ran");
    }
    // The node logged the run, and no patient data.
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(
        log.contains("accepted notification") && log.contains("issued a pull token"),
        "{log}"
    );
    for secret in common::fixture_secrets() {
        assert!(!log.contains(&secret), "the node's log holds `{secret}`");
    }
    let junit =
        std::fs::read_to_string(dir.path().join("reports/technical-test/junit.xml")).unwrap();
    assert!(
        junit.contains(&format!("http://{addr}")) || junit.contains("node.yaml"),
        "{junit}"
    );
}

#[test]
fn without_inspection_and_answers_confirm_steps_are_not_run_never_passed() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, sbvz_port) = serve(dir.path());
    let target = target_file(dir.path(), &addr, sbvz_port, false);
    let output = run(
        &target,
        &dir.path().join("reports"),
        &["--interactive", "never"],
    );
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("reports/technical-test/results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        json["totals"]["not_run"], 3,
        "the three core cases with a confirm step"
    );
    assert_eq!(json["totals"]["failed"], 0);
}

#[test]
fn certificate_probes_without_their_certificates_are_not_run_never_passed() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, sbvz_port) = serve(dir.path());
    let target = target_file(dir.path(), &addr, sbvz_port, true);
    let text = std::fs::read_to_string(&target).unwrap();
    let without: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("../pki/expired-client") && !l.contains("../pki/other-org"))
        .collect();
    std::fs::write(&target, without.join("\n")).unwrap();
    let output = Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--progress", "never", "--phase", "technical-test"])
        .args(["--scenario", "probe-client-cert-expired"])
        .args(["--scenario", "probe-notify-with-token-of-another-client"])
        .args(["--scenario", "probe-client-cert-revoked"])
        .arg("--target")
        .arg(&target)
        .arg("--reports")
        .arg(dir.path().join("reports"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "not run is not a pass");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("reports/technical-test/results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["totals"]["not_run"], 2, "{json:#}");
    assert_eq!(
        json["totals"]["passed"], 1,
        "the revoked certificate is still named"
    );
    let text = json.to_string();
    assert!(text.contains("tls.probe-certificates.expired"), "{text}");
    assert!(
        text.contains("tls.probe-certificates.other-organisation"),
        "{text}"
    );
}

#[test]
fn an_answers_file_answers_confirm_steps_and_a_no_fails_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, sbvz_port) = serve(dir.path());
    let target = target_file(dir.path(), &addr, sbvz_port, false);
    let answers = dir.path().join("answers.yaml");
    std::fs::write(
        &answers,
        "answers:\n  - case: \"*/known-patient/*\"\n    fact: referral-filed\n    answer: no\n    note: not in the worklist\n  - case: \"*\"\n    fact: referral-filed\n    answer: yes\n  - case: \"*\"\n    fact: referral-cancelled\n    answer: yes\n",
    )
    .unwrap();
    let output = run(
        &target,
        &dir.path().join("reports"),
        &["--answers", answers.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(1));
    let junit =
        std::fs::read_to_string(dir.path().join("reports/technical-test/junit.xml")).unwrap();
    assert!(junit.contains("denied by answers file"), "{junit}");
    assert!(junit.contains("not in the worklist"));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("reports/technical-test/results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["totals"]["failed"], 1, "only known-patient was denied");
    assert_eq!(
        json["totals"]["passed"], 5,
        "cancel-after-pull, unknown-patient and the three target-sends cases"
    );
}

#[test]
fn confirm_steps_are_asked_at_the_terminal_when_interactive() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, sbvz_port) = serve(dir.path());
    let target = target_file(dir.path(), &addr, sbvz_port, false);
    let mut child = Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "--progress",
            "never",
            "--phase",
            "technical-test",
            "--tag",
            "core",
            "--interactive",
            "always",
            "--target",
        ])
        .arg(&target)
        .arg("--reports")
        .arg(dir.path().join("reports"))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // One answer per confirm step: three core cases with one confirm step each.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"y\nyes\ny\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("confirm ["), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let junit =
        std::fs::read_to_string(dir.path().join("reports/technical-test/junit.xml")).unwrap();
    assert!(junit.contains("confirmed by the tester at the terminal"));
}

/// Replaces the target file's `control` endpoint with `triggers` (as a real node would
/// need: a vendor's own HTTP call or script makes it send and cancel).
fn with_triggers(path: &Path, triggers: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("control:"))
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text.push_str(triggers);
    std::fs::write(path, text).unwrap();
}

#[test]
fn http_triggers_from_the_target_file_make_the_target_send_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, sbvz_port) = serve(dir.path());
    let target = target_file(dir.path(), &addr, sbvz_port, true);
    let send_body = r#"{\"bsn\":\"{bsn}\",\"notification_base\":\"{notification-base}\",\"token_url\":\"{token-url}\",\"receiver_ura\":\"90000123\",\"owner\":{\"system\":\"urn:oid:2.999.90000123.1\",\"value\":\"{department}\"}}"#;
    let triggers = format!(
        "triggers:\n  send:\n    http: {{ url: \"https://{addr}/control/send\", body: \"{send_body}\" }}\n  cancel:\n    http: {{ url: \"https://{addr}/control/cancel\", body: \"{{\\\"identifier\\\":\\\"{{identifier}}\\\"}}\" }}\n"
    );
    with_triggers(&target, &triggers);
    let output = Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "--progress",
            "never",
            "--phase",
            "technical-test",
            "--scenario",
            "cancel-sends",
            "--target",
        ])
        .arg(&target)
        .arg("--reports")
        .arg(dir.path().join("reports"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn a_failing_trigger_command_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, sbvz_port) = serve(dir.path());
    let target = target_file(dir.path(), &addr, sbvz_port, true);
    with_triggers(
        &target,
        "triggers:\n  send:\n    command: \"echo no vendor script here >&2; exit 3\"\n",
    );
    let output = Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "--progress",
            "never",
            "--phase",
            "technical-test",
            "--scenario",
            "known-patient-sends",
            "--target",
        ])
        .arg(&target)
        .arg("--reports")
        .arg(dir.path().join("reports"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let junit =
        std::fs::read_to_string(dir.path().join("reports/technical-test/junit.xml")).unwrap();
    assert!(
        junit.contains("the trigger command failed") && junit.contains("no vendor script here"),
        "{junit}"
    );
}

#[test]
fn in_production_the_sbvz_check_is_a_confirm_answered_by_the_tester() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, sbvz_port) = serve(dir.path());
    let target = target_file(dir.path(), &addr, sbvz_port, false);
    let answers = dir.path().join("answers.yaml");
    std::fs::write(
        &answers,
        "answers:\n  - { case: \"*\", fact: sbvz-checked, answer: yes, note: seen in the SBV-Z log }\n  - { case: \"*\", fact: referral-filed, answer: yes }\n",
    )
    .unwrap();
    let output = Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "--progress",
            "never",
            "--phase",
            "1-op-1",
            "--scenario",
            "unknown-patient",
            "--interactive",
            "never",
            "--answers",
        ])
        .arg(&answers)
        .arg("--target")
        .arg(&target)
        .arg("--reports")
        .arg(dir.path().join("reports"))
        .output()
        .unwrap();
    let junit = std::fs::read_to_string(dir.path().join("reports/1-op-1/junit.xml")).unwrap();
    assert_eq!(output.status.code(), Some(0), "{junit}");
    assert!(
        junit.contains("sbvz-checked-before-registration: confirmed by answers file"),
        "{junit}"
    );
}

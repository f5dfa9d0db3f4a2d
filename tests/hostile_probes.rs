//! Attacks on the security probes: the expired-token probes against token endpoints whose
//! `expires_in` is odd, slow or missing; the certificate probes against targets that let a
//! bad client certificate through, close without an alert or answer with an unrelated
//! alert; broken probe certificates in the target file; `protocol.access-token-lifetime`;
//! and the `log-free-of-patient-data` confirm step against a hostile inspection log.
//!
//! Every run is bounded in time, talks only to servers on 127.0.0.1 that the test starts
//! itself, and must keep patient data out of every report and out of the console.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{
    Endpoints, Finished, HostileServer, NodeProcess, Reports, Seen, Tls, Wire, fixture_secrets,
    good_notification, good_token, harness, harness_tls, response, run_bounded, short_project,
    target_file, text,
};
use serde_json::Value;

/// Longest one hostile run may take.
const LIMIT: Duration = Duration::from_secs(40);
/// The target file's exchange timeout.
const EXCHANGE_TIMEOUT: &str = "2s";
/// The `within` of the expired-token probes in the copied scenarios.
const WITHIN: Duration = Duration::from_secs(4);
/// The known patient's BSN, family name (own name without prefix) and birth date: what the
/// hostile logs leak.
const BSN: &str = "999923067";
const FAMILY: &str = "van Lindeboom";
const OWN_NAME: &str = "Lindeboom";
const BIRTH_DATE: &str = "1958-11-14";
const EXPIRED_TOKEN: &str = "probe-notify-with-expired-token";
const EXPIRED_PULL_TOKEN: &str = "probe-search-with-expired-token";
const LOG_PROBE: &str = "probe-log-free-of-patient-data";
const CERT_PROBES: [&str; 3] = [
    "probe-client-cert-foreign-ca",
    "probe-client-cert-expired",
    "probe-client-cert-revoked",
];
const ANOTHER_CLIENT: &str = "probe-notify-with-token-of-another-client";

/// The probe certificates of the test PKI, as a `tls.probe-certificates` section.
const PROBE_CERTIFICATES: &str = "  probe-certificates:\n    foreign-ca: { cert: ../pki/foreign-client.pem, key: ../pki/foreign-client.key.pem }\n    expired: { cert: ../pki/expired-client.pem, key: ../pki/expired-client.key.pem }\n    revoked: { cert: ../pki/revoked-client.pem, key: ../pki/revoked-client.key.pem }\n    other-organisation: { cert: ../pki/other-org-client.pem, key: ../pki/other-org-client.key.pem }\n";

const OPERATION_OUTCOME: &[u8] = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login","diagnostics":"the access token has expired"}]}"#;

// --- set-up ---

/// A copy of the project with a target file, in a temporary folder.
struct Project {
    dir: tempfile::TempDir,
    root: PathBuf,
    target: PathBuf,
    reports: PathBuf,
}

/// A project whose target is at `endpoints`; `tls_extra` is appended inside the target's
/// `tls:` section (probe certificates), `protocol` is the target's protocol section body.
/// The expired-token probes of the copy wait at most [`WITHIN`].
fn project(endpoints: &Endpoints, tls_extra: &str, protocol: &str) -> Project {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let root = short_project(dir.path());
    for (scenario, attack) in [
        (EXPIRED_TOKEN, "notify-with-expired-token"),
        (EXPIRED_PULL_TOKEN, "search-with-expired-token"),
    ] {
        edit(
            &root,
            scenario,
            &format!("probe: {{ attack: {attack} }}"),
            &format!(
                "probe: {{ attack: {attack}, within: {}s }}",
                WITHIN.as_secs()
            ),
        );
    }
    let target = target_file(dir.path(), endpoints, EXCHANGE_TIMEOUT);
    let mut text = std::fs::read_to_string(&target).expect("the target file is readable");
    assert!(
        text.ends_with("server-key: ../pki/harness-server.key.pem\n"),
        "target_file no longer ends with its tls section; update this helper"
    );
    text.push_str(tls_extra);
    if !protocol.is_empty() {
        text.push_str("protocol:\n");
        text.push_str(protocol);
    }
    std::fs::write(&target, text).expect("the target file is writable");
    let reports = dir.path().join("reports");
    Project {
        dir,
        root,
        target,
        reports,
    }
}

/// Replaces `from` by `to` in the copied scenario `id`, asserting `from` is there.
fn edit(root: &Path, id: &str, from: &str, to: &str) {
    let path = root.join("scenarios").join(format!("{id}.yaml"));
    let text = std::fs::read_to_string(&path).expect("the copied scenario is readable");
    assert!(
        text.contains(from),
        "{id}.yaml no longer holds `{from}`; update this test"
    );
    std::fs::write(&path, text.replace(from, to)).expect("the copied scenario is writable");
}

/// Runs `scenarios` of the technical test against the project's target, bounded by `limit`.
async fn run(project: &Project, scenarios: &[&str], limit: Duration) -> Finished {
    let mut args = vec![
        "--root",
        text(&project.root),
        "run",
        "--target",
        text(&project.target),
        "--phase",
        "technical-test",
        "--progress",
        "never",
        "--interactive",
        "never",
        "--reports",
        text(&project.reports),
    ];
    for scenario in scenarios {
        args.extend(["--scenario", scenario]);
    }
    let finished = run_bounded(project.dir.path(), &args, &project.reports, limit).await;
    eprintln!(
        "{scenarios:?}: exit {:?} in {:?}\nstdout:\n{}\nstderr:\n{}",
        finished.code, finished.elapsed, finished.stdout, finished.stderr
    );
    finished
}

/// Asserts the run ended with `code`, without a panic or a signal, and returns its reports
/// after checking that none of them, nor the console, holds patient data.
fn judged(finished: &Finished, code: i32) -> Reports {
    assert_no_panic(finished);
    assert_eq!(
        finished.code,
        Some(code),
        "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
        finished.stdout,
        finished.stderr
    );
    let reports = finished.reports();
    assert_private(finished, &reports);
    reports
}

fn assert_no_panic(finished: &Finished) {
    assert_eq!(
        finished.signal, None,
        "CRASH: killed by signal:\n{}",
        finished.stderr
    );
    assert_ne!(
        finished.code,
        Some(101),
        "PANIC: the harness panicked:\n{}",
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("panicked"),
        "PANIC: a thread of the harness panicked:\n{}",
        finished.stderr
    );
}

/// No fixture BSN, name or birth date in any report or on the console.
fn assert_private(finished: &Finished, reports: &Reports) {
    let json = reports.json.to_string();
    let places = [
        ("junit.xml", reports.junit.as_str()),
        ("report.html", reports.html.as_str()),
        ("results.json", json.as_str()),
        ("stdout", finished.stdout.as_str()),
        ("stderr", finished.stderr.as_str()),
    ];
    for secret in fixture_secrets() {
        for (place, text) in places {
            assert!(
                !text.contains(&secret),
                "PRIVACY: {place} holds the patient data `{secret}`"
            );
        }
    }
}

/// The case of `scenario` in results.json.
fn case<'a>(reports: &'a Reports, scenario: &str) -> &'a Value {
    reports.json["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["scenario"] == scenario)
        .unwrap_or_else(|| panic!("results.json has no case of {scenario}"))
}

/// The first step of `kind` in the case of `scenario`.
fn step<'a>(reports: &'a Reports, scenario: &str, kind: &str) -> &'a Value {
    case(reports, scenario)["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["kind"] == kind)
        .unwrap_or_else(|| panic!("the case of {scenario} has no {kind} step"))
}

/// A step's problem and its checks' messages, in one text.
fn said(step: &Value) -> String {
    let mut text = step["problem"].as_str().unwrap_or_default().to_owned();
    for check in step["checks"].as_array().into_iter().flatten() {
        text.push('\n');
        text.push_str(check["message"].as_str().unwrap_or_default());
    }
    text
}

/// Asserts the step's verdict, showing what it said when it differs.
fn assert_verdict(step: &Value, verdict: &str) {
    assert_eq!(
        step["verdict"],
        verdict,
        "step `{}` said: {}",
        step["name"],
        said(step)
    );
}

/// The known patient's case of `scenario` must not pass, and its probe or confirm step
/// must say every phrase of `phrases`.
fn assert_step_says(step: &Value, phrases: &[&str]) {
    let text = said(step).to_lowercase();
    for phrase in phrases {
        assert!(
            text.contains(&phrase.to_lowercase()),
            "UNCLEAR: step `{}` does not say `{phrase}`: {}",
            step["name"],
            said(step)
        );
    }
}

// --- a hostile receiving target for the expired-token probe ---

/// What a hostile target saw, with when.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(Seen, Instant)>>>);

impl Log {
    fn push(&self, seen: &Seen) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((seen.clone(), Instant::now()));
    }

    fn at(&self, path: &str) -> Vec<(Seen, Instant)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(s, _)| s.target.starts_with(path))
            .cloned()
            .collect()
    }
}

/// A token answer whose members after `token_type` are `tail` (raw JSON, starting with a
/// comma, or empty).
fn token_with_tail(tail: &str) -> Wire {
    response(
        "200 OK",
        &[("Content-Type", "application/json")],
        format!(r#"{{"access_token":"probe-token-for-expiry","token_type":"Bearer"{tail}}}"#)
            .as_bytes(),
    )
}

/// A refusal as protocol.md wants it for an expired token.
fn refuse_401() -> Wire {
    response(
        "401 Unauthorized",
        &[
            ("WWW-Authenticate", "Bearer error=\"invalid_token\""),
            ("Content-Type", "application/fhir+json"),
        ],
        OPERATION_OUTCOME,
    )
}

/// Runs the notify-with-expired-token probe against a node whose token endpoint answers
/// `token()` and whose notification endpoint answers `notify()`.
async fn expired_token_run(
    token: impl Fn() -> Wire + Send + Sync + 'static,
    notify: impl Fn() -> Wire + Send + Sync + 'static,
    protocol: &str,
) -> (Finished, Log, Project) {
    let log = Log::default();
    let seen = log.clone();
    let server = HostileServer::start(move |request| {
        seen.push(request);
        if request.target.starts_with("/token") {
            token()
        } else {
            notify()
        }
    })
    .await;
    let project = project(
        &Endpoints {
            notification: format!("{}/fhir", server.base()),
            token: format!("{}/token", server.base()),
            ..Endpoints::default()
        },
        "",
        protocol,
    );
    let finished = run(&project, &[EXPIRED_TOKEN], LIMIT).await;
    drop(server);
    (finished, log, project)
}

/// The time between the token answer and the notification that presented it.
fn token_to_notification(log: &Log) -> Duration {
    let token = log.at("/token");
    let task = log.at("/fhir/Task");
    assert_eq!(token.len(), 1, "one token request");
    assert_eq!(task.len(), 1, "one notification");
    assert_eq!(
        task[0].0.header("authorization"),
        Some("Bearer probe-token-for-expiry"),
        "the probe must present the token it was issued"
    );
    task[0].1.duration_since(token[0].1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_zero_is_waited_out_for_a_second_and_a_401_passes() {
    let (finished, log, _project) =
        expired_token_run(|| token_with_tail(r#","expires_in":0"#), refuse_401, "").await;
    let reports = judged(&finished, 0);
    assert_verdict(step(&reports, EXPIRED_TOKEN, "probe"), "pass");
    let waited = token_to_notification(&log);
    assert!(
        waited >= Duration::from_secs(1) && waited < WITHIN,
        "waited {waited:?} between the token and its use"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_the_target_accepts_fails_the_probe() {
    let (finished, log, _project) = expired_token_run(
        || token_with_tail(r#","expires_in":1"#),
        good_notification,
        "",
    )
    .await;
    let reports = judged(&finished, 1);
    let probe = step(&reports, EXPIRED_TOKEN, "probe");
    assert_verdict(probe, "fail");
    assert_step_says(probe, &["accepted the probe with 201"]);
    assert!(token_to_notification(&log) >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_living_longer_than_within_is_an_error_without_waiting() {
    let (finished, log, _project) = expired_token_run(
        || token_with_tail(r#","expires_in":100000"#),
        good_notification,
        "",
    )
    .await;
    let reports = judged(&finished, 1);
    let probe = step(&reports, EXPIRED_TOKEN, "probe");
    assert_verdict(probe, "error");
    assert_step_says(probe, &["100000 s", "within"]);
    assert!(log.at("/fhir/Task").is_empty(), "a live token was used");
    assert!(finished.elapsed < Duration::from_secs(15), "it waited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_u64_max_is_an_error_not_a_panic() {
    let (finished, log, _project) = expired_token_run(
        || token_with_tail(r#","expires_in":18446744073709551615"#),
        good_notification,
        "",
    )
    .await;
    let reports = judged(&finished, 1);
    let probe = step(&reports, EXPIRED_TOKEN, "probe");
    assert_verdict(probe, "error");
    assert_step_says(probe, &["within"]);
    assert!(log.at("/fhir/Task").is_empty(), "a live token was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_expires_in_waits_the_access_token_lifetime_of_the_target_file() {
    let (finished, log, _project) = expired_token_run(
        || token_with_tail(""),
        refuse_401,
        "  access-token-lifetime: 2s\n",
    )
    .await;
    let reports = judged(&finished, 0);
    assert_verdict(step(&reports, EXPIRED_TOKEN, "probe"), "pass");
    let waited = token_to_notification(&log);
    assert!(
        waited >= Duration::from_secs(3) && waited < WITHIN + Duration::from_secs(1),
        "waited {waited:?}, not the configured 2 s plus a second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_expires_in_with_the_default_lifetime_is_an_error_naming_it() {
    let (finished, log, _project) =
        expired_token_run(|| token_with_tail(""), good_notification, "").await;
    let reports = judged(&finished, 1);
    let probe = step(&reports, EXPIRED_TOKEN, "probe");
    assert_verdict(probe, "error");
    assert_step_says(probe, &["300 s", "within"]);
    assert!(log.at("/fhir/Task").is_empty(), "a live token was used");
}

/// A malformed `expires_in` must be named as such, not replaced silently by the target
/// file's lifetime and reported as the target's ("the target's tokens live 300 s").
async fn malformed_expires_in_is_named(tail: &'static str) {
    let (finished, log, _project) =
        expired_token_run(move || token_with_tail(tail), good_notification, "").await;
    let reports = judged(&finished, 1);
    let probe = step(&reports, EXPIRED_TOKEN, "probe");
    assert_ne!(probe["verdict"], "pass", "{}", said(probe));
    assert_step_says(probe, &["expires_in"]);
    assert!(log.at("/fhir/Task").is_empty(), "a live token was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_expires_in_is_named_as_malformed() {
    malformed_expires_in_is_named(r#","expires_in":"1""#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_expires_in_is_named_as_malformed() {
    malformed_expires_in_is_named(r#","expires_in":-5"#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fractional_expires_in_is_waited_out_or_named() {
    let (finished, log, _project) =
        expired_token_run(|| token_with_tail(r#","expires_in":1.5"#), refuse_401, "").await;
    assert_no_panic(&finished);
    let reports = finished.reports();
    assert_private(&finished, &reports);
    let probe = step(&reports, EXPIRED_TOKEN, "probe");
    if probe["verdict"] == "pass" {
        assert!(token_to_notification(&log) >= Duration::from_millis(1500));
    } else {
        assert_step_says(probe, &["expires_in"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_answering_html_with_200_is_an_error_and_nothing_is_notified() {
    let (finished, log, _project) = expired_token_run(
        || {
            response(
                "200 OK",
                &[("Content-Type", "text/html")],
                b"<html><body>Service Unavailable</body></html>",
            )
        },
        good_notification,
        "",
    )
    .await;
    let reports = judged(&finished, 1);
    let probe = step(&reports, EXPIRED_TOKEN, "probe");
    assert_verdict(probe, "error");
    assert!(log.at("/fhir/Task").is_empty(), "notified without a token");
    let token = log.at("/token");
    assert_eq!(token.len(), 1);
    // The step names the token exchange by its id.
    let ids: Vec<String> = reports
        .exchanges()
        .iter()
        .filter(|e| e["url"].as_str().is_some_and(|u| u.contains("/token")))
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        ids.iter().any(|id| said(probe).contains(id.as_str())),
        "the problem names none of the token exchanges {ids:?}: {}",
        said(probe)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_answering_html_with_200_is_not_called_a_refusal() {
    let (finished, _log, _project) = expired_token_run(
        || {
            response(
                "200 OK",
                &[("Content-Type", "text/html")],
                b"<html><body>Service Unavailable</body></html>",
            )
        },
        good_notification,
        "",
    )
    .await;
    let reports = judged(&finished, 1);
    let probe = step(&reports, EXPIRED_TOKEN, "probe");
    assert!(
        !said(probe).contains("refused"),
        "a 200 answer is no refusal: {}",
        said(probe)
    );
    assert_step_says(probe, &["access_token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_never_answers_ends_the_probe_within_the_exchange_timeout() {
    let (finished, log, _project) = expired_token_run(|| Wire::Silent, good_notification, "").await;
    let reports = judged(&finished, 1);
    let probe = step(&reports, EXPIRED_TOKEN, "probe");
    assert_verdict(probe, "error");
    assert_step_says(probe, &["within the timeout"]);
    assert!(log.at("/fhir/Task").is_empty(), "notified without a token");
    assert!(
        probe["duration_ms"].as_u64().unwrap_or(u64::MAX) < 4_000,
        "the step took {} ms with a 2 s exchange timeout",
        probe["duration_ms"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_dripping_its_answer_ends_the_probe_within_the_exchange_timeout() {
    let (finished, log, _project) = expired_token_run(
        || Wire::Drip {
            prefix:
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 80\r\n\r\n"
                    .to_vec(),
            bytes:
                br#"{"access_token":"probe-token-for-expiry","token_type":"Bearer","expires_in":0}"#
                    .to_vec(),
            every: Duration::from_secs(1),
        },
        good_notification,
        "",
    )
    .await;
    let reports = judged(&finished, 1);
    let probe = step(&reports, EXPIRED_TOKEN, "probe");
    assert_verdict(probe, "error");
    assert!(log.at("/fhir/Task").is_empty(), "notified without a token");
    assert!(
        probe["duration_ms"].as_u64().unwrap_or(u64::MAX) < 4_000,
        "the step took {} ms with a 2 s exchange timeout",
        probe["duration_ms"]
    );
}

// --- the search-with-expired-token probe: the reference node sends, a hostile server
// issues pull tokens ---

/// Whether a token request's client assertion is the probe's (its issuer names the probe).
fn is_probe_request(seen: &Seen) -> bool {
    url::form_urlencoded::parse(&seen.body)
        .find(|(name, _)| name == "client_assertion")
        .and_then(|(_, jwt)| {
            let payload = jwt.split('.').nth(1)?.to_owned();
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .is_some_and(|claims| {
            claims["iss"]
                .as_str()
                .unwrap_or_default()
                .contains(":probe:")
        })
}

/// Runs `scenario` against the reference node (`node serve`) as sender, with its pull
/// tokens issued by a hostile server: `pull` answers the pull step's requests, `probe` the
/// probe's.
async fn pull_token_run(
    scenario: &str,
    pull: impl Fn() -> Wire + Send + Sync + 'static,
    probe: impl Fn() -> Wire + Send + Sync + 'static,
) -> (Finished, HostileServer, Project) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let node = NodeProcess::start(dir.path()).await;
    let tokens = HostileServer::start(move |seen| {
        if is_probe_request(seen) {
            probe()
        } else {
            pull()
        }
    })
    .await;
    let project = project(
        &Endpoints {
            notification: format!("{}/fhir", node.base()),
            token: format!("{}/token", node.base()),
            control: Some(format!("{}/control", node.base())),
            sender_fhir_base: Some(format!("{}/sender/fhir", node.base())),
            sender_token: Some(format!("{}/sender/token", tokens.base())),
            ..Endpoints::default()
        },
        "",
        "",
    );
    let finished = run(&project, &[scenario], LIMIT).await;
    drop(node);
    drop(dir);
    (finished, tokens, project)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_probe_against_the_reference_node_waits_out_its_4_s_tokens_and_passes() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let node = NodeProcess::start(dir.path()).await;
    let base = node.base();
    let project = project(
        &Endpoints {
            notification: format!("{base}/fhir"),
            token: format!("{base}/token"),
            inspect: Some(format!("{base}/inspect")),
            control: Some(format!("{base}/control")),
            sender_fhir_base: Some(format!("{base}/sender/fhir")),
            sender_token: Some(format!("{base}/sender/token")),
        },
        "",
        "  access-token-lifetime: 4s\n",
    );
    edit(
        &project.root,
        EXPIRED_PULL_TOKEN,
        &format!("within: {}s", WITHIN.as_secs()),
        "within: 8s",
    );
    let finished = run(&project, &[EXPIRED_PULL_TOKEN], LIMIT).await;
    let reports = judged(&finished, 0);
    let probe = step(&reports, EXPIRED_PULL_TOKEN, "probe");
    assert_verdict(probe, "pass");
    assert!(
        probe["duration_ms"].as_u64().unwrap_or(0) >= 5_000,
        "the probe did not wait out the 4 s token: {} ms",
        probe["duration_ms"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_token_living_longer_than_within_is_an_error_without_waiting() {
    let (finished, tokens, _project) = pull_token_run(
        EXPIRED_PULL_TOKEN,
        || token_with_tail(r#","expires_in":300"#),
        || token_with_tail(r#","expires_in":100000"#),
    )
    .await;
    let reports = judged(&finished, 1);
    let probe = step(&reports, EXPIRED_PULL_TOKEN, "probe");
    assert_verdict(probe, "error");
    assert_step_says(probe, &["100000 s", "within"]);
    assert!(probe["duration_ms"].as_u64().unwrap_or(u64::MAX) < 3_000);
    assert!(tokens.seen().iter().any(is_probe_request));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_token_with_expires_in_u64_max_is_an_error_not_a_panic() {
    let (finished, tokens, _project) = pull_token_run(
        EXPIRED_PULL_TOKEN,
        || token_with_tail(r#","expires_in":300"#),
        || token_with_tail(r#","expires_in":18446744073709551615"#),
    )
    .await;
    assert!(tokens.seen().iter().any(is_probe_request));
    let reports = judged(&finished, 1);
    let probe = step(&reports, EXPIRED_PULL_TOKEN, "probe");
    assert_verdict(probe, "error");
    assert_step_says(probe, &["within"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_token_with_expires_in_u64_max_does_not_panic_the_pull() {
    let (finished, tokens, _project) = pull_token_run(
        "known-patient-sends",
        || token_with_tail(r#","expires_in":18446744073709551615"#),
        || token_with_tail(r#","expires_in":18446744073709551615"#),
    )
    .await;
    assert!(!tokens.seen().is_empty(), "no pull token was asked for");
    let reports = judged(&finished, 1);
    let pull = step(&reports, "known-patient-sends", "pull");
    assert!(
        !said(pull).contains("stopped unexpectedly"),
        "the pull step crashed: {}",
        said(pull)
    );
    assert!(
        case(&reports, "known-patient-sends")["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| s["kind"] != "interrupted"),
        "the case was cut off"
    );
}

// --- the certificate probes ---

/// Runs the three certificate probes (and `extra` scenarios) against a node whose every
/// endpoint is served with `tls` and answers as `route` says; the target file names the test
/// PKI's probe certificates.
async fn certificate_run(
    tls: Tls,
    route: impl Fn(&Seen) -> Wire + Send + Sync + 'static,
    scenarios: &[&str],
) -> (Finished, HostileServer, Project) {
    let server = HostileServer::start_with(tls, route).await;
    let project = project(
        &Endpoints {
            notification: format!("{}/fhir", server.base()),
            token: format!("{}/token", server.base()),
            ..Endpoints::default()
        },
        PROBE_CERTIFICATES,
        "",
    );
    let finished = run(&project, scenarios, LIMIT).await;
    (finished, server, project)
}

/// Answers a token request with a token, a notification with 201.
fn accept_everything(seen: &Seen) -> Wire {
    if seen.target.starts_with("/token") {
        good_token()
    } else {
        good_notification()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_verifying_client_certificates_passes_every_certificate_probe() {
    let (finished, server, _project) =
        certificate_run(Tls::Trusted, accept_everything, &CERT_PROBES).await;
    let reports = judged(&finished, 0);
    for scenario in CERT_PROBES {
        let probe = step(&reports, scenario, "probe");
        assert_verdict(probe, "pass");
        assert_step_says(probe, &["in the TLS handshake"]);
    }
    assert!(
        server.seen().is_empty(),
        "a probe request got through the handshake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_accepting_any_client_certificate_fails_every_certificate_probe() {
    let (finished, server, _project) =
        certificate_run(Tls::AnyClientCert, accept_everything, &CERT_PROBES).await;
    let reports = judged(&finished, 1);
    for (scenario, what) in CERT_PROBES.iter().zip([
        "foreign CA",
        "expired client certificate",
        "revoked client certificate",
    ]) {
        let probe = step(&reports, scenario, "probe");
        assert_verdict(probe, "fail");
        assert_step_says(probe, &["accepted", what, "with an access token"]);
    }
    assert_eq!(
        server.seen().len(),
        3,
        "one token request per certificate probe"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_closing_on_the_client_hello_without_an_alert_is_an_error_not_a_pass() {
    let (finished, server, _project) =
        certificate_run(Tls::CloseOnHello, accept_everything, &CERT_PROBES).await;
    let reports = judged(&finished, 1);
    for scenario in CERT_PROBES {
        let probe = step(&reports, scenario, "probe");
        assert_verdict(probe, "error");
        assert_step_says(probe, &["neither an answer nor a TLS alert"]);
    }
    assert!(server.connections() >= 3, "the probes never connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_closing_after_the_handshake_without_an_answer_is_an_error_not_a_pass() {
    let (finished, server, _project) = certificate_run(
        Tls::AnyClientCert,
        |_| Wire::Bytes(Vec::new()),
        &CERT_PROBES,
    )
    .await;
    let reports = judged(&finished, 1);
    for scenario in CERT_PROBES {
        let probe = step(&reports, scenario, "probe");
        assert_verdict(probe, "error");
        assert_step_says(probe, &["neither an answer nor a TLS alert"]);
    }
    assert_eq!(server.seen().len(), 3, "one request per probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_answering_a_bad_certificate_with_500_fails_the_probe() {
    let (finished, _server, _project) = certificate_run(
        Tls::AnyClientCert,
        |_| {
            response(
                "500 Internal Server Error",
                &[("Content-Type", "text/plain")],
                b"oops",
            )
        },
        &CERT_PROBES[..1],
    )
    .await;
    let reports = judged(&finished, 1);
    let probe = step(&reports, CERT_PROBES[0], "probe");
    assert_verdict(probe, "fail");
    assert_step_says(probe, &["500 instead of refusing"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_error_alert_on_the_client_hello_does_not_pass_a_certificate_probe() {
    let (finished, server, _project) =
        certificate_run(Tls::AlertOnHello(80), accept_everything, &CERT_PROBES).await;
    assert!(server.connections() >= 3, "the probes never connected");
    let reports = judged(&finished, 1);
    for scenario in CERT_PROBES {
        let probe = step(&reports, scenario, "probe");
        assert_ne!(
            probe["verdict"],
            "pass",
            "an internal_error alert to the ClientHello, before any client certificate was sent, is no refusal of it: {}",
            said(probe)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_alert_passes_a_certificate_probe() {
    // unknown_ca (48): a refusal of the client certificate, whenever it comes.
    let (finished, server, _project) =
        certificate_run(Tls::AlertOnHello(48), accept_everything, &CERT_PROBES).await;
    assert!(server.connections() >= 3, "the probes never connected");
    let reports = judged(&finished, 0);
    for scenario in CERT_PROBES {
        let probe = step(&reports, scenario, "probe");
        assert_verdict(probe, "pass");
        assert_step_says(probe, &["UnknownCA"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_probe_without_its_certificate_is_not_run_never_passed() {
    let server = HostileServer::start(accept_everything).await;
    let project = project(
        &Endpoints {
            notification: format!("{}/fhir", server.base()),
            token: format!("{}/token", server.base()),
            ..Endpoints::default()
        },
        "  probe-certificates:\n    foreign-ca: { cert: ../pki/foreign-client.pem, key: ../pki/foreign-client.key.pem }\n",
        "",
    );
    let finished = run(
        &project,
        &[CERT_PROBES[1], CERT_PROBES[2], ANOTHER_CLIENT],
        LIMIT,
    )
    .await;
    let reports = judged(&finished, 1);
    for (scenario, name) in [
        (CERT_PROBES[1], "expired"),
        (CERT_PROBES[2], "revoked"),
        (ANOTHER_CLIENT, "other-organisation"),
    ] {
        let probe = step(&reports, scenario, "probe");
        assert_verdict(probe, "not-run");
        assert_step_says(probe, &[&format!("tls.probe-certificates.{name}")]);
    }
    assert!(
        server.seen().is_empty(),
        "a probe without its certificate ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_token_accepted_from_another_organisation_fails_the_probe() {
    let (finished, server, _project) =
        certificate_run(Tls::Trusted, accept_everything, &[ANOTHER_CLIENT]).await;
    let reports = judged(&finished, 1);
    let probe = step(&reports, ANOTHER_CLIENT, "probe");
    assert_verdict(probe, "fail");
    assert_step_says(probe, &["accepted the probe with 201"]);
    let notified: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| s.target.starts_with("/fhir/Task"))
        .collect();
    assert_eq!(notified.len(), 1);
    assert_eq!(
        notified[0].header("authorization"),
        Some("Bearer hostile-test-token"),
        "the probe must present the token issued to the harness's own certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_node_refuses_a_token_of_another_organisation() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let node = NodeProcess::start(dir.path()).await;
    let base = node.base();
    let project = project(
        &Endpoints {
            notification: format!("{base}/fhir"),
            token: format!("{base}/token"),
            ..Endpoints::default()
        },
        PROBE_CERTIFICATES,
        "",
    );
    let finished = run(&project, &[ANOTHER_CLIENT], LIMIT).await;
    let reports = judged(&finished, 0);
    assert_verdict(step(&reports, ANOTHER_CLIENT, "probe"), "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_other_organisation_certificate_of_the_harness_itself_never_fails_the_target() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let node = NodeProcess::start(dir.path()).await;
    let base = node.base();
    let project = project(
        &Endpoints {
            notification: format!("{base}/fhir"),
            token: format!("{base}/token"),
            ..Endpoints::default()
        },
        // A mistake in the target file: the "other" organisation is the harness's own.
        "  probe-certificates:\n    other-organisation: { cert: ../pki/harness-client.pem, key: ../pki/harness-client.key.pem }\n",
        "",
    );
    let finished = run(&project, &[ANOTHER_CLIENT], LIMIT).await;
    assert_no_panic(&finished);
    if finished.code == Some(2) {
        assert!(
            finished.stderr.contains("other-organisation"),
            "UNCLEAR: {}",
            finished.stderr
        );
        return;
    }
    let reports = finished.reports();
    let probe = step(&reports, ANOTHER_CLIENT, "probe");
    assert_ne!(
        probe["verdict"],
        "fail",
        "the reference node, which binds tokens to organisations, was failed for accepting the harness's own token from the harness's own organisation: {}",
        said(probe)
    );
    assert_step_says(probe, &["other-organisation"]);
}

// --- broken probe certificates in the target file: set-up errors ---

/// Runs a certificate probe with `probe-certificates.foreign-ca` set to `cert` and `key`
/// (after `prepare` writes files into the project folder); the target is never reached.
/// Returns the run and the project.
async fn broken_probe_certificate(
    cert: &str,
    key: &str,
    prepare: impl FnOnce(&Path),
    env: &[(&str, &str)],
) -> (Finished, Project) {
    let endpoints = Endpoints {
        // Nothing listens on the discard port of loopback; set-up fails before any request.
        notification: "https://127.0.0.1:9/fhir".to_owned(),
        token: "https://127.0.0.1:9/token".to_owned(),
        ..Endpoints::default()
    };
    let project = project(
        &endpoints,
        &format!("  probe-certificates:\n    foreign-ca: {{ cert: {cert}, key: {key} }}\n"),
        "",
    );
    prepare(project.dir.path());
    let mut args = vec![
        "--root".to_owned(),
        text(&project.root).to_owned(),
        "run".to_owned(),
        "--target".to_owned(),
        text(&project.target).to_owned(),
        "--phase".to_owned(),
        "technical-test".to_owned(),
        "--scenario".to_owned(),
        CERT_PROBES[0].to_owned(),
        "--progress".to_owned(),
        "never".to_owned(),
        "--interactive".to_owned(),
        "never".to_owned(),
        "--reports".to_owned(),
        text(&project.reports).to_owned(),
    ];
    let mut command = harness(project.dir.path(), &[]);
    command
        .args(args.drain(..))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command.spawn().expect("the harness binary starts");
    let finished = common::finish_bounded(child, &project.reports, LIMIT).await;
    eprintln!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        finished.code, finished.stdout, finished.stderr
    );
    (finished, project)
}

/// Asserts a set-up error: exit 2, no panic, no report, stderr naming `names` and holding
/// no 12 characters in a row of the base64 body of any PEM key in `keys`.
fn assert_setup_error(finished: &Finished, names: &[&str], keys: &[&Path]) {
    assert_no_panic(finished);
    assert_eq!(
        finished.code,
        Some(2),
        "expected a set-up error (exit 2):\n{}",
        finished.stderr
    );
    for name in names {
        assert!(
            finished.stderr.contains(name),
            "UNCLEAR: the set-up error does not name `{name}`:\n{}",
            finished.stderr
        );
    }
    for key in keys {
        let pem = std::fs::read_to_string(key).expect("the key file is readable");
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let chars: Vec<char> = body.chars().collect();
        for window in chars.windows(12) {
            let piece: String = window.iter().collect();
            for output in [&finished.stderr, &finished.stdout] {
                assert!(
                    !output.contains(&piece),
                    "SECRET: the output echoes key material `{piece}`"
                );
            }
        }
    }
    assert!(
        !finished.reports.join("technical-test").exists(),
        "a run that could not set up wrote reports"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_probe_certificate_file_is_a_set_up_error_naming_it() {
    let (finished, _project) = broken_probe_certificate(
        "../pki/no-such-client.pem",
        "../pki/foreign-client.key.pem",
        |_| {},
        &[],
    )
    .await;
    assert_setup_error(&finished, &["no-such-client.pem"], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_env_name_for_a_probe_key_is_a_set_up_error_naming_it() {
    let (finished, _project) = broken_probe_certificate(
        "../pki/foreign-client.pem",
        "env:BGZ_HOSTILE_PROBE_KEY_NEVER_SET",
        |_| {},
        &[],
    )
    .await;
    assert_setup_error(&finished, &["env:BGZ_HOSTILE_PROBE_KEY_NEVER_SET"], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_key_from_the_environment_is_loaded_and_the_probe_runs() {
    let key = std::fs::read_to_string(common::pki().join("foreign-client.key.pem"))
        .expect("the test PKI's foreign client key");
    // The real key through env:NAME: set-up succeeds; the target on the discard port is
    // unreachable, so the probe is an error, never a pass.
    let (finished, _project) = broken_probe_certificate(
        "../pki/foreign-client.pem",
        "env:BGZ_HOSTILE_PROBE_KEY",
        |_| {},
        &[("BGZ_HOSTILE_PROBE_KEY", &key)],
    )
    .await;
    let reports = judged(&finished, 1);
    assert_verdict(step(&reports, CERT_PROBES[0], "probe"), "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_file_as_probe_certificate_is_a_set_up_error_naming_it() {
    let (finished, _project) = broken_probe_certificate(
        "../pki/binary.pem",
        "../pki/foreign-client.key.pem",
        |dir| {
            let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
            std::fs::write(dir.join("pki/binary.pem"), bytes).unwrap();
        },
        &[],
    )
    .await;
    assert_setup_error(&finished, &["binary.pem"], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_certificate_chain_is_a_set_up_error_naming_it() {
    let (finished, _project) = broken_probe_certificate(
        "../pki/empty.pem",
        "../pki/foreign-client.key.pem",
        |dir| std::fs::write(dir.join("pki/empty.pem"), b"").unwrap(),
        &[],
    )
    .await;
    assert_setup_error(&finished, &["empty.pem", "no CERTIFICATE"], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_named_as_the_certificate_is_refused_without_echoing_the_key() {
    let (finished, project) = broken_probe_certificate(
        "../pki/foreign-client.key.pem",
        "../pki/foreign-client.key.pem",
        |_| {},
        &[],
    )
    .await;
    let key = project.dir.path().join("pki/foreign-client.key.pem");
    assert_setup_error(&finished, &["foreign-client.key.pem"], &[&key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pem_with_garbage_base64_is_a_set_up_error_naming_it() {
    let (finished, _project) = broken_probe_certificate(
        "../pki/garbage.pem",
        "../pki/foreign-client.key.pem",
        |dir| {
            std::fs::write(
                dir.join("pki/garbage.pem"),
                "-----BEGIN CERTIFICATE-----\nthis is *not* base64 at all!!\n-----END CERTIFICATE-----\n",
            )
            .unwrap()
        },
        &[],
    )
    .await;
    assert_setup_error(&finished, &["garbage.pem"], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_probe_key_is_a_set_up_error_naming_it() {
    let (finished, project) = broken_probe_certificate(
        "../pki/foreign-client.pem",
        "../pki/encrypted.key.pem",
        |dir| {
            let der: Vec<u8> = (0..700u32).map(|i| (i * 13 % 253) as u8).collect();
            std::fs::write(
                dir.join("pki/encrypted.key.pem"),
                pem("ENCRYPTED PRIVATE KEY", &der),
            )
            .unwrap()
        },
        &[],
    )
    .await;
    let key = project.dir.path().join("pki/encrypted.key.pem");
    assert_setup_error(&finished, &["encrypted.key.pem"], &[&key]);
}

/// A PEM block labelled `label` holding `der`.
fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_block_of_garbage_der_is_a_set_up_error_naming_it() {
    let (finished, _project) = broken_probe_certificate(
        "../pki/garbage-der.pem",
        "../pki/foreign-client.key.pem",
        |dir| {
            let der: Vec<u8> = b"not a certificate, only garbage bytes".repeat(8);
            std::fs::write(dir.join("pki/garbage-der.pem"), pem("CERTIFICATE", &der)).unwrap()
        },
        &[],
    )
    .await;
    assert_setup_error(&finished, &["garbage-der.pem"], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_key_not_matching_its_certificate_is_a_set_up_error_naming_the_pair() {
    let (finished, project) = broken_probe_certificate(
        "../pki/foreign-client.pem",
        "../pki/other-org-client.key.pem",
        |_| {},
        &[],
    )
    .await;
    let key = project.dir.path().join("pki/other-org-client.key.pem");
    assert_setup_error(&finished, &["foreign-client.pem"], &[&key]);
    assert!(
        finished.stderr.contains("other-org-client.key.pem"),
        "UNCLEAR: the mismatch does not name the key:\n{}",
        finished.stderr
    );
}

/// A SEC1 EC private key on secp256k1: a curve neither rustls nor the assertion signer
/// supports.
fn secp256k1_key() -> String {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x01, 0x04, 0x20];
    der.extend([0x5a; 32]);
    der.extend([0xa0, 0x07, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a]);
    pem("EC PRIVATE KEY", &der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec_key_of_an_odd_curve_is_a_set_up_error_without_echoing_it() {
    let (finished, project) = broken_probe_certificate(
        "../pki/foreign-client.pem",
        "../pki/secp256k1.key.pem",
        |dir| std::fs::write(dir.join("pki/secp256k1.key.pem"), secp256k1_key()).unwrap(),
        &[],
    )
    .await;
    let key = project.dir.path().join("pki/secp256k1.key.pem");
    assert_setup_error(&finished, &["probe certificate"], &[&key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec_key_of_an_odd_curve_is_named_by_its_own_path() {
    let (finished, project) = broken_probe_certificate(
        "../pki/foreign-client.pem",
        "../pki/secp256k1.key.pem",
        |dir| std::fs::write(dir.join("pki/secp256k1.key.pem"), secp256k1_key()).unwrap(),
        &[],
    )
    .await;
    let key = project.dir.path().join("pki/secp256k1.key.pem");
    assert_setup_error(&finished, &["secp256k1.key.pem"], &[&key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_block_of_garbage_der_is_refused_without_echoing_it() {
    let (finished, project) = broken_probe_certificate(
        "../pki/foreign-client.pem",
        "../pki/garbage.key.pem",
        |dir| {
            let der: Vec<u8> = (0..600u32).map(|i| (i * 31 % 251) as u8).collect();
            std::fs::write(dir.join("pki/garbage.key.pem"), pem("PRIVATE KEY", &der)).unwrap()
        },
        &[],
    )
    .await;
    let key = project.dir.path().join("pki/garbage.key.pem");
    assert_setup_error(&finished, &["probe certificate"], &[&key]);
}

// --- protocol.access-token-lifetime ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_access_token_lifetimes_are_refused_at_their_line_and_column() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let root = short_project(dir.path());
    let endpoints = Endpoints {
        notification: "https://127.0.0.1:9/fhir".to_owned(),
        token: "https://127.0.0.1:9/token".to_owned(),
        ..Endpoints::default()
    };
    let target = target_file(dir.path(), &endpoints, EXCHANGE_TIMEOUT);
    let base = std::fs::read_to_string(&target).unwrap();
    let line = base.lines().count() + 2;
    for bad in [
        "0s",
        "0ms",
        "999ms",
        "-5s",
        "1.5s",
        "5h",
        "2000m",
        "18446744073709551616s",
        "99999999999999999999m",
        "\"\"",
        "~",
        "300",
        "[1s]",
        "{ s: 1 }",
    ] {
        std::fs::write(
            &target,
            format!("{base}protocol:\n  access-token-lifetime: {bad}\n"),
        )
        .unwrap();
        let where_ = format!("hostile.yaml:{line}:26:");
        for command in [
            vec!["--root", text(&root), "validate", text(&target)],
            vec![
                "--root",
                text(&root),
                "run",
                "--target",
                text(&target),
                "--scenario",
                EXPIRED_TOKEN,
                "--progress",
                "never",
                "--interactive",
                "never",
                "--reports",
                text(&dir.path().join("reports")),
            ],
        ] {
            let finished = run_bounded(
                dir.path(),
                &command,
                &dir.path().join("reports"),
                Duration::from_secs(20),
            )
            .await;
            assert_no_panic(&finished);
            assert_eq!(
                finished.code,
                Some(2),
                "`{bad}` was accepted by {}:\n{}",
                command[2],
                finished.stderr
            );
            assert!(
                finished.stderr.contains(&where_),
                "`{bad}`: {} does not point at {where_}:\n{}",
                command[2],
                finished.stderr
            );
        }
    }
    assert!(!dir.path().join("reports").exists());
}

// --- the log-free-of-patient-data confirm step ---

/// A proxy in front of the reference node's inspection API that answers `GET /inspect/log`
/// with `log()` and hands every other request on to the node.
async fn inspection_proxy(
    node: &NodeProcess,
    log: Arc<dyn Fn() -> Wire + Send + Sync>,
) -> HostileServer {
    let node_base = node.base();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*harness_tls().client.0).clone())
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client for the proxy");
    HostileServer::start_async(move |seen| {
        let client = client.clone();
        let node_base = node_base.clone();
        let log = log.clone();
        Box::pin(async move {
            if seen.target.starts_with("/inspect/log") {
                return log();
            }
            let Ok(answer) = client
                .get(format!("{node_base}{}", seen.target))
                .send()
                .await
            else {
                return response("502 Bad Gateway", &[], b"the node did not answer the proxy");
            };
            let status = answer.status().as_u16();
            let content_type = answer
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = answer.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            response(
                &format!("{status} X"),
                &[("Content-Type", &content_type)],
                &body,
            )
        })
    })
    .await
}

/// Runs the log probe against the reference node, whose log the harness reads through a
/// proxy answering `log()`; the rest of the case is the node's and passes.
async fn log_run(log: impl Fn() -> Wire + Send + Sync + 'static) -> (Finished, Project) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let node = NodeProcess::start(dir.path()).await;
    let proxy = inspection_proxy(&node, Arc::new(log)).await;
    let base = node.base();
    let project = project(
        &Endpoints {
            notification: format!("{base}/fhir"),
            token: format!("{base}/token"),
            inspect: Some(format!("{}/inspect", proxy.base())),
            control: Some(format!("{base}/control")),
            ..Endpoints::default()
        },
        "",
        "",
    );
    let finished = run(&project, &[LOG_PROBE], LIMIT).await;
    drop(proxy);
    drop(node);
    (finished, project)
}

fn text_log(body: impl Into<Vec<u8>>) -> Wire {
    response(
        "200 OK",
        &[("Content-Type", "text/plain; charset=utf-8")],
        &body.into(),
    )
}

/// A log of `lines` harmless lines with `leak` as the last one.
fn log_with(leak: &str) -> Vec<u8> {
    let mut log = String::new();
    for n in 0..20 {
        log.push_str(&format!(
            "2026-05-01T10:00:{n:02}Z INFO notification received for department cardiologie\n"
        ));
    }
    log.push_str(leak);
    log.push('\n');
    log.into_bytes()
}

/// The confirm step of the log probe.
fn log_step(reports: &Reports) -> &Value {
    step(reports, LOG_PROBE, "confirm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_log_through_the_proxy_passes() {
    let (finished, _project) = log_run(|| text_log(log_with("INFO pull finished"))).await;
    let reports = judged(&finished, 0);
    assert_verdict(log_step(&reports), "pass");
    assert_step_says(log_step(&reports), &["21 lines"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_the_bsn_fails_and_no_report_shows_it() {
    let (finished, _project) =
        log_run(|| text_log(log_with(&format!("DEBUG search for patient {BSN}")))).await;
    let reports = judged(&finished, 1);
    let confirm = log_step(&reports);
    assert_verdict(confirm, "fail");
    assert_step_says(confirm, &["the BSN of the patient on line 21"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_the_family_name_and_birth_date_fails() {
    let (finished, _project) = log_run(|| {
        text_log(log_with(&format!(
            "DEBUG patient {FAMILY} born {BIRTH_DATE} registered"
        )))
    })
    .await;
    let reports = judged(&finished, 1);
    let confirm = log_step(&reports);
    assert_verdict(confirm, "fail");
    assert_step_says(confirm, &["the family name", "the birth date"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_the_family_name_without_its_prefix_fails() {
    let (finished, _project) = log_run(|| {
        text_log(log_with(&format!(
            "DEBUG referral for {OWN_NAME}, J. filed in cardiologie"
        )))
    })
    .await;
    let reports = judged(&finished, 1);
    assert_verdict(log_step(&reports), "fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_the_compact_birth_date_fails() {
    let (finished, _project) = log_run(|| {
        text_log(log_with(
            "DEBUG SBV-Z query geboortedatum=19581114 geslacht=M",
        ))
    })
    .await;
    let reports = judged(&finished, 1);
    assert_verdict(log_step(&reports), "fail");
}

/// The known patient's birth date as a Dutch text writes it (the referral letter of the
/// fixture does: "geboren 14-11-1958").
const DUTCH_BIRTH_DATE: &str = "14-11-1958";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_the_dutch_birth_date_fails() {
    let (finished, _project) = log_run(|| {
        text_log(log_with(&format!(
            "INFO brief verwerkt: dhr. J. van L., geboren {DUTCH_BIRTH_DATE}"
        )))
    })
    .await;
    let reports = judged(&finished, 1);
    assert_verdict(log_step(&reports), "fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_the_dutch_birth_date_does_not_show_it_in_any_report() {
    let (finished, _project) = log_run(|| {
        text_log(log_with(&format!(
            "INFO brief verwerkt: dhr. J. van L., geboren {DUTCH_BIRTH_DATE}"
        )))
    })
    .await;
    assert_no_panic(&finished);
    let reports = finished.reports();
    let json = reports.json.to_string();
    for (place, text) in [
        ("junit.xml", &reports.junit),
        ("report.html", &reports.html),
        ("results.json", &json),
        ("stdout", &finished.stdout),
        ("stderr", &finished.stderr),
    ] {
        assert!(
            !text.contains(DUTCH_BIRTH_DATE),
            "PRIVACY: {place} shows the patient's birth date {DUTCH_BIRTH_DATE}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_a_short_family_name_fails() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let node = NodeProcess::start(dir.path()).await;
    let proxy = inspection_proxy(
        &node,
        Arc::new(|| text_log(log_with("DEBUG referral for patient Bos, J. filed"))),
    )
    .await;
    let base = node.base();
    let project = project(
        &Endpoints {
            notification: format!("{base}/fhir"),
            token: format!("{base}/token"),
            inspect: Some(format!("{}/inspect", proxy.base())),
            control: Some(format!("{base}/control")),
            ..Endpoints::default()
        },
        "",
        "",
    );
    // The harness's copy of the known patient is called Bos (the node keeps its own copy).
    let fixture = project.root.join("fixtures/patients/known/bgz.json");
    let bundle = std::fs::read_to_string(&fixture).expect("the copied fixture");
    assert!(bundle.contains(r#""family": "van Lindeboom""#));
    std::fs::write(
        &fixture,
        bundle.replace(r#""family": "van Lindeboom""#, r#""family": "Bos""#),
    )
    .expect("the copied fixture is writable");
    let finished = run(&project, &[LOG_PROBE], LIMIT).await;
    assert_no_panic(&finished);
    let reports = finished.reports();
    assert_verdict(log_step(&reports), "fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_mb_log_with_the_bsn_on_its_last_line_fails_in_bounded_time() {
    let (finished, _project) = log_run(|| {
        let line = "2026-05-01T10:00:00Z INFO nothing to see here, only filler for the log\n";
        let mut log = line.repeat(30 * 1024 * 1024 / line.len());
        log.push_str(&format!("DEBUG patient {BSN}\n"));
        text_log(log)
    })
    .await;
    let reports = judged(&finished, 1);
    let confirm = log_step(&reports);
    assert_verdict(confirm, "fail");
    assert_step_says(confirm, &["the BSN of the patient"]);
    let html_size = reports.html.len();
    assert!(
        html_size < 4 * 1024 * 1024,
        "report.html carries the whole log: {html_size} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_over_the_body_limit_is_an_error_not_a_pass() {
    let (finished, _project) = log_run(|| Wire::Huge {
        size: 40 * 1024 * 1024,
        announce: false,
        content_type: "text/plain",
        filler: b'x',
    })
    .await;
    let reports = judged(&finished, 1);
    let confirm = log_step(&reports);
    assert_verdict(confirm, "error");
    assert_step_says(confirm, &["inspection API", "limit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_answering_404_is_an_error_not_a_pass() {
    let (finished, _project) = log_run(|| {
        response(
            "404 Not Found",
            &[("Content-Type", "text/plain")],
            b"no such endpoint",
        )
    })
    .await;
    let reports = judged(&finished, 1);
    let confirm = log_step(&reports);
    assert_verdict(confirm, "error");
    assert_step_says(confirm, &["404", "without a log"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_never_comes_is_an_error_within_the_exchange_timeout() {
    let (finished, _project) = log_run(|| Wire::Silent).await;
    let reports = judged(&finished, 1);
    let confirm = log_step(&reports);
    assert_verdict(confirm, "error");
    assert_step_says(confirm, &["within the timeout"]);
    assert!(
        confirm["duration_ms"].as_u64().unwrap_or(u64::MAX) < 4_000,
        "the confirm step took {} ms with a 2 s exchange timeout",
        confirm["duration_ms"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latin_1_log_with_the_bsn_fails_and_is_not_shown() {
    let (finished, _project) = log_run(|| {
        let mut log = log_with("").to_vec();
        // "Patiënt" in Latin-1: not UTF-8.
        log.extend(b"DEBUG Pati\xebnt ");
        log.extend(BSN.as_bytes());
        log.extend(b" opgehaald\n");
        response("200 OK", &[("Content-Type", "text/plain")], &log)
    })
    .await;
    let reports = judged(&finished, 1);
    assert_verdict(log_step(&reports), "fail");
}

/// `text` in UTF-16LE with a byte-order mark.
fn utf16le(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xff, 0xfe];
    for unit in text.encode_utf16() {
        bytes.extend(unit.to_le_bytes());
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_utf16_log_with_the_bsn_does_not_pass() {
    let (finished, _project) = log_run(|| {
        let log = String::from_utf8(log_with(&format!("DEBUG patient {BSN}"))).unwrap();
        response(
            "200 OK",
            &[("Content-Type", "text/plain; charset=utf-16")],
            &utf16le(&log),
        )
    })
    .await;
    let reports = judged(&finished, 1);
    assert_ne!(
        log_step(&reports)["verdict"],
        "pass",
        "the log holds the BSN: {}",
        said(log_step(&reports))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_utf16_log_without_a_bom_shows_no_bsn_in_the_reports() {
    let (finished, _project) = log_run(|| {
        let log = String::from_utf8(log_with(&format!("DEBUG patient {BSN}"))).unwrap();
        let bytes = utf16le(&log)[2..].to_vec();
        response("200 OK", &[("Content-Type", "text/plain")], &bytes)
    })
    .await;
    assert_no_panic(&finished);
    let reports = finished.reports();
    assert_private(&finished, &reports);
    // The BSN with one character between its digits, as a UTF-16 log shows in a report.
    let spread = |text: &str| {
        let chars: Vec<char> = text.chars().collect();
        let digits: Vec<char> = BSN.chars().collect();
        chars
            .windows(digits.len() * 2 - 1)
            .any(|w| w.iter().step_by(2).zip(&digits).all(|(a, b)| a == b))
    };
    let json = reports.json.to_string();
    for (place, text) in [
        ("junit.xml", &reports.junit),
        ("report.html", &reports.html),
        ("results.json", &json),
    ] {
        assert!(
            !spread(text),
            "PRIVACY: {place} shows the BSN spread over UTF-16"
        );
    }
}

// --- the helpers themselves ---

#[test]
fn the_probe_request_detector_reads_the_client_assertion() {
    let claims = |iss: &str| {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"iss":"{iss}"}}"#));
        format!("client_assertion=eyJhbGciOiJQUzI1NiJ9.{payload}.c2ln&grant_type=x")
    };
    let seen = |body: String| Seen {
        method: "POST".into(),
        target: "/sender/token".into(),
        headers: Vec::new(),
        body: body.into_bytes(),
    };
    assert!(is_probe_request(&seen(claims(
        "urn:bgz-harness:probe:90000123"
    ))));
    assert!(!is_probe_request(&seen(claims(
        "urn:bgz-harness:receiver:90000123"
    ))));
    assert!(!is_probe_request(&seen("grant_type=x".into())));
}

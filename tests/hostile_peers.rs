//! A hostile target, direction target-receives: the harness notifies a node whose token
//! endpoint, notification endpoint, inspection API or control API misbehaves on the wire.
//! Every run must end in bounded time with exit 1, never a panic or a hang, write all three
//! reports, and name the failing exchange with a clear reason. The node's other endpoints
//! behave.

mod common;

use std::time::Duration;

use common::{
    Endpoints, Finished, HostileServer, Reports, Tls, Wire, good_notification, good_token,
    response, run_args, run_bounded, short_project, target_file, text,
};

/// Longest one hostile run may take.
const LIMIT: Duration = Duration::from_secs(20);
/// The target file's exchange timeout.
const EXCHANGE_TIMEOUT: &str = "2s";

/// Which endpoint of the target misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Token,
    Notification,
    /// The inspection API (the target file names one).
    Inspect,
    /// The control API (the target file names one).
    Control,
}

impl At {
    /// The part of the URL that marks exchanges with this endpoint.
    fn url_part(self) -> &'static str {
        match self {
            At::Token => "/token",
            At::Notification => "/fhir/Task",
            At::Inspect => "/inspect",
            At::Control => "/control",
        }
    }
}

/// Runs known-patient against a node whose `at` endpoint answers with `hostile()`; the
/// token and notification endpoints otherwise behave, and the node never pulls.
async fn start_run(
    at: At,
    hostile: impl Fn() -> Wire + Send + Sync + 'static,
) -> (Finished, tempfile::TempDir) {
    let server = HostileServer::start(move |seen| {
        if seen.target.starts_with(at.url_part()) {
            hostile()
        } else if seen.target.starts_with("/token") {
            good_token()
        } else {
            good_notification()
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let root = short_project(dir.path());
    let api = |wanted: At| (at == wanted).then(|| format!("{}{}", server.base(), at.url_part()));
    let target = target_file(
        dir.path(),
        &Endpoints {
            notification: format!("{}/fhir", server.base()),
            token: format!("{}/token", server.base()),
            inspect: api(At::Inspect),
            control: api(At::Control),
            ..Endpoints::default()
        },
        EXCHANGE_TIMEOUT,
    );
    let reports = dir.path().join("reports");
    let args = run_args(text(&root), text(&target), text(&reports), "known-patient");
    let finished = run_bounded(dir.path(), &args, &reports, LIMIT).await;
    eprintln!(
        "{at:?}: finished in {:?} with {:?}",
        finished.elapsed, finished.code
    );
    (finished, dir)
}

/// [`start_run`], then the checks every hostile run must pass; returns the reports too.
async fn run_against(
    at: At,
    hostile: impl Fn() -> Wire + Send + Sync + 'static,
) -> (Finished, Reports, tempfile::TempDir) {
    let (finished, dir) = start_run(at, hostile).await;
    finished.assert_failed_cleanly(LIMIT);
    let reports = finished.reports();
    (finished, reports, dir)
}

fn html_page() -> Vec<u8> {
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1><p>The upstream server is down.</p></body></html>".to_vec()
}

const TOKEN_JSON: &[u8] =
    br#"{"access_token":"hostile-test-token","token_type":"Bearer","expires_in":300}"#;

// --- an HTML error page with 200 ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_answering_an_html_page_with_200_fails_naming_the_content_type() {
    let (_, reports, _dir) = run_against(At::Token, || {
        response("200 OK", &[("Content-Type", "text/html")], &html_page())
    })
    .await;
    reports.assert_names_exchange("/token", &["labelled `text/html`", "application/json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_endpoint_answering_an_html_page_with_200_fails_notification_accepted() {
    let (_, reports, _dir) = run_against(At::Notification, || {
        response("200 OK", &[("Content-Type", "text/html")], &html_page())
    })
    .await;
    reports.assert_names_exchange("/fhir/Task", &["200 instead of 201 Created"]);
}

// --- a wrong content type ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_answering_a_form_encoded_token_fails_naming_the_content_type() {
    let (_, reports, _dir) = run_against(At::Token, || {
        response(
            "200 OK",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"access_token=hostile-test-token&token_type=bearer&expires_in=300",
        )
    })
    .await;
    reports.assert_names_exchange(
        "/token",
        &[
            "labelled `application/x-www-form-urlencoded`",
            "application/json",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_labelling_its_json_as_html_fails_naming_the_content_type() {
    let (_, reports, _dir) = run_against(At::Token, || {
        response("200 OK", &[("Content-Type", "text/html")], TOKEN_JSON)
    })
    .await;
    reports.assert_names_exchange("/token", &["labelled `text/html`", "application/json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_endpoint_answering_201_as_html_ends_the_case_without_a_pull() {
    // notification-accepted judges status and Location only; the node never pulls, so the
    // case fails at await-pull, and the HTML answer is kept as evidence.
    let (_, reports, _dir) = run_against(At::Notification, || {
        response(
            "201 Created",
            &[
                ("Location", "Task/hostile-1"),
                ("Content-Type", "text/html"),
            ],
            &html_page(),
        )
    })
    .await;
    reports.assert_says(&["never asked the sender for a pull token"]);
    let shown = reports
        .exchanges()
        .into_iter()
        .find(|e| e["url"].as_str().is_some_and(|u| u.ends_with("/fhir/Task")))
        .expect("the notification exchange is in results.json");
    assert!(
        shown["response_headers"].to_string().contains("text/html"),
        "{shown:#}"
    );
}

// --- truncated JSON ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_answering_truncated_json_fails_as_not_json() {
    let (_, reports, _dir) = run_against(At::Token, || {
        response(
            "200 OK",
            &[("Content-Type", "application/json")],
            &TOKEN_JSON[..30],
        )
    })
    .await;
    reports.assert_names_exchange("/token", &["not RFC 6749 JSON", "EOF"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_endpoint_cutting_its_json_body_short_is_an_error() {
    // Content-Length promises more than is sent before the connection closes.
    let (_, reports, _dir) = run_against(At::Notification, || {
        let body = br#"{"resourceType":"OperationOutcome","issue":[{"sev"#;
        let mut bytes = format!(
            "HTTP/1.1 201 Created\r\nLocation: Task/hostile-1\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
            body.len() + 200
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        Wire::Bytes(bytes)
    })
    .await;
    reports.assert_names_exchange("/fhir/Task", &["broke off"]);
}

// --- a 50 MB body ---

const FIFTY_MB: usize = 50 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_announcing_a_50_mb_body_is_refused_before_reading_it() {
    let (_, reports, _dir) = run_against(At::Token, || Wire::Huge {
        size: FIFTY_MB,
        announce: true,
        content_type: "application/json",
        filler: b' ',
    })
    .await;
    reports.assert_names_exchange("/token", &["52428800 bytes", "limit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_streaming_50_mb_without_a_length_is_cut_at_the_limit() {
    let (_, reports, _dir) = run_against(At::Token, || Wire::Huge {
        size: FIFTY_MB,
        announce: false,
        content_type: "application/json",
        filler: b' ',
    })
    .await;
    reports.assert_names_exchange("/token", &["exceeds the limit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_endpoint_streaming_50_mb_without_a_length_is_cut_at_the_limit() {
    let (_, reports, _dir) = run_against(At::Notification, || Wire::Huge {
        size: FIFTY_MB,
        announce: false,
        content_type: "application/fhir+json",
        filler: b'{',
    })
    .await;
    reports.assert_names_exchange("/fhir/Task", &["exceeds the limit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_answering_a_30_mb_html_page_just_under_the_limit_stays_bounded() {
    let (finished, reports, _dir) = run_against(At::Token, || Wire::Huge {
        size: 30 * 1024 * 1024,
        announce: true,
        content_type: "text/html",
        filler: b'x',
    })
    .await;
    reports.assert_names_exchange("/token", &["labelled `text/html`"]);
    let size = std::fs::metadata(finished.reports.join("technical-test/results.json"))
        .expect("results.json exists")
        .len();
    assert!(
        size < 1024 * 1024,
        "results.json holds {size} bytes: a report shows a cut body, not 30 MB"
    );
}

// --- accepting the connection but never answering ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_that_never_answers_times_out() {
    let (finished, reports, _dir) = run_against(At::Token, || Wire::Silent).await;
    reports.assert_names_exchange("/token", &["within the timeout"]);
    assert!(
        finished.elapsed >= Duration::from_secs(2),
        "{:?}",
        finished.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_endpoint_that_never_answers_times_out() {
    let (_, reports, _dir) = run_against(At::Notification, || Wire::Silent).await;
    reports.assert_names_exchange("/fhir/Task", &["within the timeout"]);
}

// --- answering one byte per second ---

fn drip(bytes: Vec<u8>) -> Wire {
    Wire::Drip {
        prefix: Vec::new(),
        bytes,
        every: Duration::from_secs(1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_answering_one_byte_per_second_times_out() {
    let (_, reports, _dir) = run_against(At::Token, || {
        drip(common::response_bytes(
            "200 OK",
            &[("Content-Type", "application/json")],
            TOKEN_JSON,
        ))
    })
    .await;
    reports.assert_names_exchange("/token", &["within the timeout"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_endpoint_dripping_its_body_one_byte_per_second_times_out() {
    // The head arrives at once; only the body drips, so the whole-exchange timeout must
    // cover reading the body too.
    let (_, reports, _dir) = run_against(At::Notification, || {
        let body = br#"{"resourceType":"Task","id":"hostile-1","status":"requested"}"#;
        let head = format!(
            "HTTP/1.1 201 Created\r\nLocation: Task/hostile-1\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        Wire::Drip {
            prefix: head.into_bytes(),
            bytes: body.to_vec(),
            every: Duration::from_secs(1),
        }
    })
    .await;
    reports.assert_names_exchange("/fhir/Task", &["within the timeout"]);
}

// --- closing the connection mid-headers ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_closing_mid_headers_is_an_error() {
    let (_, reports, _dir) = run_against(At::Token, || {
        Wire::Bytes(b"HTTP/1.1 200 OK\r\nContent-Type: appli".to_vec())
    })
    .await;
    reports.assert_names_exchange("/token", &["closed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_endpoint_closing_mid_headers_is_an_error() {
    let (_, reports, _dir) = run_against(At::Notification, || {
        Wire::Bytes(b"HTTP/1.1 201 Created\r\nLocation: Task/hos".to_vec())
    })
    .await;
    reports.assert_names_exchange("/fhir/Task", &["closed"]);
}

// --- a redirect to another host ---

async fn redirect_is_not_followed(at: At) {
    let elsewhere = HostileServer::start(|_| good_token()).await;
    let location = format!("{}{}", elsewhere.base(), at.url_part());
    let (_, reports, _dir) = run_against(at, move || {
        response(
            "307 Temporary Redirect",
            &[("Location", &location)],
            b"moved",
        )
    })
    .await;
    reports.assert_names_exchange(at.url_part(), &["307"]);
    assert_eq!(
        elsewhere.connections(),
        0,
        "the harness followed a redirect to another host: {:?}",
        elsewhere.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_redirecting_to_another_host_is_not_followed() {
    redirect_is_not_followed(At::Token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_endpoint_redirecting_to_another_host_is_not_followed() {
    redirect_is_not_followed(At::Notification).await;
}

// --- a 201 with a garbage Location ---

fn garbage_location(at: At) -> Wire {
    let mut bytes =
        b"HTTP/1.1 201 Created\r\nLocation: \xff\xfe::<script>alert(1)</script> %%% \x80".to_vec();
    bytes.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    let body: &[u8] = match at {
        At::Token => TOKEN_JSON,
        _ => b"",
    };
    bytes.extend_from_slice(format!("{}\r\nConnection: close\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    Wire::Bytes(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_answering_201_with_a_garbage_location_is_refused() {
    let (_, reports, _dir) = run_against(At::Token, || garbage_location(At::Token)).await;
    reports.assert_names_exchange("/token", &["refused a notification token with 201"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_endpoint_answering_201_with_a_garbage_location_fails_notification_accepted() {
    let (_, reports, _dir) =
        run_against(At::Notification, || garbage_location(At::Notification)).await;
    reports.assert_names_exchange("/fhir/Task", &["does not name a Task"]);
    assert!(
        !reports.html.contains("<script>alert(1)"),
        "report.html shows the peer's markup unescaped"
    );
}

// --- an error page with control bytes and invalid UTF-8 ---

/// A 400 whose body holds NUL, terminal escapes, bell, backspace, invalid UTF-8 and markup.
fn error_page_with_control_bytes() -> Wire {
    response(
        "400 Bad Request",
        &[("Content-Type", "text/plain")],
        b"bad\x00request \x1b[31mred\x1b[0m \x07\x08 \xff\xfe ]]> </failure> &amp; <x>",
    )
}

/// The control characters of `text` other than line breaks and tabs.
fn control_characters(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_error_page_with_control_bytes_keeps_junit_and_json_well_formed() {
    let (_, reports, _dir) = run_against(At::Token, error_page_with_control_bytes).await;
    reports.assert_names_exchange("/token", &["refused a notification token with 400"]);
    assert!(
        !reports.html.contains("</failure> &amp; <x>"),
        "report.html shows the peer's markup unescaped"
    );
    assert_eq!(control_characters(&reports.junit), Vec::<char>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_error_page_with_terminal_escapes_is_printed_without_them() {
    let (finished, _, _dir) = run_against(At::Token, error_page_with_control_bytes).await;
    assert_eq!(
        control_characters(&finished.stderr),
        Vec::<char>::new(),
        "the console prints the peer's control characters to stderr:\n{:?}",
        finished.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_error_page_with_control_bytes_leaves_none_in_report_html() {
    let (_, reports, _dir) = run_against(At::Token, error_page_with_control_bytes).await;
    assert_eq!(
        control_characters(&reports.html),
        Vec::<char>::new(),
        "report.html carries the peer's control characters"
    );
}

// --- the inspection API and the control API ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_api_answering_an_html_page_is_an_error_naming_the_inspection() {
    let (_, reports, _dir) = run_against(At::Inspect, || {
        response("200 OK", &[("Content-Type", "text/html")], &html_page())
    })
    .await;
    reports.assert_names_exchange("/inspect", &["inspection API", "without an inbox"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_api_that_never_answers_is_an_error_naming_the_inspection() {
    let (_, reports, _dir) = run_against(At::Inspect, || Wire::Silent).await;
    let blamed: Vec<_> = reports.json["cases"][0]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["checks"].as_array().into_iter().flatten())
        .filter(|c| c["check"] == "referral-filed" && c["verdict"] == "fail")
        .collect();
    assert!(
        blamed.is_empty(),
        "an unanswered inspection cannot prove the target wrong: {blamed:#?}"
    );
    reports.assert_names_exchange("/inspect", &["within the timeout"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_that_never_answers_stops_the_run_in_bounded_time_naming_it() {
    // Registering the harness's sender is set-up: a run that cannot set up ends with exit 2
    // and writes no report.
    let (finished, _dir) = start_run(At::Control, || Wire::Silent).await;
    assert!(finished.elapsed <= LIMIT, "{:?}", finished.elapsed);
    assert!(!finished.stderr.contains("panicked"), "{}", finished.stderr);
    assert_eq!(finished.code, Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("/control/senders") && finished.stderr.contains("timeout"),
        "{}",
        finished.stderr
    );
}

// --- what a report says about a target that never pulls ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_pulls_gets_every_section_named_intact() {
    let (_, reports, _dir) = run_against(At::Notification, good_notification).await;
    reports.assert_says(&["were never run", "AdvanceDirective"]);
}

// --- hostility in the TLS handshake ---

/// Runs known-patient against a node whose `at` endpoint (token or notification) is served
/// by a server whose TLS behaves as `tls` says; the other endpoint behaves. Returns the
/// misbehaving server too.
async fn run_with_tls(at: At, tls: Tls) -> (Finished, Reports, HostileServer, tempfile::TempDir) {
    let odd = HostileServer::start_with(tls, |seen| {
        if seen.target.starts_with("/token") {
            good_token()
        } else {
            good_notification()
        }
    })
    .await;
    let good = HostileServer::start(|seen| {
        if seen.target.starts_with("/token") {
            good_token()
        } else {
            good_notification()
        }
    })
    .await;
    let base = |wanted: At| {
        if at == wanted {
            odd.base()
        } else {
            good.base()
        }
    };
    let dir = tempfile::tempdir().expect("a temporary folder");
    let root = short_project(dir.path());
    let target = target_file(
        dir.path(),
        &Endpoints {
            notification: format!("{}/fhir", base(At::Notification)),
            token: format!("{}/token", base(At::Token)),
            ..Endpoints::default()
        },
        EXCHANGE_TIMEOUT,
    );
    let reports = dir.path().join("reports");
    let args = run_args(text(&root), text(&target), text(&reports), "known-patient");
    let finished = run_bounded(dir.path(), &args, &reports, LIMIT).await;
    eprintln!(
        "{at:?} {tls:?}: finished in {:?} with {:?}; {} connection(s), {} handshake(s)",
        finished.elapsed,
        finished.code,
        odd.connections(),
        odd.handshakes()
    );
    finished.assert_failed_cleanly(LIMIT);
    let reports = finished.reports();
    (finished, reports, odd, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_that_never_completes_the_handshake_times_out() {
    let (finished, reports, odd, _dir) = run_with_tls(At::Token, Tls::NeverHandshake).await;
    assert!(odd.connections() >= 1, "the harness never connected");
    assert!(
        finished.elapsed >= Duration::from_secs(2),
        "{:?}",
        finished.elapsed
    );
    reports.assert_names_exchange("/token", &["within the timeout"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_endpoint_that_never_completes_the_handshake_times_out() {
    let (_, reports, odd, _dir) = run_with_tls(At::Notification, Tls::NeverHandshake).await;
    assert!(odd.connections() >= 1, "the harness never connected");
    reports.assert_names_exchange("/fhir/Task", &["within the timeout"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_with_a_certificate_of_a_foreign_ca_is_refused() {
    let (_, reports, odd, _dir) = run_with_tls(At::Token, Tls::ForeignCa).await;
    assert!(odd.connections() >= 1, "the harness never connected");
    assert_eq!(
        odd.seen().len(),
        0,
        "the harness sent a request (with its client assertion) to an untrusted server"
    );
    let said = reports.assert_names_exchange("/token", &["TLS", "certificate was refused"]);
    eprintln!("{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_endpoint_with_a_certificate_of_a_foreign_ca_is_refused() {
    let (_, reports, odd, _dir) = run_with_tls(At::Notification, Tls::ForeignCa).await;
    assert!(odd.connections() >= 1, "the harness never connected");
    assert_eq!(
        odd.seen().len(),
        0,
        "the harness sent its notification and bearer token to an untrusted server"
    );
    let said = reports.assert_names_exchange("/fhir/Task", &["TLS", "certificate was refused"]);
    eprintln!("{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_with_a_client_certificate_of_an_unknown_issuer_is_refused() {
    let (_, reports, odd, _dir) = run_with_tls(At::Token, Tls::UnknownIssuer).await;
    assert!(odd.connections() >= 1, "the harness never connected");
    assert_eq!(
        odd.seen().len(),
        0,
        "the harness sent a request to an untrusted server"
    );
    let said = reports.assert_names_exchange("/token", &["TLS", "certificate was refused"]);
    eprintln!("{said}");
}

//! An interrupted run: Ctrl-C (SIGINT) or SIGTERM while a case waits on a target that
//! accepted the connection but never answers. The harness must stop promptly, exit 1, and
//! still write all three reports, marking the run interrupted, the waiting case an error
//! and the cases that never started as not run: never as passed.

#![cfg(unix)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    Endpoints, HostileServer, Wire, finish_bounded, harness, run_args, short_project, target_file,
    text,
};

/// Longest the harness may take to stop after the signal.
const STOP_LIMIT: Duration = Duration::from_secs(10);

async fn interrupt_with(signal: &str) {
    let server = HostileServer::start(|_| Wire::Silent).await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let root = short_project(dir.path());
    // The exchange timeout is long: only the signal can end the wait.
    let target = target_file(
        dir.path(),
        &Endpoints {
            notification: format!("{}/fhir", server.base()),
            token: format!("{}/token", server.base()),
            ..Endpoints::default()
        },
        "60s",
    );
    let reports = dir.path().join("reports");
    let mut args = run_args(text(&root), text(&target), text(&reports), "known-patient");
    // Every scenario of the phase, one at a time, so some never start.
    let at = args
        .iter()
        .position(|a| *a == "--scenario")
        .expect("run_args filters by scenario");
    args.drain(at..at + 2);
    args.extend(["--jobs", "1"]);
    let child = harness(dir.path(), &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the harness starts");
    let pid = child.id().expect("a running child has a pid");

    let waiting_since = Instant::now();
    while server.seen().is_empty() {
        assert!(
            waiting_since.elapsed() < Duration::from_secs(15),
            "the harness never reached the silent target"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill {signal} {pid} failed");

    let finished = finish_bounded(child, &reports, STOP_LIMIT).await;
    eprintln!(
        "{signal}: stopped {:?} after the signal with {:?}",
        finished.elapsed, finished.code
    );
    finished.assert_failed_cleanly(STOP_LIMIT);
    let written = finished.reports();

    assert_eq!(written.json["interrupted"], true, "{:#}", written.json);
    let totals = &written.json["totals"];
    assert_eq!(totals["passed"], 0, "{totals}");
    assert!(
        totals["errors"].as_u64() >= Some(1),
        "the waiting case is an error: {totals}"
    );
    assert!(
        totals["not_run"].as_u64() >= Some(1),
        "cases that never started are not run: {totals}"
    );
    written.assert_says(&["interrupted"]);

    let junit = roxmltree::Document::parse(&written.junit).expect("junit.xml parses");
    let marked = junit.descendants().any(|n| {
        n.has_tag_name("property")
            && n.attribute("name") == Some("interrupted")
            && n.attribute("value") == Some("yes")
    });
    assert!(marked, "junit.xml does not mark the run interrupted");
    assert!(
        written.html.contains("The run was interrupted"),
        "report.html does not say the run was interrupted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_a_case_waits_on_a_silent_target_still_writes_every_report() {
    interrupt_with("-INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_case_waits_on_a_silent_target_still_writes_every_report() {
    interrupt_with("-TERM").await;
}

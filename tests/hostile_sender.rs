//! A hostile target, direction target-sends: the reference node (`node serve`) plays the
//! sending target's control API, notification and pull tokens, but the harness pulls the
//! BgZ through a proxy that tampers with one search answer: nesting 10k deep, a `next` link
//! to itself, a `next` link to a foreign host, invalid UTF-8. Through the untouched proxy
//! the case passes, so each failure is the tampering's. Every run must end in bounded time
//! with exit 1, write all three reports and name the tampered exchange with a clear reason.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{
    Endpoints, Finished, HostileServer, NodeProcess, Reports, Seen, Wire, harness_tls, response,
    run_args, run_bounded, short_project, target_file, text,
};
use serde_json::{Value, json};

/// Longest one hostile run may take.
const LIMIT: Duration = Duration::from_secs(20);
/// The search the proxy tampers with: the first of the catalogue.
const TAMPERED: &str = "/sender/fhir/Patient?";

/// What the proxy got from the node for one request.
struct Upstream {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// How the proxy changes the node's answer to the tampered search; `proxy` is the proxy's
/// own base URL.
type Tamper = Arc<dyn Fn(&Seen, Upstream, &str) -> Wire + Send + Sync>;

/// Starts a proxy in front of the node's sender FHIR base that hands the node's answers on,
/// with its own address in place of the node's, and lets `tamper` answer the tampered
/// search.
async fn proxy(node: &NodeProcess, tamper: Tamper) -> HostileServer {
    let node_base = node.base();
    let own_base: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    // The proxy reaches the node as the harness would: with the harness's client certificate.
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*harness_tls().client.0).clone())
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client for the proxy");
    let base_for_route = own_base.clone();
    let server = HostileServer::start_async(move |seen| {
        let client = client.clone();
        let node_base = node_base.clone();
        let own_base = base_for_route.get().cloned().unwrap_or_default();
        let tamper = tamper.clone();
        Box::pin(async move {
            let mut request = client.get(format!("{node_base}{}", seen.target));
            for name in ["authorization", "accept"] {
                if let Some(value) = seen.header(name) {
                    request = request.header(name, value);
                }
            }
            let Ok(answer) = request.send().await else {
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
            // Bases in JSON answers name the proxy; binary answers (the PDF) pass untouched.
            let body = match std::str::from_utf8(&body) {
                Ok(json) if content_type.contains("json") => {
                    json.replace(&node_base, &own_base).into_bytes()
                }
                _ => body,
            };
            let upstream = Upstream {
                status,
                content_type,
                body,
            };
            if seen.target.starts_with(TAMPERED) && upstream.status == 200 {
                tamper(&seen, upstream, &own_base)
            } else {
                pass_on(upstream)
            }
        })
    })
    .await;
    let _ = own_base.set(server.base());
    server
}

fn pass_on(upstream: Upstream) -> Wire {
    response(
        &format!("{} X", upstream.status),
        &[("Content-Type", &upstream.content_type)],
        &upstream.body,
    )
}

fn as_json(upstream: &Upstream) -> Value {
    serde_json::from_slice(&upstream.body).expect("the node answers searches with JSON")
}

fn fhir_json(body: &[u8]) -> Wire {
    response("200 OK", &[("Content-Type", "application/fhir+json")], body)
}

/// Adds a `next` link to a searchset.
fn with_next(mut bundle: Value, next: &str) -> Vec<u8> {
    let links = bundle["link"]
        .as_array_mut()
        .expect("a searchset has links");
    links.retain(|l| l["relation"] != "next");
    links.push(json!({ "relation": "next", "url": next }));
    serde_json::to_vec(&bundle).expect("a Value serialises")
}

/// Runs known-patient-sends through a proxy that tampers as `tamper` says; returns the
/// finished run, its reports, the proxy and the folder that holds the reports.
async fn run_through(tamper: Tamper) -> (Finished, Reports, HostileServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let node = NodeProcess::start(dir.path()).await;
    let proxy = proxy(&node, tamper).await;
    let root = short_project(dir.path());
    let target = target_file(
        dir.path(),
        &Endpoints {
            notification: format!("{}/fhir", node.base()),
            token: format!("{}/token", node.base()),
            control: Some(format!("{}/control", node.base())),
            sender_fhir_base: Some(format!("{}/sender/fhir", proxy.base())),
            sender_token: Some(format!("{}/sender/token", node.base())),
            ..Endpoints::default()
        },
        "2s",
    );
    let reports = dir.path().join("reports");
    let args = run_args(
        text(&root),
        text(&target),
        text(&reports),
        "known-patient-sends",
    );
    let finished = run_bounded(dir.path(), &args, &reports, LIMIT).await;
    eprintln!(
        "finished in {:?} with {:?}; the proxy saw {} request(s)",
        finished.elapsed,
        finished.code,
        proxy.seen().len()
    );
    let reports = finished.reports();
    (finished, reports, proxy, dir)
}

/// Runs through the proxy and asserts what every hostile run must show.
async fn hostile_run(tamper: Tamper) -> (Finished, Reports, HostileServer, tempfile::TempDir) {
    let (finished, reports, proxy, dir) = run_through(tamper).await;
    finished.assert_failed_cleanly(LIMIT);
    (finished, reports, proxy, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_untouched_proxy_the_case_passes() {
    let (finished, _, proxy, _dir) =
        run_through(Arc::new(|_: &Seen, upstream, _: &str| pass_on(upstream))).await;
    assert_eq!(
        finished.code,
        Some(0),
        "the control run must pass, or the hostile runs prove nothing:\n{}",
        finished.stderr
    );
    assert!(
        proxy.seen().iter().any(|s| s.target.starts_with(TAMPERED)),
        "the pull went through the proxy"
    );
}

fn nested_10k_deep(_: &Seen, upstream: Upstream, _: &str) -> Wire {
    let depth = 10_000;
    let nested = format!("{}null{}", "{\"n\":".repeat(depth), "}".repeat(depth));
    let body = String::from_utf8_lossy(&upstream.body).replacen(
        "\"resourceType\":\"Bundle\"",
        &format!("\"resourceType\":\"Bundle\",\"_deep\":{nested}"),
        1,
    );
    fhir_json(body.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_nesting_10k_objects_deep_fails_the_search_without_a_crash() {
    let (_, reports, _, _dir) = hostile_run(Arc::new(nested_10k_deep)).await;
    reports.assert_names_exchange(TAMPERED, &["answered"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_nesting_10k_objects_deep_is_refused_as_unreadable_json() {
    let (_, reports, _, _dir) = hostile_run(Arc::new(nested_10k_deep)).await;
    reports.assert_names_exchange(TAMPERED, &["json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_with_10k_entries_is_judged_in_bounded_time() {
    let (finished, reports, _, _dir) = hostile_run(Arc::new(|_: &Seen, upstream, _: &str| {
        let mut bundle = as_json(&upstream);
        let entries: Vec<Value> = (0..10_000)
            .map(|i| {
                json!({
                    "fullUrl": format!("urn:uuid:00000000-0000-0000-0000-{i:012}"),
                    "resource": { "resourceType": "Patient", "id": format!("hostile-{i}") },
                    "search": { "mode": "match" },
                })
            })
            .collect();
        bundle["entry"] = Value::Array(entries);
        fhir_json(&serde_json::to_vec(&bundle).expect("a Value serialises"))
    }))
    .await;
    eprintln!("10k entries judged in {:?}", finished.elapsed);
    reports.assert_names_exchange(TAMPERED, &["total-matches"]);
}

fn loop_to_itself(seen: &Seen, upstream: Upstream, proxy: &str) -> Wire {
    let bundle = as_json(&upstream);
    fhir_json(&with_next(bundle, &format!("{proxy}{}", seen.target)))
}

fn fetches_of_tampered(proxy: &HostileServer) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|s| s.target.starts_with(TAMPERED))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_link_looping_to_itself_is_stopped() {
    let (_, reports, proxy, _dir) = hostile_run(Arc::new(loop_to_itself)).await;
    let fetched = fetches_of_tampered(&proxy);
    eprintln!("the looping page was fetched {fetched} times");
    assert!(
        fetched <= 101,
        "the harness fetched the looping page {fetched} times"
    );
    reports.assert_says(&["next-loop", "points at a page already read"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_link_looping_to_itself_is_named_after_the_first_repeat() {
    let (_, reports, proxy, _dir) = hostile_run(Arc::new(loop_to_itself)).await;
    let fetched = fetches_of_tampered(&proxy);
    assert!(fetched <= 2, "the looping page was fetched {fetched} times");
    reports.assert_names_exchange(TAMPERED, &["next"]);
}

/// A server standing for another host: it answers every request with an empty searchset.
async fn foreign_host() -> Arc<HostileServer> {
    Arc::new(
        HostileServer::start(|_| {
            response(
                "200 OK",
                &[("Content-Type", "application/fhir+json")],
                br#"{"resourceType":"Bundle","type":"searchset","total":0,"link":[],"entry":[]}"#,
            )
        })
        .await,
    )
}

/// A tamper that adds a `next` link to the same search on `foreign`.
fn next_to(foreign: &HostileServer) -> Tamper {
    let foreign_base = foreign.base();
    Arc::new(move |seen: &Seen, upstream, _: &str| {
        let bundle = as_json(&upstream);
        let path = seen
            .target
            .replacen("Patient?", "Patient?_getpagesoffset=1&", 1);
        fhir_json(&with_next(bundle, &format!("{foreign_base}{path}")))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_link_to_a_foreign_host_ends_in_bounded_time_with_reports() {
    let foreign = foreign_host().await;
    let (finished, _, _, _dir) = run_through(next_to(&foreign)).await;
    assert!(finished.elapsed <= LIMIT, "{:?}", finished.elapsed);
    assert!(
        matches!(finished.code, Some(0 | 1)),
        "{:?}\n{}",
        finished.code,
        finished.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_link_to_a_foreign_host_is_not_followed_with_the_token() {
    let foreign = foreign_host().await;
    let (finished, reports, _, _dir) = run_through(next_to(&foreign)).await;
    let leaked: Vec<_> = foreign
        .seen()
        .into_iter()
        .filter(|s| s.header("authorization").is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "the harness sent its pull token to a foreign host: {:?}",
        leaked.iter().map(|s| &s.target).collect::<Vec<_>>()
    );
    finished.assert_failed_cleanly(LIMIT);
    reports.assert_names_exchange(TAMPERED, &["next", "127.0.0.1"]);
}

fn invalid_utf8(_: &Seen, upstream: Upstream, _: &str) -> Wire {
    let mut body = upstream.body;
    let at = body
        .windows(8)
        .position(|w| w == b"searchse")
        .expect("the node's answer is a searchset");
    // "searchse\xff\xfet": the type's string value is no longer UTF-8.
    body.splice(at + 8..at + 8, [0xff, 0xfe]);
    fhir_json(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_answer_with_invalid_utf8_fails_the_search() {
    let (_, reports, _, _dir) = hostile_run(Arc::new(invalid_utf8)).await;
    reports.assert_names_exchange(TAMPERED, &["answered"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_answer_with_invalid_utf8_is_refused_naming_the_encoding() {
    let (_, reports, _, _dir) = hostile_run(Arc::new(invalid_utf8)).await;
    reports.assert_names_exchange(TAMPERED, &["utf-8"]);
}

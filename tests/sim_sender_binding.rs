//! The simulated sender binds its access tokens to the notified searches of one share, and
//! says so directly: a receiver (here the test, with the reference node's client
//! certificate of a fresh test PKI) asks the token endpoint for a token with a signed client
//! assertion and the share's authorization base, then searches and reads over mutual TLS on
//! loopback. Notified searches answer (in any equivalent encoding and order, and page by
//! page); searches outside the notified set, other patients' searches, another share's
//! searches, cancelled shares and unreachable reads are refused with an OperationOutcome
//! that carries no patient data.
//!
//! Every share's store holds the records of both fixture patients, as a real sender's
//! would, so the other patient's data is on the server and only the binding and the
//! patient scope keep it out of an answer.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bgz_harness::fhir::catalogue::{LastKnownForm, QueryOptions, notified_queries};
use bgz_harness::fhir::search::{SearchUrl, encode};
use bgz_harness::fhir::store::ResourceStore;
use bgz_harness::journal::{ExchangeKind, Journal, Party};
use bgz_harness::pki::{self, PkiSpec};
use bgz_harness::protocol::token::{
    AssertionClaims, CertificateSigner, encode_jwt, token_request_form, unix_now,
};
use bgz_harness::runner::fixtures::PatientFixture;
use bgz_harness::sim::sender::{SenderSim, Share};
use bgz_harness::transport::{
    ClientSettings, Outgoing, RecordingClient, ServerVerification, TlsSettings,
};
use serde_json::Value;

const BSN_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/bsn";
/// Matches per searchset page of every share: small, so the four Conditions of the known
/// patient come in two pages.
const PAGE_SIZE: usize = 2;

/// One answer of the simulated sender.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    text: String,
    json: Value,
}

/// A running simulated sender and a receiver that talks to it over mutual TLS.
struct Env {
    /// Holds the test PKI until the test ends.
    _pki: tempfile::TempDir,
    sender: SenderSim,
    /// What the simulated sender journaled: the requests as they reached it.
    served: Arc<Journal>,
    receiver: RecordingClient,
    signer: CertificateSigner,
    known: PatientFixture,
    other: PatientFixture,
    /// The records of both patients.
    store: Arc<ResourceStore>,
}

impl Env {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder for the test PKI");
        let files = pki::generate(&PkiSpec::default(), dir.path()).expect("the test PKI");
        // The simulator serves with the harness's material; the receiver is the target,
        // which holds the reference node's client certificate of the same PKI.
        let harness = TlsSettings::load(&files.harness_tls(), ServerVerification::Verify)
            .expect("the harness's TLS material loads");
        let target = TlsSettings::load(&files.node_tls(), ServerVerification::Verify)
            .expect("the target's TLS material loads");
        let served = Arc::new(Journal::new());
        let sender = SenderSim::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            None,
            served.clone(),
            &harness,
        )
        .await
        .expect("the simulated sender binds a loopback port");
        assert!(sender.local_addr().ip().is_loopback());
        assert!(sender.fhir_base().starts_with("https://127.0.0.1:"));

        let settings = ClientSettings {
            tls: Some(target.client.clone()),
            ..ClientSettings::default()
        };
        let receiver = RecordingClient::new(
            &settings,
            Arc::new(Journal::new()),
            Party::Target,
            Party::HarnessSender,
        )
        .expect("the receiver's client builds");
        let identity = &target.client_identity;
        let signer = CertificateSigner::new(&identity.key, &identity.chain, None)
            .expect("a signer with the target's client key");

        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let known = PatientFixture::load(root, "known").expect("the known fixture loads");
        let other = PatientFixture::load(root, "other").expect("the other fixture loads");
        assert_ne!(known.scope.bsn, other.scope.bsn);
        let mut store = ResourceStore::default();
        store.extend(&known.store).expect("the known records");
        store.extend(&other.store).expect("the other records");

        Self {
            _pki: dir,
            sender,
            served,
            receiver,
            signer,
            known,
            other,
            store: Arc::new(store),
        }
    }

    /// Publishes a share of `patient`'s record under `authorization_base`, notified with the
    /// default catalogue, as a case does when it sends a notification.
    fn publish(&self, patient: &PatientFixture, authorization_base: &str) {
        self.publish_with(patient, authorization_base, QueryOptions::default());
    }

    /// As [`Env::publish`], with the catalogue shaped by `options`.
    fn publish_with(
        &self,
        patient: &PatientFixture,
        authorization_base: &str,
        options: QueryOptions,
    ) {
        let scope = patient.scope.clone();
        let notified = notified_with(&scope.bsn, options)
            .iter()
            .map(|q| SearchUrl::parse_relative(q).expect("a notified query parses"))
            .collect();
        self.sender.publish(Share {
            case_id: format!("case-{authorization_base}"),
            authorization_base: authorization_base.to_owned(),
            store: self.store.clone(),
            reachable: self.store.reachable_from_patient(&scope),
            scope,
            workflow_task: None,
            page_size: PAGE_SIZE,
            revoked: AtomicBool::new(false),
            hold_token: false,
            notified,
            released: tokio::sync::watch::Sender::new(false),
            token_waiting: AtomicBool::new(false),
        });
    }

    /// Asks the token endpoint for a token: a client assertion signed with the target's
    /// client key, addressed to the token endpoint, and the authorization base if given.
    async fn token_request(&self, authorization_base: Option<&str>) -> Answer {
        let url = self.sender.token_url();
        let now = unix_now();
        let client = AssertionClaims::new("https://receiver.test", &url, now, 60);
        let authorization = AssertionClaims::new("90000456", &url, now, 60);
        let client = encode_jwt(&client, &self.signer).expect("signing the client assertion");
        let authorization =
            encode_jwt(&authorization, &self.signer).expect("signing the authorization");
        let form = token_request_form(&client, Some(&authorization), authorization_base);
        let request = Outgoing::with_body(
            reqwest::Method::POST,
            url,
            "application/x-www-form-urlencoded",
            form,
            ExchangeKind::TokenRequest,
        );
        self.send(request).await
    }

    /// A token for `authorization_base`; the request must succeed.
    async fn token(&self, authorization_base: &str) -> String {
        let answer = self.token_request(Some(authorization_base)).await;
        assert_eq!(
            answer.status, 200,
            "token request for {authorization_base}: {}",
            answer.text
        );
        assert_eq!(answer.json["token_type"], "Bearer", "{}", answer.text);
        answer.json["access_token"]
            .as_str()
            .expect("the token answer has an access_token")
            .to_owned()
    }

    /// GETs `path` (relative to the FHIR base, or an absolute URL) with `token`.
    async fn get(&self, token: &str, path: &str) -> Answer {
        let url = if path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}/{path}", self.sender.fhir_base())
        };
        let request = Outgoing::get(url, ExchangeKind::Search)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/fhir+json");
        self.send(request).await
    }

    async fn send(&self, request: Outgoing) -> Answer {
        let url = request.url.clone();
        let exchange = self
            .receiver
            .send(request)
            .await
            .unwrap_or_else(|e| panic!("{url} got no answer: {e}"));
        let response = exchange.response.expect("an exchange with an answer");
        let text = String::from_utf8_lossy(&response.body.bytes).into_owned();
        Answer {
            status: response.status,
            content_type: response.header("content-type").unwrap_or("").to_owned(),
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    /// The request targets (path and query) the simulated sender received, as sent.
    fn served_targets(&self) -> Vec<String> {
        self.served
            .all()
            .iter()
            .map(|e| e.request.url.clone())
            .collect()
    }
}

/// The notified searches for `bsn` with the default catalogue (decoded, as in the
/// notification Task).
fn notified(bsn: &str) -> Vec<String> {
    notified_with(bsn, QueryOptions::default())
}

/// The notified searches for `bsn` with the catalogue shaped by `options`.
fn notified_with(bsn: &str, options: QueryOptions) -> Vec<String> {
    notified_queries(bsn, options)
        .into_iter()
        .map(|q| q.query)
        .collect()
}

/// `patient.identifier=<bsn system>|<bsn>`, decoded.
fn by_bsn(bsn: &str) -> String {
    format!("patient.identifier={BSN_SYSTEM}|{bsn}")
}

/// Asserts a FHIR searchset answer and returns the `Type/id` of its matches.
fn searchset(answer: &Answer, what: &str) -> Vec<String> {
    assert_eq!(answer.status, 200, "{what}: {}", answer.text);
    assert!(
        answer.content_type.starts_with("application/fhir+json"),
        "{what}: content type {}",
        answer.content_type
    );
    assert_eq!(
        answer.json["resourceType"], "Bundle",
        "{what}: {}",
        answer.text
    );
    assert_eq!(answer.json["type"], "searchset", "{what}: {}", answer.text);
    answer.json["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| {
            let r = &e["resource"];
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap_or_default(),
                r["id"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// The `next` link of a searchset answer.
fn next_link(answer: &Answer) -> Option<String> {
    answer.json["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")?["url"]
        .as_str()
        .map(str::to_owned)
}

/// Asserts that `answer` is a refusal with `status` and an error OperationOutcome (issue
/// `code`), holding nothing but that outcome.
fn assert_refused(answer: &Answer, status: u16, code: &str, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.text);
    assert!(
        answer.content_type.starts_with("application/fhir+json"),
        "{what}: content type {}",
        answer.content_type
    );
    let outcome = &answer.json;
    assert_eq!(
        outcome["resourceType"], "OperationOutcome",
        "{what}: {}",
        answer.text
    );
    let issues = outcome["issue"]
        .as_array()
        .expect("an OperationOutcome has issues");
    assert_eq!(issues.len(), 1, "{what}: {}", answer.text);
    assert_eq!(issues[0]["severity"], "error", "{what}: {}", answer.text);
    assert_eq!(issues[0]["code"], code, "{what}: {}", answer.text);
    let keys: BTreeSet<&str> = outcome
        .as_object()
        .expect("an OperationOutcome is an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["resourceType", "issue"]),
        "{what}: the refusal carries more than the outcome: {}",
        answer.text
    );
}

/// Asserts that `text` holds none of `patient`'s identifying data: BSN, names, birth date,
/// and none of the ids of its record's resources (other than `except`, an id the request
/// itself named).
fn assert_no_data_of(text: &str, patient: &PatientFixture, except: Option<&str>, what: &str) {
    let resource = patient.patient().expect("the fixture has a Patient");
    let mut markers: Vec<String> = vec![patient.scope.bsn.clone()];
    for name in resource["name"].as_array().into_iter().flatten() {
        for part in ["text", "family"] {
            markers.extend(name[part].as_str().map(str::to_owned));
        }
        for given in name["given"].as_array().into_iter().flatten() {
            markers.extend(given.as_str().map(str::to_owned));
        }
    }
    markers.extend(resource["birthDate"].as_str().map(str::to_owned));
    markers.extend(
        patient
            .store
            .iter()
            .filter_map(|r| r["id"].as_str())
            .filter(|id| Some(*id) != except)
            .map(|id| format!("\"{id}\""))
            .chain(
                patient
                    .store
                    .iter()
                    .filter_map(|r| r["id"].as_str())
                    .filter(|id| Some(*id) != except)
                    .map(|id| format!("/{id}")),
            ),
    );
    for marker in markers {
        assert!(
            !text.contains(&marker),
            "{what}: the refusal body contains patient data `{marker}`: {text}"
        );
    }
}

/// The same search written differently: parameters in reverse order and every name and
/// value percent-encoded (`|` as %7C, `:` as %3A, `/` kept).
fn reencoded(relative: &str) -> String {
    let url = SearchUrl::parse_relative(relative).expect("a notified query parses");
    let mut path = url.resource_type.clone();
    if let Some(op) = &url.operation {
        path.push('/');
        path.push_str(op);
    }
    let pairs: Vec<String> = url
        .params
        .iter()
        .rev()
        .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

#[tokio::test]
async fn a_notified_search_answers_a_searchset_and_its_next_page() {
    let env = Env::start().await;
    env.publish(&env.known, "ab-known");
    let token = env.token("ab-known").await;
    let bsn = env.known.scope.bsn.clone();

    // Every notified search answers a searchset, with only the known patient's data.
    for query in notified(&bsn) {
        let answer = env.get(&token, &query).await;
        let matches = searchset(&answer, &query);
        assert_no_data_of(&answer.text, &env.other, None, &query);
        assert!(
            matches.iter().all(|m| m.contains("/known-")),
            "{query}: {matches:?}"
        );
    }

    // The Problem search pages: four Conditions, two a page, the next link answers too.
    let query = format!("Condition?{}", by_bsn(&bsn));
    let first = env.get(&token, &query).await;
    let first_matches = searchset(&first, "first page");
    assert_eq!(first.json["total"], 4, "{}", first.text);
    assert_eq!(first_matches.len(), PAGE_SIZE, "{}", first.text);
    let next = next_link(&first).expect("the first page links to the next");
    assert!(
        next.starts_with(&env.sender.fhir_base()) && next.contains("_getpagesoffset=2"),
        "{next}"
    );
    let second = env.get(&token, &next).await;
    let second_matches = searchset(&second, "second page");
    assert_eq!(second_matches.len(), PAGE_SIZE, "{}", second.text);
    assert_eq!(next_link(&second), None, "{}", second.text);
    let all: BTreeSet<&String> = first_matches.iter().chain(&second_matches).collect();
    let expected: BTreeSet<String> = (1..=4)
        .map(|i| format!("Condition/known-condition-{i}"))
        .collect();
    assert_eq!(all, expected.iter().collect());

    // A reachable resource named by a match reads.
    let read = env.get(&token, &first_matches[0]).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(
        format!("Condition/{}", read.json["id"].as_str().unwrap_or_default()),
        first_matches[0]
    );
}

#[tokio::test]
async fn an_equivalent_encoding_or_order_of_a_notified_search_is_accepted() {
    let env = Env::start().await;
    env.publish(&env.known, "ab-known");
    let token = env.token("ab-known").await;
    let bsn = env.known.scope.bsn.clone();

    // Every notified search, reversed and fully percent-encoded, finds what the plain form
    // finds.
    let mut differed = 0;
    for query in notified(&bsn) {
        let plain = searchset(&env.get(&token, &query).await, &query);
        let variant = reencoded(&query);
        if variant == query {
            // `DocumentReference?status=current` has nothing to encode or reorder.
            continue;
        }
        differed += 1;
        let answer = env.get(&token, &variant).await;
        assert_eq!(searchset(&answer, &variant), plain, "{variant}");
    }
    assert_eq!(differed, 26, "every catalogue search has a second spelling");

    // By hand: only `|` encoded, the category before the patient.
    let consent = format!(
        "Consent?category=http://snomed.info/sct%7C11291000146105&patient.identifier={BSN_SYSTEM}%7C{bsn}"
    );
    let answer = env.get(&token, &consent).await;
    assert_eq!(
        searchset(&answer, &consent),
        vec!["Consent/known-consent-1".to_owned()]
    );
    // It reached the simulator as written: the encoding differed on the wire.
    assert!(
        env.served_targets()
            .iter()
            .any(|t| t.contains("/fhir/Consent?category=http://snomed.info/sct%7C11291000146105&")),
        "{:#?}",
        env.served_targets()
    );

    // The next page, asked for with the paging parameter first and `|` encoded.
    let next = format!("Condition?_getpagesoffset=2&patient.identifier={BSN_SYSTEM}%7C{bsn}");
    let answer = env.get(&token, &next).await;
    assert_eq!(
        searchset(&answer, &next).len(),
        PAGE_SIZE,
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn a_search_outside_the_notified_set_is_refused_without_patient_data() {
    let env = Env::start().await;
    env.publish(&env.known, "ab-known");
    let token = env.token("ab-known").await;
    let p = by_bsn(&env.known.scope.bsn);
    let notified = notified(&env.known.scope.bsn);
    let body_weight = notified
        .iter()
        .find(|q| q.contains("29463-7"))
        .expect("body weight is notified")
        .clone();
    assert!(
        body_weight.ends_with("&_sort=-date&_count=1"),
        "{body_weight}"
    );

    let widened = [
        // Not notified at all for this patient.
        ("every Observation", format!("Observation?{p}")),
        ("a type no section names", format!("Specimen?{p}")),
        ("Appointments", format!("Appointment?{p}")),
        // A notified search with a parameter that widens what it returns.
        (
            "Problem with Provenance",
            format!("Condition?{p}&_revinclude=Provenance:target"),
        ),
        (
            "living situation or-ed with blood pressure and lab",
            format!(
                "Observation?{p}&code=http://snomed.info/sct|365508006,http://loinc.org|85354-9&category=http://snomed.info/sct|49581000146104"
            ),
        ),
        (
            "Problem with an extra include",
            format!("Condition?{p}&_include=Condition:asserter"),
        ),
        // A notified last-known search without its `_count=1`: every body weight.
        (
            "body weight without _count",
            body_weight.replace("&_count=1", ""),
        ),
        // The same search as an operation.
        (
            "body weight as $lastn",
            format!("Observation/$lastn?{p}&code=http://loinc.org|29463-7"),
        ),
        // A notified search with an extra paging-looking `_count`.
        ("Problem with _count", format!("Condition?{p}&_count=100")),
    ];
    for (what, query) in widened {
        assert!(!notified.contains(&query), "{what} is notified: {query}");
        let answer = env.get(&token, &query).await;
        assert_refused(&answer, 403, "forbidden", what);
        assert_no_data_of(&answer.text, &env.known, None, what);
        assert_no_data_of(&answer.text, &env.other, None, what);
    }

    // The token still answers its notified searches afterwards.
    let answer = env.get(&token, &format!("Condition?{p}")).await;
    searchset(&answer, "Problem after the refusals");
}

#[tokio::test]
async fn a_notified_search_for_another_patient_is_refused() {
    let env = Env::start().await;
    env.publish(&env.known, "ab-known");
    let token = env.token("ab-known").await;
    let (mine, theirs) = (&env.known.scope.bsn, &env.other.scope.bsn);

    let mut tried = 0;
    for query in notified(mine).iter().filter(|q| q.contains(mine.as_str())) {
        let query = query.replace(mine.as_str(), theirs);
        let answer = env.get(&token, &query).await;
        assert_refused(&answer, 403, "forbidden", &query);
        assert_no_data_of(&answer.text, &env.other, None, &query);
        assert_no_data_of(&answer.text, &env.known, None, &query);
        tried += 1;
    }
    assert_eq!(tried, 26, "every catalogue search names the patient by BSN");

    // Both patients at once, and the other patient by reference.
    for query in [
        format!("Condition?patient.identifier={BSN_SYSTEM}|{mine},{BSN_SYSTEM}|{theirs}"),
        format!("Condition?{}&{}", by_bsn(mine), by_bsn(theirs)),
        format!("Condition?patient={}", env.other.scope.patient_ref),
    ] {
        let answer = env.get(&token, &query).await;
        assert_refused(&answer, 403, "forbidden", &query);
        assert_no_data_of(&answer.text, &env.other, None, &query);
    }
}

#[tokio::test]
async fn a_token_of_one_share_does_not_open_another_share() {
    let env = Env::start().await;
    env.publish(&env.known, "ab-share-a");
    env.publish(&env.other, "ab-share-b");
    let token_a = env.token("ab-share-a").await;
    let token_b = env.token("ab-share-b").await;
    assert_ne!(token_a, token_b);
    let (bsn_a, bsn_b) = (&env.known.scope.bsn, &env.other.scope.bsn);

    // Each token answers its own share's searches with its own patient's data.
    let problems_a = format!("Condition?{}", by_bsn(bsn_a));
    let problems_b = format!("Condition?{}", by_bsn(bsn_b));
    let a = env.get(&token_a, &problems_a).await;
    assert!(
        searchset(&a, "A with A")
            .iter()
            .all(|m| m.contains("/known-"))
    );
    let b = env.get(&token_b, &problems_b).await;
    assert_eq!(
        searchset(&b, "B with B"),
        vec!["Condition/other-condition-1".to_owned()]
    );

    // Neither opens the other's notified searches.
    for (token, own, foreign, foreign_patient) in [
        (&token_a, bsn_a, bsn_b, &env.other),
        (&token_b, bsn_b, bsn_a, &env.known),
    ] {
        for query in notified(foreign)
            .iter()
            .filter(|q| q.contains(foreign.as_str()))
        {
            let answer = env.get(token, query).await;
            let what = format!("the token of the share of {own} on {query}");
            assert_refused(&answer, 403, "forbidden", &what);
            assert_no_data_of(&answer.text, foreign_patient, None, &what);
        }
    }

    // Two cases may notify the same patient at once, with differently shaped catalogues: the
    // patient scope is then the same, and only the binding keeps each token to its own
    // share's searches. Share C notifies the known patient with Provenance and every last
    // known value.
    let wide = QueryOptions {
        provenance: true,
        last_known: LastKnownForm::All,
        ..QueryOptions::default()
    };
    env.publish_with(&env.known, "ab-share-c", wide);
    let token_c = env.token("ab-share-c").await;
    let only_c: Vec<String> = notified_with(bsn_a, wide)
        .into_iter()
        .filter(|q| !notified(bsn_a).contains(q))
        .collect();
    assert_eq!(only_c.len(), 26, "{only_c:#?}");
    for query in &only_c {
        // C's token answers its searches; A's token, for the same patient, does not.
        searchset(&env.get(&token_c, query).await, query);
        let answer = env.get(&token_a, query).await;
        let what = format!("the token of share A on share C's {query}");
        assert_refused(&answer, 403, "forbidden", &what);
        assert_no_data_of(&answer.text, &env.known, None, &what);
    }
    // And C's token does not answer A's last-known searches either.
    for query in notified(bsn_a).iter().filter(|q| q.contains("_count=1")) {
        let answer = env.get(&token_c, query).await;
        assert_refused(&answer, 403, "forbidden", &format!("C on A's {query}"));
    }

    // Nor reads the other's resources: A's token reads B's Condition as absent.
    let answer = env.get(&token_a, "Condition/other-condition-1").await;
    assert_refused(&answer, 404, "not-found", "A reading B's Condition");
    assert_no_data_of(
        &answer.text,
        &env.other,
        Some("other-condition-1"),
        "A reading B's Condition",
    );
    let answer = env.get(&token_b, "Condition/other-condition-1").await;
    assert_eq!(
        answer.status, 200,
        "B reading its Condition: {}",
        answer.text
    );

    // A token is only issued for a published authorization base.
    for (base, why) in [
        (Some("ab-unpublished"), "the authorization_base is unknown"),
        (None, "authorization_base is missing"),
    ] {
        let answer = env.token_request(base).await;
        assert_eq!(answer.status, 400, "{base:?}: {}", answer.text);
        assert_eq!(answer.json["error"], "invalid_grant", "{}", answer.text);
        assert_eq!(answer.json["error_description"], why, "{}", answer.text);
        assert!(answer.json.get("access_token").is_none(), "{}", answer.text);
    }

    // A made-up token opens nothing.
    let answer = env.get("at-made-up", &problems_a).await;
    assert_refused(&answer, 401, "login", "a made-up token");
    assert_no_data_of(&answer.text, &env.known, None, "a made-up token");
}

#[tokio::test]
async fn a_revoked_share_refuses_its_token_and_new_token_requests() {
    let env = Env::start().await;
    env.publish(&env.known, "ab-revoked");
    env.publish(&env.other, "ab-kept");
    let token = env.token("ab-revoked").await;
    let kept = env.token("ab-kept").await;
    let problems = format!("Condition?{}", by_bsn(&env.known.scope.bsn));
    let kept_problems = format!("Condition?{}", by_bsn(&env.other.scope.bsn));
    searchset(&env.get(&token, &problems).await, "before the revocation");

    env.sender.revoke("ab-revoked");

    // The token's searches and reads are refused; the answer says nothing of the patient.
    for path in [
        problems.clone(),
        format!(
            "Condition?{}&_getpagesoffset=2",
            by_bsn(&env.known.scope.bsn)
        ),
        env.known.scope.patient_ref.clone(),
        "Condition/known-condition-1".to_owned(),
    ] {
        let answer = env.get(&token, &path).await;
        assert_refused(&answer, 403, "forbidden", &path);
        assert_no_data_of(&answer.text, &env.known, None, &path);
    }

    // No new token is issued for the revoked base.
    let answer = env.token_request(Some("ab-revoked")).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(answer.json["error"], "invalid_grant", "{}", answer.text);
    assert!(answer.json.get("access_token").is_none(), "{}", answer.text);

    // The other share is untouched.
    searchset(&env.get(&kept, &kept_problems).await, "the kept token");
    let fresh = env.token("ab-kept").await;
    searchset(&env.get(&fresh, &kept_problems).await, "a fresh kept token");
}

#[tokio::test]
async fn a_read_outside_the_share_is_refused() {
    let env = Env::start().await;
    env.publish(&env.known, "ab-known");
    let token = env.token("ab-known").await;

    // What the share exposes reads: the patient, a Condition, the letter and its Binary.
    let letter = env
        .known
        .letter
        .as_ref()
        .expect("the known fixture has a letter");
    for path in [
        env.known.scope.patient_ref.as_str(),
        "Condition/known-condition-1",
        letter.document_reference.as_str(),
    ] {
        let answer = env.get(&token, path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text);
    }
    let binary = env.get(&token, &letter.binary).await;
    assert_eq!(binary.status, 200, "{}: {}", letter.binary, binary.text);

    // The other patient's resources are on the server but not in the share, and so is an
    // Organization of the known patient's record that nothing of the patient references:
    // each reads as absent, exactly as a resource that does not exist.
    let absent = env.get(&token, "Condition/no-such-condition").await;
    assert_refused(&absent, 404, "not-found", "a resource that does not exist");
    let unreferenced = env
        .known
        .store
        .get("Organization/known-organization-1")
        .expect("the known record has an unreferenced Organization");
    assert!(
        !env.store
            .reachable_from_patient(&env.known.scope)
            .contains("Organization/known-organization-1")
    );
    for resource in env.other.store.iter().chain([unreferenced]) {
        let key = format!(
            "{}/{}",
            resource["resourceType"].as_str().unwrap_or_default(),
            resource["id"].as_str().unwrap_or_default()
        );
        assert!(env.store.get(&key).is_some());
        let answer = env.get(&token, &key).await;
        assert_refused(&answer, 404, "not-found", &key);
        assert_no_data_of(&answer.text, &env.other, resource["id"].as_str(), &key);
        let (rtype, id) = key.split_once('/').expect("a key is Type/id");
        let said = |answer: &Answer, named: &str| {
            answer.json["issue"][0]["diagnostics"]
                .as_str()
                .map(|d| d.replace(named, "<resource>"))
        };
        assert_eq!(
            said(&answer, &format!("{rtype} {id}")),
            said(&absent, "Condition no-such-condition"),
            "{key} reads differently from an absent resource"
        );
    }
}

//! Attacks on the reference node (`bgz-harness node serve`) as a hostile client: forged and
//! replayed client assertions at both token endpoints, malformed token requests and
//! notifications, notifications and cancellations in another organisation's name, pulls
//! outside the notified patient and searches, tokens used on another organisation's
//! connection, and transport abuse (no client certificate, slow or idle connections, HTTP/1.0,
//! pipelining, very long URLs).
//!
//! After each attack the node must answer with the status protocol.md gives (or close the
//! connection), never hang, stay responsive, and keep patient data and tokens out of its log.
//! Every test talks only to node processes it starts on 127.0.0.1 and is bounded in time.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bgz_harness::pki::{PkiFile, PkiFiles};
use bgz_harness::protocol::token::{
    CLIENT_ASSERTION_TYPE, CertificateSigner, GRANT_TYPE, JwsSigner, token_request_form, unix_now,
};
use bgz_harness::transport::{
    ClientSettings, ClientTls, PemSource, TlsIdentity, http_client, load_identity,
};
use common::{
    HostileServer, NodeProcess, Seen, Wire, fixture_secrets, good_notification, good_token,
    harness_tls, pki,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// Longest one exchange with the node may take.
const STEP: Duration = Duration::from_secs(15);
/// The fixture patients the node holds as a sender: the known one and another.
const KNOWN_BSN: &str = "999923067";
const OTHER_BSN: &str = "999967034";
const BSN_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/bsn";
/// URAs of the test PKI: the harness (a sender) and a third organisation.
const HARNESS_URA: &str = "90000123";
const NODE_URA: &str = "90000456";

fn identity(cert: PkiFile, key: PkiFile) -> TlsIdentity {
    let files = PkiFiles::at(pki());
    load_identity(
        &PemSource::File(files.path(cert)),
        &PemSource::File(files.path(key)),
    )
    .expect("loading a client certificate of the test PKI")
}

fn harness_identity() -> TlsIdentity {
    identity(PkiFile::HarnessClient, PkiFile::HarnessClientKey)
}

fn other_identity() -> TlsIdentity {
    identity(PkiFile::OtherClient, PkiFile::OtherClientKey)
}

fn client_tls(identity: &TlsIdentity) -> ClientTls {
    harness_tls()
        .client_presenting(identity)
        .expect("a TLS client presenting a test certificate")
}

fn client(identity: &TlsIdentity) -> reqwest::Client {
    http_client(&ClientSettings {
        tls: Some(client_tls(identity)),
        ..ClientSettings::default()
    })
    .expect("an HTTP client")
}

/// One answer of the node.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn assert_outcome(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {self:?}");
        assert_eq!(
            self.json()["resourceType"],
            "OperationOutcome",
            "{what}: the refusal carries an OperationOutcome: {self:?}"
        );
    }

    fn assert_unauthorized(&self, what: &str) {
        self.assert_outcome(401, what);
        assert!(
            self.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{what}: a 401 carries WWW-Authenticate: Bearer: {self:?}"
        );
    }

    fn assert_token_error(&self, errors: &[&str], what: &str) {
        assert_eq!(self.status, 400, "{what}: {self:?}");
        let error = self.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            errors.contains(&error.as_str()),
            "{what}: expected an RFC 6749 error of {errors:?}: {self:?}"
        );
        assert!(
            self.json()["access_token"].is_null(),
            "{what}: no token on a refusal"
        );
    }
}

async fn send(request: reqwest::RequestBuilder) -> Result<Reply, String> {
    let response = tokio::time::timeout(STEP, request.send())
        .await
        .map_err(|_| "no answer within the step limit".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(STEP, response.text())
        .await
        .map_err(|_| "the body did not arrive within the step limit".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

async fn answer(request: reqwest::RequestBuilder) -> Reply {
    send(request).await.expect("the node answers")
}

/// A compact JWS over `header` and `claims`, signed with `identity`'s key.
fn jwt(header: &Value, claims: &Value, identity: &TlsIdentity) -> String {
    let signer = CertificateSigner::new(&identity.key, &identity.chain, None)
        .expect("a signer for a test key");
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = signer.sign(input.as_bytes()).expect("signing");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// The JWS header a client signing with `identity` sends (no `x5c`: the TLS certificate).
fn header(identity: &TlsIdentity) -> Value {
    let signer = CertificateSigner::new(&identity.key, &identity.chain, None)
        .expect("a signer for a test key");
    json!({ "typ": "JWT", "alg": signer.alg().name() })
}

fn x5c(identity: &TlsIdentity) -> Value {
    json!(
        identity
            .chain
            .iter()
            .map(|c| STANDARD.encode(c.as_ref()))
            .collect::<Vec<_>>()
    )
}

/// Client-assertion claims for `aud`, valid for 60 s from now.
fn claims(client: &str, aud: &str) -> Value {
    let now = unix_now();
    json!({
        "iss": client, "sub": client, "aud": aud, "iat": now, "exp": now + 60,
        "jti": uuid::Uuid::new_v4().to_string()
    })
}

/// A well-formed token request signed with `identity`.
fn good_form(identity: &TlsIdentity, aud: &str, base: Option<&str>) -> String {
    let client = jwt(
        &header(identity),
        &claims("https://hostile.client.test", aud),
        identity,
    );
    // The care provider is the certificate's organisation, as an honest client names it.
    let ura = identity.ura().unwrap_or_else(|| HARNESS_URA.to_owned());
    let authorization = jwt(&header(identity), &claims(&ura, aud), identity);
    token_request_form(&client, Some(&authorization), base)
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        form.append_pair(name, value);
    }
    form.finish()
}

/// A notification Task about `bsn` from `on_behalf_of`, addressed to the node.
fn task(identifier: &str, bsn: &str, on_behalf_of: &str) -> Value {
    json!({
        "resourceType": "Task", "status": "requested", "intent": "proposal",
        "identifier": [{ "system": "urn:ietf:rfc:3986", "value": identifier }],
        "groupIdentifier": { "system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{}", uuid::Uuid::new_v4()) },
        "code": { "coding": [{ "system": "http://fhir.nl/fhir/NamingSystem/TaskCode", "code": "pull-notification" }] },
        "for": { "identifier": { "system": BSN_SYSTEM, "value": bsn } },
        "authoredOn": "2025-09-01T10:00:00+02:00",
        "requester": {
            "agent": { "identifier": { "system": "urn:ietf:rfc:3986", "value": "urn:oid:2.999.1" }, "display": "GtK" },
            "onBehalfOf": { "identifier": { "system": "http://fhir.nl/fhir/NamingSystem/ura", "value": on_behalf_of } }
        },
        "owner": { "identifier": { "system": "http://fhir.nl/fhir/NamingSystem/ura", "value": NODE_URA } },
        "restriction": { "period": { "end": "2099-09-08T10:00:00+02:00" } },
        "input": [
            { "type": { "coding": [{ "system": "http://fhir.nl/fhir/NamingSystem/TaskParameter", "code": "authorization-base" }] }, "valueString": "ab-hostile" },
            { "type": { "coding": [{ "system": "http://loinc.org", "code": "11450-4" }] }, "valueString": format!("Condition?patient.identifier={BSN_SYSTEM}|{bsn}") }
        ]
    })
}

fn new_identifier() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

/// A node process and clients presenting the harness's and another organisation's
/// certificate.
struct Attack {
    node: NodeProcess,
    _dir: tempfile::TempDir,
    harness_id: TlsIdentity,
    other_id: TlsIdentity,
    harness: reqwest::Client,
    other: reqwest::Client,
}

impl Attack {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let node = NodeProcess::start(dir.path()).await;
        Self::around(node, dir)
    }

    fn around(node: NodeProcess, dir: tempfile::TempDir) -> Self {
        let (harness_id, other_id) = (harness_identity(), other_identity());
        Self {
            harness: client(&harness_id),
            other: client(&other_id),
            harness_id,
            other_id,
            node,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.node.base())
    }

    async fn post_form(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        answer(
            client
                .post(self.url(path))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await
    }

    /// A notification token for the organisation of `client`/`identity`.
    async fn notification_token(&self, client: &reqwest::Client, identity: &TlsIdentity) -> String {
        let reply = self
            .post_form(
                client,
                "/token",
                good_form(identity, &self.url("/token"), None),
            )
            .await;
        assert_eq!(reply.status, 200, "a good token request: {reply:?}");
        reply.json()["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned()
    }

    async fn notify(&self, client: &reqwest::Client, token: &str, task: &Value) -> Reply {
        answer(
            client
                .post(self.url("/fhir/Task"))
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .body(task.to_string()),
        )
        .await
    }

    async fn inbox_entry(&self, identifier: &str) -> Value {
        let reply = answer(self.harness.get(self.url("/inspect/inbox"))).await;
        reply.json()["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["notification"] == identifier)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The node still answers a normal request promptly.
    async fn assert_healthy(&self, after: &str) {
        let started = Instant::now();
        let mut reply = send(self.harness.get(self.url("/health"))).await;
        if reply.is_err() {
            // The pool may hand out a connection the node closed after refusing a request
            // it did not read to the end; a second request opens a new one.
            reply = send(self.harness.get(self.url("/health"))).await;
        }
        assert!(
            matches!(&reply, Ok(r) if r.status == 200 && r.body == "ok"),
            "after {after} the node no longer answers /health: {reply:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "after {after} /health took {:?}",
            started.elapsed()
        );
    }

    /// The node's log holds no patient data and none of `secrets` (tokens, bases).
    async fn assert_log_private(&self, secrets: &[&str]) {
        let log = answer(self.harness.get(self.url("/inspect/log")))
            .await
            .body;
        for secret in fixture_secrets()
            .iter()
            .map(String::as_str)
            .chain(secrets.iter().copied())
        {
            assert!(
                !log.contains(secret),
                "the node's log holds `{secret}`:\n{log}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Token endpoint: forged client assertions.

fn hs256_with_public_key(identity: &TlsIdentity, claims: &Value) -> String {
    let header = json!({ "typ": "JWT", "alg": "HS256" });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    // The certificate (public) as the HMAC secret: the classic key-confusion attack.
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, identity.chain[0].as_ref());
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Every forged assertion for `aud`, presented over the harness's TLS connection.
fn forged_assertions(aud: &str, other_aud: &str) -> Vec<(&'static str, String)> {
    let harness = harness_identity();
    let other = other_identity();
    let foreign = identity(PkiFile::ForeignClient, PkiFile::ForeignClientKey);
    let revoked = identity(PkiFile::RevokedClient, PkiFile::RevokedClientKey);
    let expired_cert = identity(PkiFile::ExpiredClient, PkiFile::ExpiredClientKey);
    let issuing_ca = identity(PkiFile::IntermediateCa, PkiFile::IntermediateCaKey);
    let root_ca = identity(PkiFile::RootCa, PkiFile::RootCaKey);
    let client = "https://hostile.client.test";
    let now = unix_now();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims(client, aud);
        edit(&mut c);
        c
    };
    let good = jwt(&header(&harness), &claims(client, aud), &harness);
    let mut tampered: Vec<String> = good.split('.').map(str::to_owned).collect();
    tampered[1] = URL_SAFE_NO_PAD
        .encode(with(&|c| c["iss"] = json!("https://someone.else.test")).to_string());
    let mut forged = vec![
        ("alg none", {
            let h = URL_SAFE_NO_PAD.encode(json!({ "typ": "JWT", "alg": "none" }).to_string());
            let p = URL_SAFE_NO_PAD.encode(claims(client, aud).to_string());
            format!("{h}.{p}.")
        }),
        (
            "HS256 with the certificate as secret",
            hs256_with_public_key(&harness, &claims(client, aud)),
        ),
        ("a tampered payload", tampered.join(".")),
        (
            "a kid naming no key, signed by a key that is not the TLS certificate's",
            jwt(
                &{
                    let mut h = header(&other);
                    h["kid"] = json!("no-such-key");
                    h
                },
                &claims(client, aud),
                &other,
            ),
        ),
        (
            "an x5c chain from a foreign CA",
            jwt(
                &{
                    let mut h = header(&foreign);
                    h["x5c"] = x5c(&foreign);
                    h
                },
                &claims(client, aud),
                &foreign,
            ),
        ),
        (
            "an x5c chain with a revoked leaf",
            jwt(
                &{
                    let mut h = header(&revoked);
                    h["x5c"] = x5c(&revoked);
                    h
                },
                &claims(client, aud),
                &revoked,
            ),
        ),
        (
            "an x5c chain with an expired leaf",
            jwt(
                &{
                    let mut h = header(&expired_cert);
                    h["x5c"] = x5c(&expired_cert);
                    h
                },
                &claims(client, aud),
                &expired_cert,
            ),
        ),
        (
            "an x5c whose leaf is the issuing CA itself",
            jwt(
                &{
                    let mut h = header(&issuing_ca);
                    h["x5c"] = x5c(&issuing_ca);
                    h
                },
                &claims(client, aud),
                &issuing_ca,
            ),
        ),
        (
            "an x5c whose leaf is the root CA itself",
            jwt(
                &{
                    let mut h = header(&root_ca);
                    h["x5c"] = x5c(&root_ca);
                    h
                },
                &claims(client, aud),
                &root_ca,
            ),
        ),
        (
            "an x5c that is not base64",
            jwt(
                &{
                    let mut h = header(&harness);
                    h["x5c"] = json!(["%%%not base64%%%"]);
                    h
                },
                &claims(client, aud),
                &harness,
            ),
        ),
        (
            "the other token endpoint as audience",
            jwt(&header(&harness), &claims(client, other_aud), &harness),
        ),
        (
            "an array audience",
            jwt(
                &header(&harness),
                &with(&|c| c["aud"] = json!([other_aud])),
                &harness,
            ),
        ),
        (
            "exp 180 s ago",
            jwt(
                &header(&harness),
                &with(&|c| {
                    c["iat"] = json!(now - 240);
                    c["exp"] = json!(now - 180);
                }),
                &harness,
            ),
        ),
        (
            "nbf 300 s ahead",
            jwt(
                &header(&harness),
                &with(&|c| c["nbf"] = json!(now + 300)),
                &harness,
            ),
        ),
        (
            "iat 300 s ahead",
            jwt(
                &header(&harness),
                &with(&|c| {
                    c["iat"] = json!(now + 300);
                    c["exp"] = json!(now + 360);
                }),
                &harness,
            ),
        ),
        (
            "no jti",
            jwt(
                &header(&harness),
                &with(&|c| {
                    c.as_object_mut().map(|o| o.remove("jti"));
                }),
                &harness,
            ),
        ),
        (
            "iss and sub differ",
            jwt(
                &header(&harness),
                &with(&|c| c["sub"] = json!("https://someone.else.test")),
                &harness,
            ),
        ),
        (
            "exp as a string",
            jwt(
                &header(&harness),
                &with(&|c| c["exp"] = json!("99999999999")),
                &harness,
            ),
        ),
        ("four dots", "a.b.c.d".to_owned()),
        ("empty", String::new()),
    ];
    forged.push(("garbage", "\u{0}\u{ffff}.%%.\u{7f}".to_owned()));
    forged
}

async fn forged_assertions_are_refused_at(path: &str, other_path: &str) {
    let attack = Attack::start().await;
    let aud = attack.url(path);
    for (what, assertion) in forged_assertions(&aud, &attack.url(other_path)) {
        let authorization = jwt(
            &header(&attack.harness_id),
            &claims(HARNESS_URA, &aud),
            &attack.harness_id,
        );
        let body = token_request_form(&assertion, Some(&authorization), Some("ab-unknown"));
        let reply = attack.post_form(&attack.harness, path, body).await;
        reply.assert_token_error(
            &["invalid_client", "invalid_grant", "invalid_request"],
            &format!("{path}: {what}"),
        );
    }
    attack.assert_healthy("forged assertions").await;
    attack.assert_log_private(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_client_assertions_are_refused_at_the_notification_token_endpoint() {
    tokio::time::timeout(
        Duration::from_secs(120),
        forged_assertions_are_refused_at("/token", "/sender/token"),
    )
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_client_assertions_are_refused_at_the_pull_token_endpoint() {
    tokio::time::timeout(
        Duration::from_secs(120),
        forged_assertions_are_refused_at("/sender/token", "/token"),
    )
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_jti_is_refused_within_one_process() {
    let attack = Attack::start().await;
    let body = good_form(&attack.harness_id, &attack.url("/token"), None);
    let first = attack
        .post_form(&attack.harness, "/token", body.clone())
        .await;
    assert_eq!(first.status, 200, "{first:?}");
    let second = attack
        .post_form(&attack.harness, "/token", body.clone())
        .await;
    second.assert_token_error(&["invalid_client", "invalid_grant"], "a replayed jti");
    // Replayed from another organisation's connection: still refused.
    let third = attack.post_form(&attack.other, "/token", body).await;
    third.assert_token_error(&["invalid_client", "invalid_grant"], "a replayed jti");
    let token = first.json()["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    attack.assert_log_private(&[&token]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_jti_is_refused_after_a_restart() {
    // A free loopback port the node can be restarted on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let node = NodeProcess::start_on(dir.path(), &listen).await;
    let aud = format!("{}/token", node.base());
    let body = good_form(&harness_identity(), &aud, None);
    let harness = client(&harness_identity());
    let first = answer(
        harness
            .post(&aud)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone()),
    )
    .await;
    assert_eq!(first.status, 200, "{first:?}");
    node.stop().await;
    let node = NodeProcess::start_on(dir.path(), &listen).await;
    let attack = Attack::around(node, dir);
    let replay = attack.post_form(&attack.harness, "/token", body).await;
    replay.assert_token_error(
        &["invalid_client", "invalid_grant"],
        "an assertion replayed within its lifetime after a restart",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_living_for_years_is_refused() {
    let attack = Attack::start().await;
    let aud = attack.url("/token");
    let now = unix_now();
    let mut long = claims("https://hostile.client.test", &aud);
    long["iat"] = json!(now - 5 * 365 * 86_400);
    long["exp"] = json!(now + 10 * 365 * 86_400);
    let assertion = jwt(&header(&attack.harness_id), &long, &attack.harness_id);
    let authorization = jwt(
        &header(&attack.harness_id),
        &claims(HARNESS_URA, &aud),
        &attack.harness_id,
    );
    let reply = attack
        .post_form(
            &attack.harness,
            "/token",
            token_request_form(&assertion, Some(&authorization), None),
        )
        .await;
    reply.assert_token_error(
        &["invalid_client", "invalid_grant"],
        "a client assertion valid for 15 years (the agreement's lifetime is 60 s)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_request_without_a_valid_authorization_assertion_is_refused() {
    let attack = Attack::start().await;
    let aud = attack.url("/token");
    let client_assertion = || {
        jwt(
            &header(&attack.harness_id),
            &claims("https://hostile.client.test", &aud),
            &attack.harness_id,
        )
    };
    let without = form(&[
        ("grant_type", GRANT_TYPE),
        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
        ("client_assertion", &client_assertion()),
    ]);
    let reply = attack.post_form(&attack.harness, "/token", without).await;
    reply.assert_token_error(
        &["invalid_request", "invalid_grant"],
        "a jwt-bearer grant without `assertion` (RFC 7523 §2.1, protocol.md §3)",
    );
    let garbage = form(&[
        ("grant_type", GRANT_TYPE),
        ("assertion", "not-a-jwt"),
        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
        ("client_assertion", &client_assertion()),
    ]);
    let reply = attack.post_form(&attack.harness, "/token", garbage).await;
    reply.assert_token_error(
        &["invalid_request", "invalid_grant"],
        "a jwt-bearer grant whose `assertion` is not a JWT",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_token_requests_get_rfc6749_errors_and_the_node_stays_up() {
    let attack = Attack::start().await;
    let aud = attack.url("/token");
    let good = || good_form(&attack.harness_id, &aud, None);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "a wrong grant_type",
            good()
                .replace("jwt-bearer", "client-credentials")
                .into_bytes(),
            &["unsupported_grant_type", "invalid_request"],
        ),
        (
            "no grant_type",
            form(&[("client_assertion", "x")]).into_bytes(),
            &["unsupported_grant_type", "invalid_request"],
        ),
        (
            "a wrong grant_type first, the right one second",
            format!("grant_type=password&{}", good()).into_bytes(),
            &["unsupported_grant_type", "invalid_request"],
        ),
        (
            "no client_assertion",
            form(&[("grant_type", GRANT_TYPE)]).into_bytes(),
            &["invalid_client", "invalid_request"],
        ),
        (
            "a garbage client_assertion first, a good one second",
            format!(
                "{}&client_assertion=garbage&{}",
                form(&[("grant_type", GRANT_TYPE)]),
                good()
            )
            .into_bytes(),
            &["invalid_client", "invalid_request"],
        ),
        (
            "a non-UTF-8 body",
            b"grant_type=\xff\xfe\xfd&client_assertion=\xc3\x28".to_vec(),
            &["unsupported_grant_type", "invalid_request"],
        ),
        (
            "an empty body",
            Vec::new(),
            &["unsupported_grant_type", "invalid_request"],
        ),
    ];
    for (what, body, errors) in cases {
        let reply = attack.post_form(&attack.harness, "/token", body).await;
        reply.assert_token_error(errors, what);
    }
    // An assertion of 4 MB: refused (400 or 413) or the connection closed, never a token.
    let huge = format!(
        "{}&client_assertion={}",
        form(&[("grant_type", GRANT_TYPE)]),
        "A".repeat(4 * 1024 * 1024)
    );
    match send(
        attack
            .harness
            .post(attack.url("/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(huge),
    )
    .await
    {
        Ok(reply) => assert!(
            reply.status == 400 || reply.status == 413,
            "a 4 MB assertion: {} {}",
            reply.status,
            reply.body.chars().take(200).collect::<String>()
        ),
        Err(e) => assert!(!e.contains("step limit"), "a 4 MB assertion hung: {e}"),
    }
    attack.assert_healthy("malformed token requests").await;
    attack.assert_log_private(&[]).await;
}

// ---------------------------------------------------------------------------------------
// Notification endpoint.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_without_a_valid_token_gets_401_with_www_authenticate() {
    let attack = Attack::start().await;
    let other_token = attack
        .notification_token(&attack.other, &attack.other_id)
        .await;
    let body = task(&new_identifier(), KNOWN_BSN, HARNESS_URA).to_string();
    let post = |auth: Option<String>| {
        let mut request = attack
            .harness
            .post(attack.url("/fhir/Task"))
            .header("content-type", "application/fhir+json")
            .body(body.clone());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request
    };
    let cases = [
        ("no Authorization", None),
        (
            "an unknown token",
            Some("Bearer nt-00000000000000000000000000000000".to_owned()),
        ),
        (
            "Basic credentials",
            Some("Basic aGFybmVzczpzZWNyZXQ=".to_owned()),
        ),
        ("an empty Bearer", Some("Bearer ".to_owned())),
        (
            "another organisation's token",
            Some(format!("Bearer {other_token}")),
        ),
        (
            "another organisation's token, lowercase scheme",
            Some(format!("bearer {other_token}")),
        ),
    ];
    for (what, auth) in cases {
        answer(post(auth)).await.assert_unauthorized(what);
    }
    // The same with a PUT (cancellation).
    let cancel = answer(
        attack
            .harness
            .put(attack.url("/fhir/Task?identifier=urn:ietf:rfc:3986%7Curn:uuid:x"))
            .header("content-type", "application/fhir+json")
            .body("{}"),
    )
    .await;
    cancel.assert_unauthorized("a cancellation without a token");
    attack.assert_healthy("unauthorized notifications").await;
    attack.assert_log_private(&[&other_token]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_notifications_get_4xx_with_an_operation_outcome() {
    let attack = Attack::start().await;
    let token = attack
        .notification_token(&attack.harness, &attack.harness_id)
        .await;
    let mut numeric_bsn = task(&new_identifier(), KNOWN_BSN, HARNESS_URA);
    numeric_bsn["for"]["identifier"]["value"] = json!(999_923_067u64);
    let mut huge_array = task(&new_identifier(), KNOWN_BSN, HARNESS_URA);
    huge_array["input"] = json!(vec![json!({ "type": {} }); 50_000]);
    let cases: Vec<(&str, String, u16)> = vec![
        ("not JSON", "{\"resourceType\":".to_owned(), 400),
        (
            "nesting 100 000 deep",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            400,
        ),
        ("a BSN as a JSON number", numeric_bsn.to_string(), 400),
        (
            "a BSN failing the 11-proef",
            task(&new_identifier(), "999000010", HARNESS_URA).to_string(),
            400,
        ),
        ("50 000 empty inputs", huge_array.to_string(), 400),
        (
            "a Patient instead of a Task",
            json!({"resourceType": "Patient"}).to_string(),
            400,
        ),
        ("an empty body", String::new(), 400),
    ];
    for (what, body, status) in cases {
        let reply = answer(
            attack
                .harness
                .post(attack.url("/fhir/Task"))
                .bearer_auth(&token)
                .header("content-type", "application/fhir+json")
                .body(body),
        )
        .await;
        reply.assert_outcome(status, what);
    }
    let xml = answer(
        attack
            .harness
            .post(attack.url("/fhir/Task"))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body(task(&new_identifier(), KNOWN_BSN, HARNESS_URA).to_string()),
    )
    .await;
    xml.assert_outcome(415, "a text/plain notification");
    // 8 MB of JSON: refused (400/413) or closed, never accepted, never a hang.
    let oversized = format!(
        "{{\"resourceType\":\"Task\",\"note\":\"{}\"}}",
        "x".repeat(8 << 20)
    );
    match send(
        attack
            .harness
            .post(attack.url("/fhir/Task"))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(oversized),
    )
    .await
    {
        Ok(reply) => assert!(
            reply.status == 400 || reply.status == 413,
            "an 8 MB notification: {}",
            reply.status
        ),
        Err(e) => assert!(!e.contains("step limit"), "an 8 MB notification hung: {e}"),
    }
    attack.assert_healthy("malformed notifications").await;
    attack.assert_log_private(&[&token]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_on_behalf_of_another_organisation_is_refused() {
    let attack = Attack::start().await;
    // The other organisation holds a valid token of its own and claims to be the harness.
    let token = attack
        .notification_token(&attack.other, &attack.other_id)
        .await;
    let identifier = new_identifier();
    let reply = attack
        .notify(
            &attack.other,
            &token,
            &task(&identifier, KNOWN_BSN, HARNESS_URA),
        )
        .await;
    reply.assert_outcome(
        403,
        "a notification in the harness's name over another organisation's token",
    );
    assert!(
        attack.inbox_entry(&identifier).await.is_null(),
        "a refused notification is not filed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_by_another_organisation_is_refused() {
    let attack = Attack::start().await;
    let harness_token = attack
        .notification_token(&attack.harness, &attack.harness_id)
        .await;
    let identifier = new_identifier();
    let notified = attack
        .notify(
            &attack.harness,
            &harness_token,
            &task(&identifier, KNOWN_BSN, HARNESS_URA),
        )
        .await;
    assert_eq!(notified.status, 201, "{notified:?}");
    let other_token = attack
        .notification_token(&attack.other, &attack.other_id)
        .await;
    let mut cancellation = task(&identifier, KNOWN_BSN, HARNESS_URA);
    cancellation["status"] = json!("cancelled");
    let reply = answer(
        attack
            .other
            .put(attack.url(&format!(
                "/fhir/Task?identifier=urn:ietf:rfc:3986%7C{identifier}"
            )))
            .bearer_auth(&other_token)
            .header("content-type", "application/fhir+json")
            .body(cancellation.to_string()),
    )
    .await;
    reply.assert_outcome(
        403,
        "a cancellation of the harness's notification by another organisation",
    );
    assert_ne!(
        attack.inbox_entry(&identifier).await["status"],
        "cancelled",
        "the referral must not be cancelled by another organisation"
    );
}

// ---------------------------------------------------------------------------------------
// The node as sender: pull tokens, searches and reads.

/// What the node notified a hostile receiver about.
struct Offer {
    receiver: HostileServer,
    identifier: String,
    base: String,
    queries: Vec<String>,
    task: Value,
}

async fn offer(attack: &Attack) -> Offer {
    let receiver = HostileServer::start(|seen: &Seen| -> Wire {
        if seen.target.starts_with("/token") {
            good_token()
        } else {
            good_notification()
        }
    })
    .await;
    let sent = answer(
        attack
            .harness
            .post(attack.url("/control/send"))
            .json(&json!({
                "bsn": KNOWN_BSN,
                "notification_base": format!("{}/fhir", receiver.base()),
                "token_url": format!("{}/token", receiver.base()),
                "receiver_ura": HARNESS_URA,
            })),
    )
    .await;
    assert_eq!(sent.status, 200, "control/send: {sent:?}");
    let identifier = sent.json()["identifier"]
        .as_str()
        .expect("the notification's identifier")
        .to_owned();
    let seen = receiver.seen();
    let posted = seen
        .iter()
        .find(|s| s.method == "POST" && s.target.starts_with("/fhir/Task"))
        .expect("the node posted a notification");
    let task: Value = serde_json::from_slice(&posted.body).expect("the notification is JSON");
    let inputs = task["input"].as_array().cloned().unwrap_or_default();
    let code = |i: &Value| {
        i["type"]["coding"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let base = inputs
        .iter()
        .find(|i| code(i) == "authorization-base")
        .and_then(|i| i["valueString"].as_str())
        .expect("an authorization base")
        .to_owned();
    let queries = inputs
        .iter()
        .filter(|i| code(i) != "authorization-base")
        .filter_map(|i| i["valueString"].as_str().map(str::to_owned))
        .collect();
    Offer {
        receiver,
        identifier,
        base,
        queries,
        task,
    }
}

impl Attack {
    async fn pull_token(
        &self,
        client: &reqwest::Client,
        identity: &TlsIdentity,
        base: &str,
    ) -> Reply {
        self.post_form(
            client,
            "/sender/token",
            good_form(identity, &self.url("/sender/token"), Some(base)),
        )
        .await
    }

    async fn pull(&self, client: &reqwest::Client, token: &str, relative: &str) -> Reply {
        answer(
            client
                .get(format!("{}/{}", self.url("/sender/fhir"), relative))
                .bearer_auth(token)
                .header("accept", "application/fhir+json"),
        )
        .await
    }
}

fn wire(query: &str) -> String {
    query.replace('|', "%7C")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_is_held_to_the_notified_patient_searches_and_resources() {
    let attack = Attack::start().await;
    let offer = offer(&attack).await;
    let granted = attack
        .pull_token(&attack.harness, &attack.harness_id, &offer.base)
        .await;
    assert_eq!(granted.status, 200, "{granted:?}");
    let token = granted.json()["access_token"].as_str().unwrap().to_owned();

    let condition = offer
        .queries
        .iter()
        .find(|q| q.starts_with("Condition?"))
        .expect("a Condition search is notified")
        .clone();
    let ok = attack
        .pull(&attack.harness, &token, &wire(&condition))
        .await;
    assert_eq!(ok.status, 200, "the notified search: {ok:?}");
    assert_eq!(ok.json()["resourceType"], "Bundle");

    let other_bsn = condition.replace(KNOWN_BSN, OTHER_BSN);
    let refused: Vec<(&str, String, &[u16])> = vec![
        ("another patient's BSN", wire(&other_bsn), &[403]),
        (
            "both patients' BSNs",
            wire(&format!("{condition},{BSN_SYSTEM}|{OTHER_BSN}")),
            &[400, 403],
        ),
        (
            "the BSN twice, the second another patient's",
            wire(&format!(
                "{condition}&patient.identifier={BSN_SYSTEM}|{OTHER_BSN}"
            )),
            &[400, 403],
        ),
        (
            "a search by patient reference",
            "Condition?patient=Patient/other-patient".to_owned(),
            &[400, 403],
        ),
        (
            "a search outside the notified set",
            wire(&format!(
                "Encounter?patient.identifier={BSN_SYSTEM}|{KNOWN_BSN}"
            )),
            &[403],
        ),
        (
            "a notified search plus _revinclude",
            wire(&format!("{condition}&_revinclude=Provenance:target")),
            &[400, 403],
        ),
        (
            "a notified search plus _include of the subject",
            wire(&format!("{condition}&_include=Condition:subject")),
            &[400, 403],
        ),
        (
            "a notified search plus _include:iterate",
            wire(&format!("{condition}&_include:iterate=*")),
            &[400, 403],
        ),
        (
            "a Patient search by name",
            "Patient?name=Br%C3%BCggenkamp".to_owned(),
            &[400, 403],
        ),
        (
            "$everything",
            "Patient/$everything".to_owned(),
            &[400, 403, 404],
        ),
    ];
    for (what, relative, statuses) in refused {
        let reply = attack.pull(&attack.harness, &token, &relative).await;
        assert!(
            statuses.contains(&reply.status),
            "{what} ({relative}): expected one of {statuses:?}: {reply:?}"
        );
        assert_eq!(
            reply.json()["resourceType"],
            "OperationOutcome",
            "{what}: {reply:?}"
        );
        for secret in ["Brüggenkamp", OTHER_BSN, "1985-06-23"] {
            assert!(
                !reply.body.contains(secret) || reply.status == 400,
                "{what}: the refusal shows another patient's data: {reply:?}"
            );
        }
    }
    let letter = attack
        .pull(&attack.harness, &token, "Binary/known-binary-1")
        .await;
    assert_eq!(letter.status, 200, "the known patient's letter: {letter:?}");
    let not_found = [
        ("an unreferenced Binary", "Binary/unreferenced-letter"),
        ("another patient's Binary", "Binary/unknown-binary-1"),
        (
            "another patient's DocumentReference",
            "DocumentReference/unknown-documentreference-1",
        ),
        ("the unknown patient", "Patient/unknown-patient"),
        ("another patient's Patient", "Patient/other-patient"),
        ("another Task", "Task/not-the-workflow-task"),
        ("a traversal", "Patient/..%2F..%2Finspect%2Flog"),
        (
            "a traversal to the other patient",
            "Patient/..%2FPatient%2Fother-patient",
        ),
        ("a dot-dot id", "Binary/%2E%2E"),
        ("an encoded slash in the type", "Patient%2Fother-patient/x"),
    ];
    for (what, relative) in not_found {
        let reply = attack.pull(&attack.harness, &token, relative).await;
        assert!(
            [400, 403, 404].contains(&reply.status),
            "{what} ({relative}): {reply:?}"
        );
        assert!(
            !reply.body.contains("Brüggenkamp") && !reply.body.contains("JVBERi0xLjQKJSVFT0YK"),
            "{what}: leaked: {reply:?}"
        );
    }
    // 64 searches in parallel are all answered.
    let mut parallel = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (client, url, token) = (
            attack.harness.clone(),
            format!("{}/{}", attack.url("/sender/fhir"), wire(&condition)),
            token.clone(),
        );
        parallel.spawn(async move { send(client.get(url).bearer_auth(token)).await });
    }
    while let Some(done) = parallel.join_next().await {
        let reply = done.expect("the task ran");
        assert!(matches!(&reply, Ok(r) if r.status == 200), "{reply:?}");
    }
    attack.assert_healthy("pulls outside the offer").await;
    attack.assert_log_private(&[&token, &offer.base]).await;
    drop(offer.receiver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_tokens_are_bound_to_their_organisation_and_die_with_the_cancellation() {
    let attack = Attack::start().await;
    let offer = offer(&attack).await;
    let granted = attack
        .pull_token(&attack.harness, &attack.harness_id, &offer.base)
        .await;
    let token = granted.json()["access_token"].as_str().unwrap().to_owned();
    let search = wire(&offer.queries[0]);

    attack
        .pull(&attack.other, &token, &search)
        .await
        .assert_unauthorized("the harness's pull token on another organisation's connection");
    let notification_token = attack
        .notification_token(&attack.harness, &attack.harness_id)
        .await;
    attack
        .pull(&attack.harness, &notification_token, &search)
        .await
        .assert_unauthorized("a notification token used for a pull");
    attack
        .notify(
            &attack.harness,
            &token,
            &task(&new_identifier(), KNOWN_BSN, HARNESS_URA),
        )
        .await
        .assert_unauthorized("a pull token used for a notification");
    attack
        .pull_token(
            &attack.harness,
            &attack.harness_id,
            "ab-00000000000000000000000000000000",
        )
        .await
        .assert_token_error(&["invalid_grant"], "an unknown authorization base");
    attack
        .pull_token(
            &attack.harness,
            &attack.harness_id,
            &format!("{} ", offer.base),
        )
        .await
        .assert_token_error(
            &["invalid_grant"],
            "the authorization base with a trailing space",
        );

    let cancelled = answer(
        attack
            .harness
            .post(attack.url("/control/cancel"))
            .json(&json!({ "identifier": offer.identifier })),
    )
    .await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    attack
        .pull_token(&attack.harness, &attack.harness_id, &offer.base)
        .await
        .assert_token_error(&["invalid_grant"], "a token request after cancellation");
    attack
        .pull(&attack.harness, &token, &search)
        .await
        .assert_outcome(403, "a search with a token from before the cancellation");
    attack
        .assert_log_private(&[&token, &offer.base, &notification_token])
        .await;
    assert!(offer.task["for"]["identifier"]["value"] == KNOWN_BSN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_base_is_redeemed_only_by_the_notified_organisation() {
    let attack = Attack::start().await;
    let offer = offer(&attack).await;
    // The node notified the harness (URA 90000123); the base leaks to a third organisation.
    let reply = attack
        .pull_token(&attack.other, &attack.other_id, &offer.base)
        .await;
    reply.assert_token_error(
        &["invalid_grant", "invalid_client"],
        "another organisation redeeming the harness's authorization base",
    );
}

// ---------------------------------------------------------------------------------------
// Transport.

fn root_store() -> rustls::RootCertStore {
    let pem = std::fs::read(PkiFiles::at(pki()).path(PkiFile::RootCa)).expect("the root CA");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.expect("a PEM certificate")).expect("a root");
    }
    roots
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A raw TLS connection to the node presenting the harness's certificate.
async fn raw_tls(addr: &str) -> TlsStream {
    let config: Arc<rustls::ClientConfig> = client_tls(&harness_identity()).0;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect within the limit")
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("an IP name");
    tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .expect("a handshake within the limit")
        .expect("a handshake")
}

/// Everything the node writes until it closes or `limit` passes.
async fn read_until_closed(stream: &mut TlsStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buffer[..n]),
            Err(_) => return (out, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_without_a_certificate_gets_nothing() {
    let attack = Attack::start().await;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(root_store())
        .with_no_client_auth();
    let anonymous = reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .tls_backend_preconfigured(config)
        .build()
        .expect("a client without a certificate");
    for path in ["/health", "/inspect/log", "/inspect/inbox", "/token"] {
        let reply = send(anonymous.get(attack.url(path))).await;
        assert!(
            matches!(&reply, Err(e) if !e.contains("step limit")),
            "{path} without a client certificate: {reply:?}"
        );
    }
    attack.assert_healthy("anonymous TLS clients").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_pipelining_and_long_urls_are_answered_or_closed() {
    let attack = Attack::start().await;
    let addr = attack.node.addr.clone();

    let mut stream = raw_tls(&addr).await;
    stream
        .write_all(b"GET /health HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let (bytes, closed) = read_until_closed(&mut stream, STEP).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1."), "HTTP/1.0: {text}");
    assert!(
        text.contains(" 200 ") && text.ends_with("ok"),
        "HTTP/1.0: {text}"
    );
    assert!(
        closed,
        "an HTTP/1.0 request without keep-alive ends with a close"
    );

    let mut stream = raw_tls(&addr).await;
    stream
        .write_all(
            b"GET /health HTTP/1.1\r\nHost: node\r\n\r\nGET /health HTTP/1.1\r\nHost: node\r\n\r\n\
              GET /health HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
    let (bytes, closed) = read_until_closed(&mut stream, STEP).await;
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "pipelined: {text}");
    assert!(closed, "Connection: close is honoured");

    for size in [64 * 1024, 1024 * 1024] {
        let mut stream = raw_tls(&addr).await;
        let request = format!(
            "GET /sender/fhir/Patient?identifier={} HTTP/1.1\r\nHost: node\r\nX-Long: {}\r\nConnection: close\r\n\r\n",
            "9".repeat(size),
            "y".repeat(size)
        );
        let _ = stream.write_all(request.as_bytes()).await;
        let (bytes, closed) = read_until_closed(&mut stream, STEP).await;
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            closed,
            "a {size}-byte URL and header: the node neither answered nor closed"
        );
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4"),
            "a {size}-byte URL and header: {}",
            text.chars().take(200).collect::<String>()
        );
    }
    attack
        .assert_healthy("HTTP/1.0, pipelining and long URLs")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_idle_connections_do_not_starve_a_normal_request() {
    let attack = Attack::start().await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(raw_tls(&attack.node.addr).await);
    }
    // Half of them started a request and stalled in the middle of the head.
    for stream in idle.iter_mut().step_by(2) {
        let _ = stream.write_all(b"POST /token HTTP/1.1\r\nHost: no").await;
    }
    attack.assert_healthy("200 idle connections").await;
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_disconnected() {
    let attack = Attack::start().await;
    let mut stream = raw_tls(&attack.node.addr).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: node\r\n")
        .await
        .expect("write");
    // One header byte per second for up to 45 s: a server must give up on the head long
    // before that (hyper's own default header-read timeout is 30 s).
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(45) {
        if stream.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buffer = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                closed = true; // an answer (408/400) is as good as a close
                break;
            }
            Err(_) => {}
        }
    }
    assert!(
        closed,
        "a head dripping for {:?} still holds its connection",
        started.elapsed()
    );
    attack.assert_healthy("a slowloris client").await;
}

// ---------------------------------------------------------------------------------------
// The node's log after a pull that a sender refused.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_keeps_every_bsn_out_of_the_log() {
    let attack = Attack::start().await;
    // The harness's sender: tokens are fine, every search is refused.
    let sender = HostileServer::start(|seen: &Seen| -> Wire {
        if seen.target.starts_with("/token") {
            good_token()
        } else {
            common::response(
                "403 Forbidden",
                &[("Content-Type", "application/fhir+json")],
                br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"forbidden"}]}"#,
            )
        }
    })
    .await;
    let registered = answer(
        attack
            .harness
            .post(attack.url("/control/senders"))
            .json(&json!({
                "ura": HARNESS_URA,
                "fhir_base": format!("{}/fhir", sender.base()),
                "token_url": format!("{}/token", sender.base()),
            })),
    )
    .await;
    assert_eq!(registered.status, 204, "{registered:?}");
    let token = attack
        .notification_token(&attack.harness, &attack.harness_id)
        .await;
    // A notification about the known patient whose query names the other patient's BSN (a
    // sender's mistake): the sender refuses the search and the pull fails.
    let identifier = new_identifier();
    let mut notification = task(&identifier, KNOWN_BSN, HARNESS_URA);
    notification["input"][1]["valueString"] = json!(format!(
        "Condition?patient.identifier={BSN_SYSTEM}|{OTHER_BSN}"
    ));
    let reply = attack.notify(&attack.harness, &token, &notification).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let deadline = Instant::now() + STEP;
    while attack.inbox_entry(&identifier).await["status"] == "pulling" {
        assert!(
            Instant::now() < deadline,
            "the pull did not end within {STEP:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(attack.inbox_entry(&identifier).await["status"], "failed");
    attack.assert_log_private(&[&token]).await;
}

// ---------------------------------------------------------------------------------------
// The control and inspection APIs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_and_inspection_apis_refuse_another_organisation() {
    let attack = Attack::start().await;
    let receiver = HostileServer::start(|seen: &Seen| -> Wire {
        if seen.target.starts_with("/token") {
            good_token()
        } else {
            good_notification()
        }
    })
    .await;
    let sent = answer(attack.other.post(attack.url("/control/send")).json(&json!({
        "bsn": OTHER_BSN,
        "notification_base": format!("{}/fhir", receiver.base()),
        "token_url": format!("{}/token", receiver.base()),
        "receiver_ura": "90000789",
    })))
    .await;
    assert!(
        [401, 403].contains(&sent.status),
        "another organisation asked the node to send it a patient's BgZ: {sent:?}"
    );
    for path in ["/inspect/inbox", "/inspect/log"] {
        let read = answer(attack.other.get(attack.url(path))).await;
        assert!(
            [401, 403].contains(&read.status),
            "another organisation read {path}: {}",
            read.status
        );
    }
    drop(receiver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_with_a_lowercase_bearer_scheme_is_accepted() {
    let attack = Attack::start().await;
    let token = attack
        .notification_token(&attack.harness, &attack.harness_id)
        .await;
    let reply = answer(
        attack
            .harness
            .post(attack.url("/fhir/Task"))
            .header("authorization", format!("bearer {token}"))
            .header("content-type", "application/fhir+json")
            .body(task(&new_identifier(), KNOWN_BSN, HARNESS_URA).to_string()),
    )
    .await;
    assert_eq!(reply.status, 201, "{reply:?}");
}

/// A client certificate issued by the test PKI's issuing CA whose subject carries no URA
/// (no serialNumber attribute): valid for TLS, but naming no organisation.
fn client_without_ura(label: &str) -> TlsIdentity {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let files = PkiFiles::at(pki());
    let issuer_key = KeyPair::from_pem(
        &std::fs::read_to_string(files.path(PkiFile::IntermediateCaKey)).expect("the CA key"),
    )
    .expect("the issuing CA's key");
    // The issuing CA's subject as the test PKI writes it (pki.rs ca_params).
    let mut issuer_params = CertificateParams::default();
    issuer_params.distinguished_name = rcgen::DistinguishedName::new();
    issuer_params
        .distinguished_name
        .push(DnType::CountryName, "NL");
    issuer_params.distinguished_name.push(
        DnType::OrganizationName,
        "Proefstaat der Nederlanden (TEST)",
    );
    issuer_params
        .distinguished_name
        .push(DnType::CommonName, "Proefstaat Zorg Server CA - T1 (TEST)");
    issuer_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let issuer = Issuer::new(issuer_params, issuer_key);

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CountryName, "NL");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Zonder URA (TEST)");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{label} client without URA"));
    params.subject_alt_names = vec![SanType::IpAddress(std::net::IpAddr::V4(
        std::net::Ipv4Addr::LOCALHOST,
    ))];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(30);
    let cert = params.signed_by(&key, &issuer).expect("a certificate");
    let chain_pem = format!(
        "{}{}",
        cert.pem(),
        std::fs::read_to_string(files.path(PkiFile::IntermediateCa)).expect("the CA certificate")
    );
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &chain_pem).expect("writing the certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("writing the key");
    load_identity(&PemSource::File(cert_path), &PemSource::File(key_path))
        .expect("loading the minted certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_never_bound_to_no_organisation() {
    let attack = Attack::start().await;
    let (first, second) = (client_without_ura("first"), client_without_ura("second"));
    let (first_client, second_client) = (client(&first), client(&second));
    let reply = attack
        .post_form(
            &first_client,
            "/token",
            good_form(&first, &attack.url("/token"), None),
        )
        .await;
    if reply.status == 400 {
        return; // refusing a certificate that names no organisation is right
    }
    assert_eq!(reply.status, 200, "{reply:?}");
    let token = reply.json()["access_token"].as_str().unwrap().to_owned();
    attack
        .notify(
            &second_client,
            &token,
            &task(&new_identifier(), KNOWN_BSN, HARNESS_URA),
        )
        .await
        .assert_unauthorized("a token issued to one URA-less certificate, used by another");
}

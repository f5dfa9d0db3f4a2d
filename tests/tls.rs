//! Mutual TLS and signed client assertions over real loopback connections, with a test PKI
//! made by `bgz-harness certs`: the chain verifies, servers refuse certificates from a
//! foreign CA, expired and revoked ones with an error that names the exchange, clients trust
//! only the configured CA, and both token endpoints refuse badly signed assertions.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use assert_cmd::Command;
use axum::Router;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bgz_harness::journal::{ExchangeKind, Journal, Party};
use bgz_harness::node::{NodeConfig, ReferenceNode};
use bgz_harness::pki::{PkiFile, PkiFiles, PkiSpec};
use bgz_harness::protocol::token::{
    AssertionClaims, CertificateSigner, JwsAlg, encode_jwt, token_request_form, unix_now,
};
use bgz_harness::sim::sender::SenderSim;
use bgz_harness::transport::{
    ClientSettings, ClientTls, Outgoing, PemSource, RecordingClient, RecordingServer,
    ServerVerification, TlsFiles, TlsSettings, TlsVersions, TransportError, load_identity,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

fn stderr(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
}

fn bgz_harness() -> Command {
    let mut command = Command::cargo_bin("bgz-harness").expect("the binary is built by cargo test");
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

/// A fresh PKI made by the `certs` subcommand.
fn certs(dir: &Path) -> PkiFiles {
    bgz_harness()
        .args(["certs", "--out"])
        .arg(dir)
        .assert()
        .code(0);
    PkiFiles::at(dir)
}

/// The harness's TLS files with another client certificate.
fn with_client(pki: &PkiFiles, cert: PkiFile, key: PkiFile) -> TlsFiles {
    TlsFiles {
        client_cert: PemSource::File(pki.path(cert)),
        client_key: PemSource::File(pki.path(key)),
        ..pki.harness_tls()
    }
}

fn load(files: &TlsFiles) -> TlsSettings {
    TlsSettings::load(files, ServerVerification::Verify).expect("the TLS material loads")
}

fn client(tls: Option<&TlsSettings>, journal: &Arc<Journal>) -> RecordingClient {
    let settings = ClientSettings {
        tls: tls.map(|t| t.client.clone()),
        ..ClientSettings::default()
    };
    RecordingClient::new(
        &settings,
        journal.clone(),
        Party::Target,
        Party::HarnessSender,
    )
    .expect("the client builds")
}

async fn ping_server(tls: &TlsSettings, journal: &Arc<Journal>) -> RecordingServer {
    let router = Router::new().route("/ping", get(|| async { "pong" }));
    RecordingServer::start(
        SocketAddr::from(LOOPBACK),
        router,
        journal.clone(),
        Party::Target,
        Party::HarnessSender,
        Some(tls.server.clone()),
    )
    .await
    .expect("the server binds")
}

async fn ping(client: &RecordingClient, url: &str) -> Result<u16, TransportError> {
    let exchange = client.send(Outgoing::get(url, ExchangeKind::Other)).await?;
    Ok(exchange.response.map(|r| r.status).unwrap_or_default())
}

#[test]
fn the_certs_command_writes_a_chain_that_verifies_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs(dir.path());
    assert!(pki.is_complete());
    let readme = std::fs::read_to_string(dir.path().join("README.txt")).unwrap();
    assert!(readme.contains("root-ca.pem") && readme.contains("serialNumber"));

    // Every leaf of the hierarchy verifies for its purpose; the URA is in the subject.
    let harness = load(&pki.harness_tls());
    let node = load(&pki.node_tls());
    let now = unix_now();
    assert_eq!(
        harness.chains.verify(&node.client_identity.chain, now),
        Ok(())
    );
    assert_eq!(
        node.chains.verify(&harness.client_identity.chain, now),
        Ok(())
    );
    let serial_number_ura = [0x06, 0x03, 0x55, 0x04, 0x05, 0x13, 0x08];
    let leaf = harness.client_identity.chain[0].as_ref();
    let position = leaf
        .windows(serial_number_ura.len())
        .position(|w| w == serial_number_ura)
        .expect("the subject has a PrintableString serialNumber");
    let start = position + serial_number_ura.len();
    assert_eq!(
        &leaf[start..start + 8],
        PkiSpec::default().harness.ura.as_bytes()
    );

    // The refusal probes are refused by the chain check as well as by the TLS server.
    for (cert, key, reason) in [
        (PkiFile::RevokedClient, PkiFile::RevokedClientKey, "Revoked"),
        (PkiFile::ExpiredClient, PkiFile::ExpiredClientKey, "Expired"),
        (
            PkiFile::ForeignClient,
            PkiFile::ForeignClientKey,
            "UnknownIssuer",
        ),
    ] {
        let identity = load_identity(
            &PemSource::File(pki.path(cert)),
            &PemSource::File(pki.path(key)),
        )
        .unwrap();
        let refused = harness.chains.verify(&identity.chain, now).unwrap_err();
        assert!(refused.contains(reason), "{}: {refused}", cert.name());
    }

    let again = bgz_harness()
        .args(["certs", "--out"])
        .arg(dir.path())
        .assert()
        .code(2);
    assert!(
        stderr(&again).contains("the file exists"),
        "{}",
        stderr(&again)
    );
}

#[tokio::test]
async fn a_server_refuses_foreign_expired_revoked_and_missing_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs(dir.path());
    let journal = Arc::new(Journal::new());
    let server = ping_server(&load(&pki.harness_tls()), &journal).await;
    let url = format!("{}/ping", server.base_url());
    assert!(url.starts_with("https://127.0.0.1:"));

    let node = load(&pki.node_tls());
    assert_eq!(
        ping(&client(Some(&node), &journal), &url).await.unwrap(),
        200
    );

    let probes = [
        (
            PkiFile::ForeignClient,
            PkiFile::ForeignClientKey,
            "UnknownCA",
        ),
        (
            PkiFile::ExpiredClient,
            PkiFile::ExpiredClientKey,
            "CertificateExpired",
        ),
        (
            PkiFile::RevokedClient,
            PkiFile::RevokedClientKey,
            "CertificateRevoked",
        ),
    ];
    for (cert, key, alert) in probes {
        let probe = load(&with_client(&pki, cert, key));
        let error = ping(&client(Some(&probe), &journal), &url)
            .await
            .expect_err("the handshake is refused");
        let TransportError::Failed {
            exchange, reason, ..
        } = &error;
        let message = error.to_string();
        assert!(message.starts_with(&format!("exchange {exchange}: GET {url} failed")));
        assert!(
            reason.starts_with("TLS failed"),
            "{}: {reason}",
            cert.name()
        );
        assert!(reason.contains(alert), "{}: {reason}", cert.name());
        let recorded = journal
            .all()
            .into_iter()
            .find(|e| e.id == *exchange)
            .unwrap();
        assert!(recorded.response.is_none() && recorded.error.is_some());
    }

    // A client that trusts the CA but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    let root = CertificateDer::from_pem_file(pki.path(PkiFile::RootCa)).unwrap();
    roots.add(root).unwrap();
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let settings = ClientSettings {
        tls: Some(ClientTls(Arc::new(anonymous))),
        ..ClientSettings::default()
    };
    let anonymous = RecordingClient::new(
        &settings,
        journal.clone(),
        Party::Target,
        Party::HarnessSender,
    )
    .unwrap();
    let error = ping(&anonymous, &url).await.unwrap_err().to_string();
    assert!(
        error.contains("TLS failed") && error.contains("CertificateRequired"),
        "{error}"
    );

    // A client without any TLS material refuses the server: no CA is trusted.
    let error = ping(&client(None, &journal), &url).await.unwrap_err();
    assert!(error.to_string().contains("no CA is configured"), "{error}");
}

#[tokio::test]
async fn a_client_refuses_a_server_outside_its_trusted_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs(dir.path());
    let journal = Arc::new(Journal::new());
    let server = ping_server(&load(&pki.harness_tls()), &journal).await;
    let url = format!("{}/ping", server.base_url());

    let trusting_foreign = TlsFiles {
        ca: vec![PemSource::File(pki.path(PkiFile::ForeignCa))],
        crl: Vec::new(),
        ..pki.node_tls()
    };
    let error = ping(&client(Some(&load(&trusting_foreign)), &journal), &url)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("TLS failed"), "{error}");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");

    // The same client with verification skipped gets through (diagnostics only).
    let skipping = TlsSettings::load(&trusting_foreign, ServerVerification::InsecureSkip).unwrap();
    assert_eq!(
        ping(&client(Some(&skipping), &journal), &url)
            .await
            .unwrap(),
        200
    );
}

/// POSTs a token request with `assertion` and returns the status and body.
async fn token_request(
    client: &RecordingClient,
    url: &str,
    assertion: &str,
    own: &TlsSettings,
) -> (u16, String) {
    // A good authorization assertion of the caller's own care provider (its own jti).
    let identity = &own.client_identity;
    let signer = CertificateSigner::new(&identity.key, &identity.chain, None).unwrap();
    let ura = identity.ura().unwrap();
    let authorization =
        encode_jwt(&AssertionClaims::new(&ura, url, unix_now(), 60), &signer).unwrap();
    let form = token_request_form(assertion, Some(&authorization), Some("ab-unknown"));
    let request = Outgoing::with_body(
        reqwest::Method::POST,
        url,
        "application/x-www-form-urlencoded",
        form,
        ExchangeKind::TokenRequest,
    );
    let exchange = client
        .send(request)
        .await
        .expect("the request gets an answer");
    let response = exchange.response.unwrap();
    let body = String::from_utf8_lossy(&response.body.bytes).into_owned();
    (response.status, body)
}

/// Assertions for `audience`: (name, assertion, the phrase a refusal must contain, or
/// None when it must be accepted).
fn assertions(
    pki: &PkiFiles,
    audience: &str,
    own: &TlsSettings,
) -> Vec<(&'static str, String, Option<&'static str>)> {
    let now = unix_now();
    let claims = || AssertionClaims::new("client", audience, now, 60);
    let identity = &own.client_identity;
    let signer = CertificateSigner::new(&identity.key, &identity.chain, None).unwrap();
    let good = encode_jwt(&claims(), &signer).unwrap();

    let parts: Vec<&str> = good.split('.').collect();
    let mut forged = claims();
    forged.iss = "intruder".into();
    forged.sub = "intruder".into();
    let forged = URL_SAFE_NO_PAD.encode(serde_json::to_string(&forged).unwrap());
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);

    let none_header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"none"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_string(&claims()).unwrap());
    let unsigned = format!("{none_header}.{payload}.");

    // Signed by the revoked certificate's key and naming it in x5c.
    let revoked = load_identity(
        &PemSource::File(pki.path(PkiFile::RevokedClient)),
        &PemSource::File(pki.path(PkiFile::RevokedClientKey)),
    )
    .unwrap();
    let revoked_signer = CertificateSigner::new(&revoked.key, &revoked.chain, Some(JwsAlg::Es256))
        .unwrap()
        .with_x5c(&revoked.chain);
    let by_revoked = encode_jwt(&claims(), &revoked_signer).unwrap();

    vec![
        ("tampered", tampered, Some("signature does not verify")),
        ("alg none", unsigned, Some("alg `none` is not accepted")),
        ("revoked x5c", by_revoked, Some("not trusted")),
        ("good", good, None),
    ]
}

#[tokio::test]
async fn both_token_endpoints_verify_assertion_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs(dir.path());
    let harness_tls = load(&pki.harness_tls());
    let node_tls = load(&pki.node_tls());
    let journal = Arc::new(Journal::new());

    let node = ReferenceNode::start(NodeConfig {
        name: "node".into(),
        ura: "90000456".into(),
        departments: Vec::new(),
        register: Default::default(),
        records: Default::default(),
        faults: Default::default(),
        listen: SocketAddr::from(LOOPBACK),
        tls: node_tls.clone(),
        queries: Default::default(),
        sbvz_url: None,
        token_lifetime: std::time::Duration::from_secs(300),
        log_to_stderr: false,
        crl_refresh: None,
        operator: None,
        state_dir: None,
    })
    .await
    .unwrap();
    let sender = SenderSim::start(
        SocketAddr::from(LOOPBACK),
        None,
        journal.clone(),
        &harness_tls,
    )
    .await
    .unwrap();

    // Each endpoint is called by the other party, as in a run.
    let endpoints = [
        (node.endpoints().token_url, &harness_tls),
        (sender.token_url(), &node_tls),
    ];
    for (url, own) in endpoints {
        assert!(url.starts_with("https://"), "{url}");
        let client = client(Some(own), &journal);
        for (name, assertion, refusal) in assertions(&pki, &url, own) {
            let (status, body) = token_request(&client, &url, &assertion, own).await;
            match refusal {
                Some(phrase) => {
                    assert_eq!(status, 400, "{url} {name}: {body}");
                    assert!(body.contains("invalid_client"), "{url} {name}: {body}");
                    assert!(body.contains(phrase), "{url} {name}: {body}");
                }
                // The node grants it; the simulated sender checks the signature first and
                // then refuses the unknown authorization base.
                None => assert!(
                    status == 200 || body.contains("the authorization_base is unknown"),
                    "{url} {name}: {status} {body}"
                ),
            }
        }
        // Without the authorization assertion, a good client assertion gets no token.
        let (_, good, _) = assertions(&pki, &url, own).pop().unwrap();
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer");
        form.append_pair(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        );
        form.append_pair("client_assertion", &good);
        form.append_pair("authorization_base", "ab-unknown");
        let request = Outgoing::with_body(
            reqwest::Method::POST,
            url.as_str(),
            "application/x-www-form-urlencoded",
            form.finish(),
            ExchangeKind::TokenRequest,
        );
        let response = client.send(request).await.unwrap().response.unwrap();
        let body = String::from_utf8_lossy(&response.body.bytes).into_owned();
        assert_eq!(response.status, 400, "{url}: {body}");
        assert!(body.contains("authorization assertion"), "{url}: {body}");
    }
}

#[test]
fn a_remote_target_needs_a_tls_section_and_https_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let target = |extra: &str, scheme: &str| {
        format!(
            "name: remote\nkind: remote\norganisation: {{ name: Noord, ura: \"90001234\" }}\n\
             departments:\n  - id: card\n    name: Cardiologie\n    identifier: {{ system: \"urn:oid:2.999.1\", value: card }}\n\
             endpoints:\n  notification: {scheme}://127.0.0.1:9/fhir\n  token: {scheme}://127.0.0.1:9/token\n{extra}"
        )
    };
    let without_tls = dir.path().join("without-tls.yaml");
    std::fs::write(&without_tls, target("", "https")).unwrap();
    let refused = bgz_harness()
        .args(["run", "--progress", "never", "--target"])
        .arg(&without_tls)
        .assert()
        .code(2);
    assert!(
        stderr(&refused).contains("needs a tls section"),
        "{}",
        stderr(&refused)
    );

    certs(&dir.path().join("pki"));
    let tls = "tls:\n  ca: pki/root-ca.pem\n  client-cert: pki/harness-client.pem\n  client-key: pki/harness-client.key.pem\n";
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, target(tls, "http")).unwrap();
    let refused = bgz_harness()
        .args(["run", "--progress", "never", "--target"])
        .arg(&plain)
        .assert()
        .code(2);
    assert!(
        stderr(&refused).contains("is plain http; a remote target is reached over https"),
        "{}",
        stderr(&refused)
    );

    std::fs::create_dir(dir.path().join("targets")).unwrap();
    let inline = dir.path().join("targets/inline.yaml");
    let secret = "tls:\n  ca: pki/root-ca.pem\n  client-cert: pki/harness-client.pem\n  client-key: \"-----BEGIN PRIVATE KEY-----\\nMIIEvQ\"\n";
    std::fs::write(&inline, target(secret, "https")).unwrap();
    let output = bgz_harness().arg("validate").arg(&inline).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PEM text is not allowed here"), "{stderr}");
    assert!(!stderr.contains("MIIEvQ"), "{stderr}");
}

#[tokio::test]
async fn a_tls_1_3_only_side_refuses_tls_1_2_and_speaks_1_3() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs(dir.path());
    let journal = Arc::new(Journal::new());
    let only_13 = load(&pki.harness_tls())
        .with_versions(TlsVersions::Tls13Only)
        .unwrap();
    let server = ping_server(&only_13, &journal).await;
    let url = format!("{}/ping", server.base_url());

    // A client that speaks only TLS 1.2 is refused in the handshake.
    let node = load(&pki.node_tls());
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(pki.path(PkiFile::RootCa)).unwrap())
            .unwrap();
        roots
    };
    let only_12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        node.client_identity.chain.clone(),
        node.client_identity.key.clone_key(),
    )
    .unwrap();
    let settings = ClientSettings {
        tls: Some(ClientTls(Arc::new(only_12))),
        ..ClientSettings::default()
    };
    let old = RecordingClient::new(
        &settings,
        journal.clone(),
        Party::Target,
        Party::HarnessSender,
    )
    .unwrap();
    let error = ping(&old, &url).await.unwrap_err().to_string();
    assert!(error.contains("TLS failed"), "{error}");
    assert!(error.contains("ProtocolVersion"), "{error}");

    // Both the default client (1.2 and 1.3) and a 1.3-only client get through.
    assert_eq!(
        ping(&client(Some(&node), &journal), &url).await.unwrap(),
        200
    );
    let node_13 = node.with_versions(TlsVersions::Tls13Only).unwrap();
    assert_eq!(
        ping(&client(Some(&node_13), &journal), &url).await.unwrap(),
        200
    );
}

#[tokio::test]
async fn a_running_server_uses_refreshed_crls_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs(dir.path());
    let journal = Arc::new(Journal::new());
    let settings = load(&pki.harness_tls());
    let server = ping_server(&settings, &journal).await;
    let url = format!("{}/ping", server.base_url());
    let node = load(&pki.node_tls());
    assert_eq!(
        ping(&client(Some(&node), &journal), &url).await.unwrap(),
        200
    );

    // The issuing CA's CRL is replaced by one of another issuer: the node's certificate's
    // revocation status is unknown now, which fails closed once the CRLs are re-read.
    std::fs::copy(
        pki.path(PkiFile::RootCrl),
        pki.path(PkiFile::IntermediateCrl),
    )
    .unwrap();
    assert_eq!(
        ping(&client(Some(&node), &journal), &url).await.unwrap(),
        200,
        "nothing changes before the refresh"
    );
    settings.refresh_crls().unwrap();
    let error = ping(&client(Some(&node), &journal), &url)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("TLS failed"), "{error}");
}

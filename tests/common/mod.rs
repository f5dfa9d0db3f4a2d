//! Shared by the hostile-peer tests: misbehaving HTTP/1.1-over-TLS servers on loopback that
//! the tests start themselves, with a test PKI generated once per test binary, target files
//! pointing at them, a copy of the project whose waits are short, and a run of the binary
//! bounded in time with its reports read back. Nothing here talks to anything but 127.0.0.1.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bgz_harness::pki::{PkiFile, PkiFiles, PkiSpec};
use bgz_harness::transport::{PemSource, ServerVerification, TlsSettings, load_identity};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// Longest a hostile server lives; a test that needs longer is broken.
const SERVER_LIFETIME: Duration = Duration::from_secs(90);
/// Most connections one hostile server accepts.
const MAX_CONNECTIONS: usize = 5_000;
/// Longest a silent server holds a connection open.
const HOLD: Duration = Duration::from_secs(60);
/// Largest request head or body a hostile server reads.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Longest a hostile server waits for a TLS handshake to complete.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

fn fresh_pki(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", env!("CARGO_CRATE_NAME")));
    // A PKI of an earlier run of this test binary is replaced: `generate` never overwrites.
    let _ = std::fs::remove_dir_all(&dir);
    bgz_harness::pki::generate(&PkiSpec::default(), &dir)
        .unwrap_or_else(|e| panic!("generating the test PKI in {}: {e}", dir.display()));
    dir
}

/// The test PKI of this test binary, generated on first use: the harness, the reference
/// node and every hostile server chain to its root.
pub fn pki() -> &'static Path {
    static PKI: OnceLock<PathBuf> = OnceLock::new();
    PKI.get_or_init(|| fresh_pki("hostile-pki"))
}

/// A second, unrelated test PKI: its certificates chain to a root the harness does not trust.
pub fn foreign_pki() -> &'static Path {
    static PKI: OnceLock<PathBuf> = OnceLock::new();
    PKI.get_or_init(|| fresh_pki("hostile-foreign-pki"))
}

/// Copies the test PKI into `dir/pki` (where target files in `dir/targets` find it as
/// `../pki`) and returns that folder.
pub fn install_pki(dir: &Path) -> PathBuf {
    let to = dir.join("pki");
    if !to.join(PkiFile::RootCa.name()).is_file() {
        copy_tree(pki(), &to);
    }
    to
}

/// The harness's own TLS settings from the test PKI (a client for proxies to the node).
pub fn harness_tls() -> TlsSettings {
    TlsSettings::load(
        &PkiFiles::at(pki()).harness_tls(),
        ServerVerification::Verify,
    )
    .expect("loading the harness's TLS material of the test PKI")
}

/// How a hostile server treats a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Completes a TLS handshake with the reference node's server certificate of the test
    /// PKI and requires a client certificate chaining to its root (the harness's).
    Trusted,
    /// Completes a TLS handshake with a server certificate of an unrelated PKI whose root has
    /// the same name as the trusted one (a look-alike), asking for no client certificate.
    ForeignCa,
    /// As [`Tls::ForeignCa`], with the test PKI's `foreign-client.pem`: a client-only
    /// certificate (no serverAuth), issued by a CA of another name the harness does not know.
    UnknownIssuer,
    /// Accepts TCP and reads whatever arrives, never answering the ClientHello.
    NeverHandshake,
    /// Completes a TLS handshake with the reference node's server certificate of the test
    /// PKI and asks for a client certificate, but accepts any certificate at all (a target
    /// that lets a bad client certificate through silently).
    AnyClientCert,
    /// Reads the ClientHello and closes the TCP connection without sending a TLS alert.
    CloseOnHello,
    /// Reads the ClientHello and answers it with this fatal TLS alert (its description
    /// code, e.g. 80 for internal_error), then closes.
    AlertOnHello(u8),
}

fn acceptor(tls: Tls) -> Option<TlsAcceptor> {
    let config = match tls {
        Tls::NeverHandshake | Tls::CloseOnHello | Tls::AlertOnHello(_) => return None,
        Tls::AnyClientCert => {
            let node = PkiFiles::at(pki()).node_tls();
            let identity = load_identity(&node.server_cert, &node.server_key)
                .expect("loading the node's server certificate of the test PKI");
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_client_cert_verifier(Arc::new(AnyClientCert(provider)))
                .with_single_cert(identity.chain, identity.key)
                .expect("a server configuration with the node's certificate");
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        }
        Tls::Trusted => {
            TlsSettings::load(&PkiFiles::at(pki()).node_tls(), ServerVerification::Verify)
                .expect("loading the node's TLS material of the test PKI")
                .server
                .current()
        }
        Tls::ForeignCa | Tls::UnknownIssuer => {
            let (cert, key) = if tls == Tls::ForeignCa {
                let foreign = PkiFiles::at(foreign_pki()).node_tls();
                (foreign.server_cert, foreign.server_key)
            } else {
                let files = PkiFiles::at(pki());
                (
                    PemSource::File(files.path(PkiFile::ForeignClient)),
                    PemSource::File(files.path(PkiFile::ForeignClientKey)),
                )
            };
            let identity = load_identity(&cert, &key).expect("loading a foreign certificate");
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(identity.chain, identity.key)
                .expect("a server configuration with the foreign certificate");
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        }
    };
    Some(TlsAcceptor::from(config))
}

/// One request as a hostile server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target: path and query as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a hostile server does with one request.
pub enum Wire {
    /// Writes these bytes, then closes.
    Bytes(Vec<u8>),
    /// Reads the request and never answers.
    Silent,
    /// Writes `prefix` at once, then `bytes` one at a time, one every `every`, then closes.
    Drip {
        prefix: Vec<u8>,
        bytes: Vec<u8>,
        every: Duration,
    },
    /// A 200 whose body is `size` bytes of `filler`, announced by Content-Length or
    /// delimited by closing the connection.
    Huge {
        size: usize,
        announce: bool,
        content_type: &'static str,
        filler: u8,
    },
}

type Reply = Pin<Box<dyn Future<Output = Wire> + Send>>;
type Route = Arc<dyn Fn(Seen) -> Reply + Send + Sync>;

/// A complete response with `Connection: close`.
pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Wire {
    Wire::Bytes(response_bytes(status, headers, body))
}

/// The bytes of a complete response with `Connection: close`.
pub fn response_bytes(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A well-behaved token answer.
pub fn good_token() -> Wire {
    response(
        "200 OK",
        &[("Content-Type", "application/json")],
        br#"{"access_token":"hostile-test-token","token_type":"Bearer","expires_in":300}"#,
    )
}

/// A well-behaved answer to a notification.
pub fn good_notification() -> Wire {
    response(
        "201 Created",
        &[
            ("Location", "Task/hostile-1/_history/1"),
            ("Content-Type", "application/fhir+json"),
        ],
        b"",
    )
}

/// A misbehaving HTTP/1.1 server over TLS on 127.0.0.1, port picked by the OS, that records
/// every request it reads. It stops when dropped, or after [`SERVER_LIFETIME`].
pub struct HostileServer {
    pub addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileServer {
    /// Starts a server, trusted by the harness, answering each request as `route` says.
    pub async fn start(route: impl Fn(&Seen) -> Wire + Send + Sync + 'static) -> Self {
        Self::start_with(Tls::Trusted, route).await
    }

    /// Starts a server whose TLS behaves as `tls` says, answering each request as `route`
    /// says.
    pub async fn start_with(
        tls: Tls,
        route: impl Fn(&Seen) -> Wire + Send + Sync + 'static,
    ) -> Self {
        let route = Arc::new(route);
        Self::start_async_with(tls, move |seen| {
            let route = route.clone();
            Box::pin(async move { route(&seen) })
        })
        .await
    }

    /// Starts a trusted server whose answers may need to wait for something (a proxy).
    pub async fn start_async(route: impl Fn(Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_async_with(Tls::Trusted, route).await
    }

    async fn start_async_with(
        tls: Tls,
        route: impl Fn(Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port for a hostile server");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let route: Route = Arc::new(route);
        let task = tokio::spawn(accept_loop(
            listener,
            tls,
            route,
            Counters {
                seen: seen.clone(),
                connections: connections.clone(),
                handshakes: handshakes.clone(),
            },
        ));
        Self {
            addr,
            handshakes,
            seen,
            connections,
            task,
        }
    }

    /// `https://127.0.0.1:port`.
    pub fn base(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The requests read so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connections accepted so far, including those that never sent a whole request.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Counters {
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
}

async fn accept_loop(listener: TcpListener, tls: Tls, route: Route, counters: Counters) {
    let acceptor = acceptor(tls);
    // Dropping the set (abort, or the end of the lifetime) ends every connection.
    let mut open = JoinSet::new();
    let serve = async {
        while counters.connections.load(Ordering::SeqCst) < MAX_CONNECTIONS {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            counters.connections.fetch_add(1, Ordering::SeqCst);
            open.spawn(handshake(
                stream,
                tls,
                acceptor.clone(),
                route.clone(),
                counters.clone(),
            ));
            while open.try_join_next().is_some() {}
        }
    };
    let _ = tokio::time::timeout(SERVER_LIFETIME, serve).await;
}

async fn handshake(
    mut stream: TcpStream,
    tls: Tls,
    acceptor: Option<TlsAcceptor>,
    route: Route,
    counters: Counters,
) {
    match tls {
        Tls::CloseOnHello => {
            let _ = read_client_hello(&mut stream).await;
            let _ = stream.shutdown().await;
            return;
        }
        Tls::AlertOnHello(description) => {
            if read_client_hello(&mut stream).await {
                // A plaintext TLS record: content type alert (21), TLS 1.2 record version,
                // length 2, level fatal (2), the description.
                let _ = stream.write_all(&[21, 3, 3, 0, 2, 2, description]).await;
                let _ = stream.flush().await;
            }
            let _ = stream.shutdown().await;
            return;
        }
        _ => {}
    }
    let Some(acceptor) = acceptor else {
        // Swallow the ClientHello and whatever follows; never answer, never close first.
        hold(&mut stream).await;
        return;
    };
    let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await
    else {
        return;
    };
    counters.handshakes.fetch_add(1, Ordering::SeqCst);
    serve_connection(stream, route, counters.seen).await;
}

/// Reads one TLS record (the ClientHello) within [`HANDSHAKE_LIMIT`]; false when the peer
/// sends none.
async fn read_client_hello(stream: &mut TcpStream) -> bool {
    let read = async {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await.ok()?;
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.ok()?;
        Some(header[0] == 22)
    };
    matches!(
        tokio::time::timeout(HANDSHAKE_LIMIT, read).await,
        Ok(Some(true))
    )
}

/// A client certificate verifier that asks for a certificate and accepts any (still
/// checking the handshake signature against it).
#[derive(Debug)]
struct AnyClientCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads and discards until the peer closes, then waits out [`HOLD`].
async fn hold<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(HOLD, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
        tokio::time::sleep(HOLD).await;
    })
    .await;
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    route: Route,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let Ok(Some(request)) =
        tokio::time::timeout(Duration::from_secs(10), read_request(&mut stream)).await
    else {
        return;
    };
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(request.clone());
    match route(request).await {
        Wire::Bytes(bytes) => {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.flush().await;
        }
        Wire::Silent => {
            // Keep reading (and discarding) so the peer never sees a close.
            hold(&mut stream).await;
        }
        Wire::Drip {
            prefix,
            bytes,
            every,
        } => {
            if stream.write_all(&prefix).await.is_err() {
                return;
            }
            for byte in bytes {
                if stream.write_all(&[byte]).await.is_err() || stream.flush().await.is_err() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
        }
        Wire::Huge {
            size,
            announce,
            content_type,
            filler,
        } => {
            let length = if announce {
                format!("Content-Length: {size}\r\n")
            } else {
                String::new()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{length}Connection: close\r\n\r\n"
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![filler; 64 * 1024];
            let mut written = 0;
            while written < size {
                let n = chunk.len().min(size - written);
                if stream.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
                written += n;
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// Reads one request head and its Content-Length body; `None` when the peer gives up.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Seen> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > MAX_REQUEST_BYTES {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST_BYTES);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen {
        method,
        target,
        headers,
        body,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The crate's own folder.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of the project's scenarios and fixtures in `dir`, with the known-patient
/// scenario's await-pull window cut from 30 s to 3 s: a hostile target that "accepts" a
/// notification never pulls, and the test should not wait half a minute to see that.
pub fn short_project(dir: &Path) -> PathBuf {
    let root = dir.join("project");
    copy_tree(&manifest_dir().join("scenarios"), &root.join("scenarios"));
    copy_tree(&manifest_dir().join("fixtures"), &root.join("fixtures"));
    let scenario = root.join("scenarios/known-patient.yaml");
    let text = std::fs::read_to_string(&scenario).expect("the copied scenario is readable");
    assert!(
        text.contains("within: 30s"),
        "known-patient.yaml no longer waits 30 s; update short_project"
    );
    std::fs::write(&scenario, text.replace("within: 30s", "within: 3s"))
        .expect("the copied scenario is writable");
    root
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating a folder in the temporary project");
    for entry in std::fs::read_dir(from).expect("reading a project folder") {
        let entry = entry.expect("a folder entry");
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copying a project file");
        }
    }
}

/// Endpoints for a remote target file.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub notification: String,
    pub token: String,
    pub inspect: Option<String>,
    pub control: Option<String>,
    pub sender_fhir_base: Option<String>,
    pub sender_token: Option<String>,
}

/// The `tls:` section of a target file in `dir/targets`, naming the test PKI in `dir/pki`.
pub const TLS_SECTION: &str = "tls:\n  ca: ../pki/root-ca.pem\n  crl: [../pki/root-ca.crl.pem, ../pki/intermediate-ca.crl.pem]\n  client-cert: ../pki/harness-client.pem\n  client-key: ../pki/harness-client.key.pem\n  server-cert: ../pki/harness-server.pem\n  server-key: ../pki/harness-server.key.pem\n";

/// Writes `targets/hostile.yaml` in `dir` for a remote target at `endpoints`, with the test
/// PKI copied to `dir/pki` and named in its `tls:` section. Departments and organisation are
/// those of the reference node, so the reference node can play it.
pub fn target_file(dir: &Path, endpoints: &Endpoints, exchange_timeout: &str) -> PathBuf {
    install_pki(dir);
    let mut text = format!(
        "name: hostile-peer\nkind: remote\norganisation:\n  name: Hostile test peer\n  ura: \"90000456\"\ndepartments:\n  - id: cardiologie\n    name: Cardiologie (poli)\n    identifier: {{ system: \"urn:oid:2.999.90000456.1\", value: cardiologie }}\nendpoints:\n  notification: {}\n  token: {}\n",
        endpoints.notification, endpoints.token
    );
    for (key, value) in [
        ("inspect", &endpoints.inspect),
        ("control", &endpoints.control),
        ("sender-fhir-base", &endpoints.sender_fhir_base),
        ("sender-token", &endpoints.sender_token),
    ] {
        if let Some(value) = value {
            text.push_str(&format!("  {key}: {value}\n"));
        }
    }
    text.push_str(&format!(
        "simulators:\n  listen: 127.0.0.1:0\nknown-patients: [known]\nexchange-timeout: {exchange_timeout}\n{TLS_SECTION}"
    ));
    let targets = dir.join("targets");
    std::fs::create_dir_all(&targets).expect("creating the targets folder");
    let path = targets.join("hostile.yaml");
    std::fs::write(&path, text).expect("writing the target file");
    path
}

/// What a bounded run of the binary produced.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    /// The signal that ended the process, if one did (a stack overflow aborts).
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub reports: PathBuf,
}

/// Runs `bgz-harness` with `args` in `cwd`, killing it and failing the test when it takes
/// longer than `limit`.
pub async fn run_bounded(cwd: &Path, args: &[&str], reports: &Path, limit: Duration) -> Finished {
    let child = harness(cwd, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the harness binary starts");
    finish_bounded(child, reports, limit).await
}

/// The binary with `args`, in `cwd`, with no standard input, killed when dropped.
pub fn harness(cwd: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_bgz-harness"));
    command
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Waits for `child` at most `limit`; a child still running then is killed and the test
/// fails as a hang.
pub async fn finish_bounded(
    child: tokio::process::Child,
    reports: &Path,
    limit: Duration,
) -> Finished {
    let started = Instant::now();
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => output.expect("waiting for the harness"),
        Err(_) => panic!("HANG: the harness did not finish within {limit:?} (it was killed)",),
    };
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&output.status);
    #[cfg(not(unix))]
    let signal = None;
    Finished {
        code: output.status.code(),
        signal,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
        reports: reports.to_owned(),
    }
}

/// The standard run of the hostile tests: one scenario of the technical test, no progress
/// bar, nobody at a terminal.
pub fn run_args<'a>(
    root: &'a str,
    target: &'a str,
    reports: &'a str,
    scenario: &'a str,
) -> Vec<&'a str> {
    vec![
        "--root",
        root,
        "run",
        "--target",
        target,
        "--phase",
        "technical-test",
        "--scenario",
        scenario,
        "--progress",
        "never",
        "--interactive",
        "never",
        "--reports",
        reports,
    ]
}

/// The three report files of the technical-test phase, read back and parsed.
pub struct Reports {
    pub junit: String,
    pub html: String,
    pub json: serde_json::Value,
    /// Every failure and error text of the JUnit file (message and description).
    pub problems: Vec<String>,
}

impl Finished {
    /// Asserts the run ended as a judged failure: exit 1, no panic, no signal, in time.
    pub fn assert_failed_cleanly(&self, limit: Duration) {
        assert_ne!(
            self.code,
            Some(101),
            "PANIC: the harness panicked:\n{}",
            self.stderr
        );
        assert_eq!(
            self.signal, None,
            "CRASH: the harness was killed by signal {:?}:\n{}",
            self.signal, self.stderr
        );
        assert_eq!(
            self.code,
            Some(1),
            "expected exit 1 (a case failed or erred)\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked at"),
            "a thread panicked:\n{}",
            self.stderr
        );
        assert!(
            self.elapsed <= limit,
            "the run took {:?}, more than {limit:?}",
            self.elapsed
        );
    }

    /// Reads the three report files, asserting each exists and the JUnit file parses.
    pub fn reports(&self) -> Reports {
        let dir = self.reports.join("technical-test");
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "LOST REPORT: {} was not written ({e})\nstderr:\n{}",
                    path.display(),
                    self.stderr
                )
            })
        };
        let junit = read("junit.xml");
        let html = read("report.html");
        let json_text = read("results.json");
        let json: serde_json::Value = serde_json::from_str(&json_text)
            .unwrap_or_else(|e| panic!("results.json does not parse: {e}"));
        let document = roxmltree::Document::parse(&junit)
            .unwrap_or_else(|e| panic!("junit.xml does not parse: {e}\n{junit}"));
        let problems = document
            .descendants()
            .filter(|n| n.has_tag_name("failure") || n.has_tag_name("error"))
            .map(|n| {
                format!(
                    "{}\n{}",
                    n.attribute("message").unwrap_or_default(),
                    n.text().unwrap_or_default()
                )
            })
            .collect();
        assert!(html.contains("<html"), "report.html is not an HTML page");
        Reports {
            junit,
            html,
            json,
            problems,
        }
    }
}

impl Reports {
    /// The exchange records of every case in results.json.
    pub fn exchanges(&self) -> Vec<&serde_json::Value> {
        self.json["cases"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["exchanges"].as_array().into_iter().flatten())
            .collect()
    }

    /// Asserts that some JUnit failure or error says every phrase of `phrases`.
    pub fn assert_says(&self, phrases: &[&str]) {
        let says = |text: &String| {
            let lower = text.to_lowercase();
            phrases.iter().all(|w| lower.contains(&w.to_lowercase()))
        };
        assert!(
            self.problems.iter().any(says),
            "no JUnit failure or error says {phrases:?}:\n{:#?}",
            self.problems
        );
    }

    /// Asserts that a step problem or check message of results.json says every phrase of
    /// `phrases` (in any case) and names an exchange whose URL contains `url_part`, by its
    /// id or URL in the text or in its list of exchanges, and that junit.xml carries the
    /// same text. Returns the text.
    pub fn assert_names_exchange(&self, url_part: &str, phrases: &[&str]) -> String {
        let exchanges: Vec<(String, String)> = self
            .exchanges()
            .iter()
            .filter(|e| e["url"].as_str().is_some_and(|u| u.contains(url_part)))
            .filter_map(|e| Some((e["id"].as_str()?.to_owned(), e["url"].as_str()?.to_owned())))
            .collect();
        assert!(
            !exchanges.is_empty(),
            "results.json records no exchange with `{url_part}` in its URL:\n{:#}",
            self.json["cases"]
        );
        let says = |text: &str| {
            let lower = text.to_lowercase();
            phrases.iter().all(|w| lower.contains(&w.to_lowercase()))
        };
        let names = |text: &str, listed: &serde_json::Value| {
            exchanges.iter().any(|(id, url)| {
                text.contains(id.as_str())
                    || text.contains(url.as_str())
                    || listed
                        .as_array()
                        .is_some_and(|l| l.iter().any(|x| x == id.as_str()))
            })
        };
        let mut statements = Vec::new();
        for step in self.json["cases"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["steps"].as_array().into_iter().flatten())
        {
            if let Some(problem) = step["problem"].as_str() {
                statements.push((problem.to_owned(), &step["exchanges"]));
            }
            for check in step["checks"].as_array().into_iter().flatten() {
                if check["verdict"] != "pass"
                    && let Some(message) = check["message"].as_str()
                {
                    statements.push((message.to_owned(), &check["exchanges"]));
                }
            }
        }
        let found = statements
            .iter()
            .find(|(text, listed)| says(text) && names(text, listed));
        let Some((text, _)) = found else {
            panic!(
                "UNCLEAR: no step problem or failed check says {phrases:?} and names an exchange with `{url_part}` ({} of them, first {:?}); they say:\n{:#?}",
                exchanges.len(),
                exchanges.first(),
                statements
                    .iter()
                    .map(|(t, l)| format!("{t} {l}"))
                    .collect::<Vec<_>>()
            );
        };
        let escaped_in_junit = self.problems.iter().any(|p| says(p));
        assert!(
            escaped_in_junit,
            "junit.xml does not carry the reason {phrases:?}:\n{:#?}",
            self.problems
        );
        text.clone()
    }
}

/// Keeps a child process (the reference node) alive for a test and kills it afterwards.
pub struct NodeProcess {
    child: tokio::process::Child,
    pub addr: String,
}

impl NodeProcess {
    /// Starts `bgz-harness node serve` on a port the OS picks, as the reference node of
    /// `targets/reference-node.yaml` with the test PKI copied to `dir/pki`, and waits for its
    /// address line.
    pub async fn start(dir: &Path) -> Self {
        Self::start_on(dir, "127.0.0.1:0").await
    }

    /// As [`NodeProcess::start`], listening on `listen` (to restart a node on its port).
    pub async fn start_on(dir: &Path, listen: &str) -> Self {
        let certs = install_pki(dir);
        let mut child = harness(
            &manifest_dir(),
            &[
                "node",
                "serve",
                "--listen",
                listen,
                "--target",
                "targets/reference-node.yaml",
                "--certs",
                text(&certs),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node serve starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("node serve prints its address within 10 s")
            .expect("reading node serve's stdout")
            .expect("node serve prints a first line");
        let addr = first
            .strip_prefix("reference node listening on ")
            .unwrap_or_else(|| panic!("unexpected first line of node serve: {first}"))
            .to_owned();
        // Keep draining stdout so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, addr }
    }

    /// `https://addr`.
    pub fn base(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Kills the node and waits (at most 10 s) until it has exited, freeing its port.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Path as `&str` for argument lists.
pub fn text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Every fixture patient's BSN, names and birth date (two spellings): what no report or
/// log may hold.
pub fn fixture_secrets() -> Vec<String> {
    let root = manifest_dir().join("fixtures/patients");
    let mut secrets = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let bundle: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(entry.unwrap().path().join("bgz.json")).unwrap(),
        )
        .unwrap();
        for e in bundle["entry"].as_array().unwrap() {
            let r = &e["resource"];
            if r["resourceType"] != "Patient" {
                continue;
            }
            for id in r["identifier"].as_array().into_iter().flatten() {
                if id["system"] == "http://fhir.nl/fhir/NamingSystem/bsn" {
                    secrets.push(id["value"].as_str().unwrap().to_owned());
                }
            }
            for name in r["name"].as_array().into_iter().flatten() {
                if let Some(family) = name["family"].as_str() {
                    secrets.push(family.to_owned());
                    // Each part of a double name on its own ("Zwanenburg-de Kroon").
                    for part in family.split([' ', '-']).filter(|p| p.len() >= 4) {
                        secrets.push(part.to_owned());
                    }
                }
                // The own name and partner name in the extensions of `_family` (not the
                // prefixes such as "van", which are ordinary words).
                for extension in name["_family"]["extension"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let url = extension["url"].as_str().unwrap_or_default();
                    if !url.ends_with("-name") {
                        continue;
                    }
                    if let Some(part) = extension["valueString"].as_str() {
                        secrets.push(part.to_owned());
                    }
                }
                for given in name["given"].as_array().into_iter().flatten() {
                    secrets.push(given.as_str().unwrap().to_owned());
                }
            }
            let birth = r["birthDate"].as_str().unwrap().to_owned();
            secrets.push(birth.replace('-', ""));
            let dutch: Vec<&str> = birth.split('-').rev().collect();
            secrets.push(dutch.join("-"));
            secrets.push(birth);
        }
    }
    secrets.retain(|s| s.len() >= 3);
    secrets.sort();
    secrets.dedup();
    assert!(
        secrets.len() >= 9,
        "fixtures hold BSNs, names and birth dates: {}",
        secrets.len()
    );
    secrets
}

//! Mutual TLS for both sides of the wire: loading PEM material (from files or `env:NAME`),
//! server settings that require a client certificate chaining to the configured CA (with its
//! CRLs, failing closed), client settings that present a certificate and trust only the
//! configured CA, and the HTTPS accept loop that hands each request the peer's certificates.
//!
//! Only the aws-lc-rs provider is used, and no system or platform roots are ever loaded.
//! Key material is never logged or put into an error message: errors name the source (a
//! path or `env:NAME`), never its contents.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_service::Service;

/// Longest a peer may take to finish the TLS handshake after connecting.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer may take to send a request's head; a slower one (one byte a second)
/// loses its connection instead of holding it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Where PEM text comes from: a file, or an environment variable (`env:NAME`) so that
/// secrets never sit in a target file. Shown as the path or `env:NAME`, never the contents.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    File(PathBuf),
    Env(String),
}

impl PemSource {
    /// Reads `env:NAME` as an environment variable, anything else as a path relative to
    /// `base` (the folder of the file that named it).
    pub fn parse(text: &str, base: &Path) -> Self {
        match text.strip_prefix("env:") {
            Some(name) => PemSource::Env(name.to_owned()),
            None => PemSource::File(base.join(text)),
        }
    }

    fn read(&self) -> Result<Vec<u8>, TlsError> {
        let failure = |reason: String| TlsError::Read {
            source_name: self.to_string(),
            reason,
        };
        match self {
            PemSource::File(path) => std::fs::read(path).map_err(|e| failure(e.to_string())),
            PemSource::Env(name) => std::env::var(name)
                .map(String::into_bytes)
                .map_err(|_| failure("the environment variable is not set or not UTF-8".into())),
        }
    }
}

impl fmt::Display for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(path) => write!(f, "{}", path.display()),
            PemSource::Env(name) => write!(f, "env:{name}"),
        }
    }
}

impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The TLS material of one side (the harness or the reference node), by source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Trust anchors (PEM certificates) for peer server and client certificates.
    pub ca: Vec<PemSource>,
    /// CRLs (PEM). With any CRL configured, every certificate of a chain needs a current
    /// CRL from its issuer; an unknown status or an expired CRL fails the handshake.
    pub crl: Vec<PemSource>,
    /// This side's server certificate chain (leaf first) and private key.
    pub server_cert: PemSource,
    pub server_key: PemSource,
    /// This side's client certificate chain and private key; the key also signs client
    /// assertions.
    pub client_cert: PemSource,
    pub client_key: PemSource,
}

/// Why TLS material could not be loaded or put together.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to read {source_name}: {reason}")]
    Read { source_name: String, reason: String },
    #[error("failed to parse {source_name}: {reason}")]
    Parse { source_name: String, reason: String },
    #[error("failed to build the TLS settings: {0}")]
    Config(String),
}

/// A certificate chain (leaf first) with its private key. `Debug` never shows the key.
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// The organisation's URA from the leaf's subject `serialNumber`, when it has one.
    pub fn ura(&self) -> Option<String> {
        self.chain
            .first()
            .and_then(|leaf| subject_serial_number(leaf))
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("chain", &self.chain.len())
            .field("key", &"(hidden)")
            .finish()
    }
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// How a client checks the server's certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerVerification {
    /// Against the configured CA and CRLs (always, unless the user asks otherwise).
    #[default]
    Verify,
    /// Not at all (`run --insecure-skip-verify`, diagnostics only; reports say so). The
    /// handshake signature is still checked against the presented certificate.
    InsecureSkip,
}

/// A value every clone shares and that can be replaced in place: the server settings and
/// chain verifiers, rebuilt when the CRLs are re-read.
struct Swappable<T: ?Sized>(Arc<std::sync::RwLock<Arc<T>>>);

impl<T: ?Sized> Clone for Swappable<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: ?Sized> fmt::Debug for Swappable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Swappable")
    }
}

impl<T: ?Sized> Swappable<T> {
    fn new(value: Arc<T>) -> Self {
        Self(Arc::new(std::sync::RwLock::new(value)))
    }

    fn current(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

/// Server settings: this side's certificate, and a verifier that requires a client
/// certificate chaining to the configured CA. Clones share one configuration, which a CRL
/// refresh replaces for every connection accepted afterwards.
#[derive(Debug, Clone)]
pub struct ServerTls(Swappable<ServerConfig>);

impl ServerTls {
    /// The configuration new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.0.current()
    }
}

/// Client settings: this side's client certificate, and the server verification.
#[derive(Debug, Clone)]
pub struct ClientTls(pub Arc<ClientConfig>);

/// Checks that a certificate chain (leaf first) chains to the configured CA for client
/// authentication, with the configured CRLs; used for the certificates behind a client
/// assertion's signature.
#[derive(Debug, Clone)]
pub struct ChainVerifier(Swappable<dyn ClientCertVerifier>);

impl ChainVerifier {
    /// A verifier trusting `roots` and checking `crls`.
    pub fn new(
        roots: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, TlsError> {
        let mut store = RootCertStore::empty();
        for root in roots {
            store
                .add(root)
                .map_err(|e| TlsError::Config(describe_tls_error(&e)))?;
        }
        let trust = Trust {
            roots: Arc::new(store),
            crls,
        };
        Ok(Self(Swappable::new(client_verifier(&trust)?)))
    }

    /// Verifies `chain` at `now` (seconds since the Unix epoch).
    pub fn verify(&self, chain: &[CertificateDer<'static>], now: i64) -> Result<(), String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err("the certificate chain is empty".to_owned());
        };
        let now = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0).unsigned_abs()));
        self.0
            .current()
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| ())
            .map_err(|e| describe_tls_error(&e))
    }
}

/// The certificates a TLS client presented on the connection a request came in on (leaf
/// first); empty on plain HTTP. The HTTPS server puts it into every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

impl PeerCertificates {
    /// The organisation's URA from the leaf's subject `serialNumber` (UZI server
    /// certificates carry it there), when there is one.
    pub fn ura(&self) -> Option<String> {
        self.0.first().and_then(|leaf| subject_serial_number(leaf))
    }
}

/// The subject `serialNumber` attribute (OID 2.5.4.5) of a certificate, as text.
pub fn subject_serial_number(certificate: &CertificateDer<'_>) -> Option<String> {
    const OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x05];
    let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
    let subject = parsed.subject();
    let at = subject.windows(OID.len()).position(|w| w == OID)? + OID.len();
    // PrintableString or UTF8String, short-form length.
    let (&tag, rest) = subject[at..].split_first()?;
    let (&length, rest) = rest.split_first()?;
    if !matches!(tag, 0x13 | 0x0c) || length >= 0x80 || rest.len() < usize::from(length) {
        return None;
    }
    String::from_utf8(rest[..usize::from(length)].to_vec()).ok()
}

/// Everything one side needs: serving, connecting, and checking assertion certificates.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub server: ServerTls,
    pub client: ClientTls,
    pub chains: ChainVerifier,
    /// The client identity, whose key also signs client assertions.
    pub client_identity: Arc<TlsIdentity>,
    server_identity: Arc<TlsIdentity>,
    trust: Trust,
    verification: ServerVerification,
    leniency: Leniency,
    versions: TlsVersions,
    /// Where the CRLs come from, to re-read them.
    crl_sources: Vec<PemSource>,
}

/// Stops a background task when dropped.
#[derive(Debug)]
pub struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The TLS versions both sides speak (protocol.md §3: 1.2 and 1.3; 1.3 only as an option).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TlsVersions {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2+")]
    Tls12AndUp,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13Only,
}

/// TLS 1.3 alone.
static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

impl TlsVersions {
    fn supported(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        match self {
            TlsVersions::Tls12AndUp => rustls::ALL_VERSIONS,
            TlsVersions::Tls13Only => &TLS13_ONLY,
        }
    }
}

/// Client-certificate problems a server lets through. Only the reference node's weakness
/// switches set any of these, so that a probe can show the harness catches such a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leniency {
    /// Accept certificates that chain to no configured CA.
    pub foreign_ca: bool,
    /// Accept certificates a CRL lists as revoked.
    pub revoked: bool,
    /// Accept certificates outside their validity period.
    pub expired: bool,
}

impl Leniency {
    fn excuses(self, error: &rustls::Error) -> bool {
        use rustls::CertificateError as E;
        match error {
            rustls::Error::InvalidCertificate(reason) => match reason {
                E::UnknownIssuer => self.foreign_ca,
                E::Revoked => self.revoked,
                E::Expired | E::ExpiredContext { .. } => self.expired,
                _ => false,
            },
            _ => false,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn parse_error(source: &PemSource, reason: impl Into<String>) -> TlsError {
    TlsError::Parse {
        source_name: source.to_string(),
        reason: reason.into(),
    }
}

pub fn load_certificates(source: &PemSource) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = source.read()?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_error(source, format!("not PEM certificates ({e})")))?;
    if certificates.is_empty() {
        return Err(parse_error(source, "no CERTIFICATE block found"));
    }
    Ok(certificates)
}

fn load_crls(source: &PemSource) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = source.read()?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_error(source, format!("not PEM CRLs ({e})")))?;
    if crls.is_empty() {
        return Err(parse_error(source, "no X509 CRL block found"));
    }
    Ok(crls)
}

fn load_key(source: &PemSource) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = source.read()?;
    // The parse error is generic on purpose: it must not echo any of the key's bytes.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        parse_error(
            source,
            "no PKCS#8, PKCS#1 or SEC1 private key in PEM form found",
        )
    })
}

/// Loads a certificate chain and its key.
pub fn load_identity(cert: &PemSource, key: &PemSource) -> Result<TlsIdentity, TlsError> {
    Ok(TlsIdentity {
        chain: load_certificates(cert)?,
        key: load_key(key)?,
    })
}

/// The trust anchors and CRLs of `files`.
#[derive(Clone)]
struct Trust {
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

fn load_trust(files: &TlsFiles) -> Result<Trust, TlsError> {
    let mut roots = RootCertStore::empty();
    for source in &files.ca {
        for certificate in load_certificates(source)? {
            roots
                .add(certificate)
                .map_err(|e| parse_error(source, describe_tls_error(&e)))?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::Config(
            "no CA certificate is configured (tls.ca)".to_owned(),
        ));
    }
    let mut crls = Vec::new();
    for source in &files.crl {
        crls.extend(load_crls(source)?);
    }
    Ok(Trust {
        roots: Arc::new(roots),
        crls,
    })
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("roots", &self.roots.len())
            .field("crls", &self.crls.len())
            .finish()
    }
}

fn client_verifier(trust: &Trust) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), provider())
        .with_crls(trust.crls.clone())
        .enforce_revocation_expiration()
        .build()
        .map_err(|e| TlsError::Config(format!("client certificate verifier: {e}")))
}

/// The client verifier of `trust`, letting through what `leniency` excuses.
fn lenient_verifier(
    trust: &Trust,
    leniency: Leniency,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let strict = client_verifier(trust)?;
    if leniency == Leniency::default() {
        return Ok(strict);
    }
    Ok(Arc::new(LenientVerifier { strict, leniency }))
}

/// A client verifier that excuses some certificate problems (weakness switches only).
#[derive(Debug)]
struct LenientVerifier {
    strict: Arc<dyn ClientCertVerifier>,
    leniency: Leniency,
}

impl ClientCertVerifier for LenientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.strict.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.strict.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.strict.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        match self
            .strict
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(error) if self.leniency.excuses(&error) => {
                Ok(rustls::server::danger::ClientCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.strict.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.strict.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.strict.supported_verify_schemes()
    }
}

impl TlsSettings {
    /// Loads `files` and builds the settings. With [`ServerVerification::InsecureSkip`]
    /// the client does not check server certificates; everything else still verifies.
    pub fn load(files: &TlsFiles, verification: ServerVerification) -> Result<Self, TlsError> {
        let trust = load_trust(files)?;
        let server_identity = load_identity(&files.server_cert, &files.server_key)?;
        let client_identity = load_identity(&files.client_cert, &files.client_key)?;
        let versions = TlsVersions::default();
        Ok(Self {
            server: server_tls(&server_identity, &trust, Leniency::default(), versions)?,
            client: client_tls(&client_identity, &trust, verification, versions)?,
            chains: ChainVerifier(Swappable::new(client_verifier(&trust)?)),
            client_identity: Arc::new(client_identity),
            server_identity: Arc::new(server_identity),
            trust,
            verification,
            leniency: Leniency::default(),
            versions,
            crl_sources: files.crl.clone(),
        })
    }

    /// Re-reads the CRLs and rebuilds the server settings and the chain verifier with them,
    /// for every clone; connections accepted afterwards and assertions checked afterwards
    /// use the new lists. Clients keep the lists they were built with. On an error nothing
    /// changes (an expired CRL already fails closed).
    pub fn refresh_crls(&self) -> Result<(), TlsError> {
        let mut crls = Vec::new();
        for source in &self.crl_sources {
            crls.extend(load_crls(source)?);
        }
        let trust = Trust {
            roots: self.trust.roots.clone(),
            crls,
        };
        let server = server_tls(&self.server_identity, &trust, self.leniency, self.versions)?;
        let chains = lenient_verifier(&trust, self.leniency)?;
        self.server.0.replace(server.current());
        self.chains.0.replace(chains);
        Ok(())
    }

    /// Re-reads the CRLs every `every` until the guard is dropped; `failed` hears of a
    /// refresh that did not work. Nothing runs without CRLs.
    pub fn refresh_crls_every(
        &self,
        every: Duration,
        failed: impl Fn(String) + Send + 'static,
    ) -> Option<TaskGuard> {
        if self.crl_sources.is_empty() {
            return None;
        }
        let settings = self.clone();
        Some(TaskGuard(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(error) = settings.refresh_crls() {
                    failed(format!(
                        "failed to re-read the CRLs, keeping the previous ones: {error}"
                    ));
                }
            }
        })))
    }

    /// Client settings presenting `identity` instead of this side's own client
    /// certificate, with the same trust and versions (the certificate probes).
    pub fn client_presenting(&self, identity: &TlsIdentity) -> Result<ClientTls, TlsError> {
        client_tls(identity, &self.trust, self.verification, self.versions)
    }

    /// The same settings with a server and an assertion-chain verifier that let through
    /// what `leniency` excuses (the reference node's weakness switches).
    pub fn lenient(&self, leniency: Leniency) -> Result<Self, TlsError> {
        Ok(Self {
            server: server_tls(&self.server_identity, &self.trust, leniency, self.versions)?,
            chains: ChainVerifier(Swappable::new(lenient_verifier(&self.trust, leniency)?)),
            leniency,
            ..self.clone()
        })
    }

    /// The same settings speaking only `versions`, as server and as client.
    pub fn with_versions(&self, versions: TlsVersions) -> Result<Self, TlsError> {
        Ok(Self {
            server: server_tls(&self.server_identity, &self.trust, self.leniency, versions)?,
            client: client_tls(
                &self.client_identity,
                &self.trust,
                self.verification,
                versions,
            )?,
            versions,
            ..self.clone()
        })
    }
}

fn server_tls(
    identity: &TlsIdentity,
    trust: &Trust,
    leniency: Leniency,
    versions: TlsVersions,
) -> Result<ServerTls, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions.supported())
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(lenient_verifier(trust, leniency)?)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::Config(format!("server certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerTls(Swappable::new(Arc::new(config))))
}

fn client_tls(
    identity: &TlsIdentity,
    trust: &Trust,
    verification: ServerVerification,
    versions: TlsVersions,
) -> Result<ClientTls, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions.supported())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match verification {
        ServerVerification::Verify => {
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                trust.roots.clone(),
                provider(),
            )
            .with_crls(trust.crls.clone())
            .enforce_revocation_expiration()
            .build()
            .map_err(|e| TlsError::Config(format!("server certificate verifier: {e}")))?;
            builder.with_webpki_verifier(verifier)
        }
        ServerVerification::InsecureSkip => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FixedServerVerdict::accept_all())),
    };
    let config = builder
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?;
    Ok(ClientTls(Arc::new(config)))
}

/// Client settings for a client that has no TLS material: every HTTPS server is refused,
/// because no CA is trusted and system roots are never used.
pub(crate) fn untrusting_client_config() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(FixedServerVerdict::refuse_all()))
        .with_no_client_auth()
}

/// A server-certificate verifier with one answer for every certificate, still checking the
/// handshake signature: refusal when no CA is configured, acceptance only for
/// `run --insecure-skip-verify`, which warns and marks every report.
#[derive(Debug)]
struct FixedServerVerdict {
    provider: Arc<CryptoProvider>,
    accept: bool,
}

impl FixedServerVerdict {
    fn refuse_all() -> Self {
        Self {
            provider: provider(),
            accept: false,
        }
    }

    fn accept_all() -> Self {
        Self {
            provider: provider(),
            accept: true,
        }
    }
}

impl ServerCertVerifier for FixedServerVerdict {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.accept {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "no CA is configured to verify HTTPS servers (add a tls section)".to_owned(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A readable sentence for a rustls error, naming the certificate problem or the alert the
/// peer sent.
pub(crate) fn describe_tls_error(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(reason) => {
            format!("the certificate was refused: {reason:?}")
        }
        rustls::Error::AlertReceived(alert) => {
            format!("the peer refused the TLS handshake with alert {alert:?}")
        }
        rustls::Error::NoCertificatesPresented => "no client certificate was presented".into(),
        other => other.to_string(),
    }
}

/// Finds a rustls error in an error's source chain, also inside (nested) I/O errors, whose
/// `source` skips the error they wrap.
pub(crate) fn find_tls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// Serves `router` over HTTPS on `listener` until the task is aborted; aborting it also
/// ends every open connection. A failed handshake ends that connection only.
pub(crate) async fn serve_tls(listener: TcpListener, router: Router, tls: ServerTls) {
    let mut config = tls.current();
    let mut acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::debug!("failed to accept a connection: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // After a CRL refresh, new connections get the new settings.
        let latest = tls.current();
        if !Arc::ptr_eq(&latest, &config) {
            config = latest;
            acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
        }
        let acceptor = acceptor.clone();
        let router = router.clone();
        connections.spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        let reason = find_tls_error(&error)
                            .map(describe_tls_error)
                            .unwrap_or_else(|| error.to_string());
                        tracing::debug!("refused a TLS connection: {reason}");
                        return;
                    }
                    Err(_) => return,
                };
            let peer = PeerCertificates(Arc::new(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default(),
            ));
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(peer.clone());
                    let mut router = router.clone();
                    async move { router.call(request).await }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
        ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
    };

    fn key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key")
    }

    #[test]
    fn a_chain_is_refused_when_its_crl_has_expired_or_its_issuer_has_none() {
        let new_ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            CertifiedIssuer::self_signed(params, key()).unwrap()
        };
        let (ca, other_ca) = (new_ca("test CA"), new_ca("other CA"));
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = params.signed_by(&key(), &*ca).unwrap().der().clone();

        let now = time::OffsetDateTime::now_utc();
        let crl = |issuer: &CertifiedIssuer<'static, KeyPair>,
                   next_update: time::OffsetDateTime| {
            CertificateRevocationListParams {
                this_update: now - time::Duration::days(30),
                next_update,
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: Vec::new(),
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&**issuer)
            .unwrap()
            .der()
            .clone()
        };
        let verify = |crls| {
            ChainVerifier::new(vec![ca.der().clone()], crls)
                .unwrap()
                .verify(std::slice::from_ref(&leaf), now.unix_timestamp())
        };

        assert_eq!(
            verify(vec![crl(&ca, now + time::Duration::days(1))]),
            Ok(())
        );
        let stale = verify(vec![crl(&ca, now - time::Duration::days(1))]).unwrap_err();
        assert!(stale.contains("ExpiredRevocationList"), "{stale}");
        let unknown = verify(vec![crl(&other_ca, now + time::Duration::days(1))]).unwrap_err();
        assert!(unknown.contains("UnknownRevocationStatus"), "{unknown}");
        // No CRLs at all: revocation is not checked (a remote target may configure none).
        assert_eq!(verify(Vec::new()), Ok(()));
    }

    #[test]
    fn the_ura_is_read_from_the_subject_serial_number_only() {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client 12345678");
        params.distinguished_name.push(
            rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]),
            rcgen::DnValue::PrintableString("90000123".try_into().unwrap()),
        );
        let with = params.self_signed(&key()).unwrap().der().clone();
        assert_eq!(subject_serial_number(&with).as_deref(), Some("90000123"));
        let peer = PeerCertificates(Arc::new(vec![with]));
        assert_eq!(peer.ura().as_deref(), Some("90000123"));

        // A number elsewhere in the subject is not taken for a URA.
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client 90000123");
        let without = params.self_signed(&key()).unwrap().der().clone();
        assert_eq!(subject_serial_number(&without), None);
        assert_eq!(PeerCertificates::default().ura(), None);
        assert_eq!(
            subject_serial_number(&CertificateDer::from(vec![0x30, 0x03])),
            None
        );
    }

    #[test]
    fn leniency_excuses_only_the_problems_it_names() {
        use rustls::CertificateError as E;
        let invalid = |e| rustls::Error::InvalidCertificate(e);
        let strict = Leniency::default();
        let all = Leniency {
            foreign_ca: true,
            revoked: true,
            expired: true,
        };
        for error in [
            invalid(E::UnknownIssuer),
            invalid(E::Revoked),
            invalid(E::Expired),
        ] {
            assert!(!strict.excuses(&error));
            assert!(all.excuses(&error));
        }
        let only_revoked = Leniency {
            revoked: true,
            ..strict
        };
        assert!(only_revoked.excuses(&invalid(E::Revoked)));
        assert!(!only_revoked.excuses(&invalid(E::UnknownIssuer)));
        assert!(!all.excuses(&invalid(E::BadSignature)));
        assert!(!all.excuses(&rustls::Error::NoCertificatesPresented));
    }

    #[tokio::test]
    async fn refreshed_crls_take_effect_for_every_clone_and_a_bad_file_changes_nothing() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, key()).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.serial_number = Some(SerialNumber::from(7u64));
        let leaf_key = key();
        let leaf = params.signed_by(&leaf_key, &*ca).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let crl = |revoked: Vec<rcgen::RevokedCertParams>| {
            CertificateRevocationListParams {
                this_update: now - time::Duration::hours(1),
                next_update: now + time::Duration::days(1),
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: revoked,
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&*ca)
            .unwrap()
            .pem()
            .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap();
            PemSource::File(dir.path().join(name))
        };
        let files = TlsFiles {
            ca: vec![write("ca.pem", &ca.pem())],
            crl: vec![write("crl.pem", &crl(Vec::new()))],
            server_cert: write("leaf.pem", &leaf.pem()),
            server_key: write("leaf.key.pem", &leaf_key.serialize_pem()),
            client_cert: PemSource::File(dir.path().join("leaf.pem")),
            client_key: PemSource::File(dir.path().join("leaf.key.pem")),
        };
        let settings = TlsSettings::load(&files, ServerVerification::Verify).unwrap();
        let clone = settings.clone();
        let chain = vec![leaf.der().clone()];
        assert_eq!(clone.chains.verify(&chain, now.unix_timestamp()), Ok(()));
        let before = clone.server.current();

        write(
            "crl.pem",
            &crl(vec![rcgen::RevokedCertParams {
                serial_number: SerialNumber::from(7u64),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            }]),
        );
        settings.refresh_crls().unwrap();
        let refused = clone
            .chains
            .verify(&chain, now.unix_timestamp())
            .unwrap_err();
        assert!(refused.contains("Revoked"), "{refused}");
        assert!(!Arc::ptr_eq(&before, &clone.server.current()));

        write("crl.pem", "not a CRL");
        let error = settings.refresh_crls().unwrap_err().to_string();
        assert!(error.contains("crl.pem"), "{error}");
        assert!(clone.chains.verify(&chain, now.unix_timestamp()).is_err());

        // The periodic refresh reports its failures and stops with its guard.
        let (told, heard) = std::sync::mpsc::channel();
        let guard = settings
            .refresh_crls_every(Duration::from_millis(20), move |problem| {
                let _ = told.send(problem);
            })
            .unwrap();
        let problem =
            tokio::task::spawn_blocking(move || heard.recv_timeout(Duration::from_secs(5)))
                .await
                .unwrap()
                .unwrap();
        assert!(problem.contains("keeping the previous ones"), "{problem}");
        drop(guard);
    }
}

//! The reference node: a conformant receiving GtK that is the default target, so the harness
//! runs out of the box. It keeps a patient register, accepts notifications, pulls the BgZ
//! and the letter from the sender, and files the referral in a department inbox that its
//! inspection API shows. Fault switches ([`faults::Fault`]) break single rules on purpose.
//!
//! The node shares message types with the harness but never its judgement: the checks that
//! grade the node live in `runner` and read only the wire and the inspection API.

pub mod faults;
mod log;
mod puller;
mod receiver;
pub mod sender;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::fhir::store::ResourceStore;
use crate::protocol::notification::Ident;
use crate::protocol::token::{AssertionValidator, CertificateSigner};
use crate::transport::{ClientSettings, PeerCertificates, PlainServer, TlsSettings, http_client};
use faults::{Fault, FaultSet};

/// A department (HealthcareService) of an organisation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Department {
    /// Short key used in matrices and inboxes, e.g. `cardiologie`.
    pub id: String,
    pub name: String,
    /// The HealthcareService identifier a sender puts in `Task.owner.identifier`.
    pub identifier: Ident,
}

/// Where a sender organisation serves its BgZ.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SenderEndpoints {
    pub ura: String,
    pub fhir_base: String,
    pub token_url: String,
}

/// Everything the node is configured with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub ura: String,
    pub departments: Vec<Department>,
    /// The patients the node knows as a receiver (their Patient resources, with a BSN).
    pub register: ResourceStore,
    /// What the node can send: the whole BgZ and letter of every patient in its records.
    pub records: ResourceStore,
    pub faults: FaultSet,
    pub listen: SocketAddr,
    /// The catalogue and query forms the node notifies when it sends.
    pub queries: crate::fhir::catalogue::QueryOptions,
    /// Base URL of the SBV-Z service the node verifies unknown patients at.
    pub sbvz_url: Option<String>,
    /// The node's server and client certificates and the CA it trusts: it serves HTTPS,
    /// requires client certificates, and signs its client assertions with its client key.
    pub tls: TlsSettings,
    /// How long the access tokens it issues live (protocol.md §13.9).
    pub token_lifetime: std::time::Duration,
    /// Echo the node's log to stderr (`node serve`).
    pub log_to_stderr: bool,
    /// How often the node re-reads its CRLs (never when `None`).
    pub crl_refresh: Option<std::time::Duration>,
    /// The URA whose client certificates may use the control and inspection APIs (the
    /// harness's); `None` lets any client certificate of the trusted CA in.
    pub operator: Option<String>,
    /// A folder where the node keeps what must survive a restart (the `jti`s of assertions
    /// it accepted); `None` keeps it in memory only.
    pub state_dir: Option<std::path::PathBuf>,
}

/// An access token the node issued: until when, to which client (the URA of the client
/// certificate it was requested with) and for which care provider (the `sub` of the
/// authorization assertion).
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub expires: i64,
    pub client: Option<String>,
    pub care_provider: String,
}

impl Issued {
    fn new(state: &NodeState, peer: &PeerCertificates, care_provider: String) -> Self {
        Self {
            expires: crate::protocol::token::unix_now() + state.token_lifetime_s(),
            client: peer.ura(),
            care_provider,
        }
    }
}

/// Why a token request was refused: the RFC 6749 error code and a description.
pub(crate) struct TokenRefusal {
    pub error: &'static str,
    pub description: String,
}

/// One referral as filed in a department's inbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InboxEntry {
    /// `Task.identifier.value` of the notification.
    pub notification: String,
    pub department: Option<String>,
    /// The BSN of the register patient the referral was filed under.
    pub patient_bsn: Option<String>,
    pub patient_known: bool,
    pub status: InboxStatus,
    pub searches_run: usize,
    pub resources_pulled: usize,
    pub letter: Option<LetterCopy>,
    /// The SBV-Z answer for an unknown patient, when one was asked.
    #[serde(default)]
    pub sbvz: Option<String>,
    /// Why the pull failed, if it did.
    pub problem: Option<String>,
}

/// State of a referral in the inbox.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum InboxStatus {
    Pulling,
    Filed,
    AwaitingRegistration,
    Failed,
    Cancelled,
}

/// What the node stored of the letter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LetterCopy {
    pub size: usize,
    pub sha256: String,
}

pub(crate) struct NodeState {
    config: NodeConfig,
    base: String,
    senders: Mutex<HashMap<String, SenderEndpoints>>,
    inbox: Mutex<Vec<InboxEntry>>,
    /// Accepted notifications by `Task.identifier` value, with the addressed department.
    notifications: Mutex<
        HashMap<
            String,
            (
                crate::protocol::notification::ReceivedNotification,
                Option<String>,
            ),
        >,
    >,
    tokens: Mutex<HashMap<String, Issued>>,
    log: log::NodeLog,
    validator: AssertionValidator,
    /// Checks client assertions sent to the sending role's token endpoint.
    pull_validator: AssertionValidator,
    sender: sender::SenderState,
    signer: CertificateSigner,
    http: reqwest::Client,
    /// Plain client for the SBV-Z double (this build's double speaks plain HTTP).
    sbvz_http: reqwest::Client,
}

impl NodeState {
    fn has(&self, fault: Fault) -> bool {
        self.config.faults.contains(&fault)
    }

    /// How a patient appears in the log: not at all, unless `log-patient-data` is on.
    fn patient_for_log(&self, bsn: &str) -> String {
        if self.has(Fault::LogPatientData) {
            format!("patient BSN {bsn}")
        } else {
            "patient (withheld)".to_owned()
        }
    }

    fn token_lifetime_s(&self) -> i64 {
        i64::try_from(self.config.token_lifetime.as_secs()).unwrap_or(i64::MAX / 2)
    }

    /// Why a token issued as `issued` may not be used on a connection from `peer` now.
    fn token_refusal(&self, issued: &Issued, peer: &PeerCertificates) -> Option<&'static str> {
        if issued.expires < crate::protocol::token::unix_now()
            && !self.has(Fault::AcceptExpiredToken)
        {
            return Some("the access token has expired");
        }
        if issued.client != peer.ura() && !self.has(Fault::AcceptTokenOfAnotherClient) {
            return Some("the access token was issued to another organisation");
        }
        None
    }

    /// Validates an assertion, relaxed by the switched-on token faults; its claims.
    fn check_assertion(
        &self,
        validator: &AssertionValidator,
        assertion: &str,
        presented: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<crate::protocol::token::AssertionClaims, String> {
        use crate::protocol::token::{AssertionError, decode_jwt};
        let excused = |e: &AssertionError| match e {
            AssertionError::Audience { .. } => self.has(Fault::IgnoreAudience),
            AssertionError::Replayed => self.has(Fault::AcceptReplayedAssertion),
            AssertionError::Expired { .. } => self.has(Fault::AcceptExpiredAssertion),
            _ => false,
        };
        match validator.validate(assertion, crate::protocol::token::unix_now(), presented) {
            Ok(claims) => Ok(claims),
            Err(e) if excused(&e) => decode_jwt(assertion)
                .map(|(_, claims)| claims)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Checks a token request (protocol.md §3): the grant type, the client assertion, a
    /// client certificate that names its organisation, and the authorization assertion.
    /// Answers the care provider the authorization assertion names (its `sub`).
    fn check_token_request(
        &self,
        validator: &AssertionValidator,
        form: &[(String, String)],
        peer: &PeerCertificates,
    ) -> Result<String, TokenRefusal> {
        use crate::protocol::token::{GRANT_TYPE, form_value};
        let refuse = |error, description: String| TokenRefusal { error, description };
        if form_value(form, "grant_type") != Some(GRANT_TYPE) {
            return Err(refuse(
                "unsupported_grant_type",
                "grant_type must be the JWT bearer grant".into(),
            ));
        }
        let Some(client) = form_value(form, "client_assertion") else {
            return Err(refuse(
                "invalid_client",
                "client_assertion is missing".into(),
            ));
        };
        self.check_assertion(validator, client, &peer.0)
            .map_err(|e| refuse("invalid_client", e))?;
        if peer.ura().is_none() && !self.has(Fault::AcceptTokenOfAnotherClient) {
            return Err(refuse(
                "invalid_client",
                "the client certificate names no organisation (no URA in its subject serialNumber)"
                    .into(),
            ));
        }
        if self.has(Fault::IgnoreAuthorizationAssertion) {
            // The weakness: whatever `assertion` holds, the certificate's organisation acts.
            return Ok(peer.ura().unwrap_or_default());
        }
        let Some(authorization) = form_value(form, "assertion") else {
            return Err(refuse(
                "invalid_request",
                "the authorization assertion (`assertion`) is missing".into(),
            ));
        };
        let claims = self
            .check_assertion(validator, authorization, &peer.0)
            .map_err(|e| refuse("invalid_grant", format!("the authorization assertion: {e}")))?;
        Ok(claims.sub)
    }

    /// True when the referral of this notification was cancelled.
    fn is_cancelled(&self, identifier: &str) -> bool {
        lock(&self.inbox)
            .iter()
            .any(|e| e.notification == identifier && e.status == InboxStatus::Cancelled)
    }
}

/// A running reference node.
pub struct ReferenceNode {
    state: Arc<NodeState>,
    server: PlainServer,
    _crl_refresh: Option<crate::transport::TaskGuard>,
}

/// Endpoints of a running node, as a target file would name them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEndpoints {
    pub notification_base: String,
    pub token_url: String,
    pub inspect_url: String,
    pub control_url: String,
    /// FHIR base of the sending role.
    pub sender_fhir_base: String,
    /// Token endpoint of the sending role.
    pub sender_token_url: String,
}

impl ReferenceNode {
    /// Starts the node on `config.listen`, serving HTTPS with mutual TLS.
    pub async fn start(mut config: NodeConfig) -> std::io::Result<Self> {
        // A letter nobody references: reading it must be refused (the
        // read-unreferenced-binary probe).
        let _ = config.records.add(serde_json::json!({
            "resourceType": "Binary",
            "id": "unreferenced-letter",
            "contentType": "application/pdf",
            "content": "JVBERi0xLjQKJSVFT0YK"
        }));
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        drop(listener);
        let base = format!("https://{addr}");
        let leniency = crate::transport::Leniency {
            foreign_ca: config.faults.contains(&Fault::AcceptForeignCa),
            revoked: config.faults.contains(&Fault::IgnoreRevocation),
            expired: config.faults.contains(&Fault::AcceptExpiredCertificate),
        };
        config.tls = config
            .tls
            .lenient(leniency)
            .map_err(std::io::Error::other)?;
        let tls = config.tls.clone();
        let log = log::NodeLog::new(
            config.log_to_stderr,
            !config.faults.contains(&Fault::LogPatientData),
        );
        let http = http_client(&ClientSettings {
            tls: Some(tls.client.clone()),
            ..ClientSettings::default()
        })
        .map_err(std::io::Error::other)?;
        let identity = &tls.client_identity;
        let signer = CertificateSigner::new(&identity.key, &identity.chain, None)
            .map_err(std::io::Error::other)?;
        let mut validator =
            AssertionValidator::new(&format!("{base}/token"), 5, tls.chains.clone());
        let mut pull_validator =
            AssertionValidator::new(&format!("{base}/sender/token"), 5, tls.chains.clone());
        if let Some(dir) = &config.state_dir {
            std::fs::create_dir_all(dir)?;
            validator = validator.remember_in(&dir.join("notification-token-jti.jsonl"))?;
            pull_validator = pull_validator.remember_in(&dir.join("pull-token-jti.jsonl"))?;
        }
        let state = Arc::new(NodeState {
            validator,
            pull_validator,
            sender: sender::SenderState::default(),
            signer,
            config,
            base: base.clone(),
            senders: Mutex::new(HashMap::new()),
            inbox: Mutex::new(Vec::new()),
            notifications: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            log,
            http,
            sbvz_http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .no_proxy()
                .build()
                .map_err(std::io::Error::other)?,
        });
        let server = PlainServer::start(
            addr,
            receiver::router(state.clone()),
            Some(tls.server.clone()),
        )
        .await?;
        let logged = state.clone();
        let crl_refresh = state.config.crl_refresh.and_then(|every| {
            tls.refresh_crls_every(every, move |problem| logged.log.write(&problem))
        });
        Ok(Self {
            state,
            server,
            _crl_refresh: crl_refresh,
        })
    }

    /// The node's endpoints.
    pub fn endpoints(&self) -> NodeEndpoints {
        let base = &self.state.base;
        NodeEndpoints {
            notification_base: format!("{base}/fhir"),
            token_url: format!("{base}/token"),
            inspect_url: format!("{base}/inspect"),
            control_url: format!("{base}/control"),
            sender_fhir_base: format!("{base}/sender/fhir"),
            sender_token_url: format!("{base}/sender/token"),
        }
    }

    /// Where the node listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Tells the node where a sender organisation serves its BgZ (bilateral configuration).
    pub fn register_sender(&self, endpoints: SenderEndpoints) {
        lock(&self.state.senders).insert(endpoints.ura.clone(), endpoints);
    }

    /// A copy of the inbox.
    pub fn inbox(&self) -> Vec<InboxEntry> {
        lock(&self.state.inbox).clone()
    }

    /// Serves until the process ends.
    pub async fn wait(self) {
        self.server.wait().await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

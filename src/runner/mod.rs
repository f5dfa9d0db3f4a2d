//! The runner: sets up the target and the simulators, executes the planned cases
//! concurrently with timeouts, judges them with the checks, and emits [`RunEvent`]s that
//! every reporter consumes. An interrupted run still finishes its event stream, so reports
//! are written for what ran.

mod case;
mod checks;
pub mod confirm;
pub mod fixtures;
pub mod outcome;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::journal::{ExchangeKind, Journal, Party};
use crate::node::faults::FaultSet;
use crate::node::{NodeConfig, ReferenceNode, SenderEndpoints};
use crate::pki::{Organisation, PkiError, PkiSpec};
use crate::protocol::token::CertificateSigner;
use crate::redact::{Redactor, Sensitive};
use crate::scenario::plan::{Plan, PlannedCase};
use crate::scenario::target::{Target, TargetKind};
use crate::sim::sender::SenderSim;
use crate::transport::{
    ClientSettings, Outgoing, RecordingClient, ServerVerification, TlsError, TlsSettings,
};
use fixtures::Fixtures;
use outcome::{CaseOutcome, ExchangeRecord, RunEvent, Verdict, redact_outcome};

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub jobs: usize,
    pub fail_fast: bool,
    /// Faults to switch on in the embedded reference node.
    pub node_faults: FaultSet,
    /// Keep patient data and secrets in reports (local debugging only).
    pub unredacted: bool,
    /// Answers to confirm steps from an answers file.
    pub answers: Vec<crate::scenario::answers::AnswerRule>,
    /// Prompt the tester for confirm steps no answer covers.
    pub interactive: bool,
    /// Whether the harness checks the target's server certificate (`--insecure-skip-verify`
    /// turns it off for diagnostics; the reports say so).
    pub server_verification: ServerVerification,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            jobs: 4,
            fail_fast: false,
            node_faults: FaultSet::new(),
            unredacted: false,
            answers: Vec::new(),
            interactive: false,
            server_verification: ServerVerification::Verify,
        }
    }
}

/// Why a run could not start. A run that starts always ends with events, never with this.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("failed to load a patient fixture: {0}")]
    Fixture(String),
    #[error("failed to start {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to build an HTTP client: {0}")]
    Client(String),
    #[error("failed to register the harness's sender with the target's control API: {0}")]
    Control(String),
    #[error("failed to set up mutual TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    TlsMaterial(#[from] TlsError),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The endpoints the harness uses on the target.
#[derive(Debug, Clone)]
pub(crate) struct TargetEndpoints {
    pub notification_base: String,
    pub token_url: String,
    pub inspect_url: Option<String>,
    /// The reference node's control API: triggers sends and cancels.
    pub control_url: Option<String>,
    /// The target's FHIR base and token endpoint as a sender.
    pub sender_fhir_base: Option<String>,
    pub sender_token_url: Option<String>,
}

/// Everything cases share.
pub(crate) struct RunContext {
    pub target: Target,
    pub endpoints: TargetEndpoints,
    pub sender: SenderSim,
    pub receiver: crate::sim::receiver::ReceiverSim,
    /// The SBV-Z double the target verifies unknown patients at.
    pub sbvz: crate::sim::sbvz::SbvzDouble,
    /// One case at a time per BSN teaches the SBV-Z double: its answers are per BSN.
    pub sbvz_turns: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub to_target: RecordingClient,
    /// The harness as receiver, pulling from the target.
    pub as_receiver: RecordingClient,
    pub inspector: RecordingClient,
    pub journal: Arc<Journal>,
    pub fixtures: Fixtures,
    pub confirmations: confirm::Confirmations,
    /// Signs the harness's client assertions with its client certificate's key.
    pub signer: CertificateSigner,
    /// The client certificates the certificate probes present.
    pub probe_identities: ProbeIdentities,
    /// Settings of the harness's clients (timeouts), for the probes' own clients.
    pub client_settings: ClientSettings,
    /// Keeps the embedded node alive for the run.
    _node: Option<ReferenceNode>,
    /// Re-reads the CRLs of the harness's servers during a long run.
    _crl_refresh: Option<crate::transport::TaskGuard>,
}

/// A client identity a certificate probe presents: TLS settings with its certificate, and a
/// signer with its key for the client assertion.
pub(crate) struct ProbeIdentity {
    pub tls: crate::transport::ClientTls,
    pub signer: CertificateSigner,
}

/// The probes' client identities; a missing one means its probe does not run.
#[derive(Default)]
pub(crate) struct ProbeIdentities {
    pub foreign_ca: Option<ProbeIdentity>,
    pub expired: Option<ProbeIdentity>,
    pub revoked: Option<ProbeIdentity>,
    pub other_organisation: Option<ProbeIdentity>,
}

impl ProbeIdentities {
    fn load(
        certificates: &crate::scenario::target::ProbeCertificates,
        harness: &TlsSettings,
    ) -> Result<Self, SetupError> {
        let own_ura = harness.client_identity.ura();
        let one = |name: &str, pair: &Option<crate::scenario::target::CertAndKey>| {
            let Some(pair) = pair else { return Ok(None) };
            let named = |problem: String| {
                SetupError::Tls(format!(
                    "a probe certificate, tls.probe-certificates.{name} (cert {}, key {}): {problem}",
                    pair.cert, pair.key
                ))
            };
            let identity = crate::transport::load_identity(&pair.cert, &pair.key)
                .map_err(|e| named(e.to_string()))?;
            // A certificate of the harness's own organisation proves nothing about tokens
            // of another one, and would fail a node that binds them correctly.
            if name == "other-organisation"
                && let Some(ura) = identity.ura().filter(|ura| own_ura.as_ref() == Some(ura))
            {
                return Err(named(format!(
                    "it carries URA {ura}, the same as the harness's own client certificate; the probe needs a certificate of another organisation"
                )));
            }
            let signer = CertificateSigner::new(&identity.key, &identity.chain, None)
                .map_err(|e| named(format!("{}: {e}", pair.key)))?;
            let tls = harness
                .client_presenting(&identity)
                .map_err(|e| named(describe_identity_problem(&e.to_string())))?;
            Ok(Some(ProbeIdentity { tls, signer }))
        };
        Ok(Self {
            foreign_ca: one("foreign-ca", &certificates.foreign_ca)?,
            expired: one("expired", &certificates.expired)?,
            revoked: one("revoked", &certificates.revoked)?,
            other_organisation: one("other-organisation", &certificates.other_organisation)?,
        })
    }
}

/// Plain words for the rustls errors a mismatched or broken identity gives.
fn describe_identity_problem(problem: &str) -> String {
    if problem.contains("KeyMismatch") {
        format!("the key does not belong to the certificate ({problem})")
    } else if problem.contains("BadEncoding") {
        format!("the certificate is no valid DER X.509 certificate ({problem})")
    } else {
        problem.to_owned()
    }
}

/// Prepares the target and simulators for `plan`.
pub async fn prepare(
    plan: &Plan,
    target: &Target,
    root: &std::path::Path,
    options: &RunOptions,
) -> Result<Arc<RunContextHandle>, SetupError> {
    let journal = Arc::new(Journal::new());
    let patient_keys: BTreeSet<&str> = plan
        .cases
        .iter()
        .map(|c| c.scenario.patient.as_str())
        .chain(target.known_patients.iter().map(String::as_str))
        .collect();
    let fixtures = Fixtures::load(root, patient_keys).map_err(SetupError::Fixture)?;
    let (harness_tls, node_tls, probe_identities) = tls_settings(target, options)?;
    // An embedded run's PKI is gone once loaded; a remote target's CRLs are re-read.
    let crl_refresh = (target.kind == TargetKind::Remote)
        .then(|| {
            harness_tls.refresh_crls_every(target.protocol.crl_refresh, |problem| {
                eprintln!("warning: {problem}");
            })
        })
        .flatten();
    let identity = &harness_tls.client_identity;
    let signer = CertificateSigner::new(&identity.key, &identity.chain, None)
        .map_err(|e| SetupError::Tls(e.to_string()))?;

    let sender = SenderSim::start(
        target.simulator_listen,
        target.simulator_public_base.clone(),
        journal.clone(),
        &harness_tls,
    )
    .await
    .map_err(|source| SetupError::Bind {
        what: "the simulated sender",
        addr: target.simulator_listen,
        source,
    })?;

    let settings = ClientSettings {
        timeout: target.exchange_timeout,
        tls: Some(harness_tls.client.clone()),
        ..ClientSettings::default()
    };
    let client = |from, to| {
        RecordingClient::new(&settings, journal.clone(), from, to)
            .map_err(|e| SetupError::Client(e.to_string()))
    };
    let to_target = client(Party::HarnessSender, Party::Target)?;
    let as_receiver = client(Party::HarnessReceiver, Party::Target)?;
    let sbvz_listen = target.sbvz_listen;
    let sbvz = crate::sim::sbvz::SbvzDouble::start_with_tls(
        sbvz_listen,
        journal.clone(),
        Some(harness_tls.server.clone()),
    )
    .await
    .map_err(|source| SetupError::Bind {
        what: "the SBV-Z double",
        addr: sbvz_listen,
        source,
    })?;
    let receiver_listen = SocketAddr::new(target.simulator_listen.ip(), 0);
    let receiver = crate::sim::receiver::ReceiverSim::start(
        receiver_listen,
        target.receiver_public_base.clone(),
        journal.clone(),
        &harness_tls,
    )
    .await
    .map_err(|source| SetupError::Bind {
        what: "the simulated receiver",
        addr: receiver_listen,
        source,
    })?;
    let inspector = client(Party::HarnessInspector, Party::Target)?;

    let counterparts: BTreeSet<&str> = plan
        .cases
        .iter()
        .map(|c| c.counterpart.ura.as_str())
        .collect();
    let sender_endpoints = |ura: &str| SenderEndpoints {
        ura: ura.to_owned(),
        fhir_base: sender.fhir_base(),
        token_url: sender.token_url(),
    };

    let (endpoints, node) = match (target.kind, node_tls) {
        (TargetKind::Embedded, Some(node_tls)) => {
            let mut register = crate::fhir::store::ResourceStore::default();
            for key in &target.known_patients {
                if let Some(fixture) = fixtures.patients.get(key) {
                    register
                        .extend(&fixture.store)
                        .map_err(SetupError::Fixture)?;
                }
            }
            // As sender the node has every loaded patient's record; as receiver it knows
            // only the target's known patients.
            let mut records = crate::fhir::store::ResourceStore::default();
            for fixture in fixtures.patients.values() {
                records
                    .extend(&fixture.store)
                    .map_err(SetupError::Fixture)?;
            }
            let listen = SocketAddr::from(([127, 0, 0, 1], 0));
            let node = ReferenceNode::start(NodeConfig {
                name: target.name.clone(),
                ura: target.ura.clone(),
                departments: target.departments.clone(),
                register,
                records,
                faults: options.node_faults.clone(),
                listen,
                queries: target.protocol.query_options(),
                sbvz_url: Some(sbvz.base_url()),
                tls: node_tls,
                token_lifetime: target.protocol.access_token_lifetime,
                log_to_stderr: false,
                // Its PKI lives only as long as loading it: nothing to re-read.
                crl_refresh: None,
                operator: harness_tls.client_identity.ura(),
                // It lives as long as the run.
                state_dir: None,
            })
            .await
            .map_err(|source| SetupError::Bind {
                what: "the reference node",
                addr: listen,
                source,
            })?;
            for ura in &counterparts {
                node.register_sender(sender_endpoints(ura));
            }
            let e = node.endpoints();
            let endpoints = TargetEndpoints {
                notification_base: e.notification_base,
                token_url: e.token_url,
                inspect_url: Some(e.inspect_url),
                control_url: Some(e.control_url),
                sender_fhir_base: Some(e.sender_fhir_base),
                sender_token_url: Some(e.sender_token_url),
            };
            (endpoints, Some(node))
        }
        (TargetKind::Embedded, None) => {
            return Err(SetupError::Tls(
                "the embedded node has no TLS settings".to_owned(),
            ));
        }
        (TargetKind::Remote, _) => {
            let doc = target
                .endpoints
                .clone()
                .ok_or_else(|| SetupError::Control("the target has no endpoints".to_owned()))?;
            let urls = [Some(&doc.notification), Some(&doc.token)];
            let urls = urls.into_iter().chain([
                doc.inspect.as_ref(),
                doc.control.as_ref(),
                target.simulator_public_base.as_ref(),
            ]);
            if let Some(plain) = urls.flatten().find(|u| !u.starts_with("https://")) {
                return Err(SetupError::Tls(format!(
                    "{}: `{plain}` is not an https URL; the agreement requires mutual TLS on every connection",
                    target.file
                )));
            }
            if let Some(control) = &doc.control {
                for ura in &counterparts {
                    let body = serde_json::to_vec(&sender_endpoints(ura)).unwrap_or_default();
                    let request = Outgoing::with_body(
                        reqwest::Method::POST,
                        format!("{}/senders", control.trim_end_matches('/')),
                        "application/json",
                        body,
                        ExchangeKind::Control,
                    );
                    let exchange = inspector
                        .send(request)
                        .await
                        .map_err(|e| SetupError::Control(e.to_string()))?;
                    let status = exchange.response.map(|r| r.status).unwrap_or(0);
                    if !(200..300).contains(&status) {
                        return Err(SetupError::Control(format!(
                            "{control}/senders answered {status}"
                        )));
                    }
                }
            }
            let endpoints = TargetEndpoints {
                notification_base: doc.notification.trim_end_matches('/').to_owned(),
                token_url: doc.token,
                inspect_url: doc.inspect.map(|u| u.trim_end_matches('/').to_owned()),
                control_url: doc.control.map(|u| u.trim_end_matches('/').to_owned()),
                sender_fhir_base: doc
                    .sender_fhir_base
                    .map(|u| u.trim_end_matches('/').to_owned()),
                sender_token_url: doc.sender_token,
            };
            (endpoints, None)
        }
    };

    Ok(Arc::new(RunContextHandle {
        context: RunContext {
            target: target.clone(),
            endpoints,
            sender,
            receiver,
            sbvz,
            sbvz_turns: std::sync::Mutex::new(HashMap::new()),
            to_target,
            as_receiver,
            inspector,
            journal,
            fixtures,
            confirmations: confirm::Confirmations::new(
                options.answers.clone(),
                options.interactive,
            ),
            signer,
            probe_identities,
            client_settings: settings.clone(),
            _node: node,
            _crl_refresh: crl_refresh,
        },
        redactor: if options.unredacted {
            Redactor::disabled()
        } else {
            Redactor::new()
        },
    }))
}

/// The harness's TLS settings, and for an embedded run the node's as well. An embedded run
/// makes a fresh test PKI in a temporary folder, removed as soon as it is loaded; a remote
/// target names the harness's material in its `tls` section.
fn tls_settings(
    target: &Target,
    options: &RunOptions,
) -> Result<(TlsSettings, Option<TlsSettings>, ProbeIdentities), SetupError> {
    match target.kind {
        TargetKind::Embedded => {
            let dir = tempfile::Builder::new()
                .prefix("bgz-harness-pki-")
                .tempdir()
                .map_err(|e| SetupError::Tls(format!("failed to make a temporary folder: {e}")))?;
            let spec = PkiSpec {
                node: Organisation {
                    name: target.organisation_name.clone(),
                    ura: target.ura.clone(),
                },
                ..PkiSpec::default()
            };
            let pki = crate::pki::generate(&spec, dir.path())?;
            let versions = target.protocol.tls_versions;
            let harness = TlsSettings::load(&pki.harness_tls(), options.server_verification)?
                .with_versions(versions)?;
            let node = TlsSettings::load(&pki.node_tls(), ServerVerification::Verify)?
                .with_versions(versions)?;
            let probes = ProbeIdentities::load(&pki.probe_certificates(), &harness)?;
            Ok((harness, Some(node), probes))
        }
        TargetKind::Remote => {
            let files = target.tls.as_ref().ok_or_else(|| {
                SetupError::Tls(format!(
                    "{}: a remote target needs a tls section (ca, client-cert, client-key): the agreement requires mutual TLS and signed client assertions; `bgz-harness certs` makes test material",
                    target.file
                ))
            })?;
            let harness = TlsSettings::load(files, options.server_verification)?
                .with_versions(target.protocol.tls_versions)?;
            let probes = ProbeIdentities::load(&target.probe_certificates, &harness)?;
            Ok((harness, None, probes))
        }
    }
}

/// The prepared run: context plus the redactor every outcome passes.
pub struct RunContextHandle {
    pub(crate) context: RunContext,
    redactor: Redactor,
}

impl RunContextHandle {
    /// True when reports keep patient data.
    pub fn unredacted(&self) -> bool {
        !self.redactor.is_enabled()
    }
}

/// Runs every case of `plan`, sending events to `events`. Stops early when `stop` resolves
/// (Ctrl-C) or, with fail-fast, after the first failed case; cases that did not finish are
/// reported as errors or not run, and the stream always ends with `Finished`.
pub async fn run(
    handle: Arc<RunContextHandle>,
    plan: &Plan,
    options: &RunOptions,
    events: mpsc::UnboundedSender<RunEvent>,
    stop: impl std::future::Future<Output = ()>,
) -> Verdict {
    learn_fixture_secrets(&handle);
    let _ = events.send(RunEvent::Started {
        cases: plan.cases.len(),
        phases: plan.phases.iter().map(|p| p.id.clone()).collect(),
    });

    let mut pending = plan
        .cases
        .iter()
        .cloned()
        .collect::<std::collections::VecDeque<_>>();
    let mut running: JoinSet<CaseOutcome> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, PlannedCase> = HashMap::new();
    let mut overall = Verdict::Pass;
    let (mut interrupted, mut stopped_by_failure) = (false, false);
    let jobs = options.jobs.max(1);
    tokio::pin!(stop);

    loop {
        while !(interrupted || stopped_by_failure) && running.len() < jobs {
            let Some(planned) = pending.pop_front() else {
                break;
            };
            let _ = events.send(RunEvent::CaseStarted {
                id: planned.id.clone(),
                name: planned.name.clone(),
            });
            let handle = handle.clone();
            let case = planned.clone();
            let task = running.spawn(async move { case::execute(&handle.context, &case).await });
            in_flight.insert(task.id(), planned);
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            joined = running.join_next_with_id() => {
                let Some(joined) = joined else { break };
                let outcome = match joined {
                    Ok((id, outcome)) => {
                        in_flight.remove(&id);
                        outcome
                    }
                    Err(error) => {
                        // A case task that panicked is reported as an error, never lost.
                        let Some(planned) = in_flight.remove(&error.id()) else { continue };
                        case::aborted(&handle.context, &planned, &format!("the case stopped unexpectedly: {error}"))
                    }
                };
                overall = overall.worst(outcome.verdict);
                if options.fail_fast && outcome.verdict >= Verdict::Error {
                    stopped_by_failure = true;
                }
                emit(&handle, &events, outcome);
            }
            () = &mut stop, if !interrupted => {
                interrupted = true;
                running.abort_all();
                while running.join_next().await.is_some() {}
                for (_, planned) in in_flight.drain() {
                    let outcome = case::aborted(&handle.context, &planned, "the run was interrupted while this case ran");
                    overall = overall.worst(outcome.verdict);
                    emit(&handle, &events, outcome);
                }
                break;
            }
        }
    }

    for planned in pending {
        let reason = if interrupted {
            "not run: the run was interrupted"
        } else {
            "not run: --fail-fast stopped the run after a failure"
        };
        overall = overall.worst(Verdict::NotRun);
        emit(&handle, &events, case::not_run(&planned, reason));
    }
    let _ = events.send(RunEvent::Finished { interrupted });
    overall
}

fn emit(
    handle: &RunContextHandle,
    events: &mpsc::UnboundedSender<RunEvent>,
    mut outcome: CaseOutcome,
) {
    let raw = handle.context.journal.for_case(&outcome.id);
    for exchange in &raw {
        learn_exchange_secrets(&handle.redactor, exchange);
    }
    outcome.exchanges = raw
        .iter()
        .map(|e| ExchangeRecord::from_exchange(e, &handle.redactor))
        .collect();
    let outcome = redact_outcome(outcome, &handle.redactor);
    let _ = events.send(RunEvent::CaseFinished(Box::new(outcome)));
}

fn learn_fixture_secrets(handle: &RunContextHandle) {
    for fixture in handle.context.fixtures.patients.values() {
        if let Some(patient) = fixture.patient() {
            handle.redactor.learn_json(patient);
        }
        handle.redactor.learn(Sensitive::Bsn, &fixture.scope.bsn);
    }
}

fn learn_exchange_secrets(redactor: &Redactor, exchange: &crate::journal::Exchange) {
    let bodies =
        std::iter::once(&exchange.request.body).chain(exchange.response.as_ref().map(|r| &r.body));
    for body in bodies {
        if let Some(json) = body.json() {
            redactor.learn_json(&json);
        } else if body
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
        {
            redactor.learn_form(&body.bytes);
        } else if let Some(text) = body.text().filter(|t| t.contains("CIBG.SBV")) {
            redactor.learn_sbvz_xml(&text);
        }
    }
    for (name, value) in &exchange.request.headers {
        if name.eq_ignore_ascii_case("authorization")
            && let Some(token) = value.strip_prefix("Bearer ")
        {
            redactor.learn(Sensitive::Token, token);
        }
    }
}

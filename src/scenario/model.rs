//! The scenario and phase models as written in YAML. Keys are kebab-case, unknown keys are
//! errors, and the step and check vocabularies are closed.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// Which role the target plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// The target is the receiver; the harness sends.
    TargetReceives,
    /// The target is the sender; the harness receives.
    TargetSends,
}

/// A checklist case of protocol.md §10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChecklistCase {
    /// Patient known at both sides.
    K,
    /// Patient unknown at the receiver, registered after an SBV-Z check.
    U,
    /// The sender cancels the notification.
    X,
}

/// A scenario file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ScenarioDoc {
    pub id: Spanned<String>,
    pub title: String,
    /// The checklist case this scenario implements.
    pub case: ChecklistCase,
    /// Phases the scenario belongs to.
    pub phases: Vec<Spanned<String>>,
    pub direction: Direction,
    /// Fixture key under `fixtures/patients/`.
    pub patient: Spanned<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub steps: Vec<Spanned<StepDoc>>,
}

/// One step as written: exactly one action key plus optional checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StepDoc {
    pub name: Option<String>,
    pub notify: Option<NotifyArgs>,
    pub await_pull: Option<AwaitPullArgs>,
    pub confirm: Option<ConfirmArgs>,
    pub cancel: Option<CancelArgs>,
    pub trigger: Option<TriggerArgs>,
    pub await_notification: Option<WithinArgs>,
    pub pull: Option<PullArgs>,
    pub await_cancellation: Option<WithinArgs>,
    pub pull_after_cancel: Option<PullArgs>,
    pub probe: Option<ProbeArgs>,
    pub wait: Option<Spanned<String>>,
    #[serde(default)]
    pub checks: Vec<Spanned<CheckId>>,
}

/// How the referral letter is offered in the notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LetterOffer {
    /// `DocumentReference?status=current` as a query input.
    #[default]
    Query,
    /// `DocumentReference/{id}` as a read input.
    Read,
}

/// Arguments of `notify`: the harness sends a notification to the target.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NotifyArgs {
    #[serde(default)]
    pub letter: LetterOffer,
    /// Offer a workflow Task and ask the receiver to read it.
    #[serde(default = "yes")]
    pub workflow_task: bool,
    /// Matches per searchset page the simulated sender serves.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Hold the target's pull-token request until the case cancels, so the cancellation
    /// arrives before any data can be pulled.
    #[serde(default)]
    pub hold_token: bool,
    /// What the SBV-Z double answers about the patient (unknown-patient cases).
    #[serde(default)]
    pub sbvz: Option<SbvzAnswer>,
}

/// The SBV-Z double's answer for a case's patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SbvzAnswer {
    /// `G`: found; the receiver may register the patient.
    Found,
    /// `F` 23001: the receiver must not register.
    NotFound,
    /// `G` with a date of death: the receiver must not register silently.
    Deceased,
    /// `A` with deviating data: the receiver must not register silently.
    Deviations,
}

/// What a `trigger` step makes the target do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerAction {
    /// Send a notification for the case's patient to the harness's receiver.
    Send,
    /// Cancel the notification it sent.
    Cancel,
}

/// Arguments of `trigger`: make the target send or cancel.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TriggerArgs {
    pub action: TriggerAction,
    /// How the target should offer the letter (reference node only).
    #[serde(default)]
    pub letter: LetterOffer,
    /// What the tester is asked when the target has no control API.
    #[serde(default)]
    pub prompt: Option<String>,
}

/// Arguments of steps that wait for the target.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WithinArgs {
    #[serde(default)]
    pub within: Option<Spanned<String>>,
}

/// A negative security request: the target must refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeAttack {
    /// Notify without an access token.
    NotifyWithoutToken,
    /// Notify with a token the target never issued.
    NotifyWithInvalidToken,
    /// Ask the target's token endpoint with an assertion for another audience.
    TokenWrongAudience,
    /// Ask the target's token endpoint twice with the same assertion (`jti`).
    TokenReplayedAssertion,
    /// Ask the target's token endpoint with an assertion that expired 180 s ago.
    TokenExpiredAssertion,
    /// Notify about a BSN that fails the 11-proef.
    NotifyInvalidBsn,
    /// Notify a department the target does not have.
    NotifyUnknownDepartment,
    /// Search the target's BgZ without a token.
    SearchWithoutToken,
    /// Search with a token the target never issued.
    SearchWithInvalidToken,
    /// Search for another patient's BSN with the pull token.
    SearchOtherPatient,
    /// Run a search the notification did not offer.
    SearchOutsideNotifiedSet,
    /// Read a Binary no offered resource references.
    ReadUnreferencedBinary,
    /// Ask for a pull token with an assertion for another audience.
    PullTokenWrongAudience,
    /// Ask for a pull token twice with the same assertion.
    PullTokenReplayedAssertion,
    /// Notify with a token the target issued, once it has expired.
    NotifyWithExpiredToken,
    /// Notify with a token the target issued to the harness, over a connection authenticated
    /// as another organisation.
    NotifyWithTokenOfAnotherClient,
    /// Ask the target's token endpoint over TLS with a client certificate from a foreign CA.
    ClientCertForeignCa,
    /// The same with an expired client certificate.
    ClientCertExpired,
    /// The same with a revoked client certificate.
    ClientCertRevoked,
    /// Search with a pull token the target issued, once it has expired.
    SearchWithExpiredToken,
    /// Search with the harness's pull token over a connection authenticated as another
    /// organisation.
    SearchWithTokenOfAnotherClient,
    /// After the target cancelled: search with the pull token it issued before.
    SearchAfterCancel,
    /// After the target cancelled: ask for a new pull token with the authorization base.
    TokenAfterCancel,
    /// Ask the target's token endpoint without the authorization assertion.
    TokenWithoutAuthorizationAssertion,
    /// Notify on behalf of another care provider than the token was granted for.
    NotifyOnBehalfOfAnother,
    /// Redeem the authorization base for another care provider than the notified one.
    PullTokenForAnotherCareProvider,
}

impl ProbeAttack {
    /// The direction whose target the attack is aimed at.
    pub fn direction(self) -> Direction {
        match self {
            ProbeAttack::NotifyWithoutToken
            | ProbeAttack::NotifyWithInvalidToken
            | ProbeAttack::TokenWrongAudience
            | ProbeAttack::TokenReplayedAssertion
            | ProbeAttack::TokenExpiredAssertion
            | ProbeAttack::NotifyInvalidBsn
            | ProbeAttack::NotifyUnknownDepartment
            | ProbeAttack::NotifyWithExpiredToken
            | ProbeAttack::NotifyWithTokenOfAnotherClient
            | ProbeAttack::ClientCertForeignCa
            | ProbeAttack::ClientCertExpired
            | ProbeAttack::ClientCertRevoked
            | ProbeAttack::TokenWithoutAuthorizationAssertion
            | ProbeAttack::NotifyOnBehalfOfAnother => Direction::TargetReceives,
            _ => Direction::TargetSends,
        }
    }
}

/// Arguments of `probe`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProbeArgs {
    pub attack: ProbeAttack,
    /// Longest the probe may wait for a token to expire, e.g. `6m` (the expired-token
    /// probes; default 6 minutes).
    #[serde(default)]
    pub within: Option<Spanned<String>>,
}

/// Arguments of `pull` and `pull-after-cancel` (none yet).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PullArgs {}

/// Arguments of `cancel`: the harness cancels its notification.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CancelArgs {
    /// How long to watch the target after the cancellation, e.g. `2s`.
    #[serde(default)]
    pub observe: Option<Spanned<String>>,
}

fn yes() -> bool {
    true
}

fn default_page_size() -> usize {
    50
}

/// Arguments of `await-pull`: wait for the target to pull.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AwaitPullArgs {
    /// Longest wait for the pull to complete, e.g. `30s`.
    #[serde(default)]
    pub within: Option<Spanned<String>>,
    /// Silence after the last request that ends the wait early, e.g. `1s`.
    #[serde(default)]
    pub quiet: Option<Spanned<String>>,
}

/// Arguments of `confirm`: a fact only the target's side can confirm.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfirmArgs {
    /// The fact to confirm.
    pub fact: ConfirmFact,
    /// The question shown to a tester when no inspection API can answer it.
    pub prompt: String,
}

/// Facts a confirm step can establish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfirmFact {
    /// The referral is filed for the notified patient in the addressed department.
    ReferralFiled,
    /// The referral is marked cancelled and gone from the worklist.
    ReferralCancelled,
    /// The target verified the unknown patient's BSN at SBV-Z before registering (asked in
    /// production phases, where SBV-Z is real).
    SbvzChecked,
    /// The target's log holds no BSN, name or birth date of the patient (checklist TT-9).
    LogFreeOfPatientData,
}

impl ConfirmFact {
    /// The kebab-case name used in YAML, answers files and reports.
    pub fn name(self) -> &'static str {
        match self {
            ConfirmFact::ReferralFiled => "referral-filed",
            ConfirmFact::ReferralCancelled => "referral-cancelled",
            ConfirmFact::SbvzChecked => "sbvz-checked",
            ConfirmFact::LogFreeOfPatientData => "log-free-of-patient-data",
        }
    }
}

/// The named checks a step can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckId {
    /// The notification got `201 Created` with a `Location`.
    NotificationAccepted,
    /// The target requested a pull token carrying the notified authorization base.
    TokenCarriesAuthorizationBase,
    /// The target read the workflow Task it was asked to read.
    WorkflowTaskRead,
    /// The target ran every notified search.
    EveryNotifiedSearchRun,
    /// The target followed every `next` link it was given.
    EveryPageFetched,
    /// The target retrieved the letter's bytes, and stored them intact.
    LetterRetrievedIntact,
    /// The target accepted the cancellation (2xx).
    CancellationAccepted,
    /// After the cancellation the target started no new request and got no data.
    PullStopped,
    /// The target's notification follows every rule of protocol.md §2.
    NotificationValid,
    /// The target issued a pull token for its authorization base.
    PullTokenIssued,
    /// The target served the workflow Task it offered.
    WorkflowTaskServed,
    /// The target answered every notified search and read with 200.
    SearchesAnswered,
    /// Every searchset and resource the target served follows protocol.md §6.
    BundlesConform,
    /// The target served the letter intact, as a FHIR Binary and as a raw PDF.
    LetterServedIntact,
    /// The target's cancellation is a valid conditional update to `cancelled`.
    CancellationValid,
    /// After cancelling, the target refuses new tokens and earlier ones.
    PullRefusedAfterCancel,
    /// The target refused the probe as protocol.md says (status and OperationOutcome).
    ProbeRefused,
    /// The target asked SBV-Z about the notified BSN before it registered the patient.
    SbvzCheckedBeforeRegistration,
    /// The target registered the unknown patient only when SBV-Z verified the BSN.
    RegistrationFollowsSbvz,
    /// The Patient the target sent lets the receiver verify the BSN at SBV-Z (search path 2).
    PatientVerifiable,
}

impl CheckId {
    /// The kebab-case name used in YAML and reports.
    pub fn name(self) -> &'static str {
        match self {
            CheckId::NotificationAccepted => "notification-accepted",
            CheckId::TokenCarriesAuthorizationBase => "token-carries-authorization-base",
            CheckId::WorkflowTaskRead => "workflow-task-read",
            CheckId::EveryNotifiedSearchRun => "every-notified-search-run",
            CheckId::EveryPageFetched => "every-page-fetched",
            CheckId::LetterRetrievedIntact => "letter-retrieved-intact",
            CheckId::CancellationAccepted => "cancellation-accepted",
            CheckId::PullStopped => "pull-stopped",
            CheckId::NotificationValid => "notification-valid",
            CheckId::PullTokenIssued => "pull-token-issued",
            CheckId::WorkflowTaskServed => "workflow-task-served",
            CheckId::SearchesAnswered => "searches-answered",
            CheckId::BundlesConform => "bundles-conform",
            CheckId::LetterServedIntact => "letter-served-intact",
            CheckId::CancellationValid => "cancellation-valid",
            CheckId::PullRefusedAfterCancel => "pull-refused-after-cancel",
            CheckId::ProbeRefused => "probe-refused",
            CheckId::SbvzCheckedBeforeRegistration => "sbvz-checked-before-registration",
            CheckId::RegistrationFollowsSbvz => "registration-follows-sbvz",
            CheckId::PatientVerifiable => "patient-verifiable",
        }
    }

    /// The step kind this check belongs to.
    pub fn step_kind(self) -> StepKind {
        match self {
            CheckId::NotificationAccepted => StepKind::Notify,
            CheckId::CancellationAccepted | CheckId::PullStopped => StepKind::Cancel,
            CheckId::NotificationValid => StepKind::AwaitNotification,
            CheckId::PullTokenIssued
            | CheckId::WorkflowTaskServed
            | CheckId::SearchesAnswered
            | CheckId::BundlesConform
            | CheckId::LetterServedIntact
            | CheckId::PatientVerifiable => StepKind::Pull,
            CheckId::CancellationValid => StepKind::AwaitCancellation,
            CheckId::PullRefusedAfterCancel => StepKind::PullAfterCancel,
            CheckId::ProbeRefused => StepKind::Probe,
            _ => StepKind::AwaitPull,
        }
    }
}

/// The kinds of step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Notify,
    AwaitPull,
    Confirm,
    Cancel,
    Trigger,
    AwaitNotification,
    Pull,
    AwaitCancellation,
    PullAfterCancel,
    Probe,
    Wait,
}

impl StepKind {
    /// The direction the step belongs to; `None` for steps of both.
    pub fn direction(self) -> Option<Direction> {
        match self {
            StepKind::Notify | StepKind::AwaitPull | StepKind::Cancel => {
                Some(Direction::TargetReceives)
            }
            StepKind::Trigger
            | StepKind::AwaitNotification
            | StepKind::Pull
            | StepKind::AwaitCancellation
            | StepKind::PullAfterCancel => Some(Direction::TargetSends),
            StepKind::Confirm | StepKind::Wait | StepKind::Probe => None,
        }
    }

    /// The YAML key.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Notify => "notify",
            StepKind::AwaitPull => "await-pull",
            StepKind::Confirm => "confirm",
            StepKind::Cancel => "cancel",
            StepKind::Trigger => "trigger",
            StepKind::AwaitNotification => "await-notification",
            StepKind::Pull => "pull",
            StepKind::AwaitCancellation => "await-cancellation",
            StepKind::PullAfterCancel => "pull-after-cancel",
            StepKind::Probe => "probe",
            StepKind::Wait => "wait",
        }
    }
}

/// A validated step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: String,
    pub action: Action,
    pub checks: Vec<CheckId>,
}

/// What a step does.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Notify(NotifySettings),
    AwaitPull {
        within: Duration,
        quiet: Duration,
    },
    Confirm {
        fact: ConfirmFact,
        prompt: String,
    },
    Cancel {
        observe: Duration,
    },
    Trigger {
        action: TriggerAction,
        letter: LetterOffer,
        prompt: Option<String>,
    },
    AwaitNotification {
        within: Duration,
    },
    Pull,
    AwaitCancellation {
        within: Duration,
    },
    PullAfterCancel,
    Probe {
        attack: ProbeAttack,
        /// Longest wait for a token to expire.
        within: Duration,
    },
    Wait(Duration),
}

/// Validated `notify` settings.
#[derive(Debug, Clone, Serialize)]
pub struct NotifySettings {
    pub letter: LetterOffer,
    pub workflow_task: bool,
    pub page_size: usize,
    pub hold_token: bool,
    pub sbvz: Option<SbvzAnswer>,
}

impl Action {
    /// The step kind.
    pub fn kind(&self) -> StepKind {
        match self {
            Action::Notify(_) => StepKind::Notify,
            Action::AwaitPull { .. } => StepKind::AwaitPull,
            Action::Confirm { .. } => StepKind::Confirm,
            Action::Cancel { .. } => StepKind::Cancel,
            Action::Trigger { .. } => StepKind::Trigger,
            Action::AwaitNotification { .. } => StepKind::AwaitNotification,
            Action::Pull => StepKind::Pull,
            Action::AwaitCancellation { .. } => StepKind::AwaitCancellation,
            Action::PullAfterCancel => StepKind::PullAfterCancel,
            Action::Probe { .. } => StepKind::Probe,
            Action::Wait(_) => StepKind::Wait,
        }
    }
}

/// A validated scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub id: String,
    pub title: String,
    pub case: ChecklistCase,
    pub phases: Vec<String>,
    pub direction: Direction,
    pub patient: String,
    pub tags: Vec<String>,
    pub steps: Vec<Step>,
    /// The file it came from.
    pub file: String,
}

/// Where a phase runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Environment {
    /// The Twiin test and validation environment: SBV-Z is simulated.
    Test,
    /// Production: SBV-Z is real, its checks are confirm steps.
    Production,
}

/// A phase file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PhaseDoc {
    pub id: Spanned<String>,
    pub title: String,
    pub environment: Environment,
    /// Checklist cases the phase requires; each needs a scenario in this phase.
    pub cases: Vec<Spanned<ChecklistCase>>,
    pub matrix: MatrixDoc,
    #[serde(default)]
    pub attestations: Vec<Attestation>,
}

/// The phase's matrix as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MatrixDoc {
    /// Organisations the harness plays.
    pub counterparts: Vec<CounterpartDoc>,
    /// Which of the target's departments take part: `first`, `all`, or a list of ids.
    #[serde(default)]
    pub target_departments: Option<Spanned<DepartmentSelection>>,
}

/// Which target departments a phase uses.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum DepartmentSelection {
    /// `first` or `all`.
    Keyword(String),
    /// Explicit department ids.
    List(Vec<String>),
}

/// An organisation the harness plays in a phase.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CounterpartDoc {
    pub name: String,
    pub ura: String,
    pub departments: Vec<String>,
}

/// An organisational checklist item carried into the report.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Attestation {
    pub id: String,
    pub text: String,
}

/// A validated phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub id: String,
    pub title: String,
    pub environment: Environment,
    pub cases: Vec<ChecklistCase>,
    pub counterparts: Vec<CounterpartDoc>,
    pub target_departments: DepartmentSelection,
    pub attestations: Vec<Attestation>,
    pub file: String,
}

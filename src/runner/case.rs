//! Executing one case: its steps in order, each with its checks. A step that cannot be
//! carried out stops the case; the steps after it are reported as not run.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::RunContext;
use super::checks::{self, Evidence, Sent, diagnostics_suffix, notification_accepted};
use super::fixtures::PatientFixture;
use super::outcome::{CaseOutcome, CheckOutcome, StepOutcome, Verdict};
use crate::fhir::catalogue::notified_queries;
use crate::fhir::media::FHIR_JSON;
use crate::journal::ExchangeKind;
use crate::node::{InboxEntry, InboxStatus};
use crate::protocol::IDENTIFIER_SYSTEM;
use crate::protocol::notification::{
    Ident, NotificationSpec, build_cancellation, build_notification, build_workflow_task,
    new_identifier,
};
use crate::protocol::token::{
    AssertionClaims, TokenResponse, encode_jwt, opaque_token, token_request_form, unix_now,
};
use crate::scenario::model::{Action, CheckId, ConfirmFact, LetterOffer, NotifySettings, Step};
use crate::scenario::plan::PlannedCase;
use crate::sim::sender::Share;
use crate::transport::Outgoing;

mod probes;
mod sends;

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The target's inbox entry for a notification with the inspection exchange, `None` when
/// there is no inspection API or no entry; an error when the inspection API failed.
type Inspected = Result<Option<(InboxEntry, String)>, String>;

/// How long a case must be without new exchanges before await-pull judges it.
const SETTLE: Duration = Duration::from_millis(100);

/// Longest a cancel step waits for the target to ask for a held token.
const HELD_TOKEN_WAIT: Duration = Duration::from_secs(10);

/// What earlier steps of a case left for later ones.
#[derive(Default)]
struct CaseState {
    sent: Option<Sent>,
    share: Option<Arc<Share>>,
    /// target-sends: the receiving slot and its notification base.
    slot: Option<(Arc<crate::sim::receiver::Slot>, String)>,
    received: Option<sends::Received>,
    /// Held while this case owns the SBV-Z double's answer for its patient's BSN.
    sbvz_turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    pull_token: Option<String>,
    /// When that token was due for renewal (it runs out a second later).
    pull_token_renew_at: Option<Instant>,
    inbox: Option<(InboxEntry, String)>,
}

struct CaseRun<'a> {
    ctx: &'a RunContext,
    planned: &'a PlannedCase,
    fixture: Arc<PatientFixture>,
    state: CaseState,
    /// The pull token while a pull runs, renewed before it expires.
    pull_session: tokio::sync::Mutex<Option<sends::PullSession>>,
}

/// Runs every step of the case and returns its (not yet redacted) outcome.
pub(super) async fn execute(ctx: &RunContext, planned: &PlannedCase) -> CaseOutcome {
    let started = Instant::now();
    let scenario = &planned.scenario;
    let Some(fixture) = ctx.fixtures.patients.get(&scenario.patient).cloned() else {
        return single_problem(
            planned,
            Verdict::Error,
            "setup",
            format!("the patient fixture `{}` was not loaded", scenario.patient),
        );
    };

    let mut run = CaseRun {
        ctx,
        planned,
        fixture,
        state: CaseState::default(),
        pull_session: tokio::sync::Mutex::new(None),
    };
    let mut steps = Vec::new();
    let mut halted: Option<String> = None;
    for step in &scenario.steps {
        if let Some(reason) = &halted {
            steps.push(skipped(step, reason));
            continue;
        }
        let step_started = Instant::now();
        let mut outcome = run.step(step).await;
        outcome.duration_ms = millis(step_started.elapsed());
        let stops = outcome.verdict == Verdict::Error
            || (matches!(step.action, Action::Notify(_)) && run.state.sent.is_none());
        if stops {
            halted = Some(format!(
                "not run: step `{}` could not be completed",
                step.name
            ));
        }
        steps.push(outcome);
    }
    finish(planned, steps, started)
}

fn finish(planned: &PlannedCase, steps: Vec<StepOutcome>, started: Instant) -> CaseOutcome {
    let verdict = steps.iter().fold(Verdict::Pass, |v, s| v.worst(s.verdict));
    let scenario = &planned.scenario;
    CaseOutcome {
        id: planned.id.clone(),
        name: planned.name.clone(),
        phase: planned.phase.clone(),
        scenario: scenario.id.clone(),
        title: scenario.title.clone(),
        checklist_case: format!("{:?}", scenario.case),
        direction: serde_json::to_value(scenario.direction)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        counterpart: format!(
            "{} ({}) department {}",
            planned.counterpart.name, planned.counterpart.ura, planned.counterpart.department
        ),
        target_department: format!(
            "{} ({})",
            planned.target_department.name, planned.target_department.id
        ),
        verdict,
        steps,
        exchanges: Vec::new(),
        duration_ms: millis(started.elapsed()),
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn single_problem(
    planned: &PlannedCase,
    verdict: Verdict,
    name: &str,
    problem: String,
) -> CaseOutcome {
    let step = StepOutcome {
        name: name.to_owned(),
        kind: name.to_owned(),
        verdict,
        checks: Vec::new(),
        problem: Some(problem),
        exchanges: Vec::new(),
        duration_ms: 0,
    };
    finish(planned, vec![step], Instant::now())
}

/// A case that was cut off (interrupted run, failed task).
pub(super) fn aborted(_ctx: &RunContext, planned: &PlannedCase, reason: &str) -> CaseOutcome {
    single_problem(planned, Verdict::Error, "interrupted", reason.to_owned())
}

/// A case that never started.
pub(super) fn not_run(planned: &PlannedCase, reason: &str) -> CaseOutcome {
    let steps = planned
        .scenario
        .steps
        .iter()
        .map(|s| skipped(s, reason))
        .collect();
    finish(planned, steps, Instant::now())
}

fn skipped(step: &Step, reason: &str) -> StepOutcome {
    StepOutcome {
        name: step.name.clone(),
        kind: step.action.kind().name().to_owned(),
        verdict: Verdict::NotRun,
        checks: Vec::new(),
        problem: Some(reason.to_owned()),
        exchanges: Vec::new(),
        duration_ms: 0,
    }
}

/// A step that could not be judged: `problem` says why, `exchanges` show it.
fn step_error(step: &Step, problem: String, exchanges: Vec<String>) -> StepOutcome {
    step_outcome(step, Verdict::Error, Vec::new(), Some(problem), exchanges)
}

fn step_outcome(
    step: &Step,
    verdict: Verdict,
    checks: Vec<CheckOutcome>,
    problem: Option<String>,
    exchanges: Vec<String>,
) -> StepOutcome {
    let verdict = checks.iter().fold(verdict, |v, c| v.worst(c.verdict));
    StepOutcome {
        name: step.name.clone(),
        kind: step.action.kind().name().to_owned(),
        verdict,
        checks,
        problem,
        exchanges,
        duration_ms: 0,
    }
}

impl CaseRun<'_> {
    async fn step(&mut self, step: &Step) -> StepOutcome {
        match &step.action {
            Action::Notify(settings) => self.notify(step, settings).await,
            Action::AwaitPull { within, quiet } => self.await_pull(step, *within, *quiet).await,
            Action::Confirm { fact, prompt } => self.confirm(step, *fact, prompt).await,
            Action::Cancel { observe } => self.cancel(step, *observe).await,
            Action::Trigger {
                action,
                letter,
                prompt,
            } => {
                self.trigger(step, *action, *letter, prompt.as_deref())
                    .await
            }
            Action::AwaitNotification { within } => self.await_notification(step, *within).await,
            Action::Pull => self.pull(step).await,
            Action::AwaitCancellation { within } => self.await_cancellation(step, *within).await,
            Action::PullAfterCancel => self.pull_after_cancel(step).await,
            Action::Probe { attack, within } => self.probe(step, *attack, *within).await,
            Action::Wait(duration) => {
                tokio::time::sleep(*duration).await;
                step_outcome(step, Verdict::Pass, Vec::new(), None, Vec::new())
            }
        }
    }

    fn case_id(&self) -> Option<&str> {
        Some(self.planned.id.as_str())
    }

    /// Tells the SBV-Z double what to answer about this case's patient.
    fn teach_sbvz(&self, answer: crate::scenario::model::SbvzAnswer) -> Result<(), String> {
        use crate::scenario::model::SbvzAnswer;
        use crate::sim::sbvz::{SbvzCase, SbvzPerson};
        let patient = self.fixture.patient().ok_or("the fixture has no Patient")?;
        let vraag = crate::protocol::sbvz::Vraag::from_patient(patient, &self.fixture.scope.bsn)
            .map_err(|e| format!("the fixture Patient cannot be asked at SBV-Z: {e}"))?;
        let case = match answer {
            SbvzAnswer::Found => SbvzCase::Found,
            SbvzAnswer::NotFound => SbvzCase::NotFound,
            SbvzAnswer::Deceased => SbvzCase::Deceased {
                datum_overlijden: "20261101".to_owned(),
            },
            SbvzAnswer::Deviations => SbvzCase::found_with_deviations(),
        };
        let person = SbvzPerson {
            persoon: vraag.persoon,
            adres: vraag.adres,
        };
        self.ctx
            .sbvz
            .register(&self.fixture.scope.bsn, case, person, &self.planned.id);
        Ok(())
    }

    /// The SBV-Z double's calls about this case's patient.
    fn sbvz_calls(&self) -> Vec<crate::sim::sbvz::SbvzCall> {
        self.ctx
            .sbvz
            .calls_for(&self.fixture.scope.bsn)
            .into_iter()
            .filter(|c| c.case_id.as_deref().is_none_or(|id| id == self.planned.id))
            .collect()
    }

    /// A FHIR JSON request of this case to the target, with the bearer token when given.
    fn fhir_request(
        &self,
        method: reqwest::Method,
        url: String,
        body: &Value,
        kind: ExchangeKind,
        token: Option<&str>,
    ) -> Outgoing {
        let mut request = Outgoing::with_body(method, url, FHIR_JSON, body.to_string(), kind)
            .header("accept", "application/fhir+json")
            .for_case(self.case_id());
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request
    }

    /// Signs an assertion with the harness's client key.
    fn sign(&self, claims: &AssertionClaims) -> Result<String, String> {
        encode_jwt(claims, &self.ctx.signer)
            .map_err(|e| format!("failed to sign an assertion: {e}"))
    }

    /// Gets a notification token from the target's authorization server.
    async fn notification_token(&self) -> Result<(String, String), (Verdict, String, String)> {
        let token_url = &self.ctx.endpoints.token_url;
        let now = unix_now();
        let client_id = format!("urn:bgz-harness:sender:{}", self.planned.counterpart.ura);
        let client = AssertionClaims::new(&client_id, token_url, now, 60);
        let authorization = AssertionClaims::new(&self.planned.counterpart.ura, token_url, now, 60);
        let sign = |claims| {
            encode_jwt(claims, &self.ctx.signer).map_err(|e| {
                let problem = format!("failed to sign the token request's assertions: {e}");
                (Verdict::Error, problem, String::new())
            })
        };
        let form = token_request_form(&sign(&client)?, Some(&sign(&authorization)?), None);
        let request = Outgoing::with_body(
            reqwest::Method::POST,
            token_url.clone(),
            "application/x-www-form-urlencoded",
            form,
            ExchangeKind::TokenRequest,
        )
        .header("accept", "application/json")
        .for_case(self.case_id());
        let exchange = match self.ctx.to_target.send(request).await {
            Ok(exchange) => exchange,
            Err(e) => return Err((Verdict::Error, e.to_string(), String::new())),
        };
        let id = exchange.id.clone();
        let response = exchange.response.unwrap_or_default();
        if response.status != 200 {
            let body = String::from_utf8_lossy(&response.body.bytes)
                .chars()
                .take(300)
                .collect::<String>();
            return Err((
                Verdict::Fail,
                format!(
                    "the target's token endpoint refused a notification token with {}: {body}",
                    response.status
                ),
                id,
            ));
        }
        let content_type =
            crate::fhir::media::essence(response.header("content-type").unwrap_or("none"));
        if content_type != "application/json" {
            let problem = format!(
                "the token response is labelled `{content_type}`; RFC 6749 §5.1 requires application/json"
            );
            return Err((Verdict::Fail, problem, id));
        }
        match serde_json::from_slice::<TokenResponse>(&response.body.bytes) {
            Ok(token) if token.token_type.eq_ignore_ascii_case("bearer") => {
                Ok((token.access_token, id))
            }
            Ok(token) => Err((
                Verdict::Fail,
                format!("the token type is `{}`, expected Bearer", token.token_type),
                id,
            )),
            Err(e) => Err((
                Verdict::Fail,
                format!("the token response is not RFC 6749 JSON: {e}"),
                id,
            )),
        }
    }

    async fn notify(&mut self, step: &Step, settings: &NotifySettings) -> StepOutcome {
        // Cases that check one BSN at SBV-Z take turns; the turn comes before the token,
        // which must not run out while the case waits.
        if settings.sbvz.is_some() {
            let turn = {
                let mut turns = lock(&self.ctx.sbvz_turns);
                turns
                    .entry(self.fixture.scope.bsn.clone())
                    .or_default()
                    .clone()
            };
            self.state.sbvz_turn = Some(turn.lock_owned().await);
        }
        if let Some(answer) = settings.sbvz
            && let Err(problem) = self.teach_sbvz(answer)
        {
            return step_error(step, problem, Vec::new());
        }
        let (token, token_exchange) = match self.notification_token().await {
            Ok(token) => token,
            Err((verdict, problem, id)) => {
                let ids = if id.is_empty() { vec![] } else { vec![id] };
                return step_outcome(step, verdict, Vec::new(), Some(problem), ids);
            }
        };

        let fixture = &self.fixture;
        let authorization_base = opaque_token("ab");
        let now = time::OffsetDateTime::now_utc();
        let format = &time::format_description::well_known::Rfc3339;
        let authored_on = now.format(format).unwrap_or_default();
        let period_end = (now + time::Duration::days(7))
            .format(format)
            .unwrap_or_default();
        let workflow_task_id = settings
            .workflow_task
            .then(|| format!("wf-{}", uuid::Uuid::new_v4().simple()));
        let workflow_task = workflow_task_id.as_ref().map(|id| {
            let focus = fixture
                .referral_request
                .clone()
                .unwrap_or_else(|| "ReferralRequest/unknown".to_owned());
            build_workflow_task(id, &fixture.scope.patient_ref, &focus, &period_end)
        });
        let mut queries =
            notified_queries(&fixture.scope.bsn, self.ctx.target.protocol.query_options());
        let mut reads = Vec::new();
        if settings.letter == LetterOffer::Read {
            queries.retain(|q| q.section != "ReferralLetter");
            if let Some(letter) = &fixture.letter {
                reads.push(letter.document_reference.clone());
            }
        }
        let share = self.ctx.sender.publish(Share {
            case_id: self.planned.id.clone(),
            authorization_base: authorization_base.clone(),
            store: fixture.store.clone(),
            scope: fixture.scope.clone(),
            reachable: fixture.store.reachable_from_patient(&fixture.scope),
            workflow_task,
            page_size: settings.page_size,
            revoked: AtomicBool::new(false),
            hold_token: settings.hold_token,
            // Exactly the searches the Task offers: a letter offered by read is not one.
            notified: queries
                .iter()
                .filter_map(|q| crate::fhir::search::SearchUrl::parse_relative(&q.query).ok())
                .collect(),
            released: tokio::sync::watch::Sender::new(false),
            token_waiting: AtomicBool::new(false),
        });
        self.state.share = Some(share);

        let identifier = new_identifier();
        let spec = NotificationSpec {
            identifier: identifier.clone(),
            group_identifier: new_identifier(),
            workflow_task_id: workflow_task_id.clone(),
            bsn: fixture.scope.bsn.clone(),
            requester_agent: Ident::new(
                IDENTIFIER_SYSTEM,
                &format!("urn:oid:2.999.{}", self.planned.counterpart.ura),
            ),
            requester_agent_display: format!("bgz-harness for {}", self.planned.counterpart.name),
            on_behalf_of: Ident::new(crate::fhir::URA_SYSTEM, &self.planned.counterpart.ura),
            owner: Some(self.planned.target_department.identifier.clone()),
            authored_on,
            period_end,
            authorization_base: Some(authorization_base.clone()),
            queries: queries.clone(),
            reads: reads.clone(),
        };
        let task = build_notification(&spec);
        let url = format!("{}/Task", self.ctx.endpoints.notification_base);
        let at_us = self.ctx.journal.now_us();
        let request = self.fhir_request(
            reqwest::Method::POST,
            url,
            &task,
            ExchangeKind::Notification,
            Some(&token),
        );
        let exchange = match self.ctx.to_target.send(request).await {
            Ok(exchange) => exchange,
            Err(e) => {
                return step_error(step, e.to_string(), vec![token_exchange]);
            }
        };
        let status = exchange.response.as_ref().map(|r| r.status).unwrap_or(0);
        let delivered = (200..300).contains(&status);
        if delivered {
            self.state.sent = Some(Sent {
                sbvz: settings.sbvz,
                identifier,
                authorization_base,
                queries,
                reads,
                workflow_task_id,
                at_us,
            });
        }
        let checks = step
            .checks
            .iter()
            .map(|_| notification_accepted(&exchange))
            .collect();
        let problem = (!delivered).then(|| {
            format!(
                "the target refused the notification with {status}{}",
                diagnostics_suffix(&exchange)
            )
        });
        let verdict = if delivered {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
        step_outcome(
            step,
            verdict,
            checks,
            problem,
            vec![token_exchange, exchange.id],
        )
    }

    async fn await_pull(&mut self, step: &Step, within: Duration, quiet: Duration) -> StepOutcome {
        let Some(sent) = self.state.sent.clone() else {
            return step_error(
                step,
                "no notification was delivered before await-pull".to_owned(),
                Vec::new(),
            );
        };
        let case_id = self.planned.id.clone();
        let journal = &self.ctx.journal;
        let deadline = Instant::now() + within;
        let fhir_base = self.ctx.sender.fhir_base();
        let production =
            self.planned.environment == crate::scenario::model::Environment::Production;

        // Wait until every listed wire check passes, the target falls quiet, or time is up.
        // Judge only once the case has settled for a moment: judging parses every body, and
        // doing it on every arrival costs more than the exchanges themselves.
        let mut seen = (usize::MAX, usize::MAX);
        let mut judged = seen;
        let mut last_change = Instant::now();
        loop {
            let counts = (
                journal.count_for_case(&case_id),
                journal.count_unattributed(),
            );
            if counts != seen {
                seen = counts;
                last_change = Instant::now();
            }
            if seen != judged && last_change.elapsed() >= SETTLE {
                judged = seen;
                let sbvz_calls = self.sbvz_calls();
                let exchanges = journal.for_case(&case_id);
                let unattributed = journal.unattributed_since(sent.at_us);
                let evidence = Evidence {
                    exchanges: &exchanges,
                    unattributed: &unattributed,
                    sent: &sent,
                    fhir_base: &fhir_base,
                    letter: self.fixture.letter.as_ref(),
                    inbox: None,
                    inbox_exchange: None,
                    sbvz_calls: &sbvz_calls,
                    production,
                };
                // The registration can only be judged from the inbox, after the wait.
                let all_pass = step
                    .checks
                    .iter()
                    .filter(|c| **c != CheckId::RegistrationFollowsSbvz)
                    .all(|c| checks::evaluate(*c, &evidence).verdict == Verdict::Pass);
                // Once SBV-Z was asked, the double's answer for this BSN is free for the next case.
                if !sbvz_calls.is_empty() {
                    self.state.sbvz_turn = None;
                }
                if all_pass {
                    break;
                }
            }
            let silent_for = journal
                .now_us()
                .saturating_sub(journal.last_activity_us().max(sent.at_us));
            let pulled_something = seen.0 > 2 || !journal.unattributed_since(sent.at_us).is_empty();
            if Instant::now() >= deadline || (pulled_something && silent_for >= micros(quiet)) {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            journal.wait_for_change(remaining.min(SETTLE)).await;
        }

        let (inbox, inspection_problem) = match self.inspect_inbox(&sent, deadline).await {
            Ok(inbox) => (inbox, None),
            Err(problem) => (None, Some(problem)),
        };
        if let Some(entry) = &inbox {
            self.state.inbox = Some(entry.clone());
        }
        let exchanges = journal.for_case(&case_id);
        let unattributed = journal.unattributed_since(sent.at_us);
        let sbvz_calls = self.sbvz_calls();
        let evidence = Evidence {
            exchanges: &exchanges,
            unattributed: &unattributed,
            sent: &sent,
            fhir_base: &fhir_base,
            letter: self.fixture.letter.as_ref(),
            inbox: inbox.as_ref().map(|(e, _)| e),
            inbox_exchange: inbox.as_ref().map(|(_, id)| id.as_str()),
            sbvz_calls: &sbvz_calls,
            production,
        };
        let mut results: Vec<CheckOutcome> = step
            .checks
            .iter()
            .map(|c| checks::evaluate(*c, &evidence))
            .collect();
        // In production SBV-Z is real: when the target's own record cannot show the check,
        // the tester (or the answers file) confirms it.
        for result in &mut results {
            if result.check == CheckId::SbvzCheckedBeforeRegistration.name()
                && result.verdict == Verdict::NotRun
            {
                let fact = ConfirmFact::SbvzChecked.name();
                let prompt = "Did the target verify the patient's BSN at SBV-Z before registering the patient?";
                let answer = match self.ctx.confirmations.answer_for(&self.planned.id, fact) {
                    Some(answer) => Some(answer),
                    None => self.ctx.confirmations.ask(&self.planned.name, prompt).await,
                };
                if let Some(answer) = answer {
                    result.verdict = if answer.confirmed {
                        Verdict::Pass
                    } else {
                        Verdict::Fail
                    };
                    result.actual = if answer.confirmed {
                        "confirmed".to_owned()
                    } else {
                        "denied".to_owned()
                    };
                    result.message = format!("{} by {}", result.actual, answer.source);
                }
            }
        }
        let shown = exchanges
            .iter()
            .filter(|e| e.at_us >= sent.at_us)
            .map(|e| e.id.clone())
            .collect();
        // A broken inspection API is the harness's blind spot, not the target's failure.
        let verdict = if inspection_problem.is_some() {
            Verdict::Error
        } else {
            Verdict::Pass
        };
        step_outcome(step, verdict, results, inspection_problem, shown)
    }

    async fn cancel(&mut self, step: &Step, observe: Duration) -> StepOutcome {
        let Some(sent) = self.state.sent.clone() else {
            return step_error(
                step,
                "no notification was delivered before cancel".to_owned(),
                Vec::new(),
            );
        };
        // With a held token, cancel only once the target is waiting for its token, so the
        // cancellation certainly comes before any data.
        if let Some(share) = self.state.share.as_ref().filter(|s| s.hold_token) {
            let deadline = Instant::now() + HELD_TOKEN_WAIT;
            while !share
                .token_waiting
                .load(std::sync::atomic::Ordering::SeqCst)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // The sender revokes the authorization base first, then tells the receiver.
        self.ctx.sender.revoke(&sent.authorization_base);
        let cancelled_at = self.ctx.journal.now_us();

        let (token, token_exchange) = match self.notification_token().await {
            Ok(token) => token,
            Err((verdict, problem, id)) => {
                let ids = if id.is_empty() { vec![] } else { vec![id] };
                return step_outcome(step, verdict, Vec::new(), Some(problem), ids);
            }
        };
        let identifier = format!("{}|{}", sent.identifier.system, sent.identifier.value);
        let url = format!(
            "{}/Task?identifier={}",
            self.ctx.endpoints.notification_base,
            crate::fhir::search::encode(&identifier)
        );
        let body = build_cancellation(&sent.identifier, &self.fixture.scope.bsn);
        let request = self.fhir_request(
            reqwest::Method::PUT,
            url,
            &body,
            ExchangeKind::Cancellation,
            Some(&token),
        );
        let exchange = match self.ctx.to_target.send(request).await {
            Ok(exchange) => exchange,
            Err(e) => {
                return step_error(step, e.to_string(), vec![token_exchange]);
            }
        };

        tokio::time::sleep(observe).await;
        let exchanges = self.ctx.journal.for_case(&self.planned.id);
        let results = step
            .checks
            .iter()
            .map(|check| match check {
                CheckId::CancellationAccepted => checks::cancellation_accepted(&exchange),
                _ => checks::pull_stopped(&exchanges, cancelled_at, &exchange),
            })
            .collect();
        step_outcome(
            step,
            Verdict::Pass,
            results,
            None,
            vec![token_exchange, exchange.id],
        )
    }

    /// Reads the target's inbox entry for the notification once the target has finished
    /// pulling, when the target has an inspection API.
    async fn inspect_inbox(&self, sent: &Sent, deadline: Instant) -> Inspected {
        self.inspect_inbox_until(sent, deadline, |e| e.status != InboxStatus::Pulling)
            .await
    }

    /// Polls the inbox until the entry for the notification satisfies `settled` or the
    /// deadline passes; returns the last entry seen with its inspection exchange.
    async fn inspect_inbox_until(
        &self,
        sent: &Sent,
        deadline: Instant,
        settled: impl Fn(&InboxEntry) -> bool,
    ) -> Inspected {
        let Some(inspect) = self.ctx.endpoints.inspect_url.as_ref() else {
            return Ok(None);
        };
        let deadline = deadline.max(Instant::now() + Duration::from_secs(2));
        loop {
            let filter = crate::fhir::search::encode(&sent.identifier.value);
            let request = Outgoing::get(
                format!("{inspect}/inbox?notification={filter}"),
                ExchangeKind::Inspection,
            )
            .for_case(self.case_id());
            let exchange = self
                .ctx
                .inspector
                .send(request)
                .await
                .map_err(|e| format!("the inspection API failed: {e}"))?;
            let status = exchange.response.as_ref().map_or(0, |r| r.status);
            let body: Option<Value> = exchange.response.as_ref().and_then(|r| r.body.json());
            let Some(listed) = body
                .as_ref()
                .and_then(|b| b["entries"].as_array())
                .filter(|_| status == 200)
            else {
                return Err(format!(
                    "the inspection API answered {status} without an inbox ({})",
                    exchange.id
                ));
            };
            let entry = listed
                .iter()
                .filter_map(|e| serde_json::from_value::<InboxEntry>(e.clone()).ok())
                .find(|e| e.notification == sent.identifier.value);
            match entry {
                Some(entry) if settled(&entry) => {
                    return Ok(Some((entry, exchange.id)));
                }
                _ if Instant::now() >= deadline => return Ok(entry.map(|e| (e, exchange.id))),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn confirm(&mut self, step: &Step, fact: ConfirmFact, prompt: &str) -> StepOutcome {
        let Some(sent) = self.state.sent.clone() else {
            let problem = "no notification was delivered before confirm".to_owned();
            return step_outcome(step, Verdict::Error, Vec::new(), Some(problem), Vec::new());
        };
        if self.ctx.endpoints.inspect_url.is_none() {
            return self.confirm_by_person(step, fact, prompt).await;
        }
        let check = match fact {
            // Only a person can confirm a check at the real SBV-Z.
            ConfirmFact::SbvzChecked => return self.confirm_by_person(step, fact, prompt).await,
            ConfirmFact::LogFreeOfPatientData => match self.inspect_log().await {
                Ok(check) => check,
                Err(problem) => {
                    return step_error(step, problem, Vec::new());
                }
            },
            ConfirmFact::ReferralCancelled => {
                let deadline = Instant::now() + Duration::from_secs(3);
                let inbox = match self
                    .inspect_inbox_until(&sent, deadline, |e| e.status == InboxStatus::Cancelled)
                    .await
                {
                    Ok(inbox) => inbox,
                    Err(problem) => {
                        return step_error(step, problem, Vec::new());
                    }
                };
                checks::referral_cancelled(
                    inbox.as_ref().map(|(e, _)| e),
                    inbox.as_ref().map(|(_, id)| id.as_str()),
                )
            }
            ConfirmFact::ReferralFiled => {
                let inbox = match self.state.inbox.clone() {
                    Some(inbox) => Some(inbox),
                    None => {
                        let deadline = Instant::now() + Duration::from_secs(5);
                        match self.inspect_inbox(&sent, deadline).await {
                            Ok(inbox) => inbox,
                            Err(problem) => {
                                return step_error(step, problem, Vec::new());
                            }
                        }
                    }
                };
                checks::referral_filed(
                    inbox.as_ref().map(|(e, _)| e),
                    inbox.as_ref().map(|(_, id)| id.as_str()),
                    &self.fixture.scope.bsn,
                    &self.planned.target_department.id,
                )
            }
        };
        let shown = check.exchanges.clone();
        step_outcome(step, Verdict::Pass, vec![check], None, shown)
    }

    /// Reads the target's log through the inspection API and looks for the patient's BSN,
    /// family names and birth date in it.
    async fn inspect_log(&self) -> Result<crate::runner::outcome::CheckOutcome, String> {
        let inspect = self
            .ctx
            .endpoints
            .inspect_url
            .as_ref()
            .ok_or("the target has no inspection API")?;
        let request = Outgoing::get(format!("{inspect}/log"), ExchangeKind::Inspection)
            .for_case(self.case_id());
        let exchange = self
            .ctx
            .inspector
            .send(request)
            .await
            .map_err(|e| format!("the inspection API failed: {e}"))?;
        let response = exchange.response.clone().unwrap_or_default();
        if response.status != 200 {
            return Err(format!(
                "the inspection API answered {} without a log ({})",
                response.status, exchange.id
            ));
        }
        let log = response
            .body
            .text()
            .unwrap_or_else(|| String::from_utf8_lossy(&response.body.bytes).into_owned());
        let patient = self.fixture.store.get(&self.fixture.scope.patient_ref);
        Ok(checks::log_free_of_patient_data(
            &log,
            &self.fixture.scope.bsn,
            patient.map(|p| p.as_ref()),
            &exchange.id,
        ))
    }

    /// A confirm step on a target without an inspection API: answered from the answers
    /// file, or by the tester at the terminal, or not run.
    async fn confirm_by_person(&self, step: &Step, fact: ConfirmFact, prompt: &str) -> StepOutcome {
        let fact_name = fact.name();
        let answer = match self
            .ctx
            .confirmations
            .answer_for(&self.planned.id, fact_name)
        {
            Some(answer) => Some(answer),
            None => self.ctx.confirmations.ask(&self.planned.name, prompt).await,
        };
        let Some(answer) = answer else {
            let problem = "not run: the target has no inspection API, no answers file answers this step and nobody was at a terminal to answer".to_owned();
            return step_outcome(step, Verdict::NotRun, Vec::new(), Some(problem), Vec::new());
        };
        let (verdict, actual) = if answer.confirmed {
            (Verdict::Pass, "confirmed")
        } else {
            (Verdict::Fail, "denied")
        };
        let check = CheckOutcome {
            check: fact_name.to_owned(),
            verdict,
            expected: format!("confirmed: {prompt}"),
            actual: actual.to_owned(),
            message: format!(
                "{} by {}{}",
                actual,
                answer.source,
                answer.note.map(|n| format!(": {n}")).unwrap_or_default()
            ),
            exchanges: Vec::new(),
        };
        step_outcome(step, Verdict::Pass, vec![check], None, Vec::new())
    }
}

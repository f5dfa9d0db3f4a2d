//! Steps of the direction target-sends: the harness makes the target send (or cancel),
//! receives the notification as a compliant receiver, pulls the BgZ and the letter from
//! the target, and judges every answer.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::Digest;

use super::{CaseRun, step_error, step_outcome};
use crate::fhir::bundle::{entries, next_link};
use crate::fhir::catalogue::{section_of, section_profiles};
use crate::fhir::conformance::{Finding, SearchContext, Severity, check_resource, check_searchset};
use crate::fhir::search::SearchUrl;
use crate::fhir::store::{include_references, resource_key};
use crate::journal::{Exchange, ExchangeKind};
use crate::node::sender::{SendOutcome, SendRequest};
use crate::protocol::notification::{Ident, ReceivedNotification, read_notification};
use crate::protocol::token::{AssertionClaims, token_request_form, unix_now};
use crate::runner::outcome::{CheckOutcome, StepOutcome, Verdict};
use crate::scenario::model::{CheckId, LetterOffer, Step, TriggerAction};
use crate::transport::Outgoing;

/// Most pages the harness follows for one search.
const MAX_PAGES: usize = 100;

/// What the target sent.
#[derive(Debug, Clone)]
pub(super) struct Received {
    pub task: Value,
    pub parsed: Result<ReceivedNotification, Vec<String>>,
    pub exchange: Option<String>,
}

/// What the harness pulled, for the checks.
#[derive(Debug, Default, Clone)]
pub(super) struct Pulled {
    pub token: Option<String>,
    pub token_problem: Option<(String, Vec<String>)>,
    pub workflow: Option<Result<String, (String, Vec<String>)>>,
    /// Per notified query or read: its value, and the problem if it was not answered 200.
    pub answers: Vec<(String, Option<String>, Vec<String>)>,
    pub findings: Vec<(Finding, String)>,
    pub letter: Option<Result<String, (String, Vec<String>)>>,
    /// The harness, as receiver, verifying the unknown patient's BSN at SBV-Z.
    pub verification: Option<Result<String, (String, Vec<String>)>>,
    pub exchanges: Vec<String>,
}

fn department_identifier(ura: &str, department: &str) -> Ident {
    Ident::new(&format!("urn:oid:2.999.{ura}.1"), department)
}

fn check(
    check: CheckId,
    verdict: Verdict,
    expected: impl Into<String>,
    actual: impl Into<String>,
    message: impl Into<String>,
    exchanges: Vec<String>,
) -> CheckOutcome {
    CheckOutcome {
        check: check.name().to_owned(),
        verdict,
        expected: expected.into(),
        actual: actual.into(),
        message: message.into(),
        exchanges,
    }
}

impl CaseRun<'_> {
    pub(super) async fn trigger(
        &mut self,
        step: &Step,
        action: TriggerAction,
        letter: LetterOffer,
        prompt: Option<&str>,
    ) -> StepOutcome {
        let configured = match action {
            TriggerAction::Send => self.ctx.target.triggers.send.clone(),
            TriggerAction::Cancel => self.ctx.target.triggers.cancel.clone(),
        };
        if let Some(trigger) = configured {
            return self.run_trigger(step, action, &trigger).await;
        }
        let Some(control) = self.ctx.endpoints.control_url.clone() else {
            let text = prompt.unwrap_or("Make the target do this now, then answer y.");
            let question = match action {
                TriggerAction::Send => format!(
                    "{text} (patient fixture `{}`, receiver {})",
                    self.fixture.key,
                    self.ctx.receiver.plain_notification_base()
                ),
                TriggerAction::Cancel => text.to_owned(),
            };
            if action == TriggerAction::Send && self.state.slot.is_none() {
                let (slot, base) = self
                    .ctx
                    .receiver
                    .open_slot(&self.planned.id, &self.fixture.scope.bsn);
                self.state.slot = Some((slot, base));
            }
            return match self.ctx.confirmations.ask(&self.planned.name, &question).await {
                Some(answer) if answer.confirmed => step_outcome(step, Verdict::Pass, Vec::new(), None, Vec::new()),
                _ => step_outcome(step, Verdict::NotRun, Vec::new(), Some("not run: the target has no control API and nobody triggered it at a terminal".to_owned()), Vec::new()),
            };
        };

        let (path, body) = match action {
            TriggerAction::Send => {
                let (slot, base) = self
                    .ctx
                    .receiver
                    .open_slot(&self.planned.id, &self.fixture.scope.bsn);
                self.state.slot = Some((slot, base.clone()));
                let request = SendRequest {
                    bsn: self.fixture.scope.bsn.clone(),
                    notification_base: base,
                    token_url: self.ctx.receiver.token_url(),
                    receiver_ura: self.planned.counterpart.ura.clone(),
                    owner: Some(department_identifier(
                        &self.planned.counterpart.ura,
                        &self.planned.counterpart.department,
                    )),
                    letter_as_read: letter == LetterOffer::Read,
                };
                ("send", serde_json::to_vec(&request).unwrap_or_default())
            }
            TriggerAction::Cancel => {
                let Some(identifier) = self
                    .state
                    .received
                    .as_ref()
                    .and_then(|r| r.task["identifier"][0]["value"].as_str().map(str::to_owned))
                else {
                    return step_outcome(
                        step,
                        Verdict::Error,
                        Vec::new(),
                        Some(
                            "no notification was received, so there is nothing to cancel"
                                .to_owned(),
                        ),
                        Vec::new(),
                    );
                };
                (
                    "cancel",
                    json!({ "identifier": identifier }).to_string().into_bytes(),
                )
            }
        };
        let request = Outgoing::with_body(
            reqwest::Method::POST,
            format!("{}/{path}", control.trim_end_matches('/')),
            "application/json",
            body,
            ExchangeKind::Control,
        )
        .for_case(Some(&self.planned.id));
        let exchange = match self.ctx.inspector.send(request).await {
            Ok(exchange) => exchange,
            Err(e) => {
                return step_error(step, e.to_string(), Vec::new());
            }
        };
        let response = exchange.response.clone().unwrap_or_default();
        let outcome: Option<SendOutcome> = serde_json::from_slice(&response.body.bytes).ok();
        if response.status != 200 || outcome.is_none() {
            let body = String::from_utf8_lossy(&response.body.bytes)
                .chars()
                .take(300)
                .collect::<String>();
            return step_outcome(
                step,
                Verdict::Fail,
                Vec::new(),
                Some(format!(
                    "the target's control API answered {}: {body}",
                    response.status
                )),
                vec![exchange.id],
            );
        }
        step_outcome(step, Verdict::Pass, Vec::new(), None, vec![exchange.id])
    }

    /// Runs a trigger from the target file: a shell command or an HTTP call.
    async fn run_trigger(
        &mut self,
        step: &Step,
        action: TriggerAction,
        trigger: &crate::scenario::target::Trigger,
    ) -> StepOutcome {
        use crate::scenario::target::Trigger;
        if action == TriggerAction::Send && self.state.slot.is_none() {
            let (slot, base) = self
                .ctx
                .receiver
                .open_slot(&self.planned.id, &self.fixture.scope.bsn);
            self.state.slot = Some((slot, base));
        }
        let identifier = self
            .state
            .received
            .as_ref()
            .and_then(|r| r.task["identifier"][0]["value"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let notification_base = self
            .state
            .slot
            .as_ref()
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        let fill = |text: &str| {
            text.replace("{bsn}", &self.fixture.scope.bsn)
                .replace("{notification-base}", &notification_base)
                .replace("{token-url}", &self.ctx.receiver.token_url())
                .replace("{department}", &self.planned.counterpart.department)
                .replace("{identifier}", &identifier)
        };
        let limit = self.ctx.target.exchange_timeout * 3;
        match trigger {
            Trigger::Command(command) => {
                let mut child = tokio::process::Command::new("sh");
                child
                    .arg("-c")
                    .arg(fill(command))
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true);
                match tokio::time::timeout(limit, child.output()).await {
                    Ok(Ok(output)) if output.status.success() => {
                        step_outcome(step, Verdict::Pass, Vec::new(), None, Vec::new())
                    }
                    Ok(Ok(output)) => {
                        let stderr: String = String::from_utf8_lossy(&output.stderr)
                            .chars()
                            .take(300)
                            .collect();
                        step_outcome(
                            step,
                            Verdict::Error,
                            Vec::new(),
                            Some(format!(
                                "the trigger command failed ({}): {stderr}",
                                output.status
                            )),
                            Vec::new(),
                        )
                    }
                    Ok(Err(e)) => step_error(
                        step,
                        format!("the trigger command could not start: {e}"),
                        Vec::new(),
                    ),
                    Err(_) => step_outcome(
                        step,
                        Verdict::Error,
                        Vec::new(),
                        Some(format!(
                            "the trigger command did not finish within {} s",
                            limit.as_secs()
                        )),
                        Vec::new(),
                    ),
                }
            }
            Trigger::Http { method, url, body } => {
                let method =
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
                let outgoing = match body {
                    Some(body) => Outgoing::with_body(
                        method,
                        fill(url),
                        "application/json",
                        fill(body),
                        ExchangeKind::Control,
                    ),
                    None => Outgoing {
                        method,
                        ..Outgoing::get(fill(url), ExchangeKind::Control)
                    },
                };
                match self
                    .ctx
                    .inspector
                    .send(outgoing.for_case(Some(&self.planned.id)))
                    .await
                {
                    Ok(exchange)
                        if exchange
                            .response
                            .as_ref()
                            .is_some_and(|r| (200..300).contains(&r.status)) =>
                    {
                        step_outcome(step, Verdict::Pass, Vec::new(), None, vec![exchange.id])
                    }
                    Ok(exchange) => {
                        let status = exchange.response.as_ref().map_or(0, |r| r.status);
                        step_error(
                            step,
                            format!("the trigger call answered {status}"),
                            vec![exchange.id],
                        )
                    }
                    Err(e) => step_error(step, e.to_string(), Vec::new()),
                }
            }
        }
    }

    /// Waits up to `within` until `arrived` finds something in the case's slot.
    async fn wait_for_slot<T>(
        &self,
        within: Duration,
        arrived: impl Fn() -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = arrived() {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            self.ctx
                .receiver
                .wait_for_arrival(remaining.min(Duration::from_millis(200)))
                .await;
        }
    }

    pub(super) async fn await_notification(
        &mut self,
        step: &Step,
        within: Duration,
    ) -> StepOutcome {
        let Some((slot, _)) = self.state.slot.clone() else {
            return step_error(
                step,
                "no trigger opened a slot for the notification".to_owned(),
                Vec::new(),
            );
        };
        let task = self
            .wait_for_slot(within, || super::lock(&slot.notifications).first().cloned())
            .await;
        let exchanges = self.ctx.journal.for_case(&self.planned.id);
        let notification_exchange = exchanges
            .iter()
            .find(|e| e.kind == ExchangeKind::Notification)
            .map(|e| e.id.clone());
        let Some(task) = task else {
            let results = step
                .checks
                .iter()
                .map(|c| {
                    check(
                        *c,
                        Verdict::Fail,
                        "a notification",
                        "none",
                        format!("no notification arrived within {} s", within.as_secs()),
                        vec![],
                    )
                })
                .collect();
            return step_outcome(step, Verdict::Pass, results, None, Vec::new());
        };
        let parsed = read_notification(&task);
        let received = Received {
            task,
            parsed,
            exchange: notification_exchange.clone(),
        };
        let results = step
            .checks
            .iter()
            .map(|_| self.notification_valid(&received))
            .collect();
        self.state.received = Some(received);
        step_outcome(
            step,
            Verdict::Pass,
            results,
            None,
            notification_exchange.into_iter().collect(),
        )
    }

    fn notification_valid(&self, received: &Received) -> CheckOutcome {
        let id = CheckId::NotificationValid;
        let shown: Vec<String> = received.exchange.iter().cloned().collect();
        let expected = "a Notification Task following protocol.md §2, for the triggered patient, addressed to the harness's department";
        let mut problems = match &received.parsed {
            Ok(_) => Vec::new(),
            Err(problems) => problems.clone(),
        };
        if let Ok(n) = &received.parsed {
            if n.bsn != self.fixture.scope.bsn {
                problems.push(format!(
                    "for.identifier names patient {} instead of {}",
                    n.bsn, self.fixture.scope.bsn
                ));
            }
            let wanted = department_identifier(
                &self.planned.counterpart.ura,
                &self.planned.counterpart.department,
            );
            if self.ctx.endpoints.control_url.is_some() && n.owner.as_ref() != Some(&wanted) {
                problems.push(format!(
                    "owner.identifier is {:?}, expected the addressed department {}|{}",
                    n.owner, wanted.system, wanted.value
                ));
            }
            if n.on_behalf_of.as_ref().map(|i| i.value.as_str())
                != Some(self.ctx.target.ura.as_str())
            {
                problems.push(format!(
                    "requester.onBehalfOf is {:?}, expected the target's URA {}",
                    n.on_behalf_of, self.ctx.target.ura
                ));
            }
            let letter = n
                .queries
                .iter()
                .any(|q| q.value.starts_with("DocumentReference"))
                || n.reads.iter().any(|r| r.starts_with("DocumentReference/"));
            if !letter {
                problems.push("no DocumentReference query or read input: every notification offers a referral letter".to_owned());
            }
        }
        if received.task["restriction"]["period"]["end"]
            .as_str()
            .is_none()
        {
            problems
                .push("restriction.period.end (the end of the pull window) is missing".to_owned());
        }
        if received.task["authoredOn"].as_str().is_none() {
            problems.push("authoredOn is missing".to_owned());
        }
        if problems.is_empty() {
            check(
                id,
                Verdict::Pass,
                expected,
                "valid",
                "the notification follows every rule",
                shown,
            )
        } else {
            check(
                id,
                Verdict::Fail,
                expected,
                format!("{} problem(s)", problems.len()),
                problems.join("; "),
                shown,
            )
        }
    }

    async fn as_receiver(&self, outgoing: Outgoing) -> Result<Exchange, String> {
        self.ctx
            .as_receiver
            .send(outgoing.for_case(Some(&self.planned.id)))
            .await
            .map_err(|e| e.to_string())
    }

    pub(super) async fn pull(&mut self, step: &Step) -> StepOutcome {
        let Some(Ok(notification)) = self.state.received.as_ref().map(|r| r.parsed.clone()) else {
            return step_error(
                step,
                "no valid notification was received, so there is nothing to pull".to_owned(),
                Vec::new(),
            );
        };
        let (Some(base), Some(token_url)) = (
            self.ctx.endpoints.sender_fhir_base.clone(),
            self.ctx.endpoints.sender_token_url.clone(),
        ) else {
            return step_outcome(step, Verdict::Error, Vec::new(), Some("the target file names no sender FHIR base or token endpoint (endpoints.sender-fhir-base, endpoints.sender-token)".to_owned()), Vec::new());
        };
        let mut pulled = Pulled::default();

        // 1. The pull token, presenting the authorization base.
        let form = match self
            .pull_token_form(&token_url, notification.authorization_base.as_deref())
        {
            Ok(form) => form,
            Err(problem) => {
                return step_outcome(step, Verdict::Error, Vec::new(), Some(problem), Vec::new());
            }
        };
        match self
            .as_receiver(Outgoing::with_body(
                reqwest::Method::POST,
                token_url.clone(),
                "application/x-www-form-urlencoded",
                form,
                ExchangeKind::TokenRequest,
            ))
            .await
        {
            Ok(exchange) => {
                pulled.exchanges.push(exchange.id.clone());
                let response = exchange.response.unwrap_or_default();
                let token = serde_json::from_slice::<Value>(&response.body.bytes)
                    .ok()
                    .and_then(|v| v["access_token"].as_str().map(str::to_owned));
                let content_type =
                    crate::fhir::media::essence(response.header("content-type").unwrap_or("none"));
                match (response.status, token) {
                    (200, Some(_)) if content_type != "application/json" => {
                        pulled.token_problem = Some((
                            format!(
                                "the token response is labelled `{content_type}`; RFC 6749 §5.1 requires application/json"
                            ),
                            vec![exchange.id],
                        ));
                    }
                    (200, Some(token)) => {
                        let body = response.body.json().unwrap_or(Value::Null);
                        match crate::protocol::token::expires_in(&body) {
                            Ok(lifetime) => {
                                *self.pull_session.lock().await = Some(PullSession::new(
                                    &token,
                                    lifetime,
                                    token_url.clone(),
                                    notification.authorization_base.clone(),
                                ));
                                pulled.token = Some(token);
                            }
                            Err(problem) => {
                                pulled.token_problem = Some((problem, vec![exchange.id]));
                            }
                        }
                    }
                    (status, _) => {
                        pulled.token_problem = Some((
                            format!("the token endpoint answered {status} without an access_token"),
                            vec![exchange.id],
                        ))
                    }
                }
            }
            Err(e) => pulled.token_problem = Some((e, vec![])),
        }

        if let Some(token) = pulled.token.clone() {
            let base = base.trim_end_matches('/').to_owned();
            // 2. The workflow Task, when asked.
            if notification.get_workflow_task
                && let Some(task_ref) = &notification.based_on
            {
                let result = self
                    .get(
                        &format!("{base}/{task_ref}"),
                        &token,
                        "application/fhir+json",
                        ExchangeKind::WorkflowTask,
                    )
                    .await;
                pulled.workflow = Some(match result {
                    Ok((exchange, 200, Some(task))) if task["resourceType"] == "Task" => {
                        pulled.exchanges.push(exchange.clone());
                        Ok(exchange)
                    }
                    Ok((exchange, status, _)) => Err((
                        format!("GET {task_ref} answered {status}, not a Task"),
                        vec![exchange],
                    )),
                    Err(e) => Err((e, vec![])),
                });
            }
            // 3. Every search, with its pages.
            let catalogue = self.ctx.target.protocol.catalogue;
            let mut resources: Vec<Value> = Vec::new();
            for query in &notification.queries {
                let profiles: Vec<String> = section_of(catalogue, &query.code_system, &query.code)
                    .map(section_profiles)
                    .unwrap_or_default();
                let outcome = self
                    .pull_search(
                        &base,
                        &token,
                        &query.value,
                        &profiles,
                        &mut pulled,
                        &mut resources,
                    )
                    .await;
                pulled
                    .answers
                    .push((query.value.clone(), outcome.err(), Vec::new()));
            }
            // 4. Every read.
            for reference in &notification.reads {
                match self
                    .get(
                        &format!("{base}/{reference}"),
                        &token,
                        "application/fhir+json",
                        ExchangeKind::Read,
                    )
                    .await
                {
                    Ok((exchange, 200, Some(resource))) => {
                        pulled.exchanges.push(exchange.clone());
                        for finding in check_resource(&resource) {
                            pulled.findings.push((finding, exchange.clone()));
                        }
                        resources.push(resource);
                        pulled
                            .answers
                            .push((reference.clone(), None, vec![exchange]));
                    }
                    Ok((exchange, status, _)) => pulled.answers.push((
                        reference.clone(),
                        Some(format!("answered {status}")),
                        vec![exchange],
                    )),
                    Err(e) => pulled.answers.push((reference.clone(), Some(e), vec![])),
                }
            }
            // 5. The letter, as a FHIR Binary and as raw bytes.
            pulled.letter = Some(
                self.pull_letter(&base, &token, &resources, &mut pulled.exchanges)
                    .await,
            );
            // 6. As a receiver that does not know the patient: verify the BSN at SBV-Z.
            if step.checks.contains(&CheckId::PatientVerifiable) {
                pulled.verification =
                    Some(self.verify_patient(&notification.bsn, &resources).await);
            }
        }

        let results = step
            .checks
            .iter()
            .map(|c| pull_check(*c, &pulled))
            .collect();
        let session = self.pull_session.lock().await.take();
        self.state.pull_token = session
            .as_ref()
            .map(|s| s.token.clone())
            .or(pulled.token.clone());
        self.state.pull_token_renew_at = session.map(|s| s.renew_at);
        step_outcome(step, Verdict::Pass, results, None, pulled.exchanges.clone())
    }

    /// The token to present: during a pull, the session's, renewed when it is about to
    /// expire (protocol.md §3: the client requests a new token); otherwise `token`.
    async fn bearer(&self, token: &str) -> String {
        let mut session = self.pull_session.lock().await;
        let Some(current) = session.as_mut() else {
            return token.to_owned();
        };
        if Instant::now() >= current.renew_at
            && let Ok(form) =
                self.pull_token_form(&current.token_url, current.authorization_base.as_deref())
        {
            let request = Outgoing::with_body(
                reqwest::Method::POST,
                current.token_url.clone(),
                "application/x-www-form-urlencoded",
                form,
                ExchangeKind::TokenRequest,
            );
            if let Ok(exchange) = self.as_receiver(request).await {
                let response = exchange.response.unwrap_or_default();
                let body = response.body.json().unwrap_or(Value::Null);
                if let (200, Some(renewed), Ok(lifetime)) = (
                    response.status,
                    body["access_token"].as_str(),
                    crate::protocol::token::expires_in(&body),
                ) {
                    *current = PullSession::new(
                        renewed,
                        lifetime,
                        current.token_url.clone(),
                        current.authorization_base.clone(),
                    );
                }
            }
        }
        current.token.clone()
    }

    fn pull_token_form(
        &self,
        token_url: &str,
        authorization_base: Option<&str>,
    ) -> Result<String, String> {
        let now = unix_now();
        let client_id = format!("urn:bgz-harness:receiver:{}", self.planned.counterpart.ura);
        let client = AssertionClaims::new(&client_id, token_url, now, 60);
        let authorization = AssertionClaims::new(&self.planned.counterpart.ura, token_url, now, 60);
        Ok(token_request_form(
            &self.sign(&client)?,
            Some(&self.sign(&authorization)?),
            authorization_base,
        ))
    }

    /// GETs `url`; returns the exchange id, the status and the body as JSON when it is.
    async fn get(
        &self,
        url: &str,
        token: &str,
        accept: &str,
        kind: ExchangeKind,
    ) -> Result<(String, u16, Option<Value>), String> {
        let token = self.bearer(token).await;
        let outgoing = Outgoing::get(url, kind)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", accept);
        let exchange = self.as_receiver(outgoing).await?;
        let response = exchange.response.unwrap_or_default();
        Ok((exchange.id, response.status, response.body.json()))
    }

    async fn pull_search(
        &self,
        base: &str,
        token: &str,
        value: &str,
        profiles: &[String],
        pulled: &mut Pulled,
        resources: &mut Vec<Value>,
    ) -> Result<(), String> {
        let is_absolute = value.starts_with("http://") || value.starts_with("https://");
        let parsed =
            SearchUrl::parse(value, base).map_err(|e| format!("`{value}` is not a search: {e}"))?;
        let mut url = if is_absolute {
            value.to_owned()
        } else {
            format!("{base}/{}", parsed.to_relative())
        };
        let profile_refs: Vec<&str> = profiles.iter().map(String::as_str).collect();
        let context = SearchContext {
            resource_type: &parsed.resource_type,
            match_profiles: &profile_refs,
        };
        let (mut total, mut matches) = (None, 0u64);
        let mut visited = std::collections::BTreeSet::new();
        for _ in 0..MAX_PAGES {
            visited.insert(url.clone());
            let (exchange, status, body) = self
                .get(&url, token, "application/fhir+json", ExchangeKind::Search)
                .await?;
            pulled.exchanges.push(exchange.clone());
            if status != 200 {
                return Err(format!("`{value}` answered {status} ({exchange})"));
            }
            let Some(bundle) = body else {
                return Err(format!(
                    "`{value}` answered 200 but the body is not JSON (invalid JSON, invalid UTF-8, or nested too deep) ({exchange})"
                ));
            };
            for finding in check_searchset(&bundle, &context) {
                pulled.findings.push((finding, exchange.clone()));
            }
            for finding in missing_includes(&parsed, &bundle) {
                pulled.findings.push((finding, exchange.clone()));
            }
            total = total.or(bundle["total"].as_u64());
            matches += entries(&bundle)
                .filter(|(_, mode)| *mode == Some("match"))
                .count() as u64;
            resources.extend(entries(&bundle).map(|(r, _)| r.clone()));
            match next_link(&bundle) {
                // A next link is followed only below the sender's own FHIR base: the pull
                // token never goes to another host.
                Some(next) if !next.starts_with(&format!("{}/", base.trim_end_matches('/'))) => {
                    pulled.findings.push((
                        Finding { rule: "next-foreign", severity: Severity::Error, location: format!("search `{value}`"), message: format!("the next link `{next}` leaves the FHIR base {base}; it was not followed") },
                        exchange.clone(),
                    ));
                    break;
                }
                Some(next) if visited.contains(next) => {
                    pulled.findings.push((
                        Finding { rule: "next-loop", severity: Severity::Error, location: format!("search `{value}`"), message: format!("the next link `{next}` points at a page already read; paging stopped") },
                        exchange.clone(),
                    ));
                    break;
                }
                Some(next) => url = next.to_owned(),
                None => break,
            }
        }
        if let Some(total) = total.filter(|t| *t != matches) {
            pulled.findings.push((
                Finding {
                    rule: "total-matches",
                    severity: Severity::Error,
                    location: format!("search `{value}`"),
                    message: format!(
                        "total is {total} but the pages held {matches} matches in all"
                    ),
                },
                String::new(),
            ));
        }
        Ok(())
    }

    /// Builds OpvragenVerifieren from the pulled Patient (search path 2) and asks the SBV-Z
    /// double, which knows the person: the target's Patient must carry enough to ask.
    async fn verify_patient(
        &self,
        bsn: &str,
        resources: &[Value],
    ) -> Result<String, (String, Vec<String>)> {
        use crate::protocol::sbvz::{
            Resultaat, SbvzOperation, SbvzReply, Vraag, parse_response, verifieren_request,
        };
        use crate::sim::sbvz::{SbvzCase, SbvzPerson};
        let patient = resources
            .iter()
            .find(|r| {
                r["resourceType"] == "Patient"
                    && crate::fhir::store::identifiers(r)
                        .any(|(s, v)| s == crate::fhir::BSN_SYSTEM && v == bsn)
            })
            .ok_or((
                "no Patient with the notified BSN came with the pull".to_owned(),
                vec![],
            ))?;
        let vraag = Vraag::from_patient(patient, bsn).map_err(|e| {
            (
                format!("the Patient does not allow an SBV-Z question: {e}"),
                vec![],
            )
        })?;
        // The double answers per BSN: hold this BSN's turn while teaching and asking it.
        let turn = super::lock(&self.ctx.sbvz_turns)
            .entry(bsn.to_owned())
            .or_default()
            .clone();
        let _turn = turn.lock_owned().await;
        if let Some(known) = self
            .fixture
            .patient()
            .and_then(|p| Vraag::from_patient(p, bsn).ok())
        {
            let person = SbvzPerson {
                persoon: known.persoon,
                adres: known.adres,
            };
            self.ctx
                .sbvz
                .register(bsn, SbvzCase::Found, person, &self.planned.id);
        }
        let request = verifieren_request(
            &vraag,
            &uuid::Uuid::new_v4().to_string(),
            Default::default(),
        )
        .map_err(|e| (e.to_string(), vec![]))?;
        let outgoing = Outgoing::with_body(
            reqwest::Method::POST,
            request.url(&self.ctx.sbvz.base_url()),
            crate::protocol::soap::CONTENT_TYPE,
            request.body.clone(),
            ExchangeKind::Sbvz,
        )
        .header("SOAPAction", request.soap_action_header());
        let exchange = self.as_receiver(outgoing).await.map_err(|e| (e, vec![]))?;
        let bytes = exchange
            .response
            .as_ref()
            .map(|r| r.body.bytes.clone())
            .unwrap_or_default();
        match parse_response(
            SbvzOperation::OpvragenVerifieren,
            &bytes,
            &Default::default(),
        ) {
            Ok(SbvzReply::Answer(answer)) if answer.resultaat == Some(Resultaat::Goed) => {
                Ok("SBV-Z verified the BSN with the data the target sent".to_owned())
            }
            Ok(SbvzReply::Answer(answer)) => {
                let deviating = answer.deviating_fields().join(", ");
                Err((
                    format!(
                        "SBV-Z did not verify the BSN with the data the target sent ({:?}; deviating: {deviating})",
                        answer.resultaat
                    ),
                    vec![exchange.id],
                ))
            }
            Ok(SbvzReply::Fault(fault)) => Err((
                format!(
                    "SBV-Z refused the question built from the target's Patient: {}",
                    fault.string
                ),
                vec![exchange.id],
            )),
            Err(e) => Err((
                format!("the SBV-Z answer was unreadable: {e}"),
                vec![exchange.id],
            )),
        }
    }

    async fn pull_letter(
        &self,
        base: &str,
        token: &str,
        resources: &[Value],
        shown: &mut Vec<String>,
    ) -> Result<String, (String, Vec<String>)> {
        let Some(document) = resources
            .iter()
            .find(|r| r["resourceType"] == "DocumentReference")
        else {
            return Err((
                "no DocumentReference came with the pull: the letter is missing".to_owned(),
                vec![],
            ));
        };
        let attachment = &document["content"][0]["attachment"];
        let mut problems = Vec::new();
        for prohibited in ["docStatus", "created", "custodian"] {
            if !document[prohibited].is_null() {
                problems.push(format!("DocumentReference.{prohibited} is prohibited"));
            }
        }
        if !attachment["data"].is_null() || !attachment["creation"].is_null() {
            problems.push("attachment.data and attachment.creation are prohibited".to_owned());
        }
        if document["masterIdentifier"].is_null() {
            problems.push("DocumentReference.masterIdentifier is missing".to_owned());
        }
        let Some(url) = attachment["url"].as_str() else {
            return Err((
                "the DocumentReference has no content.attachment.url".to_owned(),
                vec![],
            ));
        };
        let absolute = if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{base}/{url}")
        };
        let (fhir_exchange, status, binary) = self
            .get(
                &absolute,
                token,
                "application/fhir+json",
                ExchangeKind::Binary,
            )
            .await
            .map_err(|e| (e, vec![]))?;
        shown.push(fhir_exchange.clone());
        let mut evidence = vec![fhir_exchange.clone()];
        let from_fhir = binary
            .filter(|_| status == 200)
            .and_then(|b| b["content"].as_str().and_then(|c| STANDARD.decode(c).ok()))
            .ok_or_else(|| {
                (
                    format!(
                        "GET {url} as FHIR answered {status} without a Binary with base64 content"
                    ),
                    evidence.clone(),
                )
            })?;
        let raw = self
            .as_receiver(
                Outgoing::get(absolute.clone(), ExchangeKind::Binary)
                    .header(
                        "authorization",
                        format!("Bearer {}", self.bearer(token).await),
                    )
                    .header("accept", "application/pdf"),
            )
            .await
            .map_err(|e| (e, evidence.clone()))?;
        shown.push(raw.id.clone());
        evidence.push(raw.id.clone());
        let raw_response = raw.response.unwrap_or_default();
        if raw_response.status != 200
            || !raw_response
                .header("content-type")
                .unwrap_or_default()
                .starts_with("application/pdf")
        {
            problems.push(format!(
                "GET {url} with Accept application/pdf answered {} {}",
                raw_response.status,
                raw_response
                    .header("content-type")
                    .unwrap_or("without a content type")
            ));
        } else if raw_response.body.bytes.as_ref() != from_fhir.as_slice() {
            problems.push(format!(
                "the raw PDF ({} bytes) differs from the Binary's content ({} bytes)",
                raw_response.body.bytes.len(),
                from_fhir.len()
            ));
        }
        if let Some(size) = attachment["size"]
            .as_u64()
            .filter(|s| *s != from_fhir.len() as u64)
        {
            problems.push(format!(
                "attachment.size is {size} but the letter has {} bytes",
                from_fhir.len()
            ));
        }
        if let Some(hash) = attachment["hash"].as_str() {
            let actual = STANDARD.encode(Sha1::digest(&from_fhir));
            if hash != actual {
                problems.push("attachment.hash is not the SHA-1 of the letter".to_owned());
            }
        }
        if !from_fhir.starts_with(b"%PDF") {
            problems.push("the letter is not a PDF".to_owned());
        }
        if problems.is_empty() {
            Ok(format!(
                "{} bytes, identical as FHIR Binary and as raw PDF",
                from_fhir.len()
            ))
        } else {
            Err((problems.join("; "), evidence))
        }
    }

    pub(super) async fn await_cancellation(
        &mut self,
        step: &Step,
        within: Duration,
    ) -> StepOutcome {
        let Some((slot, _)) = self.state.slot.clone() else {
            return step_error(step, "no notification slot is open".to_owned(), Vec::new());
        };
        let cancellation = self
            .wait_for_slot(within, || super::lock(&slot.cancellations).first().cloned())
            .await;
        let exchange = self
            .ctx
            .journal
            .for_case(&self.planned.id)
            .into_iter()
            .find(|e| e.kind == ExchangeKind::Cancellation)
            .map(|e| e.id);
        let shown: Vec<String> = exchange.into_iter().collect();
        let expected = "PUT Task?identifier={system}|{value} of the notification, body status cancelled with the same identifier";
        let result = match cancellation {
            None => check(
                CheckId::CancellationValid,
                Verdict::Fail,
                expected,
                "none",
                format!("no cancellation arrived within {} s", within.as_secs()),
                shown.clone(),
            ),
            Some((condition, body)) => {
                let notified = self
                    .state
                    .received
                    .as_ref()
                    .map(|r| r.task["identifier"][0].clone())
                    .unwrap_or_default();
                let wanted = format!(
                    "{}|{}",
                    notified["system"].as_str().unwrap_or_default(),
                    notified["value"].as_str().unwrap_or_default()
                );
                let mut problems = Vec::new();
                if condition != wanted {
                    problems.push(format!(
                        "the condition is identifier={condition}, expected {wanted}"
                    ));
                }
                if body["status"] != "cancelled" {
                    problems.push(format!("status is {}, expected cancelled", body["status"]));
                }
                if body["identifier"][0] != notified {
                    problems
                        .push("the body's identifier differs from the notification's".to_owned());
                }
                if problems.is_empty() {
                    check(
                        CheckId::CancellationValid,
                        Verdict::Pass,
                        expected,
                        "valid",
                        "the target cancelled by conditional update",
                        shown.clone(),
                    )
                } else {
                    check(
                        CheckId::CancellationValid,
                        Verdict::Fail,
                        expected,
                        problems.join("; "),
                        problems.join("; "),
                        shown.clone(),
                    )
                }
            }
        };
        let results = step.checks.iter().map(|_| result.clone()).collect();
        step_outcome(step, Verdict::Pass, results, None, shown)
    }

    pub(super) async fn pull_after_cancel(&mut self, step: &Step) -> StepOutcome {
        let (Some(base), Some(token_url)) = (
            self.ctx.endpoints.sender_fhir_base.clone(),
            self.ctx.endpoints.sender_token_url.clone(),
        ) else {
            return step_error(
                step,
                "the target file names no sender endpoints".to_owned(),
                Vec::new(),
            );
        };
        let Some(Ok(notification)) = self.state.received.as_ref().map(|r| r.parsed.clone()) else {
            return step_error(
                step,
                "no valid notification was received".to_owned(),
                Vec::new(),
            );
        };
        let mut problems = Vec::new();
        let mut shown = Vec::new();
        let form = match self
            .pull_token_form(&token_url, notification.authorization_base.as_deref())
        {
            Ok(form) => form,
            Err(problem) => {
                return step_outcome(step, Verdict::Error, Vec::new(), Some(problem), Vec::new());
            }
        };
        match self
            .as_receiver(Outgoing::with_body(
                reqwest::Method::POST,
                token_url,
                "application/x-www-form-urlencoded",
                form,
                ExchangeKind::TokenRequest,
            ))
            .await
        {
            Ok(exchange) => {
                let status = exchange.response.as_ref().map(|r| r.status).unwrap_or(0);
                if (200..300).contains(&status) {
                    problems.push(format!(
                        "a new token was issued for the revoked authorization base ({status})"
                    ));
                }
                shown.push(exchange.id);
            }
            Err(e) => problems.push(e),
        }
        if let (Some(token), Some(query)) =
            (self.state.pull_token.clone(), notification.queries.first())
        {
            let url = SearchUrl::parse(&query.value, &base)
                .map(|u| format!("{}/{}", base.trim_end_matches('/'), u.to_relative()))
                .unwrap_or_default();
            match self
                .get(&url, &token, "application/fhir+json", ExchangeKind::Search)
                .await
            {
                Ok((exchange, status, _)) => {
                    if ![401, 403, 404, 410].contains(&status) {
                        problems.push(format!("a search with the earlier token answered {status}, expected 401, 403, 404 or 410"));
                    }
                    shown.push(exchange);
                }
                Err(e) => problems.push(e),
            }
        }
        let expected = "400 invalid_grant for the revoked authorization base; 401/403/404/410 for earlier tokens";
        let earlier_ran_out = self
            .state
            .pull_token_renew_at
            .is_some_and(|at| Instant::now() >= at);
        let result = if problems.is_empty() {
            check(
                CheckId::PullRefusedAfterCancel,
                Verdict::Pass,
                expected,
                "refused",
                if earlier_ran_out {
                    "the target refuses pulls after cancelling (the earlier token had nearly run out, so the refused token request is what shows it)"
                } else {
                    "the target refuses pulls after cancelling"
                },
                shown.clone(),
            )
        } else {
            check(
                CheckId::PullRefusedAfterCancel,
                Verdict::Fail,
                expected,
                problems.join("; "),
                problems.join("; "),
                shown.clone(),
            )
        };
        let results = step.checks.iter().map(|_| result.clone()).collect();
        step_outcome(step, Verdict::Pass, results, None, shown)
    }
}

/// The pull token of a running pull, and when to renew it.
pub(super) struct PullSession {
    token: String,
    renew_at: Instant,
    token_url: String,
    authorization_base: Option<String>,
}

impl PullSession {
    /// A token issued now that lives `lifetime` (unknown: a day); it is renewed a second
    /// before it runs out. A lifetime beyond the clock's range is never renewed.
    fn new(
        token: &str,
        lifetime: Option<Duration>,
        token_url: String,
        authorization_base: Option<String>,
    ) -> Self {
        let lifetime = lifetime.unwrap_or(Duration::from_secs(24 * 3600));
        let margin = Duration::from_secs(1).min(lifetime / 4);
        let now = Instant::now();
        Self {
            token: token.to_owned(),
            renew_at: now
                .checked_add(lifetime.saturating_sub(margin))
                .unwrap_or(now + Duration::from_secs(100 * 365 * 24 * 3600)),
            token_url,
            authorization_base,
        }
    }
}

/// Resources that a requested `_include` names but the page does not hold.
fn missing_includes(url: &SearchUrl, bundle: &Value) -> Vec<Finding> {
    let present: BTreeSet<String> = entries(bundle)
        .filter_map(|(r, _)| resource_key(r))
        .collect();
    let mut findings = Vec::new();
    for include in url.values("_include") {
        let mut parts = include.split(':');
        let (_, param, target) = (parts.next(), parts.next(), parts.next());
        let Some(param) = param else { continue };
        for (resource, mode) in entries(bundle) {
            if mode != Some("match") {
                continue;
            }
            for reference in include_references(resource, param) {
                let wanted = target.is_none_or(|t| reference.starts_with(&format!("{t}/")));
                if wanted && !reference.starts_with('#') && !present.contains(&reference) {
                    findings.push(Finding {
                        rule: "include-present",
                        severity: Severity::Error,
                        location: resource_key(resource).unwrap_or_default(),
                        message: format!(
                            "_include={include} names {reference}, which the page does not include"
                        ),
                    });
                }
            }
        }
    }
    findings
}

fn pull_check(id: CheckId, pulled: &Pulled) -> CheckOutcome {
    if let Some((problem, shown)) = &pulled.token_problem {
        return check(
            id,
            Verdict::Fail,
            "a pull token first",
            "no token",
            format!("no pull token: {problem}"),
            shown.clone(),
        );
    }
    match id {
        CheckId::PullTokenIssued => check(
            id,
            Verdict::Pass,
            "200 with an access_token",
            "issued",
            "the target issued a pull token for its authorization base",
            pulled.exchanges.first().cloned().into_iter().collect(),
        ),
        CheckId::WorkflowTaskServed => match &pulled.workflow {
            None => check(
                id,
                Verdict::NotRun,
                "",
                "",
                "the notification offered no workflow task",
                vec![],
            ),
            Some(Ok(exchange)) => check(
                id,
                Verdict::Pass,
                "200 with a Task",
                "served",
                "the target served its workflow task",
                vec![exchange.clone()],
            ),
            Some(Err((problem, shown))) => check(
                id,
                Verdict::Fail,
                "200 with a Task",
                "not served",
                problem.clone(),
                shown.clone(),
            ),
        },
        CheckId::SearchesAnswered => {
            let failed: Vec<String> = pulled
                .answers
                .iter()
                .filter_map(|(value, problem, _)| {
                    problem.as_ref().map(|p| format!("`{value}`: {p}"))
                })
                .collect();
            let expected = format!(
                "all {} notified searches and reads answered 200",
                pulled.answers.len()
            );
            if failed.is_empty() {
                check(
                    id,
                    Verdict::Pass,
                    expected,
                    "all answered",
                    "the target answered every notified search and read",
                    vec![],
                )
            } else {
                check(
                    id,
                    Verdict::Fail,
                    expected,
                    format!("{} not answered", failed.len()),
                    failed.join("; "),
                    vec![],
                )
            }
        }
        CheckId::BundlesConform => {
            let errors: Vec<&(Finding, String)> = pulled
                .findings
                .iter()
                .filter(|(f, _)| f.severity == Severity::Error)
                .collect();
            let warnings = pulled.findings.len() - errors.len();
            if errors.is_empty() {
                return check(
                    id,
                    Verdict::Pass,
                    "no rule of protocol.md §6 broken",
                    format!("{warnings} warning(s)"),
                    format!("every searchset and resource conforms ({warnings} warnings)"),
                    vec![],
                );
            }
            let mut rules: Vec<&str> = errors.iter().map(|(f, _)| f.rule).collect();
            rules.sort();
            rules.dedup();
            let examples: Vec<String> = errors
                .iter()
                .take(5)
                .map(|(f, x)| format!("{} at {}: {} ({x})", f.rule, f.location, f.message))
                .collect();
            let shown: Vec<String> = errors
                .iter()
                .map(|(_, x)| x.clone())
                .filter(|x| !x.is_empty())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .take(10)
                .collect();
            check(
                id,
                Verdict::Fail,
                "no rule of protocol.md §6 broken",
                format!("{} finding(s) of rules {}", errors.len(), rules.join(", ")),
                format!(
                    "{} rule finding(s) ({}); for example: {}",
                    errors.len(),
                    rules.join(", "),
                    examples.join(" | ")
                ),
                shown,
            )
        }
        CheckId::LetterServedIntact => match &pulled.letter {
            None => check(
                id,
                Verdict::Fail,
                "the letter",
                "not pulled",
                "the letter was not pulled",
                vec![],
            ),
            Some(Ok(summary)) => check(
                id,
                Verdict::Pass,
                "the letter identical as FHIR Binary and raw PDF, size and hash matching",
                summary.clone(),
                "the target served the letter intact",
                vec![],
            ),
            Some(Err((problem, shown))) => check(
                id,
                Verdict::Fail,
                "the letter identical as FHIR Binary and raw PDF, size and hash matching",
                "not intact",
                problem.clone(),
                shown.clone(),
            ),
        },
        CheckId::PatientVerifiable => match &pulled.verification {
            None => check(
                id,
                Verdict::Error,
                "",
                "",
                "the verification did not run",
                vec![],
            ),
            Some(Ok(summary)) => check(
                id,
                Verdict::Pass,
                "SBV-Z verifies the BSN from the Patient the target sent",
                "verified",
                summary.clone(),
                vec![],
            ),
            Some(Err((problem, shown))) => check(
                id,
                Verdict::Fail,
                "SBV-Z verifies the BSN from the Patient the target sent",
                "not verifiable",
                problem.clone(),
                shown.clone(),
            ),
        },
        other => check(
            other,
            Verdict::Error,
            "",
            "",
            format!("{} does not belong to a pull step", other.name()),
            vec![],
        ),
    }
}

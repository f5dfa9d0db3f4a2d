//! Probes: negative security requests the target must refuse (issue: defences as
//! conformance). Each sends one or two hostile requests and judges the answer's status and
//! body; the report shows the request and the answer.

use serde_json::Value;

use super::{CaseRun, step_outcome};
use crate::fhir::BSN_SYSTEM;
use crate::fhir::catalogue::notified_queries;
use crate::fhir::search::SearchUrl;
use crate::journal::{Exchange, ExchangeKind};
use crate::protocol::IDENTIFIER_SYSTEM;
use crate::protocol::notification::{Ident, NotificationSpec, build_notification, new_identifier};
use crate::protocol::token::{AssertionClaims, opaque_token, token_request_form, unix_now};
use crate::runner::outcome::{CheckOutcome, StepOutcome, Verdict};
use crate::scenario::model::{CheckId, ProbeAttack, Step};
use crate::transport::Outgoing;

/// A test BSN that fails the 11-proef (protocol.md §9).
const INVALID_BSN: &str = "999000010";
/// The Binary the reference node keeps without any reference to it.
pub(crate) const UNREFERENCED_BINARY: &str = "Binary/unreferenced-letter";

/// What a refusal must look like.
struct Refusal {
    statuses: &'static [u16],
    /// `fhir`: the body is an OperationOutcome; `oauth`: RFC 6749 error JSON.
    body: BodyRule,
    expected: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyRule {
    Fhir,
    Oauth,
}

const UNAUTHORIZED: Refusal = Refusal {
    statuses: &[401],
    body: BodyRule::Fhir,
    expected: "401 with an OperationOutcome",
};
const TOKEN_REFUSED: Refusal = Refusal {
    statuses: &[400, 401],
    body: BodyRule::Oauth,
    expected: "400 (or 401) with RFC 6749 error JSON",
};
const BAD_REQUEST: Refusal = Refusal {
    statuses: &[400],
    body: BodyRule::Fhir,
    expected: "400 with an OperationOutcome",
};
const FORBIDDEN: Refusal = Refusal {
    statuses: &[403],
    body: BodyRule::Fhir,
    expected: "403 with an OperationOutcome",
};
const NOT_SERVED: Refusal = Refusal {
    statuses: &[401, 403, 404],
    body: BodyRule::Fhir,
    expected: "401, 403 or 404 with an OperationOutcome, and no data",
};

fn judge(exchange: &Exchange, refusal: &Refusal) -> CheckOutcome {
    let shown = vec![exchange.id.clone()];
    let make = |verdict, actual: String, message: String| CheckOutcome {
        check: CheckId::ProbeRefused.name().to_owned(),
        verdict,
        expected: refusal.expected.to_owned(),
        actual,
        message,
        exchanges: shown.clone(),
    };
    let Some(response) = &exchange.response else {
        return make(
            Verdict::Error,
            "no answer".to_owned(),
            format!(
                "the probe got no answer: {}",
                exchange.error.clone().unwrap_or_default()
            ),
        );
    };
    let body = response.body.json().unwrap_or(Value::Null);
    let actual = format!(
        "{} {}",
        response.status,
        body["resourceType"]
            .as_str()
            .or(body["error"].as_str())
            .unwrap_or("without a recognised body")
    );
    if !refusal.statuses.contains(&response.status) {
        let served_data = body["resourceType"] == "Bundle"
            && body["entry"].as_array().is_some_and(|e| !e.is_empty());
        let message = if (200..300).contains(&response.status) {
            format!(
                "the target accepted the probe with {}{}",
                response.status,
                if served_data { " and served data" } else { "" }
            )
        } else {
            format!(
                "the target refused with {} instead of {}",
                response.status, refusal.expected
            )
        };
        return make(Verdict::Fail, actual, message);
    }
    let body_ok = match refusal.body {
        BodyRule::Fhir => body["resourceType"] == "OperationOutcome",
        BodyRule::Oauth => body["error"].is_string(),
    };
    if !body_ok {
        let wanted = if refusal.body == BodyRule::Fhir {
            "an OperationOutcome"
        } else {
            "RFC 6749 error JSON"
        };
        return make(
            Verdict::Fail,
            actual,
            format!(
                "the target refused with {} but without {wanted}",
                response.status
            ),
        );
    }
    make(
        Verdict::Pass,
        actual,
        format!("the target refused the probe with {}", response.status),
    )
}

impl CaseRun<'_> {
    pub(super) async fn probe(&mut self, step: &Step, attack: ProbeAttack) -> StepOutcome {
        let result = match attack.direction() {
            crate::scenario::model::Direction::TargetReceives => self.probe_receiver(attack).await,
            crate::scenario::model::Direction::TargetSends => self.probe_sender(attack).await,
        };
        match result {
            Ok(check) => {
                let shown = check.exchanges.clone();
                let checks = step.checks.iter().map(|_| check.clone()).collect();
                step_outcome(step, Verdict::Pass, checks, None, shown)
            }
            Err(problem) => {
                step_outcome(step, Verdict::Error, Vec::new(), Some(problem), Vec::new())
            }
        }
    }

    fn probe_notification(&self, bsn: &str, owner: Ident) -> Value {
        let now = time::OffsetDateTime::now_utc();
        let format = &time::format_description::well_known::Rfc3339;
        build_notification(&NotificationSpec {
            identifier: new_identifier(),
            group_identifier: new_identifier(),
            workflow_task_id: None,
            bsn: bsn.to_owned(),
            requester_agent: Ident::new(
                IDENTIFIER_SYSTEM,
                &format!("urn:oid:2.999.{}", self.planned.counterpart.ura),
            ),
            requester_agent_display: "bgz-harness probe".to_owned(),
            on_behalf_of: Ident::new(crate::fhir::URA_SYSTEM, &self.planned.counterpart.ura),
            owner: Some(owner),
            authored_on: now.format(format).unwrap_or_default(),
            period_end: (now + time::Duration::days(7))
                .format(format)
                .unwrap_or_default(),
            authorization_base: Some(opaque_token("ab-probe")),
            queries: notified_queries(bsn, self.ctx.target.protocol.query_options()),
            reads: Vec::new(),
        })
    }

    async fn send_to_target(&self, outgoing: Outgoing) -> Result<Exchange, String> {
        self.ctx
            .to_target
            .send(outgoing.for_case(Some(&self.planned.id)))
            .await
            .map_err(|e| e.to_string())
    }

    async fn post_notification(
        &self,
        task: &Value,
        token: Option<&str>,
    ) -> Result<Exchange, String> {
        let url = format!("{}/Task", self.ctx.endpoints.notification_base);
        let request = self.fhir_request(
            reqwest::Method::POST,
            url,
            task,
            ExchangeKind::Notification,
            token,
        );
        self.send_to_target(request).await
    }

    /// A token request signed with `client`'s claims; the harness plays the receiver's
    /// client when `as_receiver` (pull tokens), the sender's otherwise.
    async fn token_with(
        &self,
        url: &str,
        client: &AssertionClaims,
        base: Option<&str>,
        as_receiver: bool,
    ) -> Result<Exchange, String> {
        let authorization =
            AssertionClaims::new(&self.planned.counterpart.ura, url, unix_now(), 60);
        let form = token_request_form(&self.sign(client)?, &self.sign(&authorization)?, base);
        let request = Outgoing::with_body(
            reqwest::Method::POST,
            url.to_owned(),
            "application/x-www-form-urlencoded",
            form,
            ExchangeKind::TokenRequest,
        );
        if as_receiver {
            self.as_receiver_probe(request).await
        } else {
            self.send_to_target(request).await
        }
    }

    fn client_claims(&self, audience: &str) -> AssertionClaims {
        AssertionClaims::new(
            &format!("urn:bgz-harness:probe:{}", self.planned.counterpart.ura),
            audience,
            unix_now(),
            60,
        )
    }

    async fn probe_receiver(&self, attack: ProbeAttack) -> Result<CheckOutcome, String> {
        let bsn = self.fixture.scope.bsn.clone();
        let owner = self.planned.target_department.identifier.clone();
        let token_url = self.ctx.endpoints.token_url.clone();
        match attack {
            ProbeAttack::NotifyWithoutToken => Ok(judge(
                &self
                    .post_notification(&self.probe_notification(&bsn, owner), None)
                    .await?,
                &UNAUTHORIZED,
            )),
            ProbeAttack::NotifyWithInvalidToken => {
                let exchange = self
                    .post_notification(
                        &self.probe_notification(&bsn, owner),
                        Some(&opaque_token("forged")),
                    )
                    .await?;
                Ok(judge(&exchange, &UNAUTHORIZED))
            }
            ProbeAttack::TokenWrongAudience => {
                let claims = self.client_claims("https://not-this-server.invalid/token");
                Ok(judge(
                    &self.token_with(&token_url, &claims, None, false).await?,
                    &TOKEN_REFUSED,
                ))
            }
            ProbeAttack::TokenReplayedAssertion => {
                let claims = self.client_claims(&token_url);
                let first = self.token_with(&token_url, &claims, None, false).await?;
                if first.response.as_ref().map(|r| r.status) != Some(200) {
                    return Err(format!(
                        "the first, valid token request was refused ({}), so replay cannot be probed",
                        first.id
                    ));
                }
                Ok(judge(
                    &self.token_with(&token_url, &claims, None, false).await?,
                    &TOKEN_REFUSED,
                ))
            }
            ProbeAttack::TokenExpiredAssertion => {
                let mut claims = self.client_claims(&token_url);
                claims.iat -= 240;
                claims.exp = unix_now() - 180;
                Ok(judge(
                    &self.token_with(&token_url, &claims, None, false).await?,
                    &TOKEN_REFUSED,
                ))
            }
            ProbeAttack::NotifyInvalidBsn | ProbeAttack::NotifyUnknownDepartment => {
                let (token, _) = self
                    .notification_token()
                    .await
                    .map_err(|(_, problem, _)| problem)?;
                let (task, refusal) = if attack == ProbeAttack::NotifyInvalidBsn {
                    (self.probe_notification(INVALID_BSN, owner), &BAD_REQUEST)
                } else {
                    let unknown = Ident::new(&owner.system, "no-such-department");
                    (self.probe_notification(&bsn, unknown), &FORBIDDEN)
                };
                Ok(judge(
                    &self.post_notification(&task, Some(&token)).await?,
                    refusal,
                ))
            }
            other => Err(format!("the probe {other:?} is aimed at a sending target")),
        }
    }

    async fn probe_sender(&self, attack: ProbeAttack) -> Result<CheckOutcome, String> {
        let base = self
            .ctx
            .endpoints
            .sender_fhir_base
            .clone()
            .ok_or("the target file names no sender-fhir-base")?;
        let token_url = self
            .ctx
            .endpoints
            .sender_token_url
            .clone()
            .ok_or("the target file names no sender-token")?;
        let notification = match self.state.received.as_ref().map(|r| r.parsed.clone()) {
            Some(Ok(notification)) => notification,
            _ => return Err("no valid notification was received before the probe".to_owned()),
        };
        let first_query = notification
            .queries
            .first()
            .map(|q| q.value.clone())
            .ok_or("the notification has no query")?;
        let search_url = |value: &str| {
            SearchUrl::parse(value, &base)
                .map(|u| format!("{}/{}", base.trim_end_matches('/'), u.to_relative()))
                .unwrap_or_default()
        };
        let get = |url: String, token: Option<String>| {
            let mut request =
                Outgoing::get(url, ExchangeKind::Search).header("accept", "application/fhir+json");
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            request
        };
        let pull_token = self.state.pull_token.clone();
        match attack {
            ProbeAttack::SearchWithoutToken => Ok(judge(
                &self
                    .as_receiver_probe(get(search_url(&first_query), None))
                    .await?,
                &UNAUTHORIZED,
            )),
            ProbeAttack::SearchWithInvalidToken => Ok(judge(
                &self
                    .as_receiver_probe(get(search_url(&first_query), Some(opaque_token("forged"))))
                    .await?,
                &UNAUTHORIZED,
            )),
            ProbeAttack::SearchOtherPatient => {
                let token = pull_token.ok_or("no pull token from an earlier pull step")?;
                let other = self
                    .ctx
                    .fixtures
                    .patients
                    .get("other")
                    .map(|f| f.scope.bsn.clone())
                    .unwrap_or_else(|| "999999990".to_owned());
                // A notified search with the other patient's BSN: only the patient differs.
                let query = notification
                    .queries
                    .iter()
                    .find(|q| q.value.contains(&notification.bsn))
                    .map(|q| q.value.replace(&notification.bsn, &other))
                    .unwrap_or_else(|| {
                        format!("Condition?patient.identifier={BSN_SYSTEM}|{other}")
                    });
                Ok(judge(
                    &self
                        .as_receiver_probe(get(search_url(&query), Some(token)))
                        .await?,
                    &NOT_SERVED,
                ))
            }
            ProbeAttack::SearchOutsideNotifiedSet => {
                let token = pull_token.ok_or("no pull token from an earlier pull step")?;
                let query = format!(
                    "Observation?patient.identifier={BSN_SYSTEM}|{}",
                    notification.bsn
                );
                Ok(judge(
                    &self
                        .as_receiver_probe(get(search_url(&query), Some(token)))
                        .await?,
                    &NOT_SERVED,
                ))
            }
            ProbeAttack::ReadUnreferencedBinary => {
                let token = pull_token.ok_or("no pull token from an earlier pull step")?;
                let url = format!("{}/{UNREFERENCED_BINARY}", base.trim_end_matches('/'));
                let request = Outgoing::get(url, ExchangeKind::Binary)
                    .header("accept", "application/fhir+json")
                    .header("authorization", format!("Bearer {token}"));
                Ok(judge(&self.as_receiver_probe(request).await?, &NOT_SERVED))
            }
            ProbeAttack::PullTokenWrongAudience => {
                let claims = self.client_claims("https://not-this-server.invalid/token");
                let exchange = self
                    .token_with(
                        &token_url,
                        &claims,
                        notification.authorization_base.as_deref(),
                        true,
                    )
                    .await?;
                Ok(judge(&exchange, &TOKEN_REFUSED))
            }
            ProbeAttack::PullTokenReplayedAssertion => {
                let claims = self.client_claims(&token_url);
                let first = self
                    .token_with(
                        &token_url,
                        &claims,
                        notification.authorization_base.as_deref(),
                        true,
                    )
                    .await?;
                if first.response.as_ref().map(|r| r.status) != Some(200) {
                    return Err(format!(
                        "the first, valid pull-token request was refused ({}), so replay cannot be probed",
                        first.id
                    ));
                }
                let exchange = self
                    .token_with(
                        &token_url,
                        &claims,
                        notification.authorization_base.as_deref(),
                        true,
                    )
                    .await?;
                Ok(judge(&exchange, &TOKEN_REFUSED))
            }
            other => Err(format!(
                "the probe {other:?} is aimed at a receiving target"
            )),
        }
    }

    async fn as_receiver_probe(&self, outgoing: Outgoing) -> Result<Exchange, String> {
        self.ctx
            .as_receiver
            .send(outgoing.for_case(Some(&self.planned.id)))
            .await
            .map_err(|e| e.to_string())
    }
}

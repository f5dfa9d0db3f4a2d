//! Probes: negative security requests the target must refuse (issue: defences as
//! conformance). Each sends one or two hostile requests and judges the answer's status and
//! body; the report shows the request and the answer.

use std::time::Duration;

use serde_json::Value;

use super::{CaseRun, step_outcome};
use crate::fhir::BSN_SYSTEM;
use crate::fhir::catalogue::notified_queries;
use crate::fhir::search::SearchUrl;
use crate::journal::{Exchange, ExchangeKind, Party};
use crate::protocol::IDENTIFIER_SYSTEM;
use crate::protocol::notification::{Ident, NotificationSpec, build_notification, new_identifier};
use crate::protocol::token::{
    AssertionClaims, encode_jwt, opaque_token, token_request_form, unix_now,
};
use crate::runner::ProbeIdentity;
use crate::runner::outcome::{CheckOutcome, StepOutcome, Verdict};
use crate::scenario::model::{CheckId, ProbeAttack, Step};
use crate::transport::{ClientSettings, Outgoing, RecordingClient};

/// A test BSN that fails the 11-proef (protocol.md §9).
const INVALID_BSN: &str = "999000010";
/// The Binary the reference node keeps without any reference to it.
pub(crate) const UNREFERENCED_BINARY: &str = "Binary/unreferenced-letter";

/// What a refusal must look like.
struct Refusal {
    statuses: &'static [u16],
    /// `fhir`: the body is an OperationOutcome; `oauth`: RFC 6749 error JSON.
    body: BodyRule,
    /// A `401` must carry `WWW-Authenticate: Bearer` (RFC 6750 §3).
    challenge: bool,
    expected: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyRule {
    Fhir,
    Oauth,
}

/// A care provider no case plays: the URA the care-provider probes claim to act for.
const ANOTHER_CARE_PROVIDER: &str = "90000999";

const UNAUTHORIZED: Refusal = Refusal {
    statuses: &[401],
    body: BodyRule::Fhir,
    challenge: true,
    expected: "401 with WWW-Authenticate: Bearer and an OperationOutcome",
};
const TOKEN_REFUSED: Refusal = Refusal {
    statuses: &[400, 401],
    body: BodyRule::Oauth,
    challenge: false,
    expected: "400 (or 401) with RFC 6749 error JSON",
};
const BAD_REQUEST: Refusal = Refusal {
    statuses: &[400],
    body: BodyRule::Fhir,
    challenge: false,
    expected: "400 with an OperationOutcome",
};
const FORBIDDEN: Refusal = Refusal {
    statuses: &[403],
    body: BodyRule::Fhir,
    challenge: false,
    expected: "403 with an OperationOutcome",
};
const NOT_SERVED: Refusal = Refusal {
    statuses: &[401, 403, 404],
    body: BodyRule::Fhir,
    challenge: false,
    expected: "401, 403 or 404 with an OperationOutcome, and no data",
};
const CANCELLED: Refusal = Refusal {
    statuses: &[401, 403, 404, 410],
    body: BodyRule::Fhir,
    challenge: true,
    expected: "401 (with WWW-Authenticate: Bearer), 403, 404 or 410, with an OperationOutcome",
};
const NOT_YOUR_TOKEN: Refusal = Refusal {
    statuses: &[401, 403],
    body: BodyRule::Fhir,
    challenge: true,
    expected: "401 (with WWW-Authenticate: Bearer) or 403, with an OperationOutcome",
};

/// Why a probe could not judge the target: not run (it lacks what it needs) or an error.
pub(super) struct Unprobed {
    verdict: Verdict,
    problem: String,
}

impl From<String> for Unprobed {
    fn from(problem: String) -> Self {
        Self {
            verdict: Verdict::Error,
            problem,
        }
    }
}

impl From<&str> for Unprobed {
    fn from(problem: &str) -> Self {
        problem.to_owned().into()
    }
}

/// Judges a request made with a client certificate the target must refuse: refused in the
/// TLS handshake (an alert) or with a 4xx, never answered 2xx.
/// The TLS alerts (rustls's names) by which a server refuses a client certificate:
/// RFC 8446 §6.2, and handshake_failure, which servers also send for it.
const CERTIFICATE_ALERTS: [&str; 9] = [
    "BadCertificate",
    "UnsupportedCertificate",
    "CertificateRevoked",
    "CertificateExpired",
    "CertificateUnknown",
    "UnknownCA",
    "AccessDenied",
    "CertificateRequired",
    "HandshakeFailure",
];

fn judge_certificate(exchange: &Exchange, what: &str) -> CheckOutcome {
    let expected = "the TLS handshake refused with an alert, or a 400/401/403 answer";
    let make = |verdict, actual: String, message: String| CheckOutcome {
        check: CheckId::ProbeRefused.name().to_owned(),
        verdict,
        expected: expected.to_owned(),
        actual,
        message,
        exchanges: vec![exchange.id.clone()],
    };
    match (&exchange.response, &exchange.error) {
        (None, Some(error)) if error.contains("refused the TLS handshake with alert") => {
            let alert = error
                .rsplit("alert ")
                .next()
                .unwrap_or("(unnamed)")
                .to_owned();
            if CERTIFICATE_ALERTS.contains(&alert.as_str()) {
                make(
                    Verdict::Pass,
                    format!("TLS alert {alert}"),
                    format!("the target refused {what} in the TLS handshake ({alert})"),
                )
            } else {
                make(
                    Verdict::Fail,
                    format!("TLS alert {alert}"),
                    format!(
                        "the target ended the TLS handshake with alert {alert}, which does not refuse a certificate (RFC 8446 §4.4.2.4: bad_certificate, unknown_ca, certificate_expired, certificate_revoked, …)"
                    ),
                )
            }
        }
        (None, error) => make(
            Verdict::Error,
            "no answer".to_owned(),
            format!(
                "the probe got neither an answer nor a TLS alert, so the harness cannot tell a refusal from a failure: {}",
                error.clone().unwrap_or_default()
            ),
        ),
        (Some(response), _) if (200..300).contains(&response.status) => {
            let issued = response
                .body
                .json()
                .is_some_and(|b| b["access_token"].is_string());
            make(
                Verdict::Fail,
                format!("{}", response.status),
                format!(
                    "the target accepted {what} and answered {}{}",
                    response.status,
                    if issued { " with an access token" } else { "" }
                ),
            )
        }
        (Some(response), _) if [400, 401, 403].contains(&response.status) => make(
            Verdict::Pass,
            format!("{}", response.status),
            format!(
                "the target let the TLS handshake through but refused {what} with {}",
                response.status
            ),
        ),
        (Some(response), _) => make(
            Verdict::Fail,
            format!("{}", response.status),
            format!(
                "the target answered {what} with {} instead of refusing it",
                response.status
            ),
        ),
    }
}

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
    let challenged = response
        .header("www-authenticate")
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("bearer"));
    if refusal.challenge && response.status == 401 && !challenged {
        return make(
            Verdict::Fail,
            actual,
            "the target answered 401 without `WWW-Authenticate: Bearer` (RFC 6750 §3)".to_owned(),
        );
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
    pub(super) async fn probe(
        &mut self,
        step: &Step,
        attack: ProbeAttack,
        within: Duration,
    ) -> StepOutcome {
        let result = match attack.direction() {
            crate::scenario::model::Direction::TargetReceives => {
                self.probe_receiver(attack, within).await
            }
            crate::scenario::model::Direction::TargetSends => {
                self.probe_sender(attack, within).await
            }
        };
        match result {
            Ok(check) => {
                let shown = check.exchanges.clone();
                let checks = step.checks.iter().map(|_| check.clone()).collect();
                step_outcome(step, Verdict::Pass, checks, None, shown)
            }
            Err(Unprobed { verdict, problem }) => {
                step_outcome(step, verdict, Vec::new(), Some(problem), Vec::new())
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
        let care_provider = self.planned.counterpart.ura.clone();
        self.token_for(url, client, base, as_receiver, Some(&care_provider))
            .await
    }

    /// As [`Self::token_with`], with an authorization assertion for `care_provider`, or
    /// none at all.
    async fn token_for(
        &self,
        url: &str,
        client: &AssertionClaims,
        base: Option<&str>,
        as_receiver: bool,
        care_provider: Option<&str>,
    ) -> Result<Exchange, String> {
        let authorization = care_provider
            .map(|care_provider| {
                self.sign(&AssertionClaims::new(care_provider, url, unix_now(), 60))
            })
            .transpose()?;
        let form = token_request_form(&self.sign(client)?, authorization.as_deref(), base);
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

    async fn probe_receiver(
        &self,
        attack: ProbeAttack,
        within: Duration,
    ) -> Result<CheckOutcome, Unprobed> {
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
                    )
                    .into());
                }
                Ok(judge(
                    &self.token_with(&token_url, &claims, None, false).await?,
                    &TOKEN_REFUSED,
                ))
            }
            ProbeAttack::TokenWithoutAuthorizationAssertion => {
                let claims = self.client_claims(&token_url);
                Ok(judge(
                    &self
                        .token_for(&token_url, &claims, None, false, None)
                        .await?,
                    &TOKEN_REFUSED,
                ))
            }
            ProbeAttack::NotifyOnBehalfOfAnother => {
                let (token, _) = self
                    .notification_token()
                    .await
                    .map_err(|(_, problem, _)| problem)?;
                let mut task = self.probe_notification(&bsn, owner);
                task["requester"]["onBehalfOf"]["identifier"]["value"] =
                    Value::String(ANOTHER_CARE_PROVIDER.to_owned());
                Ok(judge(
                    &self.post_notification(&task, Some(&token)).await?,
                    &FORBIDDEN,
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
            ProbeAttack::NotifyWithExpiredToken => {
                let claims = self.client_claims(&token_url);
                let exchange = self.token_with(&token_url, &claims, None, false).await?;
                let (token, lifetime) = self.issued_token(&exchange)?;
                self.wait_for_expiry(lifetime, within).await?;
                Ok(judge(
                    &self
                        .post_notification(&self.probe_notification(&bsn, owner), Some(&token))
                        .await?,
                    &UNAUTHORIZED,
                ))
            }
            ProbeAttack::NotifyWithTokenOfAnotherClient => {
                let other = self.probe_identity(attack)?;
                let (token, _) = self
                    .notification_token()
                    .await
                    .map_err(|(_, problem, _)| problem)?;
                let url = format!("{}/Task", self.ctx.endpoints.notification_base);
                let task = self.probe_notification(&bsn, owner);
                let request = self.fhir_request(
                    reqwest::Method::POST,
                    url,
                    &task,
                    ExchangeKind::Notification,
                    Some(&token),
                );
                let exchange = self
                    .send_presenting(other, Party::HarnessSender, request)
                    .await?;
                Ok(judge(&exchange, &NOT_YOUR_TOKEN))
            }
            ProbeAttack::ClientCertForeignCa
            | ProbeAttack::ClientCertExpired
            | ProbeAttack::ClientCertRevoked => {
                let identity = self.probe_identity(attack)?;
                let what = match attack {
                    ProbeAttack::ClientCertForeignCa => {
                        "a token request with a client certificate from a foreign CA"
                    }
                    ProbeAttack::ClientCertExpired => {
                        "a token request with an expired client certificate"
                    }
                    _ => "a token request with a revoked client certificate",
                };
                let claims = self.client_claims(&token_url);
                let authorization =
                    AssertionClaims::new(&self.planned.counterpart.ura, &token_url, unix_now(), 60);
                let sign = |claims: &AssertionClaims| {
                    encode_jwt(claims, &identity.signer)
                        .map_err(|e| format!("failed to sign an assertion: {e}"))
                };
                let form = token_request_form(&sign(&claims)?, Some(&sign(&authorization)?), None);
                let request = Outgoing::with_body(
                    reqwest::Method::POST,
                    token_url.clone(),
                    "application/x-www-form-urlencoded",
                    form,
                    ExchangeKind::TokenRequest,
                );
                let exchange = self
                    .send_presenting(identity, Party::HarnessSender, request)
                    .await?;
                Ok(judge_certificate(&exchange, what))
            }
            other => Err(format!("the probe {other:?} is aimed at a sending target").into()),
        }
    }

    async fn probe_sender(
        &self,
        attack: ProbeAttack,
        within: Duration,
    ) -> Result<CheckOutcome, Unprobed> {
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
            _ => return Err("no valid notification was received before the probe".into()),
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
        // A pull-token request signed with `claims`, presenting the authorization base.
        let authorization_base = notification.authorization_base.as_deref();
        let ask = async |claims: &AssertionClaims| {
            self.token_with(&token_url, claims, authorization_base, true)
                .await
        };
        // A fresh pull token for the probes that use one: the pull step's may have expired,
        // and a refusal must be for the probed reason, not for expiry.
        let fresh_pull_token = async {
            let claims = self.client_claims(&token_url);
            let exchange = ask(&claims).await?;
            self.issued_token(&exchange).map(|(token, _)| token)
        };
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
                let token = fresh_pull_token.await?;
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
                let token = fresh_pull_token.await?;
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
                let token = fresh_pull_token.await?;
                let url = format!("{}/{UNREFERENCED_BINARY}", base.trim_end_matches('/'));
                let request = Outgoing::get(url, ExchangeKind::Binary)
                    .header("accept", "application/fhir+json")
                    .header("authorization", format!("Bearer {token}"));
                Ok(judge(&self.as_receiver_probe(request).await?, &NOT_SERVED))
            }
            ProbeAttack::PullTokenForAnotherCareProvider => {
                let claims = self.client_claims(&token_url);
                let exchange = self
                    .token_for(
                        &token_url,
                        &claims,
                        authorization_base,
                        true,
                        Some(ANOTHER_CARE_PROVIDER),
                    )
                    .await?;
                Ok(judge(&exchange, &TOKEN_REFUSED))
            }
            ProbeAttack::PullTokenWrongAudience => {
                let claims = self.client_claims("https://not-this-server.invalid/token");
                let exchange = ask(&claims).await?;
                Ok(judge(&exchange, &TOKEN_REFUSED))
            }
            ProbeAttack::PullTokenReplayedAssertion => {
                let claims = self.client_claims(&token_url);
                let first = ask(&claims).await?;
                if first.response.as_ref().map(|r| r.status) != Some(200) {
                    return Err(format!(
                        "the first, valid pull-token request was refused ({}), so replay cannot be probed",
                        first.id
                    )
                    .into());
                }
                let exchange = ask(&claims).await?;
                Ok(judge(&exchange, &TOKEN_REFUSED))
            }
            ProbeAttack::SearchWithExpiredToken => {
                let claims = self.client_claims(&token_url);
                let exchange = ask(&claims).await?;
                let (token, lifetime) = self.issued_token(&exchange)?;
                self.wait_for_expiry(lifetime, within).await?;
                Ok(judge(
                    &self
                        .as_receiver_probe(get(search_url(&first_query), Some(token)))
                        .await?,
                    &UNAUTHORIZED,
                ))
            }
            ProbeAttack::SearchWithTokenOfAnotherClient => {
                let other = self.probe_identity(attack)?;
                let token = fresh_pull_token.await?;
                let exchange = self
                    .send_presenting(
                        other,
                        Party::HarnessReceiver,
                        get(search_url(&first_query), Some(token)),
                    )
                    .await?;
                Ok(judge(&exchange, &NOT_YOUR_TOKEN))
            }
            ProbeAttack::SearchAfterCancel => {
                if !self.cancellation_received() {
                    return Err(
                        "the target's cancellation was not received before the probe".into(),
                    );
                }
                let token = self
                    .state
                    .pull_token
                    .clone()
                    .ok_or("no pull token from an earlier pull step")?;
                // A refusal because the token ran out would prove nothing.
                if self
                    .state
                    .pull_token_renew_at
                    .is_some_and(|at| std::time::Instant::now() >= at)
                {
                    return Err("the pull token had nearly run out before the probe, so a refusal would not show the cancellation; raise the target's access-token-lifetime".into());
                }
                Ok(judge(
                    &self
                        .as_receiver_probe(get(search_url(&first_query), Some(token)))
                        .await?,
                    &CANCELLED,
                ))
            }
            ProbeAttack::TokenAfterCancel => {
                if !self.cancellation_received() {
                    return Err(
                        "the target's cancellation was not received before the probe".into(),
                    );
                }
                let claims = self.client_claims(&token_url);
                Ok(judge(&ask(&claims).await?, &TOKEN_REFUSED))
            }
            other => Err(format!("the probe {other:?} is aimed at a receiving target").into()),
        }
    }

    /// True when the target's cancellation has reached the harness's receiving slot.
    fn cancellation_received(&self) -> bool {
        self.state
            .slot
            .as_ref()
            .is_some_and(|(slot, _)| !super::lock(&slot.cancellations).is_empty())
    }

    /// The client identity `attack` presents; not run when the target file names none.
    fn probe_identity(&self, attack: ProbeAttack) -> Result<&ProbeIdentity, Unprobed> {
        let identities = &self.ctx.probe_identities;
        let (identity, name) = match attack {
            ProbeAttack::ClientCertForeignCa => (&identities.foreign_ca, "foreign-ca"),
            ProbeAttack::ClientCertExpired => (&identities.expired, "expired"),
            ProbeAttack::ClientCertRevoked => (&identities.revoked, "revoked"),
            _ => (&identities.other_organisation, "other-organisation"),
        };
        identity.as_ref().ok_or_else(|| Unprobed {
            verdict: Verdict::NotRun,
            problem: format!(
                "not run: the target file names no tls.probe-certificates.{name} (cert and key)"
            ),
        })
    }

    /// Sends `outgoing` over a new connection presenting `identity`'s certificate.
    async fn send_presenting(
        &self,
        identity: &ProbeIdentity,
        from: Party,
        outgoing: Outgoing,
    ) -> Result<Exchange, String> {
        let settings = ClientSettings {
            tls: Some(identity.tls.clone()),
            ..self.ctx.client_settings.clone()
        };
        let client = RecordingClient::new(&settings, self.ctx.journal.clone(), from, Party::Target)
            .map_err(|e| format!("failed to make the probe's client: {e}"))?;
        match client.send(outgoing.for_case(Some(&self.planned.id))).await {
            Ok(exchange) => Ok(exchange),
            // A refused handshake is an answer here: the exchange is in the journal.
            Err(crate::transport::TransportError::Failed { exchange, .. }) => self
                .ctx
                .journal
                .for_case(&self.planned.id)
                .into_iter()
                .find(|e| e.id == exchange)
                .ok_or_else(|| format!("exchange {exchange} is missing from the journal")),
        }
    }

    /// The access token and its lifetime from a token response the target gave.
    fn issued_token(&self, exchange: &Exchange) -> Result<(String, Duration), Unprobed> {
        let response = exchange.response.clone().unwrap_or_default();
        if response.status != 200 {
            return Err(format!(
                "the target refused a valid token request ({}, {}), so the probe cannot run",
                exchange.id, response.status
            )
            .into());
        }
        let body = response.body.json().unwrap_or(Value::Null);
        let Some(token) = body["access_token"].as_str() else {
            return Err(format!(
                "the target answered the token request with 200 but no access_token ({}), so the probe cannot run",
                exchange.id
            )
            .into());
        };
        let lifetime = crate::protocol::token::expires_in(&body)
            .map_err(|e| format!("{e} ({}), so the probe cannot run", exchange.id))?
            .unwrap_or(self.ctx.target.protocol.access_token_lifetime);
        Ok((token.to_owned(), lifetime))
    }

    /// Waits until a token issued now with `lifetime` has expired, plus a second.
    async fn wait_for_expiry(&self, lifetime: Duration, within: Duration) -> Result<(), Unprobed> {
        let wait = lifetime.checked_add(Duration::from_secs(1));
        let Some(wait) = wait.filter(|wait| *wait <= within) else {
            return Err(format!(
                "the target's tokens live {} s, longer than this probe may wait ({} s); raise the step's `within`",
                lifetime.as_secs_f64(),
                within.as_secs()
            )
            .into());
        };
        tokio::time::sleep(wait).await;
        Ok(())
    }

    async fn as_receiver_probe(&self, outgoing: Outgoing) -> Result<Exchange, String> {
        self.ctx
            .as_receiver
            .send(outgoing.for_case(Some(&self.planned.id)))
            .await
            .map_err(|e| e.to_string())
    }
}

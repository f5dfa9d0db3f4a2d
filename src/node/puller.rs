//! The reference node's pull: token with the authorization base, the workflow Task when
//! asked, every notified search with its pages, every read, and the letter through
//! DocumentReference to Binary; then the referral is filed in the department's inbox.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{InboxEntry, InboxStatus, LetterCopy, NodeState, lock};
use crate::fhir::bundle::{entries, next_link};
use crate::fhir::search::SearchUrl;
use crate::journal::hex;
use crate::node::faults::Fault;
use crate::protocol::notification::ReceivedNotification;
use crate::protocol::token::{
    AssertionClaims, TokenResponse, encode_jwt, token_request_form, unix_now,
};

/// Most pages the node follows for one search, so a looping `next` cannot hold it forever.
const MAX_PAGES: usize = 200;

struct Session<'a> {
    state: &'a NodeState,
    base: String,
    token: String,
    /// `Task.identifier` value of the notification being pulled.
    notification: String,
}

pub(super) async fn pull(
    state: Arc<NodeState>,
    notification: ReceivedNotification,
    department: Option<String>,
) {
    let outcome = run_pull(&state, &notification).await;
    let department = if state.has(Fault::WrongDepartment) {
        state
            .config
            .departments
            .iter()
            .map(|d| d.id.clone())
            .find(|d| Some(d) != department.as_ref())
            .or(department)
    } else {
        department
    };

    let mut patient_bsn = state
        .config
        .register
        .patient_by_bsn(&notification.bsn)
        .map(|_| notification.bsn.clone());
    let patient_known = patient_bsn.is_some();
    // An unknown patient is registered only after SBV-Z verified the BSN.
    let mut registration: Option<Result<String, String>> = None;
    if !patient_known && let Ok(pulled) = &outcome {
        let verified = verify_at_sbvz(&state, &notification.bsn, pulled.patient.as_ref()).await;
        if verified.is_ok() || state.has(Fault::RegisterDespiteSbvz) {
            patient_bsn = Some(notification.bsn.clone());
        }
        registration = Some(verified);
    }
    if state.has(Fault::WrongPatient) {
        patient_bsn = state
            .config
            .register
            .of_type("Patient")
            .filter_map(|p| {
                crate::fhir::store::identifiers(p)
                    .find(|(s, _)| *s == crate::fhir::BSN_SYSTEM)
                    .map(|(_, v)| v.to_owned())
            })
            .find(|bsn| *bsn != notification.bsn);
    }

    let mut inbox = lock(&state.inbox);
    let Some(entry) = inbox
        .iter_mut()
        .find(|e| e.notification == notification.identifier.value)
    else {
        return;
    };
    if entry.status == InboxStatus::Cancelled {
        // Cancelled while pulling: the referral stays cancelled.
        return;
    }
    state.log.write(&match &outcome {
        Ok(pulled) => format!(
            "pulled notification {}: {} searches, {} resources, {}",
            notification.identifier.value,
            pulled.searches_run,
            pulled.resources,
            state.patient_for_log(&notification.bsn)
        ),
        Err(problem) => format!(
            "the pull of notification {} failed: {}",
            notification.identifier.value,
            // A failed search's URL names the BSN.
            problem.replace(&notification.bsn, &state.patient_for_log(&notification.bsn))
        ),
    });
    *entry = match outcome {
        Ok(pulled) => InboxEntry {
            notification: notification.identifier.value.clone(),
            department,
            status: if patient_known || patient_bsn.is_some() {
                InboxStatus::Filed
            } else {
                InboxStatus::AwaitingRegistration
            },
            patient_bsn,
            patient_known,
            searches_run: pulled.searches_run,
            resources_pulled: pulled.resources,
            letter: pulled.letter,
            sbvz: registration.as_ref().map(|r| match r {
                Ok(answer) | Err(answer) => answer.clone(),
            }),
            problem: registration.and_then(Result::err),
        },
        Err(problem) => InboxEntry {
            status: InboxStatus::Failed,
            problem: Some(problem),
            department,
            ..entry.clone()
        },
    };
}

#[derive(Default)]
struct Pulled {
    searches_run: usize,
    resources: usize,
    letter: Option<LetterCopy>,
    /// The pulled Patient with the notified BSN, for registering an unknown patient.
    patient: Option<serde_json::Value>,
}

async fn run_pull(
    state: &NodeState,
    notification: &ReceivedNotification,
) -> Result<Pulled, String> {
    let sender_ura = notification
        .on_behalf_of
        .as_ref()
        .map(|i| i.value.clone())
        .ok_or("the notification names no sending organisation")?;
    let endpoints = lock(&state.senders)
        .get(&sender_ura)
        .cloned()
        .ok_or_else(|| format!("no endpoints configured for sender organisation {sender_ura}"))?;

    if !state.has(Fault::RepullOnCancel) && state.is_cancelled(&notification.identifier.value) {
        return Err("the notification was cancelled before the pull started".to_owned());
    }
    let token = request_token(state, &endpoints.token_url, notification).await?;
    let session = Session {
        state,
        base: endpoints.fhir_base.trim_end_matches('/').to_owned(),
        token,
        notification: notification.identifier.value.clone(),
    };

    if notification.get_workflow_task
        && !state.has(Fault::SkipWorkflowTask)
        && let Some(task_ref) = &notification.based_on
    {
        session
            .get_json(&format!("{}/{task_ref}", session.base))
            .await?;
    }

    let mut pulled = Pulled::default();
    let mut resources: Vec<Value> = Vec::new();
    for (index, query) in notification.queries.iter().enumerate() {
        if state.has(Fault::PartialSearches) && index % 2 == 1 {
            continue;
        }
        let mut url = session.search_url(&query.value);
        for _ in 0..MAX_PAGES {
            let bundle = session.get_json(&url).await?;
            resources.extend(entries(&bundle).map(|(r, _)| r.clone()));
            match next_link(&bundle) {
                Some(next) if !state.has(Fault::IgnorePaging) => url = next.to_owned(),
                _ => break,
            }
        }
        pulled.searches_run += 1;
    }
    for reference in &notification.reads {
        resources.push(
            session
                .get_json(&format!("{}/{reference}", session.base))
                .await?,
        );
    }
    pulled.resources = resources.len();
    pulled.patient = resources
        .iter()
        .find(|r| {
            r["resourceType"] == "Patient"
                && crate::fhir::store::identifiers(r)
                    .any(|(s, v)| s == crate::fhir::BSN_SYSTEM && v == notification.bsn)
        })
        .cloned();

    if !state.has(Fault::SkipLetter) {
        pulled.letter = session.fetch_letter(&resources).await?;
    }
    Ok(pulled)
}

async fn request_token(
    state: &NodeState,
    token_url: &str,
    notification: &ReceivedNotification,
) -> Result<String, String> {
    let now = unix_now();
    let client = AssertionClaims::new(&state.base, token_url, now, 60);
    let authorization = AssertionClaims::new(&state.config.ura, token_url, now, 60);
    let base = if state.has(Fault::OmitAuthorizationBase) {
        None
    } else {
        notification.authorization_base.as_deref()
    };
    let sign = |claims| {
        encode_jwt(claims, &state.signer)
            .map_err(|e| format!("failed to sign the token request's assertions: {e}"))
    };
    let form = token_request_form(&sign(&client)?, Some(&sign(&authorization)?), base);
    let response = state
        .http
        .post(token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .map_err(|e| format!("token request failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("token request answered {}", response.status()));
    }
    let token: TokenResponse = response
        .json()
        .await
        .map_err(|e| format!("token response is not RFC 6749 JSON: {e}"))?;
    Ok(token.access_token)
}

impl Session<'_> {
    /// A notified query as a wire URL: absolute values as given, relative ones below the
    /// base with reserved characters percent-encoded.
    fn search_url(&self, value: &str) -> String {
        if value.starts_with("http://") || value.starts_with("https://") {
            return value.to_owned();
        }
        let relative = SearchUrl::parse_relative(value)
            .map(|u| u.to_relative())
            .unwrap_or_else(|_| value.trim_start_matches('/').to_owned());
        format!("{}/{relative}", self.base)
    }

    async fn get(&self, url: &str, accept: &str) -> Result<reqwest::Response, String> {
        if !self.state.has(Fault::RepullOnCancel) && self.state.is_cancelled(&self.notification) {
            return Err("the notification was cancelled; the pull stopped".to_owned());
        }
        let response = self
            .state
            .http
            .get(url)
            .bearer_auth(&self.token)
            .header("accept", accept)
            .send()
            .await
            .map_err(|e| format!("GET {url} failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url} answered {}", response.status()));
        }
        Ok(response)
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        self.get(url, "application/fhir+json")
            .await?
            .json()
            .await
            .map_err(|e| format!("GET {url}: the body is not JSON: {e}"))
    }

    async fn fetch_letter(&self, resources: &[Value]) -> Result<Option<LetterCopy>, String> {
        let urls = resources
            .iter()
            .filter(|r| r["resourceType"] == "DocumentReference")
            .flat_map(|d| d["content"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["attachment"]["url"].as_str().map(str::to_owned));
        let mut letter = None;
        for url in urls {
            let absolute = if url.starts_with("http") {
                url
            } else {
                format!("{}/{url}", self.base)
            };
            let binary = self.get_json(&absolute).await?;
            let content = binary["content"].as_str().unwrap_or_default();
            let mut bytes = STANDARD
                .decode(content)
                .map_err(|_| format!("GET {absolute}: Binary.content is not base64"))?;
            if self.state.has(Fault::CorruptLetter) {
                bytes.pop();
            }
            letter = Some(LetterCopy {
                size: bytes.len(),
                sha256: hex(&Sha256::digest(&bytes)),
            });
        }
        Ok(letter)
    }
}

/// Verifies an unknown patient's BSN at SBV-Z (OpvragenVerifieren, search path 2 from the
/// pulled Patient). `Ok` with the answer when SBV-Z found exactly this living person
/// without deviations; `Err` with why the patient must not be registered otherwise.
async fn verify_at_sbvz(
    state: &NodeState,
    bsn: &str,
    patient: Option<&serde_json::Value>,
) -> Result<String, String> {
    use crate::protocol::sbvz::{
        Resultaat, SbvzOperation, SbvzReply, Vraag, parse_response, verifieren_request,
    };
    if state.has(Fault::RegisterWithoutSbvz) {
        return Ok("registered without an SBV-Z check".to_owned());
    }
    let Some(base) = &state.config.sbvz_url else {
        return Err("no SBV-Z binding configured: the patient waits for registration".to_owned());
    };
    let patient = patient.ok_or("the pull brought no Patient with the notified BSN")?;
    let vraag = Vraag::from_patient(patient, bsn)
        .map_err(|e| format!("no SBV-Z question possible: {e}"))?;
    let request = verifieren_request(
        &vraag,
        &uuid::Uuid::new_v4().to_string(),
        Default::default(),
    )
    .map_err(|e| e.to_string())?;
    // The node's TLS client for an https binding (mutual TLS, like the real service).
    let client = if base.starts_with("https://") {
        &state.http
    } else {
        &state.sbvz_http
    };
    let response = client
        .post(request.url(base))
        .header("content-type", crate::protocol::soap::CONTENT_TYPE)
        .header("SOAPAction", request.soap_action_header())
        .body(request.body.clone())
        .send()
        .await
        .map_err(|e| format!("SBV-Z could not be reached: {e}"))?;
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("SBV-Z answer broke off: {e}"))?;
    match parse_response(
        SbvzOperation::OpvragenVerifieren,
        &bytes,
        &Default::default(),
    ) {
        Ok(SbvzReply::Answer(answer)) => {
            let codes: Vec<&str> = answer.meldingen.iter().map(|m| m.code.as_str()).collect();
            let resultaat = answer.resultaat.map_or("no Resultaat", |r| r.code());
            let summary = format!("Resultaat {resultaat}, meldingen {}", codes.join(","));
            match answer.resultaat {
                Some(Resultaat::Goed) if !answer.is_deceased() => Ok(summary),
                Some(Resultaat::Goed) => Err(format!(
                    "SBV-Z reports the person deceased ({summary}): not registered"
                )),
                Some(Resultaat::GoedMetAfwijkingen) => Err(format!(
                    "SBV-Z found deviating data ({summary}): registration needs a person to check"
                )),
                _ => Err(format!(
                    "SBV-Z did not verify the BSN ({summary}): not registered"
                )),
            }
        }
        Ok(SbvzReply::Fault(fault)) => {
            Err(format!("SBV-Z answered a SOAP fault: {}", fault.string))
        }
        Err(e) => Err(format!("SBV-Z answer unreadable: {e}")),
    }
}

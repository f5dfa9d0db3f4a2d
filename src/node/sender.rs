//! The reference node's sending role: on a control-API call it notifies a receiver about
//! one of its patients, serves that patient's BgZ and letter to the pull, issues pull
//! tokens for the authorization base, and cancels by conditional update. Sender-side
//! fault switches break single rules of what it sends and serves.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{NodeState, lock};
use crate::fhir::bundle::{PageRequest, searchset_page};
use crate::fhir::catalogue::notified_queries;
use crate::fhir::media::{FHIR_JSON, PDF, Wanted, negotiate};
use crate::fhir::outcome::operation_outcome;
use crate::fhir::search::SearchUrl;
use crate::fhir::store::{PatientScope, resource_key};
use crate::node::faults::Fault;
use crate::protocol::IDENTIFIER_SYSTEM;
use crate::protocol::notification::{
    Ident, NotificationSpec, build_cancellation, build_notification, build_workflow_task,
    new_identifier,
};
use crate::protocol::token::{
    AssertionClaims, TokenResponse, encode_jwt, form_value, opaque_token, parse_form, token_error,
    token_request_form, unix_now,
};
use crate::transport::PeerCertificates;

/// Matches per page the node serves.
const PAGE_SIZE: usize = 20;

/// Where and to whom the node sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendRequest {
    /// BSN of one of the node's patients.
    pub bsn: String,
    /// The receiver's notification base (accepting `POST Task`).
    pub notification_base: String,
    /// The receiver's token endpoint.
    pub token_url: String,
    /// The receiving organisation's URA.
    pub receiver_ura: String,
    /// `Task.owner.identifier`: the addressed department.
    pub owner: Option<Ident>,
    /// Offer the letter as a read input instead of a query.
    #[serde(default)]
    pub letter_as_read: bool,
}

/// What the control API answers to a send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendOutcome {
    /// `Task.identifier.value` of the notification.
    pub identifier: String,
    /// The receiver's HTTP status.
    pub status: u16,
}

/// A notification the node sent, and what it makes available.
#[derive(Debug)]
pub(super) struct Offer {
    identifier: Ident,
    bsn: String,
    scope: PatientScope,
    workflow_task: Value,
    receiver: SendRequest,
    /// The notified searches: a pull token answers only these.
    notified: Vec<SearchUrl>,
    revoked: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
pub(super) struct SenderState {
    /// Offers by authorization base.
    offers: Mutex<HashMap<String, Arc<Offer>>>,
    /// Pull tokens: token -> (offer, expiry).
    grants: Mutex<HashMap<String, (Arc<Offer>, super::Issued)>>,
}

fn fhir(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

fn outcome(status: StatusCode, code: &str, diagnostics: &str) -> Response {
    fhir(status, &operation_outcome("error", code, diagnostics))
}

fn control_error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn notification_token(state: &NodeState, token_url: &str) -> Result<String, String> {
    let now = unix_now();
    let client = AssertionClaims::new(&state.base, token_url, now, 60);
    let authorization = AssertionClaims::new(&state.config.ura, token_url, now, 60);
    let sign = |claims: &AssertionClaims| {
        encode_jwt(claims, &state.signer).map_err(|e| format!("failed to sign an assertion: {e}"))
    };
    let form = token_request_form(&sign(&client)?, Some(&sign(&authorization)?), None);
    let response = state
        .http
        .post(token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .map_err(|e| format!("token request to {token_url} failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "the receiver's token endpoint answered {}",
            response.status()
        ));
    }
    let token: TokenResponse = response
        .json()
        .await
        .map_err(|e| format!("the token response is not RFC 6749 JSON: {e}"))?;
    Ok(token.access_token)
}

/// `POST /control/send`: notify a receiver about one of the node's patients.
pub(super) async fn control_send(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
    let request: SendRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return control_error(
                StatusCode::BAD_REQUEST,
                format!("expected a send request: {e}"),
            );
        }
    };
    let records = &state.config.records;
    let Some(patient) = records.patient_by_bsn(&request.bsn) else {
        return control_error(
            StatusCode::NOT_FOUND,
            "no patient with that BSN in the node's records".to_owned(),
        );
    };
    let scope = PatientScope {
        patient_ref: resource_key(patient).unwrap_or_default(),
        bsn: request.bsn.clone(),
    };
    let letter = records
        .of_type("DocumentReference")
        .find(|d| d["subject"]["reference"].as_str() == Some(scope.patient_ref.as_str()))
        .and_then(|d| resource_key(d));
    let referral = records
        .of_type("ReferralRequest")
        .find(|d| d["subject"]["reference"].as_str() == Some(scope.patient_ref.as_str()))
        .and_then(|d| resource_key(d));

    let now = time::OffsetDateTime::now_utc();
    let format = &time::format_description::well_known::Rfc3339;
    let period_end = (now + time::Duration::days(7))
        .format(format)
        .unwrap_or_default();
    let workflow_id = format!("wf-{}", uuid::Uuid::new_v4().simple());
    let authorization_base = opaque_token("ab");
    let identifier = new_identifier();

    let mut queries = notified_queries(&request.bsn, state.config.queries);
    let mut reads = Vec::new();
    if request.letter_as_read {
        queries.retain(|q| q.section != "ReferralLetter");
        reads.extend(letter.clone());
    }
    let spec = NotificationSpec {
        identifier: identifier.clone(),
        group_identifier: new_identifier(),
        workflow_task_id: Some(workflow_id.clone()),
        bsn: request.bsn.clone(),
        requester_agent: Ident::new(
            IDENTIFIER_SYSTEM,
            &format!("urn:oid:2.999.{}", state.config.ura),
        ),
        requester_agent_display: state.config.name.clone(),
        on_behalf_of: Ident::new(crate::fhir::URA_SYSTEM, &state.config.ura),
        owner: request.owner.clone(),
        authored_on: now.format(format).unwrap_or_default(),
        period_end: period_end.clone(),
        authorization_base: (!state.has(Fault::NoAuthorizationBase))
            .then(|| authorization_base.clone()),
        queries,
        reads,
    };
    let notified = spec
        .queries
        .iter()
        .filter_map(|q| SearchUrl::parse_relative(&q.query).ok())
        .collect();
    let task = build_notification(&spec);
    let focus = referral.unwrap_or_else(|| "ReferralRequest/unknown".to_owned());
    let offer = Arc::new(Offer {
        identifier: identifier.clone(),
        bsn: request.bsn.clone(),
        workflow_task: build_workflow_task(&workflow_id, &scope.patient_ref, &focus, &period_end),
        scope,
        receiver: request.clone(),
        notified,
        revoked: std::sync::atomic::AtomicBool::new(false),
    });
    lock(&state.sender.offers).insert(authorization_base, offer);

    let token = match notification_token(&state, &request.token_url).await {
        Ok(token) => token,
        Err(e) => return control_error(StatusCode::BAD_GATEWAY, e),
    };
    let url = format!("{}/Task", request.notification_base.trim_end_matches('/'));
    let sent = state
        .http
        .post(&url)
        .bearer_auth(token)
        .header("content-type", FHIR_JSON)
        .body(task.to_string())
        .send()
        .await;
    match sent {
        Ok(response) => Json(SendOutcome {
            identifier: identifier.value,
            status: response.status().as_u16(),
        })
        .into_response(),
        Err(e) => control_error(StatusCode::BAD_GATEWAY, format!("POST {url} failed: {e}")),
    }
}

/// `POST /control/cancel`: cancel an earlier notification: revoke, then tell the receiver.
pub(super) async fn control_cancel(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
    let wanted: Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(identifier) = wanted["identifier"].as_str() else {
        return control_error(
            StatusCode::BAD_REQUEST,
            "expected {\"identifier\": \"...\"}".to_owned(),
        );
    };
    let offer = lock(&state.sender.offers)
        .values()
        .find(|o| o.identifier.value == identifier)
        .cloned();
    let Some(offer) = offer else {
        return control_error(
            StatusCode::NOT_FOUND,
            "no notification with that identifier".to_owned(),
        );
    };
    if !state.has(Fault::ServeAfterCancel) {
        offer
            .revoked
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let token = match notification_token(&state, &offer.receiver.token_url).await {
        Ok(token) => token,
        Err(e) => return control_error(StatusCode::BAD_GATEWAY, e),
    };
    let condition = crate::fhir::search::encode(&format!(
        "{}|{}",
        offer.identifier.system, offer.identifier.value
    ));
    let url = format!(
        "{}/Task?identifier={condition}",
        offer.receiver.notification_base.trim_end_matches('/')
    );
    let body = build_cancellation(&offer.identifier, &offer.bsn);
    match state
        .http
        .put(&url)
        .bearer_auth(token)
        .header("content-type", FHIR_JSON)
        .body(body.to_string())
        .send()
        .await
    {
        Ok(response) => Json(SendOutcome {
            identifier: identifier.to_owned(),
            status: response.status().as_u16(),
        })
        .into_response(),
        Err(e) => control_error(StatusCode::BAD_GATEWAY, format!("PUT {url} failed: {e}")),
    }
}

/// `POST /sender/token`: a pull token for a valid authorization base.
pub(super) async fn pull_token(
    State(state): State<Arc<NodeState>>,
    peer: Option<Extension<PeerCertificates>>,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let error =
        |e: &str, d: &str| (StatusCode::BAD_REQUEST, Json(token_error(e, d))).into_response();
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let care_provider = match state.check_token_request(&state.pull_validator, &form, &peer) {
        Ok(care_provider) => care_provider,
        Err(refusal) => {
            state.log.write(&format!(
                "refused a pull token request: {}",
                refusal.description
            ));
            return super::receiver::token_refused(&refusal);
        }
    };
    let Some(base) = form_value(&form, "authorization_base") else {
        return error("invalid_grant", "authorization_base is missing");
    };
    let offer = lock(&state.sender.offers).get(base).cloned();
    let Some(offer) = offer else {
        return error("invalid_grant", "the authorization base is unknown");
    };
    if offer.revoked.load(std::sync::atomic::Ordering::SeqCst) {
        return error("invalid_grant", "the authorization base was revoked");
    }
    // Only the notified care provider redeems the authorization base.
    if care_provider != offer.receiver.receiver_ura && !state.has(Fault::AcceptBaseFromAnyone) {
        state.log.write(
            "refused a pull token request: the authorization base was issued to another care provider",
        );
        return error(
            "invalid_grant",
            "the authorization base was issued to another care provider",
        );
    }
    let access_token = opaque_token("pt");
    let issued = super::Issued::new(&state, &peer, care_provider);
    state.log.write(&format!(
        "issued a pull token to URA {} for {}",
        issued.client.as_deref().unwrap_or("(none)"),
        state.patient_for_log(&offer.bsn)
    ));
    lock(&state.sender.grants).insert(access_token.clone(), (offer, issued));
    Json(TokenResponse {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: state.config.token_lifetime.as_secs(),
    })
    .into_response()
}

fn authorize(
    state: &NodeState,
    headers: &HeaderMap,
    peer: Option<Extension<PeerCertificates>>,
) -> Result<Arc<Offer>, Box<Response>> {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let token = super::receiver::bearer_token(headers);
    let grant = token.and_then(|t| lock(&state.sender.grants).get(t).cloned());
    let Some((offer, issued)) = grant else {
        return Err(Box::new(super::receiver::unauthorized(
            "a valid Bearer pull token is required",
        )));
    };
    if let Some(reason) = state.token_refusal(&issued, &peer) {
        state
            .log
            .write(&format!("refused a pull request: {reason}"));
        return Err(Box::new(super::receiver::unauthorized(reason)));
    }
    if offer.revoked.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Box::new(outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the notification was cancelled",
        )));
    }
    Ok(offer)
}

fn accept(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
}

/// `GET /sender/fhir/{type}`: a search over the offered patient's record.
pub(super) async fn search(
    State(state): State<Arc<NodeState>>,
    peer: Option<Extension<PeerCertificates>>,
    Path(rtype): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let offer = match authorize(&state, &headers, peer) {
        Ok(offer) => offer,
        Err(response) => return *response,
    };
    let relative = match query {
        Some(q) => format!("{rtype}?{q}"),
        None => rtype,
    };
    serve_search(&state, &offer, &relative, &headers)
}

fn serve_search(state: &NodeState, offer: &Offer, relative: &str, headers: &HeaderMap) -> Response {
    if negotiate(accept(headers), false) == Wanted::Unmeetable {
        return outcome(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            "only FHIR JSON is served",
        );
    }
    let url = match SearchUrl::parse_relative(relative) {
        Ok(url) => url,
        Err(e) => return outcome(StatusCode::BAD_REQUEST, "invalid", &e.to_string()),
    };
    if !state.has(Fault::ServeAnySearch) && !offer.notified.iter().any(|n| same_shape(n, &url)) {
        return outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the search is not one of the notified searches",
        );
    }
    let records = &state.config.records;
    let scope = match other_patient_scope(state, &url) {
        Some(scope) if state.has(Fault::AnswerOtherPatients) => scope,
        _ => offer.scope.clone(),
    };
    let hits = match records.search(&url, &scope) {
        Ok(hits) => hits,
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return outcome(status, "invalid", &e.to_string());
        }
    };
    let base = format!("{}/sender/fhir", state.base);
    let mut bundle = searchset_page(
        records,
        &url,
        &hits,
        PageRequest::from_url(&url, PAGE_SIZE),
        &base,
    );
    apply_serving_faults(state, &mut bundle);
    fhir(StatusCode::OK, &bundle)
}

/// True when both are the same search apart from the BSN named in patient parameters (the
/// patient check is separate) and paging.
fn same_shape(notified: &SearchUrl, asked: &SearchUrl) -> bool {
    let blank = |url: &SearchUrl| {
        let mut url = url.clone();
        for (name, value) in &mut url.params {
            if name.ends_with("identifier") {
                *value = value.split('|').next().unwrap_or_default().to_owned();
            }
        }
        url
    };
    blank(notified).same_search(&blank(asked))
}

/// The scope of the patient a search names by BSN, when that patient is in the records.
fn other_patient_scope(state: &NodeState, url: &SearchUrl) -> Option<PatientScope> {
    let bsn = url
        .params
        .iter()
        .find(|(n, _)| n.ends_with("identifier"))
        .and_then(|(_, v)| v.split_once('|'))
        .map(|(_, bsn)| bsn.to_owned())?;
    let patient = state.config.records.patient_by_bsn(&bsn)?;
    Some(PatientScope {
        patient_ref: resource_key(patient)?,
        bsn,
    })
}

/// Breaks the served Bundle the way the switched-on sender faults say.
fn apply_serving_faults(state: &NodeState, bundle: &mut Value) {
    let Some(entries) = bundle["entry"].as_array_mut() else {
        return;
    };
    if state.has(Fault::DropIncludes) {
        entries.retain(|e| e["search"]["mode"] != "include");
    }
    for entry in entries.iter_mut() {
        if state.has(Fault::IncludeAsMatch) && entry["search"]["mode"] == "include" {
            entry["search"]["mode"] = json!("match");
        }
        let resource = &mut entry["resource"];
        if state.has(Fault::WrongProfile) && resource["resourceType"] == "Condition" {
            resource["meta"]["profile"] =
                json!(["http://hl7.org/fhir/StructureDefinition/Condition"]);
        }
        if state.has(Fault::OmitDisplay) {
            strip_reference_displays(resource);
        }
        if state.has(Fault::OmitBirthDate)
            && resource["resourceType"] == "Patient"
            && let Some(patient) = resource.as_object_mut()
        {
            patient.remove("birthDate");
        }
    }
}

fn strip_reference_displays(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.contains_key("reference") {
                map.remove("display");
            }
            map.values_mut().for_each(strip_reference_displays);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_reference_displays),
        _ => {}
    }
}

/// `GET /sender/fhir/{type}/{id}`: a read, `$lastn`, the workflow Task or the letter.
pub(super) async fn read(
    State(state): State<Arc<NodeState>>,
    peer: Option<Extension<PeerCertificates>>,
    Path((rtype, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let offer = match authorize(&state, &headers, peer) {
        Ok(offer) => offer,
        Err(response) => return *response,
    };
    if id.starts_with('$') {
        let relative = match query {
            Some(q) => format!("{rtype}/{id}?{q}"),
            None => format!("{rtype}/{id}"),
        };
        return serve_search(&state, &offer, &relative, &headers);
    }
    if rtype == "Task" {
        return if offer.workflow_task["id"].as_str() == Some(id.as_str()) {
            fhir(StatusCode::OK, &offer.workflow_task)
        } else {
            outcome(StatusCode::NOT_FOUND, "not-found", "no such Task")
        };
    }
    let key = format!("{rtype}/{id}");
    let records = &state.config.records;
    let allowed = state.has(Fault::ServeUnreferenced)
        || records.reachable_from_patient(&offer.scope).contains(&key);
    let Some(resource) = records.get(&key).filter(|_| allowed) else {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("{key} is not available"),
        );
    };
    let is_pdf = rtype == "Binary" && resource["contentType"] == PDF;
    match negotiate(accept(&headers), is_pdf) {
        Wanted::FhirJson => fhir(StatusCode::OK, resource),
        Wanted::Pdf => match STANDARD.decode(resource["content"].as_str().unwrap_or_default()) {
            Ok(mut bytes) => {
                if state.has(Fault::TruncatePdf) {
                    bytes.truncate(bytes.len() / 2);
                }
                let mut response = (StatusCode::OK, bytes).into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(PDF));
                response
            }
            Err(_) => outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the Binary content is not base64",
            ),
        },
        Wanted::Unmeetable => outcome(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            "Accept allows neither FHIR JSON nor application/pdf",
        ),
    }
}

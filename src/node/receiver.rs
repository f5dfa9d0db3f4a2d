//! The reference node's HTTP face: its token endpoint (notification tokens), the
//! notification endpoint, the inspection API and the control API.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{InboxEntry, InboxStatus, Issued, NodeState, SenderEndpoints, lock, puller, sender};
use crate::fhir::media::{FHIR_JSON, is_fhir_json};
use crate::fhir::outcome::operation_outcome;
use crate::node::faults::Fault;
use crate::protocol::notification::read_notification;
use crate::protocol::token::{TokenResponse, opaque_token, parse_form, token_error};
use crate::transport::PeerCertificates;

pub(super) fn router(state: Arc<NodeState>) -> Router {
    // The test hooks: only the operator (the harness) may make the node send, or read what
    // it received and logged.
    let operator = Router::new()
        .route("/inspect/inbox", get(inbox))
        .route("/inspect/log", get(log_text))
        .route("/control/senders", post(register_sender))
        .route("/control/send", post(sender::control_send))
        .route("/control/cancel", post(sender::control_cancel))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            operator_only,
        ));
    Router::new()
        .merge(operator)
        .route("/token", post(token))
        .route("/fhir/Task", post(notification).put(cancellation))
        .route("/sender/token", post(sender::pull_token))
        .route("/sender/fhir/{rtype}", get(sender::search))
        .route("/sender/fhir/{rtype}/{id}", get(sender::read))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

/// Lets only a client certificate of the operator's URA through to the test hooks.
async fn operator_only(
    State(state): State<Arc<NodeState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(operator) = &state.config.operator {
        let ura = request
            .extensions()
            .get::<PeerCertificates>()
            .and_then(PeerCertificates::ura);
        if ura.as_ref() != Some(operator) {
            state
                .log
                .write("refused a control or inspection request from another organisation");
            return (
                StatusCode::FORBIDDEN,
                Json(json!({ "error": "the control and inspection APIs are the operator's (the harness's client certificate)" })),
            )
                .into_response();
        }
    }
    next.run(request).await
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

async fn token(
    State(state): State<Arc<NodeState>>,
    peer: Option<Extension<PeerCertificates>>,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let presented = peer.map(|Extension(p)| p).unwrap_or_default();
    let care_provider = match state.check_token_request(&state.validator, &form, &presented) {
        Ok(care_provider) => care_provider,
        Err(refusal) => {
            state.log.write(&format!(
                "refused a notification token request: {}",
                refusal.description
            ));
            return token_refused(&refusal);
        }
    };
    let access_token = opaque_token("nt");
    let issued = Issued::new(&state, &presented, care_provider);
    state.log.write(&format!(
        "issued a notification token to URA {} for care provider {}",
        issued.client.as_deref().unwrap_or("(none)"),
        issued.care_provider
    ));
    lock(&state.tokens).insert(access_token.clone(), issued);
    Json(TokenResponse {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: state.config.token_lifetime.as_secs(),
    })
    .into_response()
}

/// `400` with the RFC 6749 error body of a refused token request.
pub(super) fn token_refused(refusal: &super::TokenRefusal) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(token_error(refusal.error, &refusal.description)),
    )
        .into_response()
}

/// The credential of a `Bearer` Authorization header; the scheme is case-insensitive
/// (RFC 7235 §2.1).
pub(super) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(credential.trim())
}

/// Refuses a request whose Bearer token the node did not issue, has expired, or was issued
/// to another organisation: `401` with `WWW-Authenticate` and an OperationOutcome. Answers
/// the token's grant (none when the `accept-any-token` weakness lets anything through).
fn check_bearer(
    state: &NodeState,
    headers: &HeaderMap,
    peer: &PeerCertificates,
) -> Result<Option<Issued>, Box<Response>> {
    if state.has(Fault::AcceptAnyToken) {
        return Ok(None);
    }
    let issued = bearer_token(headers).and_then(|t| lock(&state.tokens).get(t).cloned());
    let refusal = match &issued {
        None => Some("a valid Bearer token is required"),
        Some(issued) => state.token_refusal(issued, peer),
    };
    match refusal {
        None => Ok(issued),
        Some(reason) => {
            state.log.write(&format!("refused a request: {reason}"));
            Err(Box::new(unauthorized(reason)))
        }
    }
}

/// `403` when a token granted for one care provider acts for another.
fn acting_for_another(issued: Option<&Issued>, care_provider: Option<&str>) -> Option<Response> {
    let issued = issued?;
    (care_provider != Some(issued.care_provider.as_str())).then(|| {
        outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the access token was granted for another care provider than the one this Task names",
        )
    })
}

/// `401` with `WWW-Authenticate: Bearer error="invalid_token"` and an OperationOutcome.
pub(super) fn unauthorized(reason: &str) -> Response {
    let mut response = outcome(StatusCode::UNAUTHORIZED, "login", reason);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    response
}

async fn notification(
    State(state): State<Arc<NodeState>>,
    peer: Option<Extension<PeerCertificates>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let issued = match check_bearer(&state, &headers, &peer) {
        Ok(issued) => issued,
        Err(response) => return *response,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !is_fhir_json(content_type) {
        return outcome(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "the notification must be FHIR JSON (application/fhir+json)",
        );
    }
    let task: Value = match serde_json::from_slice(&body) {
        Ok(task) => task,
        Err(e) => {
            return outcome(
                StatusCode::BAD_REQUEST,
                "structure",
                &format!("not JSON: {e}"),
            );
        }
    };
    let received = match read_notification(&task) {
        Ok(received) => received,
        Err(problems) => {
            let only_bsn = problems.iter().all(|p| p.starts_with("for.identifier"));
            if only_bsn && state.has(Fault::AcceptInvalidBsn) {
                return fhir(StatusCode::CREATED, &task);
            }
            return outcome(StatusCode::BAD_REQUEST, "invalid", &problems.join("; "));
        }
    };
    let on_behalf_of = received.on_behalf_of.as_ref().map(|i| i.value.as_str());
    if let Some(refused) = acting_for_another(issued.as_ref(), on_behalf_of)
        && !state.has(Fault::AcceptAnyRequester)
    {
        state.log.write(&format!(
            "refused notification {}: its requester.onBehalfOf is not the token's care provider",
            received.identifier.value
        ));
        return refused;
    }

    let department = match &received.owner {
        None => state.config.departments.first().map(|d| d.id.clone()),
        Some(owner) if owner.value == state.config.ura => {
            state.config.departments.first().map(|d| d.id.clone())
        }
        Some(owner) => match state
            .config
            .departments
            .iter()
            .find(|d| d.identifier == *owner)
        {
            Some(d) => Some(d.id.clone()),
            None if state.has(Fault::AcceptAnyOwner) => {
                state.config.departments.first().map(|d| d.id.clone())
            }
            None => {
                return outcome(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "Task.owner names neither this organisation nor one of its departments",
                );
            }
        },
    };

    let task_id = uuid::Uuid::new_v4().to_string();
    let location = format!("{}/fhir/Task/{task_id}", state.base);
    {
        let mut inbox = lock(&state.inbox);
        if inbox
            .iter()
            .any(|e| e.notification == received.identifier.value)
        {
            // Deduplicated on Task.identifier: the first delivery stands, no second pull.
            return fhir(StatusCode::OK, &task);
        }
        inbox.push(InboxEntry {
            notification: received.identifier.value.clone(),
            department: department.clone(),
            patient_bsn: None,
            patient_known: false,
            status: InboxStatus::Pulling,
            searches_run: 0,
            resources_pulled: 0,
            letter: None,
            sbvz: None,
            problem: None,
        });
    }
    lock(&state.notifications).insert(
        received.identifier.value.clone(),
        (received.clone(), department.clone()),
    );
    state.log.write(&format!(
        "accepted notification {} for department {} about {}",
        received.identifier.value,
        department.as_deref().unwrap_or("(organisation)"),
        state.patient_for_log(&received.bsn)
    ));
    tokio::spawn(puller::pull(state.clone(), received, department));

    let mut stored = task;
    stored["id"] = json!(task_id);
    if state.has(Fault::NoLocation) {
        return fhir(StatusCode::OK, &stored);
    }
    let mut response = fhir(StatusCode::CREATED, &stored);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `PUT [base]/Task?identifier=system|value`: the sender cancels a notification
/// (protocol.md §7). 200 when one referral matched, 201 when none did (the cancelled Task
/// is kept so a late notification is recognised).
async fn cancellation(
    State(state): State<Arc<NodeState>>,
    peer: Option<Extension<PeerCertificates>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let issued = match check_bearer(&state, &headers, &peer) {
        Ok(issued) => issued,
        Err(response) => return *response,
    };
    let params =
        crate::fhir::search::parse_query(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let Some((system, value)) = params
        .iter()
        .find(|(n, _)| n == "identifier")
        .and_then(|(_, v)| v.split_once('|'))
    else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "a cancellation is a conditional update: PUT Task?identifier=system|value",
        );
    };
    let task: Value = match serde_json::from_slice(&body) {
        Ok(task) => task,
        Err(e) => {
            return outcome(
                StatusCode::BAD_REQUEST,
                "structure",
                &format!("not JSON: {e}"),
            );
        }
    };
    if task["status"] != "cancelled" {
        return outcome(
            StatusCode::BAD_REQUEST,
            "business-rule",
            "a cancellation sets status `cancelled`; other transitions are refused",
        );
    }
    let body_identifier = &task["identifier"][0];
    if body_identifier["system"] != system || body_identifier["value"] != value {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the Task's identifier differs from the one in the URL",
        );
    }

    // Only the care provider that notified may cancel (protocol.md §7).
    let notifier = lock(&state.notifications)
        .get(value)
        .and_then(|(n, _)| n.on_behalf_of.as_ref().map(|i| i.value.clone()));
    if let Some(notifier) = notifier
        && let Some(refused) = acting_for_another(issued.as_ref(), Some(&notifier))
    {
        state.log.write(&format!(
            "refused a cancellation of notification {value}: the token's care provider did not notify it"
        ));
        return refused;
    }
    state
        .log
        .write(&format!("received a cancellation of notification {value}"));
    let matched = {
        let mut inbox = lock(&state.inbox);
        match inbox.iter_mut().find(|e| e.notification == value) {
            Some(entry) => {
                if !state.has(Fault::IgnoreCancellation) {
                    entry.status = InboxStatus::Cancelled;
                }
                true
            }
            None => {
                inbox.push(InboxEntry {
                    notification: value.to_owned(),
                    department: None,
                    patient_bsn: None,
                    patient_known: false,
                    status: InboxStatus::Cancelled,
                    searches_run: 0,
                    resources_pulled: 0,
                    letter: None,
                    sbvz: None,
                    problem: None,
                });
                false
            }
        }
    };
    if matched && state.has(Fault::RepullOnCancel) {
        let earlier = lock(&state.notifications).get(value).cloned();
        if let Some((notification, department)) = earlier {
            tokio::spawn(puller::pull(state.clone(), notification, department));
        }
    }
    let status = if matched {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    fhir(status, &task)
}

/// `GET /inspect/inbox[?notification=value]`: the inbox, or one notification's entry.
async fn inbox(State(state): State<Arc<NodeState>>, RawQuery(query): RawQuery) -> Response {
    let params =
        crate::fhir::search::parse_query(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let wanted = params
        .iter()
        .find(|(n, _)| n == "notification")
        .map(|(_, v)| v.clone());
    let entries: Vec<InboxEntry> = lock(&state.inbox)
        .iter()
        .filter(|e| wanted.as_ref().is_none_or(|w| &e.notification == w))
        .cloned()
        .collect();
    Json(json!({ "entries": entries })).into_response()
}

async fn log_text(State(state): State<Arc<NodeState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        state.log.text(),
    )
        .into_response()
}

async fn register_sender(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<SenderEndpoints>(&body) {
        Ok(endpoints) => {
            lock(&state.senders).insert(endpoints.ura.clone(), endpoints);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("expected {{ura, fhir_base, token_url}}: {e}"),
        )
            .into_response(),
    }
}

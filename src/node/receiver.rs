//! The reference node's HTTP face: its token endpoint (notification tokens), the
//! notification endpoint, the inspection API and the control API.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{InboxEntry, InboxStatus, NodeState, SenderEndpoints, lock, puller};
use crate::fhir::media::{FHIR_JSON, is_fhir_json};
use crate::fhir::outcome::operation_outcome;
use crate::node::faults::Fault;
use crate::protocol::notification::read_notification;
use crate::protocol::token::{
    GRANT_TYPE, TokenResponse, form_value, opaque_token, parse_form, token_error, unix_now,
};
use crate::transport::PeerCertificates;

const NOTIFICATION_TOKEN_LIFETIME_S: i64 = 300;

pub(super) fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/fhir/Task", post(notification))
        .route("/inspect/inbox", get(inbox))
        .route("/control/senders", post(register_sender))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
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
    let error =
        |e: &str, d: &str| (StatusCode::BAD_REQUEST, Json(token_error(e, d))).into_response();
    if form_value(&form, "grant_type") != Some(GRANT_TYPE) {
        return error(
            "unsupported_grant_type",
            "grant_type must be the JWT bearer grant",
        );
    }
    let Some(assertion) = form_value(&form, "client_assertion") else {
        return error("invalid_client", "client_assertion is missing");
    };
    let presented = peer.map(|Extension(p)| p.0).unwrap_or_default();
    if let Err(e) = state.validator.validate(assertion, unix_now(), &presented) {
        return error("invalid_client", &e.to_string());
    }
    let access_token = opaque_token("nt");
    lock(&state.tokens).insert(
        access_token.clone(),
        unix_now() + NOTIFICATION_TOKEN_LIFETIME_S,
    );
    Json(TokenResponse {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: NOTIFICATION_TOKEN_LIFETIME_S as u64,
    })
    .into_response()
}

fn bearer_is_valid(state: &NodeState, headers: &HeaderMap) -> bool {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    token
        .and_then(|t| lock(&state.tokens).get(t.trim()).copied())
        .is_some_and(|expires| expires >= unix_now())
}

async fn notification(
    State(state): State<Arc<NodeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !bearer_is_valid(&state, &headers) {
        let mut response = outcome(
            StatusCode::UNAUTHORIZED,
            "login",
            "a valid Bearer token is required",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
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
        Err(problems) => return outcome(StatusCode::BAD_REQUEST, "invalid", &problems.join("; ")),
    };

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
            problem: None,
        });
    }
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

async fn inbox(State(state): State<Arc<NodeState>>) -> Response {
    let entries = lock(&state.inbox).clone();
    Json(json!({ "entries": entries })).into_response()
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

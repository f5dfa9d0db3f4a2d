//! The simulated receiver: what the harness serves when the target is the sender. A
//! notification endpoint (`POST Task`, and `PUT Task?identifier=` for cancellations) and
//! the token endpoint for notification tokens. Each case opens a slot with its own base
//! URL, so concurrent cases never share a notification; a notification sent to the plain
//! base is given to the oldest open slot waiting for that patient's BSN.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Notify;

use super::{attributed, fhir_response, outcome_response};
use crate::fhir::media::is_fhir_json;
use crate::journal::{ExchangeKind, Journal, Party};
use crate::protocol::notification::read_notification;
use crate::protocol::token::{
    AssertionValidator, GRANT_TYPE, TokenResponse, form_value, opaque_token, parse_form,
    token_error, unix_now,
};
use crate::transport::{PeerCertificates, RecordingServer, TlsSettings};

/// What one case receives.
#[derive(Debug, Default)]
pub struct Slot {
    pub case_id: String,
    /// BSN of the patient the case expects a notification about.
    pub bsn: String,
    /// Notification bodies, in arrival order (parsed JSON, or `Null` when not JSON).
    pub notifications: Mutex<Vec<Value>>,
    /// Cancellations: the `identifier` query value and the body.
    pub cancellations: Mutex<Vec<(String, Value)>>,
}

struct ReceiverState {
    base: OnceLock<String>,
    slots: Mutex<Vec<(String, Arc<Slot>)>>,
    tokens: Mutex<HashMap<String, i64>>,
    validator: OnceLock<AssertionValidator>,
    arrived: Notify,
}

/// The running simulated receiver.
pub struct ReceiverSim {
    state: Arc<ReceiverState>,
    _server: RecordingServer,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReceiverSim {
    /// Starts the simulator on `listen`; `public_base` is how the target reaches it.
    pub async fn start(
        listen: SocketAddr,
        public_base: Option<String>,
        journal: Arc<Journal>,
        tls: &TlsSettings,
    ) -> std::io::Result<Self> {
        let state = Arc::new(ReceiverState {
            base: OnceLock::new(),
            slots: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            validator: OnceLock::new(),
            arrived: Notify::new(),
        });
        let router = Router::new()
            .route("/token", post(token))
            .route("/fhir/Task", post(notify_plain).put(cancel_plain))
            .route("/r/{slot}/fhir/Task", post(notify_slot).put(cancel_slot))
            .with_state(state.clone());
        let server = RecordingServer::start(
            listen,
            router,
            journal,
            Party::Target,
            Party::HarnessReceiver,
            Some(tls.server.clone()),
        )
        .await?;
        let base = public_base
            .unwrap_or_else(|| server.base_url())
            .trim_end_matches('/')
            .to_owned();
        let _ = state.validator.set(AssertionValidator::new(
            &format!("{base}/token"),
            5,
            tls.chains.clone(),
        ));
        let _ = state.base.set(base);
        Ok(Self {
            state,
            _server: server,
        })
    }

    fn base(&self) -> &str {
        self.state
            .base
            .get()
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The token endpoint for notification tokens.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base())
    }

    /// Opens a slot for a case; returns it with the notification base to give the target.
    pub fn open_slot(&self, case_id: &str, bsn: &str) -> (Arc<Slot>, String) {
        let key = uuid::Uuid::new_v4().simple().to_string();
        let slot = Arc::new(Slot {
            case_id: case_id.to_owned(),
            bsn: bsn.to_owned(),
            ..Slot::default()
        });
        lock(&self.state.slots).push((key.clone(), slot.clone()));
        (slot, format!("{}/r/{key}/fhir", self.base()))
    }

    /// The plain notification base (for targets configured once, not per case).
    pub fn plain_notification_base(&self) -> String {
        format!("{}/fhir", self.base())
    }

    /// Waits until something arrives at any slot, or `timeout` passes.
    pub async fn wait_for_arrival(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.state.arrived.notified()).await;
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn token(
    State(state): State<Arc<ReceiverState>>,
    peer: Option<Extension<PeerCertificates>>,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let answer = |status, error: &str, description: &str| {
        attributed(
            json_response(status, &token_error(error, description)),
            None,
            ExchangeKind::TokenRequest,
        )
    };
    if form_value(&form, "grant_type") != Some(GRANT_TYPE) {
        return answer(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be the JWT bearer grant",
        );
    }
    let Some(assertion) = form_value(&form, "client_assertion") else {
        return answer(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "client_assertion is missing",
        );
    };
    let presented = peer.map(|Extension(p)| p.0).unwrap_or_default();
    if let Some(validator) = state.validator.get()
        && let Err(e) = validator.validate(assertion, unix_now(), &presented)
    {
        return answer(StatusCode::BAD_REQUEST, "invalid_client", &e.to_string());
    }
    if let Some((error, description)) =
        super::authorization_assertion_refusal(&form, state.validator.get(), &presented)
    {
        return answer(StatusCode::BAD_REQUEST, error, &description);
    }
    let access_token = opaque_token("rt");
    lock(&state.tokens).insert(access_token.clone(), unix_now() + 300);
    let body = serde_json::to_value(TokenResponse {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: 300,
    })
    .unwrap_or_default();
    attributed(
        json_response(StatusCode::OK, &body),
        None,
        ExchangeKind::TokenRequest,
    )
}

fn authorized(state: &ReceiverState, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| lock(&state.tokens).get(t.trim()).copied())
        .is_some_and(|expires| expires >= unix_now())
}

fn slot_by_key(state: &ReceiverState, key: &str) -> Option<Arc<Slot>> {
    lock(&state.slots)
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, s)| s.clone())
}

fn slot_by_bsn(state: &ReceiverState, bsn: &str) -> Option<Arc<Slot>> {
    lock(&state.slots)
        .iter()
        .find(|(_, s)| s.bsn == bsn && lock(&s.notifications).is_empty())
        .map(|(_, s)| s.clone())
}

async fn notify_slot(
    State(state): State<Arc<ReceiverState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let slot = slot_by_key(&state, &key);
    receive_notification(&state, slot, &headers, &body)
}

async fn notify_plain(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or_default();
    let bsn = parsed["for"]["identifier"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let slot = slot_by_bsn(&state, &bsn);
    receive_notification(&state, slot, &headers, &body)
}

/// Records the notification in its slot and answers as a compliant receiver would: 201
/// with a Location for a valid one, 4xx with an OperationOutcome otherwise.
fn receive_notification(
    state: &ReceiverState,
    slot: Option<Arc<Slot>>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let case_id = slot.as_ref().map(|s| s.case_id.clone());
    let reply =
        |response: Response| attributed(response, case_id.as_deref(), ExchangeKind::Notification);
    if !authorized(state, headers) {
        let mut response = outcome_response(
            StatusCode::UNAUTHORIZED,
            "login",
            "a valid Bearer token is required",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return reply(response);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !is_fhir_json(content_type) {
        return reply(outcome_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "expected application/fhir+json",
        ));
    }
    let Some(slot) = slot else {
        return reply(outcome_response(
            StatusCode::NOT_FOUND,
            "not-found",
            "no case is waiting for this notification",
        ));
    };
    let task: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    lock(&slot.notifications).push(task.clone());
    state.arrived.notify_waiters();
    match read_notification(&task) {
        Ok(_) => {
            let base = state.base.get().map(String::as_str).unwrap_or_default();
            let location = format!("{base}/fhir/Task/{}", uuid::Uuid::new_v4());
            let mut response = fhir_response(StatusCode::CREATED, &task);
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            reply(response)
        }
        Err(problems) => reply(outcome_response(
            StatusCode::BAD_REQUEST,
            "invalid",
            &problems.join("; "),
        )),
    }
}

async fn cancel_slot(
    State(state): State<Arc<ReceiverState>>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let slot = slot_by_key(&state, &key);
    receive_cancellation(&state, slot, query, &headers, &body)
}

async fn cancel_plain(
    State(state): State<Arc<ReceiverState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or_default();
    let value = parsed["identifier"][0]["value"].clone();
    let slot = lock(&state.slots)
        .iter()
        .find(|(_, s)| {
            lock(&s.notifications)
                .iter()
                .any(|n| n["identifier"][0]["value"] == value)
        })
        .map(|(_, s)| s.clone());
    receive_cancellation(&state, slot, query, &headers, &body)
}

fn receive_cancellation(
    state: &ReceiverState,
    slot: Option<Arc<Slot>>,
    query: Option<String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let case_id = slot.as_ref().map(|s| s.case_id.clone());
    let reply =
        |response: Response| attributed(response, case_id.as_deref(), ExchangeKind::Cancellation);
    if !authorized(state, headers) {
        return reply(outcome_response(
            StatusCode::UNAUTHORIZED,
            "login",
            "a valid Bearer token is required",
        ));
    }
    let Some(slot) = slot else {
        return reply(outcome_response(
            StatusCode::NOT_FOUND,
            "not-found",
            "no case expects this cancellation",
        ));
    };
    let params =
        crate::fhir::search::parse_query(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let identifier = params
        .iter()
        .find(|(n, _)| n == "identifier")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let task: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    lock(&slot.cancellations).push((identifier.clone(), task.clone()));
    state.arrived.notify_waiters();
    let matched = identifier.split_once('|').is_some_and(|(_, v)| {
        lock(&slot.notifications)
            .iter()
            .any(|n| n["identifier"][0]["value"] == v)
    });
    if task["status"] != "cancelled" {
        return reply(outcome_response(
            StatusCode::BAD_REQUEST,
            "business-rule",
            "a cancellation sets status `cancelled`",
        ));
    }
    reply(fhir_response(
        if matched {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        &task,
    ))
}

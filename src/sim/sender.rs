//! The simulated sender: what the harness serves when the target is the receiver. A FHIR
//! STU3 read and search API over one patient fixture per notification ("share"), a token
//! endpoint that binds access tokens to the share's authorization base, and the workflow
//! Task. Each share belongs to one case, so concurrent cases never see each other's data.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::Extension;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::Value;

use super::{attributed, fhir_response, outcome_response};
use crate::fhir::bundle::{PageRequest, searchset_page};
use crate::fhir::media::{PDF, Wanted, negotiate};
use crate::fhir::search::SearchUrl;
use crate::fhir::store::{PatientScope, ResourceStore};
use crate::journal::{ExchangeKind, Journal, Party};
use crate::protocol::token::{
    AssertionError, AssertionValidator, GRANT_TYPE, TokenResponse, form_value, opaque_token,
    parse_form, token_error, unix_now,
};
use crate::transport::{PeerCertificates, RecordingServer, TlsSettings};

/// Access-token lifetime in seconds (protocol profile default).
pub const ACCESS_TOKEN_LIFETIME_S: i64 = 300;

/// What one notification makes available, and to whom.
#[derive(Debug)]
pub struct Share {
    pub case_id: String,
    pub authorization_base: String,
    pub store: Arc<ResourceStore>,
    pub scope: PatientScope,
    /// `Type/id` of every resource this share may expose.
    pub reachable: BTreeSet<String>,
    pub workflow_task: Option<Value>,
    /// Matches per searchset page.
    pub page_size: usize,
    /// Set when the sender cancelled: new tokens are refused, old ones get 403.
    pub revoked: AtomicBool,
    /// When true, token requests wait until [`SenderSim::revoke`] releases them.
    pub hold_token: bool,
    /// The notified searches: the access token answers only these (and their pages).
    pub notified: Vec<SearchUrl>,
    /// Flipped to true by [`SenderSim::revoke`].
    pub released: tokio::sync::watch::Sender<bool>,
    /// Set while a held token request waits for the release.
    pub token_waiting: AtomicBool,
}

/// Longest a held token request waits for the case to cancel.
const MAX_TOKEN_HOLD: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Grant {
    share: Arc<Share>,
    expires_at: i64,
}

struct SenderState {
    base: OnceLock<String>,
    shares: Mutex<HashMap<String, Arc<Share>>>,
    grants: Mutex<HashMap<String, Grant>>,
    validator: OnceLock<AssertionValidator>,
    leeway_s: i64,
}

/// The running simulated sender.
pub struct SenderSim {
    state: Arc<SenderState>,
    server: RecordingServer,
}

impl SenderSim {
    /// Starts the simulator on `listen`, serving HTTPS with the harness's server certificate
    /// and requiring client certificates from `tls`'s CA; `public_base` overrides the address
    /// by which the target reaches it (for a target on another host).
    pub async fn start(
        listen: SocketAddr,
        public_base: Option<String>,
        journal: Arc<Journal>,
        tls: &TlsSettings,
    ) -> std::io::Result<Self> {
        let state = Arc::new(SenderState {
            base: OnceLock::new(),
            shares: Mutex::new(HashMap::new()),
            grants: Mutex::new(HashMap::new()),
            validator: OnceLock::new(),
            leeway_s: 5,
        });
        let router = Router::new()
            .route("/token", post(token))
            .route("/fhir/{rtype}", get(search))
            .route("/fhir/{rtype}/{id}", get(read_or_operation))
            .with_state(state.clone());
        let server = RecordingServer::start(
            listen,
            router,
            journal,
            Party::Target,
            Party::HarnessSender,
            Some(tls.server.clone()),
        )
        .await?;
        let base = public_base.unwrap_or_else(|| server.base_url());
        let base = base.trim_end_matches('/').to_owned();
        let _ = state.validator.set(AssertionValidator::new(
            &format!("{base}/token"),
            state.leeway_s,
            tls.chains.clone(),
        ));
        let _ = state.base.set(base);
        Ok(Self { state, server })
    }

    /// The FHIR base the target pulls from.
    pub fn fhir_base(&self) -> String {
        format!("{}/fhir", self.public_base())
    }

    /// The token endpoint the target asks for a pull token.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.public_base())
    }

    fn public_base(&self) -> &str {
        self.state
            .base
            .get()
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Where the simulator listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Makes a share available under its authorization base.
    pub fn publish(&self, share: Share) -> Arc<Share> {
        let share = Arc::new(share);
        lock(&self.state.shares).insert(share.authorization_base.clone(), share.clone());
        share
    }

    /// Revokes a share: its authorization base no longer yields tokens and its tokens stop
    /// working.
    pub fn revoke(&self, authorization_base: &str) {
        if let Some(share) = lock(&self.state.shares).get(authorization_base) {
            share.revoked.store(true, Ordering::SeqCst);
            share.released.send_replace(true);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
    State(state): State<Arc<SenderState>>,
    peer: Option<Extension<PeerCertificates>>,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let base = form_value(&form, "authorization_base");
    let share = base.and_then(|b| lock(&state.shares).get(b).cloned());
    let case_id = share.as_ref().map(|s| s.case_id.clone());
    let answer = |status, error: &str, description: &str| {
        attributed(
            json_response(status, &token_error(error, description)),
            case_id.as_deref(),
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
    let verdict = match state.validator.get() {
        Some(validator) => validator.validate(assertion, unix_now(), &presented),
        None => Err(AssertionError::Untrusted(
            "the token endpoint is still starting".to_owned(),
        )),
    };
    if let Err(e) = verdict {
        return answer(StatusCode::BAD_REQUEST, "invalid_client", &e.to_string());
    }
    if let Some((error, description)) =
        super::authorization_assertion_refusal(&form, state.validator.get(), &presented)
    {
        return answer(StatusCode::BAD_REQUEST, error, &description);
    }
    let Some(share) = share else {
        let why = if base.is_some() {
            "the authorization_base is unknown"
        } else {
            "authorization_base is missing"
        };
        return answer(StatusCode::BAD_REQUEST, "invalid_grant", why);
    };
    if share.hold_token {
        share.token_waiting.store(true, Ordering::SeqCst);
        let mut released = share.released.subscribe();
        let _ = tokio::time::timeout(MAX_TOKEN_HOLD, released.wait_for(|r| *r)).await;
    }
    if share.revoked.load(Ordering::SeqCst) {
        return answer(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the authorization base was revoked",
        );
    }

    let access_token = opaque_token("at");
    lock(&state.grants).insert(
        access_token.clone(),
        Grant {
            share: share.clone(),
            expires_at: unix_now() + ACCESS_TOKEN_LIFETIME_S,
        },
    );
    let body = TokenResponse {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: ACCESS_TOKEN_LIFETIME_S as u64,
    };
    let body = serde_json::to_value(body).unwrap_or_default();
    attributed(
        json_response(StatusCode::OK, &body),
        Some(&share.case_id),
        ExchangeKind::TokenRequest,
    )
}

/// The share behind the request's bearer token, or the error answer to give.
fn authorize(state: &SenderState, headers: &HeaderMap) -> Result<Arc<Share>, Box<Response>> {
    let unauthorized = |why: &str| {
        let mut response = outcome_response(StatusCode::UNAUTHORIZED, "login", why);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        response
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return Err(Box::new(unauthorized("a Bearer access token is required")));
    };
    let grant = lock(&state.grants).get(token).cloned();
    let Some(grant) = grant else {
        return Err(Box::new(unauthorized("the access token is not valid")));
    };
    if grant.expires_at < unix_now() {
        return Err(Box::new(attributed(
            unauthorized("the access token has expired"),
            Some(&grant.share.case_id),
            ExchangeKind::Other,
        )));
    }
    if grant.share.revoked.load(Ordering::SeqCst) {
        return Err(Box::new(attributed(
            outcome_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the notification was cancelled",
            ),
            Some(&grant.share.case_id),
            ExchangeKind::Other,
        )));
    }
    Ok(grant.share)
}

async fn search(
    State(state): State<Arc<SenderState>>,
    Path(rtype): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let share = match authorize(&state, &headers) {
        Ok(share) => share,
        Err(response) => return *response,
    };
    let kind = ExchangeKind::Search;
    let relative = match &query {
        Some(q) => format!("{rtype}?{q}"),
        None => rtype.clone(),
    };
    let answer = serve_search(&state, &share, &relative, &headers);
    attributed(answer, Some(&share.case_id), kind)
}

fn serve_search(
    state: &SenderState,
    share: &Share,
    relative: &str,
    headers: &HeaderMap,
) -> Response {
    if negotiate(accept(headers), false) == Wanted::Unmeetable {
        return outcome_response(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            "only FHIR JSON is served",
        );
    }
    let url = match SearchUrl::parse_relative(relative) {
        Ok(url) => url,
        Err(e) => return outcome_response(StatusCode::BAD_REQUEST, "invalid", &e.to_string()),
    };
    if !share.notified.iter().any(|n| n.same_search(&url)) {
        return outcome_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the access token is bound to the notified searches; this is not one of them",
        );
    }
    let hits = match share.store.search(&url, &share.scope) {
        Ok(hits) => hits,
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let code = if status == StatusCode::FORBIDDEN {
                "forbidden"
            } else {
                "not-supported"
            };
            return outcome_response(status, code, &e.to_string());
        }
    };
    let base = format!(
        "{}/fhir",
        state.base.get().map(String::as_str).unwrap_or_default()
    );
    let page = PageRequest::from_url(&url, share.page_size);
    let bundle = searchset_page(&share.store, &url, &hits, page, &base);
    fhir_response(StatusCode::OK, &bundle)
}

fn accept(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
}

async fn read_or_operation(
    State(state): State<Arc<SenderState>>,
    Path((rtype, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let share = match authorize(&state, &headers) {
        Ok(share) => share,
        Err(response) => return *response,
    };
    let case_id = Some(share.case_id.as_str());

    if id.starts_with('$') {
        let relative = match &query {
            Some(q) => format!("{rtype}/{id}?{q}"),
            None => format!("{rtype}/{id}"),
        };
        let answer = serve_search(&state, &share, &relative, &headers);
        return attributed(answer, case_id, ExchangeKind::Search);
    }

    if rtype == "Task" {
        let task = share
            .workflow_task
            .as_ref()
            .filter(|t| t["id"].as_str() == Some(id.as_str()));
        let answer = match task {
            Some(task) => fhir_response(StatusCode::OK, task),
            None => outcome_response(StatusCode::NOT_FOUND, "not-found", "no such workflow task"),
        };
        return attributed(answer, case_id, ExchangeKind::WorkflowTask);
    }

    let key = format!("{rtype}/{id}");
    let kind = if rtype == "Binary" {
        ExchangeKind::Binary
    } else {
        ExchangeKind::Read
    };
    let resource = share
        .reachable
        .contains(&key)
        .then(|| share.store.get(&key))
        .flatten();
    let Some(resource) = resource else {
        let answer = outcome_response(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("{rtype} {id} is not available"),
        );
        return attributed(answer, case_id, kind);
    };

    let is_pdf = rtype == "Binary" && resource["contentType"] == PDF;
    let answer = match negotiate(accept(&headers), is_pdf) {
        Wanted::FhirJson => fhir_response(StatusCode::OK, resource),
        Wanted::Pdf => match STANDARD.decode(resource["content"].as_str().unwrap_or_default()) {
            Ok(bytes) => {
                let mut response = (StatusCode::OK, bytes).into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(PDF));
                response
            }
            Err(_) => outcome_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the Binary content is not base64",
            ),
        },
        Wanted::Unmeetable => outcome_response(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            "Accept allows neither FHIR JSON nor (for a PDF Binary) application/pdf",
        ),
    };
    attributed(answer, case_id, kind)
}

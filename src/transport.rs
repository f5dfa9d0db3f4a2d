//! HTTP transport for both sides of every exchange: a client that records what it sends and
//! receives in the journal, and a server wrapper whose middleware does the same for what it
//! serves. Both speak mutual TLS when given [`TlsSettings`] (see the `tls` submodule); a
//! client without TLS material refuses every HTTPS server rather than trusting system roots.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::{Request as AxumRequest, State};
use axum::middleware::{self, Next};
use axum::response::Response as AxumResponse;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::net::TcpListener;

use crate::journal::{Body, Exchange, ExchangeKind, Journal, Party, Request, Response};

mod tls;

pub use tls::{
    ChainVerifier, ClientTls, Leniency, PeerCertificates, PemSource, ServerTls, ServerVerification,
    TaskGuard, TlsError, TlsFiles, TlsIdentity, TlsSettings, TlsVersions, load_certificates,
    load_identity, subject_serial_number,
};

/// Largest body the harness reads from a peer; a larger one is an error, never truncated.
pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;

/// Tells the recording middleware which case and kind a served exchange belongs to. Handlers
/// put it into the response's extensions.
#[derive(Debug, Clone)]
pub struct Attribution {
    pub case_id: Option<String>,
    pub kind: ExchangeKind,
}

/// What went wrong on the wire. A failed check is something else: this is the peer not
/// answering usably at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("exchange {exchange}: {method} {url} failed: {reason}")]
    Failed {
        exchange: String,
        method: String,
        url: String,
        reason: String,
    },
}

/// A client that journals every exchange it makes.
#[derive(Clone)]
pub struct RecordingClient {
    http: reqwest::Client,
    journal: Arc<Journal>,
    from: Party,
    to: Party,
    max_body: usize,
}

/// A request to send through [`RecordingClient::send`].
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<(String, Bytes)>,
    pub case_id: Option<String>,
    pub kind: ExchangeKind,
}

impl Outgoing {
    /// A GET without body.
    pub fn get(url: impl Into<String>, kind: ExchangeKind) -> Self {
        Self {
            method: reqwest::Method::GET,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            case_id: None,
            kind,
        }
    }

    /// A request with a body of the given content type.
    pub fn with_body(
        method: reqwest::Method,
        url: impl Into<String>,
        content_type: &str,
        body: impl Into<Bytes>,
        kind: ExchangeKind,
    ) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Some((content_type.to_owned(), body.into())),
            case_id: None,
            kind,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Attributes the exchange to a case.
    pub fn for_case(mut self, case_id: Option<&str>) -> Self {
        self.case_id = case_id.map(str::to_owned);
        self
    }
}

/// Settings shared by every client the harness or the reference node makes.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Whole-exchange timeout: connect, send, and read the full body.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body: usize,
    /// Client certificate and server verification; without it HTTPS servers are refused.
    pub tls: Option<ClientTls>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_body: DEFAULT_MAX_BODY,
            tls: None,
        }
    }
}

/// An HTTP client with `settings`: no redirects, no proxy, and TLS only as configured.
pub fn http_client(settings: &ClientSettings) -> Result<reqwest::Client, reqwest::Error> {
    let tls = match &settings.tls {
        Some(tls) => (*tls.0).clone(),
        None => tls::untrusting_client_config(),
    };
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tls_backend_preconfigured(tls)
        .build()
}

impl RecordingClient {
    /// A client that records as `from` talking to `to`.
    pub fn new(
        settings: &ClientSettings,
        journal: Arc<Journal>,
        from: Party,
        to: Party,
    ) -> Result<Self, reqwest::Error> {
        let http = http_client(settings)?;
        Ok(Self {
            http,
            journal,
            from,
            to,
            max_body: settings.max_body,
        })
    }

    /// The journal this client records into.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Sends the request, reads the whole response within the limits, records both, and
    /// returns the journaled exchange. A transport failure is recorded too.
    pub async fn send(&self, outgoing: Outgoing) -> Result<Exchange, TransportError> {
        let id = self.journal.next_id();
        let at_us = self.journal.now_us();
        let started = Instant::now();

        let mut request = Request {
            method: outgoing.method.to_string(),
            url: outgoing.url.clone(),
            headers: outgoing.headers.clone(),
            body: Body::default(),
        };
        let mut builder = self.http.request(outgoing.method.clone(), &outgoing.url);
        for (name, value) in &outgoing.headers {
            builder = builder.header(name, value);
        }
        if let Some((content_type, bytes)) = &outgoing.body {
            request
                .headers
                .push(("content-type".into(), content_type.clone()));
            request.body = Body {
                bytes: bytes.clone(),
                content_type: Some(content_type.clone()),
            };
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes.clone());
        }

        let outcome = self.exchange(builder).await;
        let (response, error) = match outcome {
            Ok(response) => (Some(response), None),
            Err(reason) => (None, Some(reason)),
        };
        let exchange = Exchange {
            id: id.clone(),
            case_id: outgoing.case_id.clone(),
            kind: outgoing.kind,
            from: self.from,
            to: self.to,
            at_us,
            duration: started.elapsed(),
            request,
            response,
            error: error.clone(),
        };
        self.journal.record(exchange.clone());
        match error {
            None => Ok(exchange),
            Some(reason) => Err(TransportError::Failed {
                exchange: id,
                method: outgoing.method.to_string(),
                url: outgoing.url,
                reason,
            }),
        }
    }

    async fn exchange(&self, builder: reqwest::RequestBuilder) -> Result<Response, String> {
        let response = builder.send().await.map_err(describe_reqwest_error)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect::<Vec<_>>();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if let Some(length) = response.content_length()
            && length > self.max_body as u64
        {
            return Err(format!(
                "the response announces {length} bytes, more than the limit of {} bytes",
                self.max_body
            ));
        }

        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(describe_reqwest_error)?;
            if body.len() + chunk.len() > self.max_body {
                return Err(format!(
                    "the response body exceeds the limit of {} bytes",
                    self.max_body
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            headers,
            body: Body {
                bytes: body.freeze(),
                content_type,
            },
        })
    }
}

fn describe_reqwest_error(error: reqwest::Error) -> String {
    if let Some(tls) = tls::find_tls_error(&error) {
        format!("TLS failed: {}", tls::describe_tls_error(tls))
    } else if error.is_timeout() {
        "no complete answer within the timeout".to_owned()
    } else if error.is_connect() {
        "could not connect (refused or unreachable)".to_owned()
    } else if error.is_body() || error.is_decode() {
        "the response body broke off or could not be read".to_owned()
    } else {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            text.push_str(": ");
            text.push_str(&inner.to_string());
            source = inner.source();
        }
        text
    }
}

/// A server that journals every exchange it serves.
pub struct RecordingServer {
    /// Where it listens.
    pub addr: SocketAddr,
    scheme: &'static str,
    handle: tokio::task::JoinHandle<()>,
}

impl RecordingServer {
    /// Binds `listen` (port 0 lets the OS choose) and serves `router`, recording each exchange
    /// as coming from `from` to `to`. With `tls` it serves HTTPS and requires a client
    /// certificate; without, plain HTTP.
    pub async fn start(
        listen: SocketAddr,
        router: Router,
        journal: Arc<Journal>,
        from: Party,
        to: Party,
        tls: Option<ServerTls>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let scheme = scheme(tls.as_ref());
        let recorder = Arc::new(Recorder {
            journal,
            from,
            to,
            scheme,
        });
        let app = router.layer(middleware::from_fn_with_state(recorder, record));
        let handle = tokio::spawn(serve(listener, app, tls));
        Ok(Self {
            addr,
            scheme,
            handle,
        })
    }

    /// `https://addr` (or `http://addr` without TLS).
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
}

fn scheme(tls: Option<&ServerTls>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}

async fn serve(listener: TcpListener, router: Router, tls: Option<ServerTls>) {
    match tls {
        Some(tls) => tls::serve_tls(listener, router, tls).await,
        None => {
            let _ = axum::serve(listener, router).await;
        }
    }
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A server that records nothing (the reference node: it is the target, and the harness
/// observes it only from its own side of the wire).
pub struct PlainServer {
    pub addr: SocketAddr,
    scheme: &'static str,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl PlainServer {
    /// Binds `listen` and serves `router`, over HTTPS with client certificates when `tls`
    /// is given.
    pub async fn start(
        listen: SocketAddr,
        router: Router,
        tls: Option<ServerTls>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let scheme = scheme(tls.as_ref());
        let handle = tokio::spawn(serve(listener, router, tls));
        Ok(Self {
            addr,
            scheme,
            handle: Some(handle),
        })
    }

    /// `https://addr` (or `http://addr` without TLS).
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Waits until the server stops (for `node serve`).
    pub async fn wait(mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

struct Recorder {
    journal: Arc<Journal>,
    from: Party,
    to: Party,
    scheme: &'static str,
}

/// Largest request body a harness server accepts.
const MAX_REQUEST_BODY: usize = 8 * 1024 * 1024;
/// Largest response body kept in the journal for a served exchange.
const MAX_RECORDED_RESPONSE: usize = 64 * 1024 * 1024;

async fn record(
    State(recorder): State<Arc<Recorder>>,
    request: AxumRequest,
    next: Next,
) -> AxumResponse {
    let id = recorder.journal.next_id();
    let at_us = recorder.journal.now_us();
    let started = Instant::now();

    let (parts, body) = request.into_parts();
    let host = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("unknown-host")
        .to_owned();
    let headers = header_pairs(&parts.headers);
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return axum::response::IntoResponse::into_response((
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ));
        }
    };
    let recorded_request = Request {
        method: parts.method.to_string(),
        url: format!("{}://{host}{}", recorder.scheme, parts.uri),
        headers,
        body: Body {
            bytes: bytes.clone(),
            content_type,
        },
    };

    let response = next
        .run(AxumRequest::from_parts(parts, AxumBody::from(bytes)))
        .await;
    let attribution = response.extensions().get::<Attribution>().cloned();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_RECORDED_RESPONSE)
        .await
        .unwrap_or_default();
    let recorded_response = Response {
        status: parts.status.as_u16(),
        headers: header_pairs(&parts.headers),
        body: Body {
            bytes: bytes.clone(),
            content_type: parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        },
    };

    let attribution = attribution.unwrap_or(Attribution {
        case_id: None,
        kind: ExchangeKind::Other,
    });
    recorder.journal.record(Exchange {
        id,
        case_id: attribution.case_id,
        kind: attribution.kind,
        from: recorder.from,
        to: recorder.to,
        at_us,
        duration: started.elapsed(),
        request: recorded_request,
        response: Some(recorded_response),
        error: None,
    });
    AxumResponse::from_parts(parts, AxumBody::from(bytes))
}

fn header_pairs(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

//! The harness's counterpart servers: the simulated sender (FHIR API and token endpoint
//! over fixture data). Everything they serve is journaled by the transport's middleware.

pub mod receiver;
pub mod sbvz;
pub mod sender;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::fhir::media::FHIR_JSON;
use crate::fhir::outcome::operation_outcome;
use crate::journal::ExchangeKind;
use crate::transport::Attribution;

/// A FHIR JSON answer.
pub(crate) fn fhir_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// An OperationOutcome answer with the given status.
pub(crate) fn outcome_response(status: StatusCode, code: &str, diagnostics: &str) -> Response {
    fhir_response(status, &operation_outcome("error", code, diagnostics))
}

/// Marks a response with the case and kind the journal should record.
pub(crate) fn attributed(
    mut response: Response,
    case_id: Option<&str>,
    kind: ExchangeKind,
) -> Response {
    response.extensions_mut().insert(Attribution {
        case_id: case_id.map(str::to_owned),
        kind,
    });
    response
}

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

/// Why a token request's authorization assertion (protocol.md §3) is refused, held to the
/// rules of the client assertion: the RFC 6749 error and a description. `None` when it is
/// valid, or while the validator is not set yet.
pub(crate) fn authorization_assertion_refusal(
    form: &[(String, String)],
    validator: Option<&crate::protocol::token::AssertionValidator>,
    presented: &[rustls::pki_types::CertificateDer<'static>],
) -> Option<(&'static str, String)> {
    let Some(authorization) = crate::protocol::token::form_value(form, "assertion") else {
        return Some((
            "invalid_request",
            "the authorization assertion (`assertion`) is missing".to_owned(),
        ));
    };
    let now = crate::protocol::token::unix_now();
    validator?
        .validate(authorization, now, presented)
        .err()
        .map(|e| ("invalid_grant", format!("the authorization assertion: {e}")))
}

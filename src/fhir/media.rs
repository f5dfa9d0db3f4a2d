//! Media types of the exchange (protocol.md §11) and content negotiation.

/// Emitted for FHIR STU3 JSON.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
/// Raw referral letter.
pub const PDF: &str = "application/pdf";

/// True for every spelling a FHIR JSON body may arrive with.
pub fn is_fhir_json(content_type: &str) -> bool {
    let essence = essence(content_type);
    matches!(
        essence.as_str(),
        "application/fhir+json" | "application/json+fhir" | "application/json"
    )
}

/// True for every spelling a FHIR XML body may arrive with.
pub fn is_fhir_xml(content_type: &str) -> bool {
    let essence = essence(content_type);
    matches!(
        essence.as_str(),
        "application/fhir+xml" | "application/xml+fhir" | "application/xml" | "text/xml"
    )
}

/// The type and subtype, lower-case, without parameters.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// What a client asked for in `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    FhirJson,
    Pdf,
    /// Nothing the server can produce was acceptable.
    Unmeetable,
}

/// Negotiates `Accept` for a resource that can be served as FHIR JSON and, for a PDF Binary,
/// as raw bytes. A missing or wildcard `Accept` gets FHIR JSON.
pub fn negotiate(accept: Option<&str>, can_be_pdf: bool) -> Wanted {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Wanted::FhirJson;
    };
    for item in accept.split(',') {
        let wanted = essence(item);
        if is_fhir_json(&wanted) || wanted == "*/*" || wanted == "application/*" {
            return Wanted::FhirJson;
        }
        if can_be_pdf && wanted == "application/pdf" {
            return Wanted::Pdf;
        }
    }
    Wanted::Unmeetable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_spellings_are_accepted_on_input() {
        assert!(is_fhir_json("application/json+fhir; charset=UTF-8"));
        assert!(is_fhir_json("Application/FHIR+JSON"));
        assert!(!is_fhir_json("text/html"));
    }

    #[test]
    fn pdf_is_served_only_when_asked_for_and_possible() {
        assert_eq!(negotiate(Some("application/pdf"), true), Wanted::Pdf);
        assert_eq!(
            negotiate(Some("application/pdf"), false),
            Wanted::Unmeetable
        );
        assert_eq!(negotiate(None, true), Wanted::FhirJson);
        assert_eq!(negotiate(Some("text/html"), true), Wanted::Unmeetable);
    }
}

//! FHIR STU3 handling that the harness needs: the BSN, search URLs, an in-memory resource
//! store with the BgZ searches, searchset Bundles, the query catalogues and OperationOutcome.
//! It is not a general FHIR server: it supports exactly the search parameters the BgZ uses.

pub mod bsn;
pub mod bundle;
pub mod catalogue;
pub mod conformance;
pub mod media;
pub mod outcome;
pub mod search;
pub mod store;

/// Identifier system of the Dutch citizen service number.
pub const BSN_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/bsn";
/// Identifier system of the healthcare provider register (URA).
pub const URA_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/ura";
/// Identifier system of AGB-Z codes.
pub const AGB_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/agb-z";

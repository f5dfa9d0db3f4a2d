//! bgz-harness: a conformance harness for the BgZ referral exchanged over Twiin TA Notified
//! Pull. The library holds everything; the binary in `main.rs` only calls [`cli::main`].

pub mod cli;
pub mod fhir;
pub mod journal;
pub mod node;
pub mod pki;
pub mod protocol;
pub mod redact;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sim;
pub mod transport;

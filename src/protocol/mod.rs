//! Notified Pull messages (protocol.md §1-3, §7): the Notification Task, the workflow Task,
//! the cancellation, token requests with their client assertion, and token responses.

pub mod notification;
pub mod sbvz;
pub mod soap;
pub mod token;

/// Value of `Task.code` for a notification.
pub const PULL_NOTIFICATION: &str = "pull-notification";
/// Default `Task.code` system.
pub const TASK_CODE_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/TaskCode";
/// The Twiin `Task.code` and input system, accepted as an alternative.
pub const TANP_CODE_SYSTEM: &str = "https://www.twiin.nl/tanp/CodeSystem/tanp-codes";
/// Default `Task.identifier` system.
pub const IDENTIFIER_SYSTEM: &str = "urn:ietf:rfc:3986";

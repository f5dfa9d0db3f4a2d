//! The journal: every HTTP exchange of a run, in either direction, as it crossed the wire.
//! It holds raw data in memory for the checks; nothing leaves it for a report or a log except
//! through [`crate::redact::Redactor`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// Who took part in an exchange, from the harness's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Party {
    /// The node under test.
    Target,
    /// The harness playing the sender.
    HarnessSender,
    /// The harness playing the receiver.
    HarnessReceiver,
    /// The harness reading the target's inspection API.
    HarnessInspector,
    /// The SBV-Z double.
    Sbvz,
}

impl Party {
    /// A short human label.
    pub fn label(self) -> &'static str {
        match self {
            Party::Target => "target",
            Party::HarnessSender => "harness sender",
            Party::HarnessReceiver => "harness receiver",
            Party::HarnessInspector => "harness inspector",
            Party::Sbvz => "SBV-Z double",
        }
    }
}

/// A request or response body as seen on the wire.
#[derive(Debug, Clone, Default)]
pub struct Body {
    pub bytes: Bytes,
    pub content_type: Option<String>,
}

impl Body {
    /// Hex SHA-256 of the bytes.
    pub fn sha256(&self) -> String {
        hex(&Sha256::digest(&self.bytes))
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.bytes).ok()
    }

    /// The body as text: UTF-8, or UTF-16 when a byte-order mark, the charset or the
    /// pattern of zero bytes says so. `None` when it is no text in these encodings.
    pub fn text(&self) -> Option<String> {
        let bytes: &[u8] = &self.bytes;
        let charset = self
            .content_type
            .as_deref()
            .and_then(|c| {
                c.to_ascii_lowercase()
                    .split("charset=")
                    .nth(1)
                    .map(str::to_owned)
            })
            .map(|c| {
                c.trim_matches(|c: char| c == '"' || c.is_whitespace())
                    .to_owned()
            });
        let utf16 = |bytes: &[u8], little: bool| {
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|pair| match (pair, little) {
                    ([a, b], true) => u16::from_le_bytes([*a, *b]),
                    ([a, b], false) => u16::from_be_bytes([*a, *b]),
                    _ => 0xfffd,
                })
                .collect();
            String::from_utf16(&units).ok()
        };
        let text = if let Some(rest) = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]) {
            String::from_utf8(rest.to_vec()).ok()
        } else if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
            utf16(rest, true)
        } else if let Some(rest) = bytes.strip_prefix(&[0xfe, 0xff]) {
            utf16(rest, false)
        } else if let Some(charset) = charset.as_deref().filter(|c| c.starts_with("utf-16")) {
            utf16(bytes, charset != "utf-16be")
        } else if let Some(little) = utf16_without_mark(bytes) {
            utf16(bytes, little)
        } else {
            std::str::from_utf8(bytes).ok().map(str::to_owned)
        };
        // Zero bytes left over mean some other encoding or binary data.
        text.filter(|t| !t.contains('\0'))
    }
}

/// Whether unmarked bytes look like UTF-16 (little-endian: `Some(true)`): an even length
/// and a zero in every other byte of most of it, as Latin text in UTF-16 has.
fn utf16_without_mark(bytes: &[u8]) -> Option<bool> {
    if bytes.len() < 4 || !bytes.len().is_multiple_of(2) {
        return None;
    }
    let pairs = bytes.len() / 2;
    let zero_high = bytes.chunks(2).filter(|p| p[1] == 0 && p[0] != 0).count();
    let zero_low = bytes.chunks(2).filter(|p| p[0] == 0 && p[1] != 0).count();
    if zero_high * 2 > pairs {
        Some(true)
    } else if zero_low * 2 > pairs {
        Some(false)
    } else {
        None
    }
}

/// One HTTP request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// Absolute URL as sent (scheme, host, path, query).
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

/// One HTTP response.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Response {
    /// The first header with this name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

impl Request {
    /// The first header with this name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The path and query below `base`, or the whole URL when it is not below `base`.
    pub fn relative_to<'a>(&'a self, base: &str) -> &'a str {
        self.url
            .strip_prefix(base.trim_end_matches('/'))
            .map(|rest| rest.trim_start_matches('/'))
            .unwrap_or(&self.url)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What an exchange was for, in the protocol's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExchangeKind {
    TokenRequest,
    Notification,
    Cancellation,
    WorkflowTask,
    Search,
    Read,
    Binary,
    Inspection,
    Control,
    Sbvz,
    Other,
}

impl ExchangeKind {
    /// A short human label.
    pub fn label(self) -> &'static str {
        match self {
            ExchangeKind::TokenRequest => "token request",
            ExchangeKind::Notification => "notification",
            ExchangeKind::Cancellation => "cancellation",
            ExchangeKind::WorkflowTask => "workflow task read",
            ExchangeKind::Search => "search",
            ExchangeKind::Read => "read",
            ExchangeKind::Binary => "letter (Binary)",
            ExchangeKind::Inspection => "inspection",
            ExchangeKind::Control => "control",
            ExchangeKind::Sbvz => "SBV-Z call",
            ExchangeKind::Other => "other",
        }
    }
}

/// One recorded exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Run-unique id such as `x0007`, shown in reports and error messages.
    pub id: String,
    /// The case this exchange belongs to, when it could be attributed.
    pub case_id: Option<String>,
    pub kind: ExchangeKind,
    pub from: Party,
    pub to: Party,
    /// Microseconds since the run started.
    pub at_us: u64,
    pub duration: Duration,
    pub request: Request,
    pub response: Option<Response>,
    /// A transport failure: refused, timed out, reset, body too large.
    pub error: Option<String>,
}

/// Every exchange of a run. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Journal {
    started: std::time::Instant,
    next_id: AtomicU64,
    exchanges: Mutex<Recorded>,
    changed: Notify,
    /// When the last recorded exchange ended, in µs since the start.
    last_activity_us: AtomicU64,
}

/// The exchanges, with an index per case so a case never scans the whole run.
#[derive(Debug, Default)]
struct Recorded {
    all: Vec<Exchange>,
    by_case: std::collections::HashMap<String, Vec<usize>>,
    unattributed: Vec<usize>,
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

impl Journal {
    /// An empty journal; its clock starts now.
    pub fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            next_id: AtomicU64::new(1),
            exchanges: Mutex::new(Recorded::default()),
            changed: Notify::new(),
            last_activity_us: AtomicU64::new(0),
        }
    }

    /// Microseconds since the journal was created.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// A fresh exchange id.
    pub fn next_id(&self) -> String {
        format!("x{:04}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Records an exchange and wakes everyone waiting for activity.
    pub fn record(&self, exchange: Exchange) {
        let ended = exchange.at_us + u64::try_from(exchange.duration.as_micros()).unwrap_or(0);
        self.last_activity_us.fetch_max(ended, Ordering::Relaxed);
        {
            let mut recorded = self.lock();
            let index = recorded.all.len();
            match &exchange.case_id {
                Some(case) => recorded
                    .by_case
                    .entry(case.clone())
                    .or_default()
                    .push(index),
                None => recorded.unattributed.push(index),
            }
            recorded.all.push(exchange);
        }
        self.changed.notify_waiters();
    }

    /// A copy of the exchanges of one case, in recording order.
    pub fn for_case(&self, case_id: &str) -> Vec<Exchange> {
        let recorded = self.lock();
        recorded
            .by_case
            .get(case_id)
            .into_iter()
            .flatten()
            .map(|&i| recorded.all[i].clone())
            .collect()
    }

    /// When the most recent exchange of any case ended, in µs since the start.
    pub fn last_activity_us(&self) -> u64 {
        self.last_activity_us.load(Ordering::Relaxed)
    }

    /// Exchanges of no case (for example a token request with an unknown authorization
    /// base) recorded at or after `since_us`.
    pub fn unattributed_since(&self, since_us: u64) -> Vec<Exchange> {
        let recorded = self.lock();
        recorded
            .unattributed
            .iter()
            .map(|&i| &recorded.all[i])
            .filter(|e| e.at_us >= since_us)
            .cloned()
            .collect()
    }

    /// A copy of every exchange.
    pub fn all(&self) -> Vec<Exchange> {
        self.lock().all.clone()
    }

    /// How many exchanges belong to the case.
    pub fn count_for_case(&self, case_id: &str) -> usize {
        self.lock().by_case.get(case_id).map_or(0, Vec::len)
    }

    /// How many exchanges no case claimed.
    pub fn count_unattributed(&self) -> usize {
        self.lock().unattributed.len()
    }

    /// Waits until something is recorded or `timeout` passes.
    pub async fn wait_for_change(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // A panic while holding the lock cannot leave the Vec half-written, so the data is
        // still usable after poisoning.
        self.exchanges.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: &[u8], content_type: Option<&str>) -> Body {
        Body {
            bytes: Bytes::copy_from_slice(bytes),
            content_type: content_type.map(str::to_owned),
        }
    }

    fn utf16(text: &str, little: bool) -> Vec<u8> {
        text.encode_utf16()
            .flat_map(|u| {
                if little {
                    u.to_le_bytes()
                } else {
                    u.to_be_bytes()
                }
            })
            .collect()
    }

    #[test]
    fn text_is_read_in_utf8_and_utf16_however_it_is_marked() {
        let line = "patiënt 999923067";
        assert_eq!(body(line.as_bytes(), None).text().as_deref(), Some(line));
        let marked: Vec<u8> = [0xff, 0xfe].into_iter().chain(utf16(line, true)).collect();
        assert_eq!(body(&marked, None).text().as_deref(), Some(line));
        let big: Vec<u8> = [0xfe, 0xff].into_iter().chain(utf16(line, false)).collect();
        assert_eq!(body(&big, None).text().as_deref(), Some(line));
        let labelled = body(&utf16(line, false), Some("text/plain; charset=UTF-16BE"));
        assert_eq!(labelled.text().as_deref(), Some(line));
        // Unmarked and unlabelled: the zero bytes tell.
        assert_eq!(body(&utf16(line, true), None).text().as_deref(), Some(line));
    }

    #[test]
    fn binary_and_other_encodings_are_no_text() {
        assert_eq!(body(b"%PDF\x00\x01\x02", None).text(), None);
        assert_eq!(
            body(b"caf\xe9", Some("text/plain; charset=iso-8859-1")).text(),
            None
        );
        assert_eq!(body(&[0, 0, 0, 0, 1, 2], None).text(), None);
    }
}

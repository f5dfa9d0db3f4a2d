//! What a run produces: verdicts per check, step and case, the events the runner emits, and
//! the redacted records of exchanges that reporters show. Reporters see only these types,
//! and these are built only through the [`Redactor`].

use serde::Serialize;

use crate::journal::{Body, Exchange};
use crate::redact::Redactor;

/// The result of a check, step or case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    /// Did not run: skipped after an earlier problem, not applicable, or a confirm step
    /// nobody answered. Never counted as passed.
    NotRun,
    /// The harness could not judge: a transport failure, a timeout, an interrupted run.
    Error,
    /// The target broke a rule.
    Fail,
}

impl Verdict {
    /// The worse of two verdicts (fail > error > not run > pass).
    pub fn worst(self, other: Verdict) -> Verdict {
        self.max(other)
    }

    /// Upper-case label for consoles.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::NotRun => "NOT RUN",
            Verdict::Error => "ERROR",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One check's outcome with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    /// The check's name, e.g. `every-notified-search-run`.
    pub check: String,
    pub verdict: Verdict,
    pub expected: String,
    pub actual: String,
    /// One sentence saying what was found.
    pub message: String,
    /// Ids of the exchanges that show it.
    pub exchanges: Vec<String>,
}

/// One step's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    pub name: String,
    pub kind: String,
    pub verdict: Verdict,
    pub checks: Vec<CheckOutcome>,
    /// A problem that is not a named check: the step could not be carried out.
    pub problem: Option<String>,
    pub exchanges: Vec<String>,
    pub duration_ms: u64,
}

/// One case's outcome, redacted, as every reporter receives it.
#[derive(Debug, Clone, Serialize)]
pub struct CaseOutcome {
    pub id: String,
    pub name: String,
    pub phase: String,
    pub scenario: String,
    pub title: String,
    pub checklist_case: String,
    pub direction: String,
    pub counterpart: String,
    pub target_department: String,
    pub verdict: Verdict,
    pub steps: Vec<StepOutcome>,
    pub exchanges: Vec<ExchangeRecord>,
    pub duration_ms: u64,
}

impl CaseOutcome {
    /// The failing or erroring checks and step problems, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for step in &self.steps {
            if let Some(problem) = &step.problem {
                lines.push(format!("{}: {problem}", step.name));
            }
            for check in step.checks.iter().filter(|c| c.verdict >= Verdict::Error) {
                lines.push(format!("{}: {}", check.check, check.message));
            }
        }
        lines
    }
}

/// What the runner tells its reporters, in order.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// The plan is fixed.
    Started {
        cases: usize,
        phases: Vec<String>,
    },
    CaseStarted {
        id: String,
        name: String,
    },
    CaseFinished(Box<CaseOutcome>),
    /// The run ended; `interrupted` when it was stopped early.
    Finished {
        interrupted: bool,
    },
}

/// An exchange as reports show it: redacted, bodies rendered as text.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeRecord {
    pub id: String,
    pub kind: String,
    pub from: String,
    pub to: String,
    pub at_ms: u64,
    pub duration_ms: u64,
    pub method: String,
    pub url: String,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Option<String>,
    pub status: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Option<String>,
    pub response_bytes: usize,
    pub response_sha256: Option<String>,
    pub error: Option<String>,
}

/// Longest body text a report shows; the rest is cut with a note (the hash covers all).
const MAX_SHOWN_BODY: usize = 64 * 1024;
/// Headers worth showing; the rest is noise in a report.
const SHOWN_HEADERS: [&str; 6] = [
    "content-type",
    "accept",
    "authorization",
    "location",
    "www-authenticate",
    "content-length",
];

impl ExchangeRecord {
    /// Redacts one journaled exchange for reporting.
    pub fn from_exchange(exchange: &Exchange, redactor: &Redactor) -> Self {
        let headers = |pairs: &[(String, String)]| {
            pairs
                .iter()
                .filter(|(n, _)| SHOWN_HEADERS.contains(&n.to_ascii_lowercase().as_str()))
                .map(|(n, v)| (n.to_ascii_lowercase(), printable(&redactor.header(n, v))))
                .collect::<Vec<_>>()
        };
        let response = exchange.response.as_ref();
        Self {
            id: exchange.id.clone(),
            kind: exchange.kind.label().to_owned(),
            from: exchange.from.label().to_owned(),
            to: exchange.to.label().to_owned(),
            at_ms: exchange.at_us / 1000,
            duration_ms: u64::try_from(exchange.duration.as_millis()).unwrap_or(u64::MAX),
            method: exchange.request.method.clone(),
            url: printable(&redactor.text(&exchange.request.url)),
            request_headers: headers(&exchange.request.headers),
            request_body: show_body(&exchange.request.body, redactor),
            status: response.map(|r| r.status),
            response_headers: response.map(|r| headers(&r.headers)).unwrap_or_default(),
            response_body: response.and_then(|r| show_body(&r.body, redactor)),
            response_bytes: response.map(|r| r.body.bytes.len()).unwrap_or(0),
            response_sha256: response
                .filter(|r| !r.body.bytes.is_empty())
                .map(|r| r.body.sha256()),
            error: exchange
                .error
                .as_ref()
                .map(|e| printable(&redactor.text(e))),
        }
    }
}

/// Renders a body for a report: JSON pretty and redacted, forms decoded and redacted,
/// PDFs and other binary data as a size only.
fn show_body(body: &Body, redactor: &Redactor) -> Option<String> {
    if body.bytes.is_empty() {
        return None;
    }
    let content_type = body
        .content_type
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return Some(cut(redactor.form(&body.bytes)));
    }
    if content_type.starts_with("application/pdf") || body.bytes.starts_with(b"%PDF") {
        return Some(format!("[PDF, {} bytes, not shown]", body.bytes.len()));
    }
    if let Some(json) = body.json() {
        let pretty = serde_json::to_string_pretty(&redactor.json(&json)).unwrap_or_default();
        return Some(cut(pretty));
    }
    match body.text() {
        Some(text) => Some(cut(redactor.text(&text))),
        None => Some(format!(
            "[{} bytes of binary data, not shown]",
            body.bytes.len()
        )),
    }
}

fn cut(text: String) -> String {
    let mut text = printable(&text);
    if text.len() > MAX_SHOWN_BODY {
        let mut end = MAX_SHOWN_BODY;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let total = text.len();
        text.truncate(end);
        text.push_str(&format!(
            "\n… [cut: {total} bytes in all; the SHA-256 covers the whole body]"
        ));
    }
    text
}

/// Redacts the free-text fields of a finished case, and makes them printable: text that a
/// peer sent may hold terminal escapes or control bytes, which never reach a console or a
/// report.
pub fn redact_outcome(mut outcome: CaseOutcome, redactor: &Redactor) -> CaseOutcome {
    let clean = |text: &str| printable(&redactor.text(text));
    for step in &mut outcome.steps {
        step.problem = step.problem.as_ref().map(|p| clean(p));
        for check in &mut step.checks {
            check.expected = clean(&check.expected);
            check.actual = clean(&check.actual);
            check.message = clean(&check.message);
        }
    }
    outcome
}

/// Replaces control characters other than newline and tab with U+FFFD.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

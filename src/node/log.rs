//! The reference node's log: one line per event (a token issued, a notification accepted or
//! refused, a pull finished, a cancellation). It names notifications, departments and
//! organisations, never a patient: no BSN, name or birth date is written, unless the
//! `log-patient-data` weakness switch is on. `node serve` echoes it to stderr; the
//! inspection API shows it (`GET /inspect/log`) so that a probe can read it.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Lines kept for the inspection API; older ones are dropped.
const KEPT_LINES: usize = 20_000;

pub(crate) struct NodeLog {
    lines: Mutex<VecDeque<String>>,
    echo: bool,
    /// Replace whatever looks like a BSN, also in a peer's text (a search URL).
    withhold_bsns: bool,
}

impl NodeLog {
    /// A log that also writes each line to stderr when `echo`, and keeps BSNs out of its
    /// lines when `withhold_bsns`.
    pub fn new(echo: bool, withhold_bsns: bool) -> Self {
        Self {
            lines: Mutex::new(VecDeque::new()),
            echo,
            withhold_bsns,
        }
    }

    /// Writes one line, stamped with the time.
    pub fn write(&self, event: &str) {
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        // One line per event: a peer's text cannot start a line of its own.
        let event = event.replace(['\n', '\r'], " ");
        let event = if self.withhold_bsns {
            crate::redact::redact_bsn_like(&event)
        } else {
            event
        };
        let line = format!("{stamp} {event}");
        if self.echo {
            eprintln!("node: {line}");
        }
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == KEPT_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// Every kept line, oldest first, newline-terminated.
    pub fn text(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().fold(String::new(), |mut text, line| {
            text.push_str(line);
            text.push('\n');
            text
        })
    }
}

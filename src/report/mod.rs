//! Reporters. Each consumes the runner's event stream: the console shows progress and a
//! summary; the collector writes, per phase, `junit.xml`, `report.html` and `results.json`
//! when the run finishes, also when it was interrupted. Reporters only ever see redacted
//! outcomes (see `runner::outcome`).

pub mod console;
mod html;
mod json;
mod junit;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::runner::outcome::{CaseOutcome, RunEvent, Verdict};
use crate::scenario::model::Phase;

/// Facts about the run shown in every report.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub harness_version: String,
    pub target: String,
    pub started_at: String,
    /// Faults switched on in the embedded node, if any.
    pub node_faults: Vec<String>,
    /// True when patient data and secrets were kept (local debugging only).
    pub unredacted: bool,
    /// True when the target's server certificate was not verified (`--insecure-skip-verify`).
    pub insecure_skip_verify: bool,
    /// The filters that left cases out (`--tag probe`, …); `None` for a whole phase.
    pub filters: Option<String>,
}

/// Counts per verdict.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub not_run: usize,
}

impl Totals {
    /// Counts the verdicts of `cases`.
    pub fn of<'a>(cases: impl IntoIterator<Item = &'a CaseOutcome>) -> Self {
        let mut totals = Self::default();
        for case in cases {
            match case.verdict {
                Verdict::Pass => totals.passed += 1,
                Verdict::Fail => totals.failed += 1,
                Verdict::Error => totals.errors += 1,
                Verdict::NotRun => totals.not_run += 1,
            }
        }
        totals
    }

    /// All cases.
    pub fn total(&self) -> usize {
        self.passed + self.failed + self.errors + self.not_run
    }
}

/// One phase's results, as the reporters write them.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport<'a> {
    pub phase: &'a Phase,
    pub run: &'a RunInfo,
    pub interrupted: bool,
    pub totals: Totals,
    pub cases: Vec<&'a CaseOutcome>,
}

/// Collects outcomes and writes the files when the run finishes.
pub struct Collector {
    dir: PathBuf,
    phases: Vec<Phase>,
    run: RunInfo,
    cases: Vec<CaseOutcome>,
}

/// Why report files could not be written.
#[derive(Debug, thiserror::Error)]
#[error("failed to write {path}: {reason}")]
pub struct WriteError {
    pub path: String,
    pub reason: String,
}

impl Collector {
    /// A collector writing below `dir`.
    pub fn new(dir: &Path, phases: Vec<Phase>, run: RunInfo) -> Self {
        Self {
            dir: dir.to_owned(),
            phases,
            run,
            cases: Vec::new(),
        }
    }

    /// Takes one event; on `Finished` writes every phase's files and returns their folders.
    pub fn handle(&mut self, event: &RunEvent) -> Result<Vec<PathBuf>, WriteError> {
        match event {
            RunEvent::CaseFinished(outcome) => {
                self.cases.push(outcome.as_ref().clone());
                Ok(Vec::new())
            }
            RunEvent::Finished { interrupted } => self.write(*interrupted),
            RunEvent::Started { .. } | RunEvent::CaseStarted { .. } => Ok(Vec::new()),
        }
    }

    fn write(&self, interrupted: bool) -> Result<Vec<PathBuf>, WriteError> {
        let mut by_phase: BTreeMap<&str, Vec<&CaseOutcome>> = BTreeMap::new();
        for case in &self.cases {
            by_phase.entry(case.phase.as_str()).or_default().push(case);
        }
        let mut written = Vec::new();
        for phase in &self.phases {
            let mut cases = by_phase.remove(phase.id.as_str()).unwrap_or_default();
            cases.sort_by(|a, b| a.id.cmp(&b.id));
            let report = PhaseReport {
                phase,
                run: &self.run,
                interrupted,
                totals: Totals::of(cases.iter().copied()),
                cases,
            };
            let dir = self.dir.join(&phase.id);
            std::fs::create_dir_all(&dir).map_err(|e| WriteError {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
            write_file(&dir.join("junit.xml"), &junit::render(&report))?;
            write_file(&dir.join("report.html"), &html::render(&report))?;
            write_file(&dir.join("results.json"), &json::render(&report))?;
            written.push(dir);
        }
        Ok(written)
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half a report.
fn write_file(path: &Path, contents: &str) -> Result<(), WriteError> {
    let error = |e: std::io::Error| WriteError {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let temporary = path.with_extension("partial");
    std::fs::write(&temporary, contents).map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}

//! The console reporter: a progress bar while cases run (when the terminal allows it) and
//! a summary with every failure at the end. Writes to stderr so stdout stays clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Totals;
use crate::runner::outcome::{CaseOutcome, RunEvent, Verdict};

/// Prints a line on stderr; a closed stderr is not worth a panic.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// When to draw a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    Auto,
    Always,
    Never,
}

/// Shows progress and the final summary.
pub struct Console {
    bar: Option<ProgressBar>,
    finished: Vec<CaseOutcome>,
}

impl Console {
    /// A console reporter.
    pub fn new(mode: ProgressMode) -> Self {
        let draw = match mode {
            ProgressMode::Always => true,
            ProgressMode::Never => false,
            ProgressMode::Auto => {
                std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
            }
        };
        let bar = draw.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {wide_msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self {
            bar,
            finished: Vec::new(),
        }
    }

    /// Takes one event.
    pub fn handle(&mut self, event: &RunEvent) {
        match event {
            RunEvent::Started { cases, phases } => {
                if let Some(bar) = &self.bar {
                    bar.set_length(*cases as u64);
                } else {
                    tell!("running {cases} case(s) in phase(s) {}", phases.join(", "));
                }
            }
            RunEvent::CaseStarted { name, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_message(name.clone());
                }
            }
            RunEvent::CaseFinished(outcome) => {
                let line = format!(
                    "{:<7} {} ({} ms)",
                    outcome.verdict.label(),
                    outcome.id,
                    outcome.duration_ms
                );
                match &self.bar {
                    Some(bar) => {
                        bar.inc(1);
                        if outcome.verdict != Verdict::Pass {
                            bar.println(line);
                        }
                    }
                    None => tell!("{line}"),
                }
                self.finished.push(outcome.as_ref().clone());
            }
            RunEvent::Finished { interrupted } => {
                if let Some(bar) = &self.bar {
                    bar.finish_and_clear();
                }
                self.summary(*interrupted);
            }
        }
    }

    fn summary(&self, interrupted: bool) {
        for case in self
            .finished
            .iter()
            .filter(|c| c.verdict == Verdict::Fail || c.verdict == Verdict::Error)
        {
            tell!("\n{} {} in {}", case.verdict.label(), case.name, case.phase);
            for line in case.problems() {
                tell!("    {line}");
            }
        }
        let totals = Totals::of(&self.finished);
        tell!(
            "\n{}{} passed, {} failed, {} errors, {} not run ({} case{})",
            if interrupted { "INTERRUPTED: " } else { "" },
            totals.passed,
            totals.failed,
            totals.errors,
            totals.not_run,
            totals.total(),
            if totals.total() == 1 { "" } else { "s" }
        );
    }
}

//! `report.html`: one self-contained page per phase: summary, attestations, each case with
//! its steps and checks, and every exchange behind them, linked from the checks. Rendered
//! with askama, which escapes every value.

use askama::Template;

use super::PhaseReport;
use crate::runner::outcome::{CaseOutcome, ExchangeRecord, Verdict};

#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    report: &'a PhaseReport<'a>,
    cases: Vec<CaseView<'a>>,
}

struct CaseView<'a> {
    case: &'a CaseOutcome,
    anchor: String,
    verdict_class: &'static str,
    steps: Vec<StepView<'a>>,
    exchanges: Vec<ExchangeView<'a>>,
}

struct StepView<'a> {
    name: &'a str,
    kind: &'a str,
    verdict: &'static str,
    verdict_class: &'static str,
    problem: Option<&'a str>,
    checks: Vec<CheckView<'a>>,
}

struct CheckView<'a> {
    check: &'a str,
    verdict: &'static str,
    verdict_class: &'static str,
    message: &'a str,
    expected: &'a str,
    actual: &'a str,
    exchanges: &'a [String],
}

struct ExchangeView<'a> {
    record: &'a ExchangeRecord,
    status: String,
    request_headers: String,
    response_headers: String,
}

fn class(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Error => "error",
        Verdict::NotRun => "notrun",
    }
}

fn headers(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(n, v)| format!("{n}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Renders the phase page.
pub(super) fn render(report: &PhaseReport<'_>) -> String {
    let cases = report
        .cases
        .iter()
        .enumerate()
        .map(|(index, case)| CaseView {
            case,
            anchor: format!("case-{}", index + 1),
            verdict_class: class(case.verdict),
            steps: case
                .steps
                .iter()
                .map(|step| StepView {
                    name: &step.name,
                    kind: &step.kind,
                    verdict: step.verdict.label(),
                    verdict_class: class(step.verdict),
                    problem: step.problem.as_deref(),
                    checks: step
                        .checks
                        .iter()
                        .map(|c| CheckView {
                            check: &c.check,
                            verdict: c.verdict.label(),
                            verdict_class: class(c.verdict),
                            message: &c.message,
                            expected: &c.expected,
                            actual: &c.actual,
                            exchanges: &c.exchanges,
                        })
                        .collect(),
                })
                .collect(),
            exchanges: case
                .exchanges
                .iter()
                .map(|record| ExchangeView {
                    record,
                    status: record
                        .status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "no answer".to_owned()),
                    request_headers: headers(&record.request_headers),
                    response_headers: headers(&record.response_headers),
                })
                .collect(),
        })
        .collect();
    let page = Page { report, cases };
    page.render().unwrap_or_else(|e| {
        format!(
            "<!doctype html><title>report error</title><p>the report could not be rendered: {e}</p>"
        )
    })
}

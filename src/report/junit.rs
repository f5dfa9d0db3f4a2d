//! `junit.xml`: one test suite per phase, one test case per case. A failed check is a
//! `failure`, a case the harness could not judge is an `error`, a case not run is `skipped`.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::PhaseReport;
use crate::runner::outcome::{CaseOutcome, Verdict};

/// Renders the phase as JUnit XML.
pub(super) fn render(report: &PhaseReport<'_>) -> String {
    let mut suite = TestSuite::new(format!("bgz-harness {}", report.phase.id));
    suite.add_property(("target", report.run.target.as_str()));
    suite.add_property(("redacted", if report.run.unredacted { "no" } else { "yes" }));
    let verification = if report.run.insecure_skip_verify {
        "skipped"
    } else {
        "verified"
    };
    suite.add_property(("server-certificates", verification));
    if report.interrupted {
        suite.add_property(("interrupted", "yes"));
    }
    if let Some(filters) = &report.run.filters {
        suite.add_property(("filters", filters.as_str()));
    }
    for case in &report.cases {
        suite.add_test_case(test_case(case));
    }
    let mut junit = Report::new("bgz-harness");
    junit.add_test_suite(suite);
    junit.to_string().unwrap_or_default()
}

fn test_case(case: &CaseOutcome) -> TestCase {
    let problems = case.problems();
    let first = problems.first().cloned().unwrap_or_default();
    let mut status = match case.verdict {
        Verdict::Pass => TestCaseStatus::success(),
        Verdict::Fail => TestCaseStatus::non_success(NonSuccessKind::Failure),
        Verdict::Error => TestCaseStatus::non_success(NonSuccessKind::Error),
        Verdict::NotRun => TestCaseStatus::skipped(),
    };
    if case.verdict != Verdict::Pass {
        status.set_message(first);
        status.set_description(details(case));
        if case.verdict == Verdict::Fail {
            status.set_type("check failed");
        }
    }
    let mut test = TestCase::new(case.name.clone(), status);
    test.set_classname(format!("{}.{}", case.phase, case.scenario));
    test.set_time(Duration::from_millis(case.duration_ms));
    test.set_system_out(steps_summary(case));
    test
}

/// Every failing or erroring check with expected, actual and exchanges.
fn details(case: &CaseOutcome) -> String {
    let mut out = String::new();
    for step in &case.steps {
        if let Some(problem) = &step.problem {
            out.push_str(&format!("step {}: {problem}\n", step.name));
        }
        for check in step.checks.iter().filter(|c| c.verdict >= Verdict::Error) {
            out.push_str(&format!(
                "check {} [{}]: {}\n  expected: {}\n  actual:   {}\n  exchanges: {}\n",
                check.check,
                check.verdict.label(),
                check.message,
                check.expected,
                check.actual,
                check.exchanges.join(", ")
            ));
        }
    }
    out
}

fn steps_summary(case: &CaseOutcome) -> String {
    let mut out = String::new();
    for step in &case.steps {
        out.push_str(&format!("{} {}\n", step.verdict.label(), step.name));
        for check in &step.checks {
            out.push_str(&format!(
                "  {} {}: {}\n",
                check.verdict.label(),
                check.check,
                check.message
            ));
        }
    }
    out
}

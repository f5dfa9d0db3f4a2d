//! The checks: each turns what crossed the wire (and, where the target offers one, what its
//! inspection API shows) into a verdict with expected and actual values and the exchanges
//! that prove it. They read only journaled exchanges, never the reference node's internals.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use super::fixtures::LetterFacts;
use super::outcome::{CheckOutcome, Verdict};
use crate::fhir::bundle::next_link;
use crate::fhir::catalogue::NotifiedQuery;
use crate::fhir::search::SearchUrl;
use crate::journal::{Exchange, ExchangeKind, hex};
use crate::node::{InboxEntry, InboxStatus};
use crate::protocol::notification::Ident;
use crate::protocol::token::{form_value, parse_form};
use crate::scenario::model::CheckId;

/// What the harness sent in a case's notification.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub identifier: Ident,
    pub authorization_base: String,
    pub queries: Vec<NotifiedQuery>,
    pub reads: Vec<String>,
    pub workflow_task_id: Option<String>,
    pub at_us: u64,
    /// What the SBV-Z double was told to answer about the patient.
    pub sbvz: Option<crate::scenario::model::SbvzAnswer>,
}

/// Everything a check may look at.
pub(crate) struct Evidence<'a> {
    /// The case's exchanges.
    pub exchanges: &'a [Exchange],
    /// Exchanges of no case since the notification (e.g. token requests without a known
    /// authorization base).
    pub unattributed: &'a [Exchange],
    pub sent: &'a Sent,
    /// The simulated sender's FHIR base.
    pub fhir_base: &'a str,
    pub letter: Option<&'a LetterFacts>,
    /// The target's inbox entry for this notification, when it could be inspected.
    pub inbox: Option<&'a InboxEntry>,
    /// The inspection exchange behind `inbox`.
    pub inbox_exchange: Option<&'a str>,
    /// Calls the SBV-Z double received about the case's patient.
    pub sbvz_calls: &'a [crate::sim::sbvz::SbvzCall],
    /// True in production phases: SBV-Z is real, so only the target can confirm its check.
    pub production: bool,
}

fn outcome(
    check: CheckId,
    verdict: Verdict,
    expected: impl Into<String>,
    actual: impl Into<String>,
    message: impl Into<String>,
    exchanges: Vec<String>,
) -> CheckOutcome {
    CheckOutcome {
        check: check.name().to_owned(),
        verdict,
        expected: expected.into(),
        actual: actual.into(),
        message: message.into(),
        exchanges,
    }
}

fn status(exchange: &Exchange) -> u16 {
    exchange.response.as_ref().map(|r| r.status).unwrap_or(0)
}

fn ids<'a>(exchanges: impl IntoIterator<Item = &'a Exchange>) -> Vec<String> {
    exchanges.into_iter().map(|e| e.id.clone()).collect()
}

/// `notification-accepted`: `201 Created` with a `Location` header.
pub(crate) fn notification_accepted(exchange: &Exchange) -> CheckOutcome {
    let expected = "201 Created with a Location header";
    let id = vec![exchange.id.clone()];
    let Some(response) = &exchange.response else {
        let why = exchange.error.clone().unwrap_or_default();
        return outcome(
            CheckId::NotificationAccepted,
            Verdict::Error,
            expected,
            "no answer",
            format!("the notification got no answer: {why}"),
            id,
        );
    };
    let location = response.header("location");
    let actual = format!(
        "{} {}",
        response.status,
        if location.is_some() {
            "with a Location header"
        } else {
            "without a Location header"
        }
    );
    if response.status == 201 && location.is_some_and(|l| l.contains("Task/")) {
        return outcome(
            CheckId::NotificationAccepted,
            Verdict::Pass,
            expected,
            actual,
            "the target accepted the notification",
            id,
        );
    }
    let message = match (response.status, location) {
        (201, Some(l)) => format!("the Location `{l}` does not name a Task"),
        (201, None) => "the target answered 201 but sent no Location header".to_owned(),
        (s, _) if (200..300).contains(&s) => format!(
            "the target answered {s} instead of 201 Created; a sender counts it as delivered, but a compliant receiver answers 201 with a Location"
        ),
        (s, _) => format!(
            "the target refused the notification with {s}{}",
            diagnostics_suffix(exchange)
        ),
    };
    outcome(
        CheckId::NotificationAccepted,
        Verdict::Fail,
        expected,
        actual,
        message,
        id,
    )
}

/// The OperationOutcome diagnostics of a response, as `: text`, if any.
pub(crate) fn diagnostics_suffix(exchange: &Exchange) -> String {
    exchange
        .response
        .as_ref()
        .and_then(|r| r.body.json())
        .and_then(|json| crate::fhir::outcome::diagnostics(&json).map(str::to_owned))
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// Evaluates one of the pull checks.
pub(crate) fn evaluate(check: CheckId, evidence: &Evidence<'_>) -> CheckOutcome {
    match check {
        CheckId::TokenCarriesAuthorizationBase => token_carries_base(evidence),
        CheckId::WorkflowTaskRead => workflow_task_read(evidence),
        CheckId::EveryNotifiedSearchRun => every_search_run(evidence),
        CheckId::EveryPageFetched => every_page_fetched(evidence),
        CheckId::LetterRetrievedIntact => letter_intact(evidence),
        CheckId::SbvzCheckedBeforeRegistration => sbvz_checked(evidence),
        CheckId::RegistrationFollowsSbvz => registration_follows_sbvz(evidence),
        other => outcome(
            other,
            Verdict::Error,
            "",
            "",
            format!("{} does not belong to an await-pull step", other.name()),
            vec![],
        ),
    }
}

fn of_kind<'a>(
    evidence: &'a Evidence<'_>,
    kind: ExchangeKind,
) -> impl Iterator<Item = &'a Exchange> {
    evidence.exchanges.iter().filter(move |e| e.kind == kind)
}

fn token_carries_base(evidence: &Evidence<'_>) -> CheckOutcome {
    let check = CheckId::TokenCarriesAuthorizationBase;
    let expected = "a token request with authorization_base = the notified value, answered 200";
    let carrying: Vec<&Exchange> = of_kind(evidence, ExchangeKind::TokenRequest)
        .filter(|e| {
            form_value(&parse_form(&e.request.body.bytes), "authorization_base")
                == Some(evidence.sent.authorization_base.as_str())
        })
        .collect();
    if let Some(granted) = carrying.iter().find(|e| status(e) == 200) {
        return outcome(
            check,
            Verdict::Pass,
            expected,
            "token issued",
            "the target asked for a pull token with the notified authorization base",
            vec![granted.id.clone()],
        );
    }
    if let Some(refused) = carrying.first() {
        return outcome(
            check,
            Verdict::Fail,
            expected,
            format!("token request answered {}", status(refused)),
            format!(
                "the target's token request carried the authorization base but was refused with {}",
                status(refused)
            ),
            ids(carrying),
        );
    }
    let strays: Vec<&Exchange> = evidence
        .unattributed
        .iter()
        .filter(|e| e.kind == ExchangeKind::TokenRequest)
        .collect();
    let actual = if strays.is_empty() {
        "no token request".to_owned()
    } else {
        format!(
            "{} token request(s) without this authorization base",
            strays.len()
        )
    };
    let message = if strays.is_empty() {
        "the target never asked the sender for a pull token".to_owned()
    } else {
        let fields: Vec<String> = strays
            .iter()
            .map(
                |e| match form_value(&parse_form(&e.request.body.bytes), "authorization_base") {
                    None => format!("{} had no authorization_base field", e.id),
                    Some(_) => format!(
                        "{} carried an authorization_base that was never issued",
                        e.id
                    ),
                },
            )
            .collect();
        format!(
            "the target asked for a token without the notified authorization base: {}",
            fields.join("; ")
        )
    };
    outcome(check, Verdict::Fail, expected, actual, message, ids(strays))
}

fn workflow_task_read(evidence: &Evidence<'_>) -> CheckOutcome {
    let check = CheckId::WorkflowTaskRead;
    let Some(task_id) = &evidence.sent.workflow_task_id else {
        return outcome(
            check,
            Verdict::NotRun,
            "",
            "",
            "no workflow task was offered, so there was nothing to read",
            vec![],
        );
    };
    let expected = format!("GET Task/{task_id} answered 200");
    let reads: Vec<&Exchange> = of_kind(evidence, ExchangeKind::WorkflowTask).collect();
    match reads.iter().find(|e| status(e) == 200) {
        Some(read) => outcome(
            check,
            Verdict::Pass,
            expected,
            "read",
            "the target read the workflow task",
            vec![read.id.clone()],
        ),
        None if reads.is_empty() => outcome(
            check,
            Verdict::Fail,
            expected,
            "never requested",
            format!("get-workflow-task was true, but the target never read Task/{task_id}"),
            vec![],
        ),
        None => outcome(
            check,
            Verdict::Fail,
            expected,
            format!("answered {}", status(reads[0])),
            format!(
                "the target asked for the workflow task at the wrong address ({})",
                reads[0].request.url
            ),
            ids(reads),
        ),
    }
}

/// Searches the target ran, parsed, with the exchange.
fn searches_run<'a>(evidence: &'a Evidence<'_>) -> Vec<(SearchUrl, &'a Exchange)> {
    of_kind(evidence, ExchangeKind::Search)
        .filter(|e| status(e) == 200)
        .filter_map(|e| {
            SearchUrl::parse(&e.request.url, evidence.fhir_base)
                .ok()
                .map(|u| (u, e))
        })
        .collect()
}

fn every_search_run(evidence: &Evidence<'_>) -> CheckOutcome {
    let check = CheckId::EveryNotifiedSearchRun;
    let run = searches_run(evidence);
    let total = evidence.sent.queries.len();
    let expected = format!(
        "all {} notified searches and reads run",
        total + evidence.sent.reads.len()
    );
    let mut missing = Vec::new();
    let mut shown = Vec::new();
    for query in &evidence.sent.queries {
        let Ok(wanted) = SearchUrl::parse_relative(&query.query) else {
            missing.push(format!("{} (`{}`)", query.section, query.query));
            continue;
        };
        match run.iter().find(|(url, _)| url.same_search(&wanted)) {
            Some((_, exchange)) => shown.push(exchange.id.clone()),
            None => missing.push(format!("{} (`{}`)", query.section, query.query)),
        }
    }
    for read in &evidence.sent.reads {
        let url = format!("{}/{read}", evidence.fhir_base.trim_end_matches('/'));
        let done = evidence.exchanges.iter().find(|e| {
            matches!(e.kind, ExchangeKind::Read | ExchangeKind::Binary)
                && status(e) == 200
                && e.request.url.split('?').next() == Some(url.as_str())
        });
        match done {
            Some(exchange) => shown.push(exchange.id.clone()),
            None => missing.push(format!("read `{read}`")),
        }
    }
    let total = total + evidence.sent.reads.len();
    if missing.is_empty() {
        return outcome(
            check,
            Verdict::Pass,
            expected,
            format!("{total} run"),
            "the target ran every notified search and read",
            shown,
        );
    }
    let refused: Vec<String> = of_kind(evidence, ExchangeKind::Search)
        .filter(|e| status(e) != 200)
        .map(|e| format!("{} answered {}", e.id, status(e)))
        .collect();
    let sections: Vec<&str> = missing
        .iter()
        .map(|m| m.split(" (").next().unwrap_or(m))
        .collect();
    let mut message = format!(
        "{} of {total} notified searches and reads were never run: {}",
        missing.len(),
        sections.join(", ")
    );
    if !refused.is_empty() {
        message.push_str(&format!("; refused searches: {}", refused.join(", ")));
    }
    let actual = format!(
        "{} run; missing: {}",
        total - missing.len(),
        missing.join(", ")
    );
    outcome(check, Verdict::Fail, expected, actual, message, shown)
}

fn every_page_fetched(evidence: &Evidence<'_>) -> CheckOutcome {
    let check = CheckId::EveryPageFetched;
    let run = searches_run(evidence);
    let mut followed = Vec::new();
    let mut skipped = Vec::new();
    for (_, exchange) in &run {
        let Some(bundle) = exchange.response.as_ref().and_then(|r| r.body.json()) else {
            continue;
        };
        let Some(next) = next_link(&bundle) else {
            continue;
        };
        let Ok(next_url) = SearchUrl::parse(next, evidence.fhir_base) else {
            continue;
        };
        let offset = |u: &SearchUrl| u.values("_getpagesoffset").next().map(str::to_owned);
        let fetched = run
            .iter()
            .find(|(url, _)| url.same_search(&next_url) && offset(url) == offset(&next_url));
        match fetched {
            Some((_, e)) => followed.push(e.id.clone()),
            None => skipped.push(format!(
                "{} (page after {})",
                next_url.to_relative(),
                exchange.id
            )),
        }
    }
    let expected = "every next link requested";
    if skipped.is_empty() {
        let message = if followed.is_empty() {
            "no search had a next page".to_owned()
        } else {
            format!("the target followed all {} next links", followed.len())
        };
        return outcome(
            check,
            Verdict::Pass,
            expected,
            format!("{} followed", followed.len()),
            message,
            followed,
        );
    }
    outcome(
        check,
        Verdict::Fail,
        expected,
        format!(
            "{} of {} next links never requested",
            skipped.len(),
            skipped.len() + followed.len()
        ),
        format!(
            "the target did not follow {} next link(s): {}",
            skipped.len(),
            skipped.join(", ")
        ),
        followed,
    )
}

/// The letter bytes an exchange served: raw PDF, or the decoded content of a Binary.
fn served_letter(exchange: &Exchange) -> Option<Vec<u8>> {
    let response = exchange.response.as_ref().filter(|r| r.status == 200)?;
    let content_type = response.header("content-type").unwrap_or_default();
    if content_type.starts_with("application/pdf") {
        return Some(response.body.bytes.to_vec());
    }
    let binary = response.body.json()?;
    STANDARD.decode(binary["content"].as_str()?).ok()
}

fn letter_intact(evidence: &Evidence<'_>) -> CheckOutcome {
    let check = CheckId::LetterRetrievedIntact;
    let Some(letter) = evidence.letter else {
        return outcome(
            check,
            Verdict::Error,
            "",
            "",
            "the patient fixture has no referral letter (DocumentReference with a Binary)",
            vec![],
        );
    };
    let expected = format!(
        "{} retrieved and stored: {} bytes, sha256 {}",
        letter.binary, letter.size, letter.sha256
    );
    let binary_path = format!(
        "{}/{}",
        evidence.fhir_base.trim_end_matches('/'),
        letter.binary
    );
    let reads: Vec<&Exchange> = of_kind(evidence, ExchangeKind::Binary)
        .filter(|e| e.request.url.split('?').next() == Some(binary_path.as_str()))
        .collect();
    let intact = reads
        .iter()
        .find(|e| served_letter(e).is_some_and(|b| hex(&Sha256::digest(&b)) == letter.sha256));
    let Some(retrieval) = intact else {
        let (actual, message) = if reads.is_empty() {
            (
                "never requested".to_owned(),
                format!("the target never retrieved the letter {}", letter.binary),
            )
        } else {
            (
                format!("answered {}", status(reads[0])),
                format!(
                    "the target requested {} but did not get the letter's bytes",
                    letter.binary
                ),
            )
        };
        return outcome(check, Verdict::Fail, expected, actual, message, ids(reads));
    };
    let mut shown = vec![retrieval.id.clone()];
    shown.extend(evidence.inbox_exchange.map(str::to_owned));

    let Some(entry) = evidence.inbox else {
        return outcome(
            check,
            Verdict::Pass,
            expected,
            "retrieved intact",
            "the target retrieved the letter intact; its stored copy cannot be inspected on this target",
            shown,
        );
    };
    match &entry.letter {
        Some(stored) if stored.sha256 == letter.sha256 && stored.size == letter.size => outcome(
            check,
            Verdict::Pass,
            expected,
            "retrieved and stored intact",
            "the target retrieved and stored the letter byte for byte",
            shown,
        ),
        Some(stored) => outcome(
            check,
            Verdict::Fail,
            expected,
            format!("stored {} bytes, sha256 {}", stored.size, stored.sha256),
            format!(
                "the target retrieved the letter but stored different bytes ({} instead of {} bytes)",
                stored.size, letter.size
            ),
            shown,
        ),
        None => outcome(
            check,
            Verdict::Fail,
            expected,
            "no stored letter",
            "the target retrieved the letter but its inbox entry holds no letter",
            shown,
        ),
    }
}

/// `referral-filed`, judged from the target's inbox.
pub(crate) fn referral_filed(
    entry: Option<&InboxEntry>,
    inspection: Option<&str>,
    bsn: &str,
    department: &str,
) -> CheckOutcome {
    let check = "referral-filed";
    let expected = format!("filed for patient {bsn} in department {department}");
    let shown: Vec<String> = inspection.map(str::to_owned).into_iter().collect();
    let make = |verdict, actual: String, message: String| CheckOutcome {
        check: check.to_owned(),
        verdict,
        expected: expected.clone(),
        actual,
        message,
        exchanges: shown.clone(),
    };
    let Some(entry) = entry else {
        return make(
            Verdict::Fail,
            "no inbox entry".to_owned(),
            "the target's inbox has no entry for this notification".to_owned(),
        );
    };
    let actual = format!(
        "status {:?}, patient {}, department {}",
        entry.status,
        entry.patient_bsn.as_deref().unwrap_or("none"),
        entry.department.as_deref().unwrap_or("none")
    );
    let mut problems = Vec::new();
    if entry.status != InboxStatus::Filed {
        problems.push(match &entry.problem {
            Some(p) => format!("the referral is {:?}: {p}", entry.status),
            None => format!("the referral is {:?}, not filed", entry.status),
        });
    }
    if entry.patient_bsn.as_deref() != Some(bsn) {
        problems.push(format!(
            "it is filed under patient {} instead of {bsn}",
            entry.patient_bsn.as_deref().unwrap_or("none")
        ));
    }
    if entry.department.as_deref() != Some(department) {
        problems.push(format!(
            "it is filed in department {} instead of {department}",
            entry.department.as_deref().unwrap_or("none")
        ));
    }
    if problems.is_empty() {
        make(
            Verdict::Pass,
            actual,
            "the referral is filed for the right patient in the addressed department".to_owned(),
        )
    } else {
        make(Verdict::Fail, actual, problems.join("; "))
    }
}

/// `cancellation-accepted`: the conditional update answered 2xx (200 matched, 201 stored).
pub(crate) fn cancellation_accepted(exchange: &Exchange) -> CheckOutcome {
    let check = CheckId::CancellationAccepted;
    let expected = "2xx (200 when the Task matched)";
    let id = vec![exchange.id.clone()];
    match &exchange.response {
        None => outcome(
            check,
            Verdict::Error,
            expected,
            "no answer",
            "the cancellation got no answer",
            id,
        ),
        Some(r) if (200..300).contains(&r.status) => outcome(
            check,
            Verdict::Pass,
            expected,
            r.status.to_string(),
            "the target accepted the cancellation",
            id,
        ),
        Some(r) => outcome(
            check,
            Verdict::Fail,
            expected,
            r.status.to_string(),
            format!(
                "the target refused the cancellation with {}{}",
                r.status,
                diagnostics_suffix(exchange)
            ),
            id,
        ),
    }
}

/// Pull requests other than token requests that were already under way when the target
/// acknowledged the cancellation may still start this long after it.
const CANCEL_GRACE_MS: u64 = 500;

fn ended_us(exchange: &Exchange) -> u64 {
    exchange.at_us + u64::try_from(exchange.duration.as_micros()).unwrap_or(0)
}

/// `pull-stopped`: once the cancellation was sent the target asks for no new token; once it
/// acknowledged it, it starts no new pull request after a short grace; and no data reaches
/// it after the authorization base was revoked (`revoked_at`). Scenarios cancel only when
/// no token request can legitimately be under way (after the pull, or while the only one
/// is held), so a token request after the cancellation is always a new pull.
pub(crate) fn pull_stopped(
    exchanges: &[Exchange],
    revoked_at: u64,
    cancellation: &Exchange,
) -> CheckOutcome {
    let check = CheckId::PullStopped;
    let expected = "no token request after the cancellation, no other pull request after a 500 ms grace, no data after the revocation";
    let acknowledged = ended_us(cancellation);
    let pulls: Vec<&Exchange> = exchanges
        .iter()
        .filter(|e| e.from == crate::journal::Party::Target)
        .filter(|e| {
            matches!(
                e.kind,
                ExchangeKind::TokenRequest
                    | ExchangeKind::Search
                    | ExchangeKind::Read
                    | ExchangeKind::Binary
                    | ExchangeKind::WorkflowTask
                    | ExchangeKind::Other
            )
        })
        .collect();
    let new_tokens: Vec<&Exchange> = pulls
        .iter()
        .copied()
        .filter(|e| e.kind == ExchangeKind::TokenRequest && e.at_us >= cancellation.at_us)
        .collect();
    let late: Vec<&Exchange> = pulls
        .iter()
        .copied()
        .filter(|e| {
            e.kind != ExchangeKind::TokenRequest && e.at_us > acknowledged + CANCEL_GRACE_MS * 1000
        })
        .collect();
    let data_after: Vec<&Exchange> = pulls
        .iter()
        .copied()
        .filter(|e| {
            ended_us(e) > revoked_at && e.kind != ExchangeKind::TokenRequest && status(e) == 200
        })
        .collect();
    if new_tokens.is_empty() && late.is_empty() && data_after.is_empty() {
        return outcome(
            check,
            Verdict::Pass,
            expected,
            "nothing after the cancellation",
            "the target stopped pulling after the cancellation",
            vec![cancellation.id.clone()],
        );
    }
    let mut problems = Vec::new();
    if !new_tokens.is_empty() {
        problems.push(format!(
            "the target asked for {} new pull token(s) after the cancellation",
            new_tokens.len()
        ));
    }
    if !late.is_empty() {
        problems.push(format!(
            "the target started {} pull request(s) after the cancellation",
            late.len()
        ));
    }
    if !data_after.is_empty() {
        problems.push(format!(
            "{} request(s) still got data after the authorization base was revoked",
            data_after.len()
        ));
    }
    let mut shown = vec![cancellation.id.clone()];
    for e in new_tokens.into_iter().chain(late).chain(data_after) {
        if !shown.contains(&e.id) {
            shown.push(e.id.clone());
        }
    }
    outcome(
        check,
        Verdict::Fail,
        expected,
        problems.join("; "),
        problems.join("; "),
        shown,
    )
}

/// `referral-cancelled`, judged from the target's inbox.
pub(crate) fn referral_cancelled(
    entry: Option<&InboxEntry>,
    inspection: Option<&str>,
) -> CheckOutcome {
    let shown: Vec<String> = inspection.map(str::to_owned).into_iter().collect();
    let expected = "the referral is marked cancelled".to_owned();
    let (verdict, actual, message) = match entry {
        None => (
            Verdict::Fail,
            "no inbox entry".to_owned(),
            "the target's inbox has no entry for the cancelled notification".to_owned(),
        ),
        Some(e) if e.status == InboxStatus::Cancelled => (
            Verdict::Pass,
            "cancelled".to_owned(),
            "the target marked the referral cancelled".to_owned(),
        ),
        Some(e) => (
            Verdict::Fail,
            format!("status {:?}", e.status),
            format!(
                "the referral is still {:?} after the cancellation",
                e.status
            ),
        ),
    };
    CheckOutcome {
        check: "referral-cancelled".to_owned(),
        verdict,
        expected,
        actual,
        message,
        exchanges: shown,
    }
}

/// `sbvz-checked-before-registration`: an OpvragenVerifieren call about the notified BSN
/// reached SBV-Z before the patient was seen registered. In production phases SBV-Z is real,
/// so the target's own record of its check (inspection) or a tester must confirm it.
fn sbvz_checked(evidence: &Evidence<'_>) -> CheckOutcome {
    let check = CheckId::SbvzCheckedBeforeRegistration;
    let expected = "an SBV-Z OpvragenVerifieren call with the notified BSN before registration";
    let shown: Vec<String> = evidence
        .inbox_exchange
        .map(str::to_owned)
        .into_iter()
        .collect();
    if evidence.production {
        return match evidence.inbox.and_then(|e| e.sbvz.as_ref()) {
            Some(answer) => outcome(
                check,
                Verdict::Pass,
                expected,
                answer.clone(),
                "the target reports its SBV-Z check (production: SBV-Z is real)",
                shown,
            ),
            None => outcome(
                check,
                Verdict::NotRun,
                expected,
                "not confirmable",
                "not run: in production SBV-Z is real; confirm the check at the target",
                shown,
            ),
        };
    }
    let calls: Vec<&crate::sim::sbvz::SbvzCall> = evidence
        .sbvz_calls
        .iter()
        .filter(|c| c.operation == crate::protocol::sbvz::SbvzOperation::OpvragenVerifieren)
        .collect();
    let Some(first) = calls.first() else {
        return outcome(
            check,
            Verdict::Fail,
            expected,
            "no call",
            "the target never asked SBV-Z about the unknown patient's BSN",
            shown,
        );
    };
    let registered_seen = evidence
        .inbox
        .filter(|e| e.status == InboxStatus::Filed)
        .and(evidence.inbox_exchange)
        .and_then(|id| evidence.exchanges.iter().find(|e| e.id == id));
    match registered_seen {
        Some(inspection) if first.at_us > inspection.at_us => outcome(
            check,
            Verdict::Fail,
            expected,
            "call after registration",
            "the SBV-Z call came after the patient was registered",
            shown,
        ),
        _ => outcome(
            check,
            Verdict::Pass,
            expected,
            format!("{} call(s)", calls.len()),
            "the target asked SBV-Z about the BSN before registering",
            shown,
        ),
    }
}

/// `registration-follows-sbvz`: the unknown patient is registered (the referral filed) when
/// SBV-Z found the BSN, and left for a person to check otherwise: never registered silently.
fn registration_follows_sbvz(evidence: &Evidence<'_>) -> CheckOutcome {
    use crate::scenario::model::SbvzAnswer;
    let check = CheckId::RegistrationFollowsSbvz;
    let shown: Vec<String> = evidence
        .inbox_exchange
        .map(str::to_owned)
        .into_iter()
        .collect();
    let Some(entry) = evidence.inbox else {
        return outcome(
            check,
            Verdict::NotRun,
            "",
            "",
            "not run: the target's registration cannot be inspected; confirm it at the target",
            shown,
        );
    };
    let should_register = evidence.sent.sbvz.is_none_or(|a| a == SbvzAnswer::Found);
    let registered = entry.status == InboxStatus::Filed;
    let expected = if should_register {
        "registered and filed after SBV-Z found the BSN"
    } else {
        "not registered: waiting for a person to check the SBV-Z answer"
    };
    let actual = format!(
        "status {:?}{}",
        entry.status,
        entry
            .problem
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default()
    );
    if registered == should_register {
        outcome(
            check,
            Verdict::Pass,
            expected,
            actual,
            "the registration follows the SBV-Z answer",
            shown,
        )
    } else if registered {
        outcome(
            check,
            Verdict::Fail,
            expected,
            actual,
            "the target registered the patient although SBV-Z did not verify the BSN",
            shown,
        )
    } else {
        outcome(
            check,
            Verdict::Fail,
            expected,
            actual,
            "the target did not register the patient although SBV-Z found the BSN",
            shown,
        )
    }
}

/// How many line numbers a finding in the log names before "and N more".
const SHOWN_LINES: usize = 5;

/// Whether `line` holds `value`: anywhere for values of four characters or more, as a
/// whole word for shorter ones (the family name "Bos", not "Bosch").
fn mentions(line: &str, value: &str) -> bool {
    if value.chars().count() >= 4 {
        return line.contains(value);
    }
    line.match_indices(value).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + value.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// `log-free-of-patient-data`: the target's log names none of the patient's BSN, family
/// names or birth date. The message gives what was found and on which line, never the value.
pub(crate) fn log_free_of_patient_data(
    log: &str,
    bsn: &str,
    patient: Option<&serde_json::Value>,
    inspection: &str,
) -> CheckOutcome {
    let mut wanted: Vec<(&str, Vec<String>)> = vec![("the BSN", vec![bsn.to_owned()])];
    if let Some(patient) = patient {
        let families: Vec<String> = patient["name"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|name| name["family"].as_str())
            .flat_map(crate::redact::family_name_parts)
            .collect();
        if !families.is_empty() {
            wanted.push(("the family name", families));
        }
        if let Some(birth_date) = patient["birthDate"].as_str() {
            wanted.push((
                "the birth date",
                crate::redact::birth_date_forms(birth_date),
            ));
        }
    }
    let mut found = Vec::new();
    for (what, values) in &wanted {
        let mut matching = log
            .lines()
            .enumerate()
            .filter(|(_, line)| values.iter().any(|value| mentions(line, value)))
            .map(|(n, _)| (n + 1).to_string());
        let shown: Vec<String> = matching.by_ref().take(SHOWN_LINES).collect();
        if !shown.is_empty() {
            let more = match matching.count() {
                0 => String::new(),
                more => format!(" and {more} more"),
            };
            found.push(format!(
                "{what} of the patient on line {}{more}",
                shown.join(", ")
            ));
        }
    }
    let lines = log.lines().count();
    CheckOutcome {
        check: "log-free-of-patient-data".to_owned(),
        verdict: if found.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        expected: "no BSN, family name or birth date of the patient in the target's log".to_owned(),
        actual: if found.is_empty() {
            format!("none in {lines} line(s)")
        } else {
            found.join("; ")
        },
        message: if found.is_empty() {
            format!("the target's log ({lines} lines) names no patient data")
        } else {
            format!("the target's log holds {}", found.join("; "))
        },
        exchanges: vec![inspection.to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_finding_names_five_lines_and_counts_the_rest() {
        let patient =
            serde_json::json!({"name": [{"family": "van Bos"}], "birthDate": "1958-11-14"});
        let log = "ok\nBSN 999923067\n".repeat(8) + "Bos born 14-11-1958\nBosch stays\n";
        let outcome = log_free_of_patient_data(&log, "999923067", Some(&patient), "x1");
        assert_eq!(outcome.verdict, Verdict::Fail);
        assert!(
            outcome
                .actual
                .contains("the BSN of the patient on line 2, 4, 6, 8, 10 and 3 more"),
            "{}",
            outcome.actual
        );
        assert!(
            outcome
                .actual
                .contains("the family name of the patient on line 17;")
        );
        assert!(
            outcome
                .actual
                .contains("the birth date of the patient on line 17")
        );
        let clean = log_free_of_patient_data("Bosch stays\n", "999923067", Some(&patient), "x1");
        assert_eq!(clean.verdict, Verdict::Pass, "{}", clean.actual);
    }
}

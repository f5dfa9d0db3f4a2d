//! Named fault switches of the reference node. Each one breaks one rule so that a test can
//! prove the check guarding that rule fails.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// One deliberate defect of the reference node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Answers a notification `200` without a `Location` header.
    NoLocation,
    /// Asks for the pull token without the authorization base.
    OmitAuthorizationBase,
    /// Never reads the workflow Task, even when asked to.
    SkipWorkflowTask,
    /// Runs only every other notified search.
    PartialSearches,
    /// Reads only the first page of a search and ignores `next`.
    IgnorePaging,
    /// Never retrieves the referral letter's Binary.
    SkipLetter,
    /// Stores the letter without its last byte.
    CorruptLetter,
    /// Files the referral under another patient than the notified one.
    WrongPatient,
    /// Files the referral in another department than the addressed one.
    WrongDepartment,
    /// Answers a cancellation 200 but leaves the referral as it was.
    IgnoreCancellation,
    /// Treats a cancellation as an update and pulls again.
    RepullOnCancel,
    /// As sender: leaves the authorization base out of the notification.
    NoAuthorizationBase,
    /// As sender: serves searchsets without their `_include`/`_revinclude` entries.
    DropIncludes,
    /// As sender: marks included entries as `match`.
    IncludeAsMatch,
    /// As sender: claims the base Condition profile instead of zib-Problem.
    WrongProfile,
    /// As sender: serves References without `display`.
    OmitDisplay,
    /// As sender: keeps serving after it cancelled (does not revoke).
    ServeAfterCancel,
    /// As sender: serves the raw PDF cut in half.
    TruncatePdf,
    /// As receiver: accepts notifications without a valid token.
    AcceptAnyToken,
    /// Both token endpoints: ignore the assertion's audience.
    IgnoreAudience,
    /// Both token endpoints: accept a replayed assertion (`jti` seen before).
    AcceptReplayedAssertion,
    /// Both token endpoints: accept an expired assertion.
    AcceptExpiredAssertion,
    /// As receiver: accepts a BSN that fails the 11-proef.
    AcceptInvalidBsn,
    /// As receiver: accepts a notification addressed to a department it does not have.
    AcceptAnyOwner,
    /// As sender: answers searches for other patients than the authorized one.
    AnswerOtherPatients,
    /// As sender: answers searches that were not notified.
    ServeAnySearch,
    /// As sender: serves resources nobody referenced (any id in its records).
    ServeUnreferenced,
    /// As receiver: registers an unknown patient without asking SBV-Z.
    RegisterWithoutSbvz,
    /// As receiver: registers an unknown patient whatever SBV-Z answers.
    RegisterDespiteSbvz,
    /// As sender: serves the Patient without its birth date.
    OmitBirthDate,
    /// Accepts access tokens after they expired.
    AcceptExpiredToken,
    /// Accepts an access token from another organisation than the one it was issued to.
    AcceptTokenOfAnotherClient,
    /// Trusts client certificates from any CA.
    AcceptForeignCa,
    /// Accepts client certificates its CRLs list as revoked.
    IgnoreRevocation,
    /// Accepts expired client certificates.
    AcceptExpiredCertificate,
    /// Writes BSNs and names into its log.
    LogPatientData,
    /// Issues tokens without checking the authorization assertion.
    IgnoreAuthorizationAssertion,
    /// Accepts a notification on behalf of any care provider, whatever its token's.
    AcceptAnyRequester,
    /// As sender, lets any care provider redeem an authorization base.
    AcceptBaseFromAnyone,
}

impl Fault {
    /// Every fault, in the order `node faults` lists them.
    pub const ALL: [Fault; 39] = [
        Fault::NoLocation,
        Fault::OmitAuthorizationBase,
        Fault::SkipWorkflowTask,
        Fault::PartialSearches,
        Fault::IgnorePaging,
        Fault::SkipLetter,
        Fault::CorruptLetter,
        Fault::WrongPatient,
        Fault::WrongDepartment,
        Fault::IgnoreCancellation,
        Fault::RepullOnCancel,
        Fault::NoAuthorizationBase,
        Fault::DropIncludes,
        Fault::IncludeAsMatch,
        Fault::WrongProfile,
        Fault::OmitDisplay,
        Fault::ServeAfterCancel,
        Fault::TruncatePdf,
        Fault::AcceptAnyToken,
        Fault::IgnoreAudience,
        Fault::AcceptReplayedAssertion,
        Fault::AcceptExpiredAssertion,
        Fault::AcceptInvalidBsn,
        Fault::AcceptAnyOwner,
        Fault::AnswerOtherPatients,
        Fault::ServeAnySearch,
        Fault::ServeUnreferenced,
        Fault::RegisterWithoutSbvz,
        Fault::RegisterDespiteSbvz,
        Fault::OmitBirthDate,
        Fault::AcceptExpiredToken,
        Fault::AcceptTokenOfAnotherClient,
        Fault::AcceptForeignCa,
        Fault::IgnoreRevocation,
        Fault::AcceptExpiredCertificate,
        Fault::LogPatientData,
        Fault::IgnoreAuthorizationAssertion,
        Fault::AcceptAnyRequester,
        Fault::AcceptBaseFromAnyone,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::NoLocation => "no-location",
            Fault::OmitAuthorizationBase => "omit-authorization-base",
            Fault::SkipWorkflowTask => "skip-workflow-task",
            Fault::PartialSearches => "partial-searches",
            Fault::IgnorePaging => "ignore-paging",
            Fault::SkipLetter => "skip-letter",
            Fault::CorruptLetter => "corrupt-letter",
            Fault::WrongPatient => "wrong-patient",
            Fault::WrongDepartment => "wrong-department",
            Fault::IgnoreCancellation => "ignore-cancellation",
            Fault::RepullOnCancel => "repull-on-cancel",
            Fault::NoAuthorizationBase => "no-authorization-base",
            Fault::DropIncludes => "drop-includes",
            Fault::IncludeAsMatch => "include-as-match",
            Fault::WrongProfile => "wrong-profile",
            Fault::OmitDisplay => "omit-display",
            Fault::ServeAfterCancel => "serve-after-cancel",
            Fault::TruncatePdf => "truncate-pdf",
            Fault::AcceptAnyToken => "accept-any-token",
            Fault::IgnoreAudience => "ignore-audience",
            Fault::AcceptReplayedAssertion => "accept-replayed-assertion",
            Fault::AcceptExpiredAssertion => "accept-expired-assertion",
            Fault::AcceptInvalidBsn => "accept-invalid-bsn",
            Fault::AcceptAnyOwner => "accept-any-owner",
            Fault::AnswerOtherPatients => "answer-other-patients",
            Fault::ServeAnySearch => "serve-any-search",
            Fault::ServeUnreferenced => "serve-unreferenced",
            Fault::RegisterWithoutSbvz => "register-without-sbvz",
            Fault::RegisterDespiteSbvz => "register-despite-sbvz",
            Fault::OmitBirthDate => "omit-birth-date",
            Fault::AcceptExpiredToken => "accept-expired-token",
            Fault::AcceptTokenOfAnotherClient => "accept-token-of-another-client",
            Fault::AcceptForeignCa => "accept-foreign-ca",
            Fault::IgnoreRevocation => "ignore-revocation",
            Fault::AcceptExpiredCertificate => "accept-expired-certificate",
            Fault::LogPatientData => "log-patient-data",
            Fault::IgnoreAuthorizationAssertion => "ignore-authorization-assertion",
            Fault::AcceptAnyRequester => "accept-any-requester",
            Fault::AcceptBaseFromAnyone => "accept-base-from-anyone",
        }
    }

    /// What the fault does, for `node faults --verbose` and the docs.
    pub fn effect(self) -> &'static str {
        match self {
            Fault::NoLocation => "answers a notification 200 without a Location header",
            Fault::OmitAuthorizationBase => {
                "requests the pull token without the authorization base"
            }
            Fault::SkipWorkflowTask => "never reads the workflow task",
            Fault::PartialSearches => "runs only every other notified search",
            Fault::IgnorePaging => "ignores next links and reads only first pages",
            Fault::SkipLetter => "never retrieves the referral letter",
            Fault::CorruptLetter => "stores the letter without its last byte",
            Fault::WrongPatient => "files the referral under another patient",
            Fault::WrongDepartment => "files the referral in another department",
            Fault::IgnoreCancellation => "answers a cancellation 200 but keeps the referral",
            Fault::RepullOnCancel => "treats a cancellation as an update and pulls again",
            Fault::NoAuthorizationBase => {
                "as sender, sends a notification without an authorization base"
            }
            Fault::DropIncludes => "as sender, drops _include and _revinclude results",
            Fault::IncludeAsMatch => "as sender, marks included entries as match",
            Fault::WrongProfile => "as sender, claims a wrong profile on Conditions",
            Fault::OmitDisplay => "as sender, omits Reference.display",
            Fault::ServeAfterCancel => "as sender, keeps serving after cancelling",
            Fault::TruncatePdf => "as sender, serves the raw letter PDF cut in half",
            Fault::AcceptAnyToken => "as receiver, accepts notifications without a valid token",
            Fault::IgnoreAudience => "token endpoints ignore the assertion's audience",
            Fault::AcceptReplayedAssertion => "token endpoints accept a replayed assertion",
            Fault::AcceptExpiredAssertion => "token endpoints accept an expired assertion",
            Fault::AcceptInvalidBsn => "as receiver, accepts a BSN that fails the 11-proef",
            Fault::AcceptAnyOwner => {
                "as receiver, accepts notifications for departments it does not have"
            }
            Fault::AnswerOtherPatients => "as sender, answers searches for other patients",
            Fault::ServeAnySearch => "as sender, answers searches that were not notified",
            Fault::ServeUnreferenced => "as sender, serves resources nobody referenced",
            Fault::RegisterWithoutSbvz => "registers an unknown patient without an SBV-Z check",
            Fault::RegisterDespiteSbvz => "registers an unknown patient whatever SBV-Z answers",
            Fault::OmitBirthDate => "as sender, serves the Patient without its birth date",
            Fault::AcceptExpiredToken => "accepts access tokens after they expired",
            Fault::AcceptTokenOfAnotherClient => {
                "accepts a token from another organisation than the one it was issued to"
            }
            Fault::AcceptForeignCa => "trusts client certificates from any CA",
            Fault::IgnoreRevocation => "accepts client certificates its CRLs list as revoked",
            Fault::AcceptExpiredCertificate => "accepts expired client certificates",
            Fault::LogPatientData => "writes patients' BSNs into its log",
            Fault::IgnoreAuthorizationAssertion => {
                "issues tokens without checking the authorization assertion"
            }
            Fault::AcceptAnyRequester => {
                "accepts a notification on behalf of another care provider than its token's"
            }
            Fault::AcceptBaseFromAnyone => {
                "as sender, lets any care provider redeem an authorization base"
            }
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!("unknown fault `{name}`; known faults: {}", names.join(", "))
            })
    }
}

/// The switches that are on.
pub type FaultSet = BTreeSet<Fault>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_fault() {
        for fault in Fault::ALL {
            assert_eq!(fault.name().parse::<Fault>(), Ok(fault));
        }
        assert!(
            "nonsense"
                .parse::<Fault>()
                .unwrap_err()
                .contains("skip-letter")
        );
    }
}

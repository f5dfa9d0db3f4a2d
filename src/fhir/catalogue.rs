//! The BgZ query catalogues (protocol.md §4): BgZ MSZ 2.0, scoped by BSN, and the older
//! TA Notified Pull 1.x list, scoped by the token. Each row gives the section code used as
//! `Task.input.type` and the query, with `{bsn}` and `{P}` placeholders.

use serde::{Deserialize, Serialize};

/// Which catalogue a target uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CatalogueId {
    /// BgZ MSZ 2.0 with BSN scoping.
    #[default]
    #[serde(rename = "msz-2.0")]
    Msz2,
    /// TA Notified Pull 1.x, patient from the token.
    #[serde(rename = "np-1")]
    Np1,
}

/// How "last known" rows are asked (protocol.md §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LastKnownForm {
    /// `Observation/$lastn?...`
    Lastn,
    /// Plain search: all results.
    All,
    /// `&_sort=-date&_count=1`.
    #[default]
    SortCount,
}

/// The generic `Task.input` code system and its codes.
pub const TASK_PARAMETER_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/TaskParameter";
const LOINC: &str = "http://loinc.org";
const SCT: &str = "http://snomed.info/sct";

/// One row of a catalogue.
#[derive(Debug, Clone, Copy)]
pub struct CatalogueRow {
    /// Section name, e.g. `Problem`.
    pub section: &'static str,
    /// Section code system and code; `None` means the generic `search-resource` code.
    pub code: Option<(&'static str, &'static str)>,
    /// The query, with `{P}` for the patient parameter and `{bsn}` for the BSN.
    pub query: &'static str,
    /// True for the "last known" rows whose form is configurable.
    pub last_known: bool,
}

const fn row(
    section: &'static str,
    code: Option<(&'static str, &'static str)>,
    query: &'static str,
    last_known: bool,
) -> CatalogueRow {
    CatalogueRow {
        section,
        code,
        query,
        last_known,
    }
}

const P: &str = "patient.identifier=http://fhir.nl/fhir/NamingSystem/bsn|{bsn}";

/// BgZ MSZ 2.0, protocol.md §4.1, in the table's order.
pub const MSZ2: [CatalogueRow; 26] = [
    row(
        "Patient",
        Some((LOINC, "79191-3")),
        "Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|{bsn}&_include=Patient:general-practitioner",
        false,
    ),
    row(
        "Payer",
        Some((LOINC, "48768-6")),
        "Coverage?beneficiary.identifier=http://fhir.nl/fhir/NamingSystem/bsn|{bsn}&_include=Coverage:payor",
        false,
    ),
    row(
        "TreatmentDirective",
        Some((SCT, "11291000146105")),
        "Consent?{P}&category=http://snomed.info/sct|11291000146105",
        false,
    ),
    row(
        "AdvanceDirective",
        Some((SCT, "11341000146107")),
        "Consent?{P}&category=http://snomed.info/sct|11341000146107",
        false,
    ),
    row(
        "FunctionalOrMentalStatus",
        Some((LOINC, "47420-5")),
        "Observation?{P}&category=http://snomed.info/sct|118228005,http://snomed.info/sct|384821006",
        false,
    ),
    row("Problem", Some((LOINC, "11450-4")), "Condition?{P}", false),
    row(
        "LivingSituation",
        Some((SCT, "365508006")),
        "Observation?{P}&code=http://snomed.info/sct|365508006",
        false,
    ),
    row(
        "DrugUse",
        Some((SCT, "228366006")),
        "Observation?{P}&code=http://snomed.info/sct|228366006",
        false,
    ),
    row(
        "AlcoholUse",
        Some((SCT, "228273003")),
        "Observation?{P}&code=http://snomed.info/sct|228273003",
        false,
    ),
    row(
        "TobaccoUse",
        Some((SCT, "365980008")),
        "Observation?{P}&code=http://snomed.info/sct|365980008",
        false,
    ),
    row(
        "NutritionAdvice",
        Some((SCT, "11816003")),
        "NutritionOrder?{P}",
        false,
    ),
    row("Alert", Some((LOINC, "75310-3")), "Flag?{P}", false),
    row(
        "AllergyIntolerance",
        Some((LOINC, "48765-2")),
        "AllergyIntolerance?{P}",
        false,
    ),
    row(
        "MedicationUse",
        Some((SCT, "422979000")),
        "MedicationStatement?{P}&category=urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3|6&_include=MedicationStatement:medication",
        false,
    ),
    row(
        "MedicationAgreement",
        Some((SCT, "16076005")),
        "MedicationRequest?{P}&category=http://snomed.info/sct|16076005&_include=MedicationRequest:medication",
        false,
    ),
    row(
        "AdministrationAgreement",
        Some((SCT, "422037009")),
        "MedicationDispense?{P}&category=http://snomed.info/sct|422037009&_include=MedicationDispense:medication",
        false,
    ),
    row(
        "MedicalDevice",
        Some((LOINC, "46264-8")),
        "DeviceUseStatement?{P}&_include=DeviceUseStatement:device",
        false,
    ),
    row(
        "Vaccination",
        Some((LOINC, "11369-6")),
        "Immunization?{P}&status=completed",
        false,
    ),
    row(
        "BloodPressure",
        Some((LOINC, "85354-9")),
        "Observation?{P}&code=http://loinc.org|85354-9",
        true,
    ),
    row(
        "BodyWeight",
        Some((LOINC, "29463-7")),
        "Observation?{P}&code=http://loinc.org|29463-7",
        true,
    ),
    row(
        "BodyHeight",
        Some((LOINC, "8302-2")),
        "Observation?{P}&code=http://loinc.org|8302-2,http://loinc.org|8306-3,http://loinc.org|8308-9",
        true,
    ),
    row(
        "LaboratoryTestResult",
        Some((SCT, "15220000")),
        "Observation?{P}&category=http://snomed.info/sct|49581000146104&_include=Observation:related-target",
        true,
    ),
    row(
        "Encounter",
        Some((LOINC, "46240-8")),
        "Encounter?{P}",
        false,
    ),
    row(
        "Procedure",
        Some((LOINC, "47519-4")),
        "Procedure?{P}&category=http://snomed.info/sct|387713003,http://snomed.info/sct|258174001&_include=Procedure:based-on",
        false,
    ),
    row(
        "PlannedProcedure",
        Some((LOINC, "18776-5")),
        "ProcedureRequest?{P}&status=active",
        false,
    ),
    row(
        "CareTeam",
        None,
        "CareTeam?{P}&status=active&_include=CareTeam:participant",
        false,
    ),
];

/// TA Notified Pull 1.x, protocol.md §4.2.
pub const NP1: [CatalogueRow; 26] = [
    row(
        "Patient",
        Some((LOINC, "79191-3")),
        "Patient?_include=Patient:general-practitioner",
        false,
    ),
    row(
        "Payer",
        Some((LOINC, "48768-6")),
        "Coverage?_include=Coverage:payor:Organization&_include=Coverage:payor:Patient",
        false,
    ),
    row(
        "TreatmentDirective",
        Some((SCT, "11291000146105")),
        "Consent?category=http://snomed.info/sct|11291000146105",
        false,
    ),
    row(
        "AdvanceDirective",
        Some((SCT, "11341000146107")),
        "Consent?category=http://snomed.info/sct|11341000146107",
        false,
    ),
    row(
        "FunctionalOrMentalStatus",
        Some((LOINC, "47420-5")),
        "Observation/$lastn?category=http://snomed.info/sct|118228005,http://snomed.info/sct|384821006",
        false,
    ),
    row("Problem", Some((LOINC, "11450-4")), "Condition", false),
    row(
        "LivingSituation",
        Some((SCT, "365508006")),
        "Observation/$lastn?code=http://snomed.info/sct|365508006",
        false,
    ),
    row(
        "DrugUse",
        Some((SCT, "228366006")),
        "Observation?code=http://snomed.info/sct|228366006",
        false,
    ),
    row(
        "AlcoholUse",
        Some((SCT, "228273003")),
        "Observation?code=http://snomed.info/sct|228273003",
        false,
    ),
    row(
        "TobaccoUse",
        Some((SCT, "365980008")),
        "Observation?code=http://snomed.info/sct|365980008",
        false,
    ),
    row(
        "NutritionAdvice",
        Some((SCT, "11816003")),
        "NutritionOrder",
        false,
    ),
    row("Alert", Some((LOINC, "75310-3")), "Flag", false),
    row(
        "AllergyIntolerance",
        Some((LOINC, "48765-2")),
        "AllergyIntolerance",
        false,
    ),
    row(
        "MedicationUse",
        Some((SCT, "422979000")),
        "MedicationStatement?category=urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3|6&_include=MedicationStatement:medication",
        false,
    ),
    row(
        "MedicationAgreement",
        Some((SCT, "16076005")),
        "MedicationRequest?category=http://snomed.info/sct|16076005&_include=MedicationRequest:medication",
        false,
    ),
    row(
        "AdministrationAgreement",
        Some((SCT, "422037009")),
        "MedicationDispense?category=http://snomed.info/sct|422037009&_include=MedicationDispense:medication",
        false,
    ),
    row(
        "MedicalDevice",
        Some((LOINC, "46264-8")),
        "DeviceUseStatement?_include=DeviceUseStatement:device",
        false,
    ),
    row(
        "Vaccination",
        Some((LOINC, "11369-6")),
        "Immunization?status=completed",
        false,
    ),
    row(
        "BloodPressure",
        Some((LOINC, "85354-9")),
        "Observation/$lastn?code=http://loinc.org|85354-9",
        false,
    ),
    row(
        "BodyWeight",
        Some((LOINC, "29463-7")),
        "Observation/$lastn?code=http://loinc.org|29463-7",
        false,
    ),
    row(
        "BodyHeight",
        Some((LOINC, "8302-2")),
        "Observation/$lastn?code=http://loinc.org|8302-2,http://loinc.org|8306-3,http://loinc.org|8308-9",
        false,
    ),
    row(
        "LaboratoryTestResult",
        Some((SCT, "15220000")),
        "Observation/$lastn?category=http://snomed.info/sct|275711006&_include=Observation:related-target&_include=Observation:specimen",
        false,
    ),
    row(
        "Procedure",
        Some((LOINC, "47519-4")),
        "Procedure?category=http://snomed.info/sct|387713003",
        false,
    ),
    row(
        "Encounter",
        Some((LOINC, "46240-8")),
        "Encounter?class=http://hl7.org/fhir/v3/ActCode|IMP,http://hl7.org/fhir/v3/ActCode|ACUTE,http://hl7.org/fhir/v3/ActCode|NONAC",
        false,
    ),
    row(
        "PlannedProcedure",
        Some((LOINC, "18776-5")),
        "ProcedureRequest?status=active",
        false,
    ),
    row(
        "PlannedImmunization",
        Some((LOINC, "18776-5")),
        "ImmunizationRecommendation",
        false,
    ),
];

const ZIB: &str = "http://nictiz.nl/fhir/StructureDefinition/zib-";

/// The profiles a match of a section may claim (one of them), from protocol.md §4.1.
pub fn section_profiles(section: &str) -> Vec<String> {
    let zib = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{ZIB}{n}"))
            .collect::<Vec<_>>()
    };
    match section {
        "Patient" => vec![
            "http://fhir.nl/fhir/StructureDefinition/nl-core-patient".to_owned(),
            "http://nictiz.nl/fhir/StructureDefinition/BgZ-Patient".to_owned(),
        ],
        "Problem" => {
            let mut profiles = zib(&["Problem"]);
            profiles.push("http://nictiz.nl/fhir/StructureDefinition/BgZ-Problem".to_owned());
            profiles
        }
        "Payer"
        | "TreatmentDirective"
        | "AdvanceDirective"
        | "FunctionalOrMentalStatus"
        | "LivingSituation"
        | "DrugUse"
        | "AlcoholUse"
        | "TobaccoUse"
        | "NutritionAdvice"
        | "Alert"
        | "AllergyIntolerance"
        | "MedicationUse"
        | "MedicationAgreement"
        | "AdministrationAgreement"
        | "MedicalDevice"
        | "Vaccination"
        | "BloodPressure"
        | "BodyWeight"
        | "BodyHeight"
        | "Encounter"
        | "Procedure" => zib(&[section]),
        "LaboratoryTestResult" => zib(&["LaboratoryTestResult-Observation"]),
        "PlannedProcedure" => zib(&["ProcedureRequest"]),
        "CareTeam" => vec!["http://fhir.nl/fhir/StructureDefinition/nl-core-careteam".to_owned()],
        _ => Vec::new(),
    }
}

/// The section a `Task.input` type coding names in the given catalogue, if any. Codes shared
/// by several rows (1.x lifestyle rows) resolve to no single section.
pub fn section_of(catalogue: CatalogueId, system: &str, code: &str) -> Option<&'static str> {
    let rows: &[CatalogueRow] = match catalogue {
        CatalogueId::Msz2 => &MSZ2,
        CatalogueId::Np1 => &NP1,
    };
    let mut found = rows
        .iter()
        .filter(|r| r.code.is_some_and(|(s, c)| s == system && c == code));
    let first = found.next()?;
    found.next().is_none().then_some(first.section)
}

/// Query of the referral letter as a query input (protocol.md §5).
pub const LETTER_QUERY: &str = "DocumentReference?status=current";
/// Section code of the letter query.
pub const LETTER_CODE: (&str, &str) = (LOINC, "77599-9");

/// One query to put in a Notification Task: its `Task.input.type` coding and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifiedQuery {
    pub section: String,
    pub code_system: String,
    pub code: String,
    /// The relative search, decoded (not yet percent-encoded).
    pub query: String,
}

/// Options that shape the emitted queries.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryOptions {
    pub catalogue: CatalogueId,
    pub last_known: LastKnownForm,
    /// Append `_revinclude=Provenance:target` (MSZ 2.0 metadata variant).
    pub provenance: bool,
}

/// The queries a sender notifies for one patient, ending with the letter query.
pub fn notified_queries(bsn: &str, options: QueryOptions) -> Vec<NotifiedQuery> {
    let rows: &[CatalogueRow] = match options.catalogue {
        CatalogueId::Msz2 => &MSZ2,
        CatalogueId::Np1 => &NP1,
    };
    let mut out: Vec<NotifiedQuery> = rows
        .iter()
        .map(|row| {
            let mut query = row.query.replace("{P}", P).replace("{bsn}", bsn);
            let mut provenance = options.provenance && options.catalogue == CatalogueId::Msz2;
            if row.last_known {
                match options.last_known {
                    LastKnownForm::All => {}
                    LastKnownForm::SortCount => query.push_str("&_sort=-date&_count=1"),
                    LastKnownForm::Lastn => {
                        query = query.replacen("Observation?", "Observation/$lastn?", 1);
                        // `$lastn` is never combined with `_revinclude`.
                        provenance = false;
                    }
                }
            }
            if provenance {
                query.push_str("&_revinclude=Provenance:target");
            }
            let (system, code) = row
                .code
                .unwrap_or((TASK_PARAMETER_SYSTEM, "search-resource"));
            NotifiedQuery {
                section: row.section.to_owned(),
                code_system: system.to_owned(),
                code: code.to_owned(),
                query,
            }
        })
        .collect();
    out.push(NotifiedQuery {
        section: "ReferralLetter".to_owned(),
        code_system: LETTER_CODE.0.to_owned(),
        code: LETTER_CODE.1.to_owned(),
        query: LETTER_QUERY.to_owned(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msz2_queries_carry_the_bsn_and_provenance() {
        let queries = notified_queries(
            "999000019",
            QueryOptions {
                provenance: true,
                ..Default::default()
            },
        );
        assert_eq!(queries.len(), 27);
        assert_eq!(
            queries[5].query,
            "Condition?patient.identifier=http://fhir.nl/fhir/NamingSystem/bsn|999000019&_revinclude=Provenance:target"
        );
        assert_eq!(queries[25].code, "search-resource");
        assert_eq!(queries[26].query, LETTER_QUERY);
    }

    #[test]
    fn last_known_forms_shape_the_observation_rows() {
        let bsn = "999000019";
        let bp = |form| {
            let options = QueryOptions {
                last_known: form,
                provenance: true,
                ..Default::default()
            };
            notified_queries(bsn, options)[18].query.clone()
        };
        assert!(
            bp(LastKnownForm::SortCount)
                .ends_with("&_sort=-date&_count=1&_revinclude=Provenance:target")
        );
        assert!(bp(LastKnownForm::Lastn).starts_with("Observation/$lastn?"));
        assert!(!bp(LastKnownForm::Lastn).contains("_revinclude"));
    }

    #[test]
    fn np1_queries_have_no_patient_parameter() {
        let options = QueryOptions {
            catalogue: CatalogueId::Np1,
            provenance: true,
            ..Default::default()
        };
        assert!(
            notified_queries("999000019", options)
                .iter()
                .all(|q| !q.query.contains("999000019"))
        );
    }
}

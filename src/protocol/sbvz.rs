//! SBV-Z messages (protocol.md §9): the `OpvragenVerifieren` request built from a FHIR STU3
//! Patient, the `OpvragenPersoonsgegevens` request, and their answers (or SOAP Faults) read
//! into typed values. Types and fields that mirror a wire element keep its Dutch name. This
//! module builds and reads messages only; sending them and judging the answers are the
//! caller's job, and no request is ever built for a BSN that fails the 11-proef.

use serde_json::Value;

use crate::fhir::bsn::{Bsn, BsnError};
use crate::protocol::soap::{self, Element, SoapBody, SoapError, SoapFault, XmlLimits, XmlWriter};

/// `Melding/@Code`: BSN found, for `OpvragenVerifieren`.
pub const MELDING_BSN_GEVONDEN: &str = "23002";
/// `Melding/@Code`: BSN found, as answered to `OpvragenPersoonsgegevens`.
pub const MELDING_BSN_GEVONDEN_PERSOONSGEGEVENS: &str = "3002";
/// `Melding/@Code`: no result.
pub const MELDING_GEEN_RESULTAAT: &str = "23001";
/// `Melding/@Code`: the query did not resolve to a single person.
pub const MELDING_NIET_EENDUIDIG: &str = "23006";
/// `Melding/@Code`: technical error.
pub const MELDING_TECHNISCHE_FOUT: &str = "MD01";
/// Codes that mean a technical error or "try again later".
pub const TECHNICAL_CODES: [&str; 13] = [
    "MD01", "MD02", "OR01", "2", "4", "6", "7", "8", "9", "10", "11", "13", "14",
];
/// `Inschrijving/IndicatieGeheim` when the person's data may not be passed on freely.
pub const INDICATIE_GEHEIM_BEPERKT: &str =
    "Er is een beperking op de gegevensverstrekking van toepassing";
/// `Inschrijving/IndicatieGeheim` without a restriction.
pub const INDICATIE_GEHEIM_GEEN: &str = "Geen beperking";
/// `Inschrijving/OmschrijvingRedenOpschorting` of a deceased person.
pub const REDEN_OPSCHORTING_OVERLIJDEN: &str = "Overlijden";

const OWN_NAME_URL: &str = "http://hl7.org/fhir/StructureDefinition/humanname-own-name";
const OWN_PREFIX_URL: &str = "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix";
const EN_QUALIFIER_URL: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier";

/// Why an SBV-Z request could not be built or an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SbvzError {
    #[error("refusing to build an SBV-Z request: {0}")]
    InvalidBsn(BsnError),
    #[error("failed to map the Patient to an SBV-Z query: {0}")]
    Patient(String),
    #[error("failed to build the SBV-Z request: {0}")]
    Request(String),
    #[error("failed to read the SBV-Z answer: {0}")]
    Soap(SoapError),
    #[error("the SBV-Z answer is not as expected: {0}")]
    Answer(String),
}

/// Which published version of the interface, by its namespace. **[cfg]**, default `dec14`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SbvzVersion {
    #[default]
    Dec14,
    Mrt21,
}

impl SbvzVersion {
    /// Every version the harness knows.
    pub const ALL: [SbvzVersion; 2] = [SbvzVersion::Dec14, SbvzVersion::Mrt21];

    /// The XML namespace of the messages.
    pub fn namespace(self) -> &'static str {
        match self {
            SbvzVersion::Dec14 => "http://CIBG.SBV.Interface.XIS.Webservice/dec14",
            SbvzVersion::Mrt21 => "http://CIBG.SBV.Interface.XIS.Webservice/mrt21",
        }
    }

    /// The version whose namespace this is.
    pub fn from_namespace(namespace: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.namespace() == namespace)
    }

    /// The first path segment of the endpoints.
    pub fn path_segment(self) -> &'static str {
        match self {
            SbvzVersion::Dec14 => "cibg.sbv.interface.xis.webservice.dec14",
            SbvzVersion::Mrt21 => "cibg.sbv.interface.xis.webservice.mrt21",
        }
    }
}

/// The two SBV-Z operations the harness uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SbvzOperation {
    /// Verify a BSN against the person data given (search path 1 or 2).
    OpvragenVerifieren,
    /// Fetch the person data of a BSN.
    OpvragenPersoonsgegevens,
}

impl SbvzOperation {
    /// Every operation.
    pub const ALL: [SbvzOperation; 2] = [
        SbvzOperation::OpvragenVerifieren,
        SbvzOperation::OpvragenPersoonsgegevens,
    ];

    /// The operation's name, which is also the request's Body element.
    pub fn name(self) -> &'static str {
        match self {
            SbvzOperation::OpvragenVerifieren => "OpvragenVerifieren",
            SbvzOperation::OpvragenPersoonsgegevens => "OpvragenPersoonsgegevens",
        }
    }

    /// The message element inside the request's Body element.
    pub fn request_message(self) -> &'static str {
        match self {
            SbvzOperation::OpvragenVerifieren => "OpvragenVerifierenVraagBericht",
            SbvzOperation::OpvragenPersoonsgegevens => "OpvragenPersoonsgegevensVraagBericht",
        }
    }

    /// The answer's Body element.
    pub fn response_wrapper(self) -> &'static str {
        match self {
            SbvzOperation::OpvragenVerifieren => "OpvragenVerifierenResponse",
            SbvzOperation::OpvragenPersoonsgegevens => "OpvragenPersoonsgegevensResponse",
        }
    }

    /// The message element inside the answer's Body element.
    pub fn response_message(self) -> &'static str {
        match self {
            SbvzOperation::OpvragenVerifieren => "OpvragenVerifierenAntwoordBericht",
            SbvzOperation::OpvragenPersoonsgegevens => "OpvragenPersoonsgegevensAntwoordBericht",
        }
    }

    /// The `SOAPAction` URI (unquoted).
    pub fn soap_action(self, version: SbvzVersion) -> String {
        format!("{}/{}", version.namespace(), self.name())
    }

    /// The endpoint path, e.g. `/cibg.sbv.interface.xis.webservice.dec14/opvragenverifieren.asmx`.
    pub fn endpoint_path(self, version: SbvzVersion) -> String {
        let file = match self {
            SbvzOperation::OpvragenVerifieren => "opvragenverifieren.asmx",
            SbvzOperation::OpvragenPersoonsgegevens => "opvragenpersoonsgegevens.asmx",
        };
        format!("/{}/{file}", version.path_segment())
    }
}

/// A built request, ready to POST with [`soap::CONTENT_TYPE`] and its `SOAPAction`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbvzRequest {
    pub operation: SbvzOperation,
    pub version: SbvzVersion,
    /// The SOAP envelope.
    pub body: String,
}

impl SbvzRequest {
    /// The `SOAPAction` header value, quoted as SOAP 1.1 writes it.
    pub fn soap_action_header(&self) -> String {
        format!("\"{}\"", self.operation.soap_action(self.version))
    }

    /// The endpoint URL below `base` (scheme and authority, e.g. `https://webservice.sbv-z.nl`).
    pub fn url(&self, base: &str) -> String {
        format!(
            "{}{}",
            base.trim_end_matches('/'),
            self.operation.endpoint_path(self.version)
        )
    }
}

/// `Persoon`: a person's data element by element, in wire order. `T` is `String` in a
/// `Vraag` and in the double's register, and [`Vergeleken`] in an `Antwoord`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persoon<T = String> {
    pub bsn: Option<T>,
    pub voornamen: Option<T>,
    pub voorletter: Option<T>,
    pub voorvoegsel_geslachtsnaam: Option<T>,
    pub geslachtsnaam: Option<T>,
    /// `yyyymmdd`; unknown parts are `00`.
    pub geboortedatum: Option<T>,
    pub geboorteplaats: Option<T>,
    pub geboorteland: Option<T>,
    /// `M`, `V` or `O`.
    pub geslachtsaanduiding: Option<T>,
}

impl<T> Persoon<T> {
    /// Each element name with its value, in wire order.
    pub fn fields(&self) -> [(&'static str, Option<&T>); 9] {
        [
            ("BSN", self.bsn.as_ref()),
            ("Voornamen", self.voornamen.as_ref()),
            ("Voorletter", self.voorletter.as_ref()),
            (
                "VoorvoegselGeslachtsnaam",
                self.voorvoegsel_geslachtsnaam.as_ref(),
            ),
            ("Geslachtsnaam", self.geslachtsnaam.as_ref()),
            ("Geboortedatum", self.geboortedatum.as_ref()),
            ("Geboorteplaats", self.geboorteplaats.as_ref()),
            ("Geboorteland", self.geboorteland.as_ref()),
            ("Geslachtsaanduiding", self.geslachtsaanduiding.as_ref()),
        ]
    }

    /// The slot for an element name, if it is one of this type's elements.
    pub(crate) fn field_mut(&mut self, element: &str) -> Option<&mut Option<T>> {
        Some(match element {
            "BSN" => &mut self.bsn,
            "Voornamen" => &mut self.voornamen,
            "Voorletter" => &mut self.voorletter,
            "VoorvoegselGeslachtsnaam" => &mut self.voorvoegsel_geslachtsnaam,
            "Geslachtsnaam" => &mut self.geslachtsnaam,
            "Geboortedatum" => &mut self.geboortedatum,
            "Geboorteplaats" => &mut self.geboorteplaats,
            "Geboorteland" => &mut self.geboorteland,
            "Geslachtsaanduiding" => &mut self.geslachtsaanduiding,
            _ => return None,
        })
    }
}

/// `Adres`, element by element. The last two fields exist only in an `Antwoord` and are
/// never sent in a `Vraag`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adres<T = String> {
    pub gemeente_van_inschrijving: Option<T>,
    pub straatnaam: Option<T>,
    pub huisnummer: Option<T>,
    pub huisletter: Option<T>,
    pub huisnummertoevoeging: Option<T>,
    pub aanduiding_bij_huisnummer: Option<T>,
    pub postcode: Option<T>,
    /// `Woonadres` or `Briefadres` (answers only).
    pub functie_adres: Option<String>,
    /// Answers only.
    pub woonplaatsnaam: Option<String>,
}

impl<T> Adres<T> {
    /// Each element name a `Vraag` may hold, with its value, in wire order.
    pub fn fields(&self) -> [(&'static str, Option<&T>); 7] {
        [
            (
                "GemeenteVanInschrijving",
                self.gemeente_van_inschrijving.as_ref(),
            ),
            ("Straatnaam", self.straatnaam.as_ref()),
            ("Huisnummer", self.huisnummer.as_ref()),
            ("Huisletter", self.huisletter.as_ref()),
            ("Huisnummertoevoeging", self.huisnummertoevoeging.as_ref()),
            (
                "AanduidingBijHuisnummer",
                self.aanduiding_bij_huisnummer.as_ref(),
            ),
            ("Postcode", self.postcode.as_ref()),
        ]
    }

    /// The slot for an element name that a `Vraag` may hold.
    pub(crate) fn field_mut(&mut self, element: &str) -> Option<&mut Option<T>> {
        Some(match element {
            "GemeenteVanInschrijving" => &mut self.gemeente_van_inschrijving,
            "Straatnaam" => &mut self.straatnaam,
            "Huisnummer" => &mut self.huisnummer,
            "Huisletter" => &mut self.huisletter,
            "Huisnummertoevoeging" => &mut self.huisnummertoevoeging,
            "AanduidingBijHuisnummer" => &mut self.aanduiding_bij_huisnummer,
            "Postcode" => &mut self.postcode,
            _ => return None,
        })
    }
}

/// A value in an `Antwoord` with its `@Afwijkend` flag: whether it differs from the `Vraag`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vergeleken {
    pub waarde: String,
    /// An absent `@Afwijkend` reads as `false`.
    pub afwijkend: bool,
}

/// Which of the two search paths a query satisfies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPath {
    /// Path 1: birth date, sex, house number and postcode.
    BirthSexAddress,
    /// Path 2: birth date, sex and surname (the only path for non-residents).
    BirthSexSurname,
}

/// `Vraag`: the person (and optionally the address) asked about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vraag {
    pub persoon: Persoon,
    pub adres: Option<Adres>,
}

impl Vraag {
    /// The query protocol.md §9 prescribes for an unknown patient: the BSN plus search path 2
    /// from the pulled Patient. `Voornamen` holds the given names qualified `BR` or not
    /// qualified at all; call names (`CL`) and initials (`IN`) are not official first names
    /// and are left out, as is `Voorletter`.
    pub fn from_patient(patient: &Value, bsn: &str) -> Result<Self, SbvzError> {
        let bsn = Bsn::parse(bsn).map_err(SbvzError::InvalidBsn)?;
        let resource_type = patient.get("resourceType").and_then(Value::as_str);
        if resource_type != Some("Patient") {
            return Err(SbvzError::Patient(format!(
                "expected a Patient resource, found resourceType {}",
                resource_type.unwrap_or("(none)")
            )));
        }

        let name = chosen_name(patient)
            .ok_or_else(|| SbvzError::Patient("the Patient has no name".to_owned()))?;
        let (voorvoegsel, geslachtsnaam) = own_family_name(name)?;
        let persoon = Persoon {
            bsn: Some(bsn.as_str().to_owned()),
            voornamen: official_given_names(name),
            voorvoegsel_geslachtsnaam: voorvoegsel,
            geslachtsnaam: Some(geslachtsnaam),
            geboortedatum: Some(geboortedatum(patient)?),
            geslachtsaanduiding: Some(geslachtsaanduiding(patient)?),
            ..Persoon::default()
        };
        Ok(Self {
            persoon,
            adres: None,
        })
    }

    /// The search path this query satisfies, path 2 first; `None` when it satisfies neither.
    pub fn search_path(&self) -> Option<SearchPath> {
        let persoon = &self.persoon;
        let base = given(&persoon.geboortedatum) && given(&persoon.geslachtsaanduiding);
        if base && given(&persoon.geslachtsnaam) {
            return Some(SearchPath::BirthSexSurname);
        }
        let adres = self.adres.as_ref();
        let address = adres.is_some_and(|a| given(&a.huisnummer) && given(&a.postcode));
        (base && address).then_some(SearchPath::BirthSexAddress)
    }
}

fn given(value: &Option<String>) -> bool {
    value.as_deref().is_some_and(|v| !v.trim().is_empty())
}

/// The `official` name, or else the first.
fn chosen_name(patient: &Value) -> Option<&Value> {
    let names = patient.get("name")?.as_array()?;
    names
        .iter()
        .find(|n| n.get("use").and_then(Value::as_str) == Some("official"))
        .or_else(|| names.first())
}

/// (own prefix, own name) from the `_family` extensions, or (none, `family`) without them.
fn own_family_name(name: &Value) -> Result<(Option<String>, String), SbvzError> {
    let extensions = name.get("_family");
    let own_name = extension_value(extensions, OWN_NAME_URL, "valueString");
    let own_prefix = extension_value(extensions, OWN_PREFIX_URL, "valueString");
    let family = name.get("family").and_then(Value::as_str).map(str::trim);
    let surname = own_name
        .or(family)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| SbvzError::Patient("the name has no family part".to_owned()))?;
    let prefix = own_prefix.filter(|p| !p.is_empty()).map(str::to_owned);
    Ok((prefix, surname.to_owned()))
}

/// The given names qualified `BR` or unqualified, joined by spaces.
fn official_given_names(name: &Value) -> Option<String> {
    let given = name.get("given")?.as_array()?;
    let qualifiers = name.get("_given").and_then(Value::as_array);
    let names: Vec<&str> = given
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            let element = qualifiers.and_then(|q| q.get(*i));
            matches!(
                extension_value(element, EN_QUALIFIER_URL, "valueCode"),
                None | Some("BR")
            )
        })
        .filter_map(|(_, g)| g.as_str().map(str::trim))
        .filter(|g| !g.is_empty())
        .collect();
    (!names.is_empty()).then(|| names.join(" "))
}

/// A trimmed primitive extension value.
fn extension_value<'a>(element: Option<&'a Value>, url: &str, value_key: &str) -> Option<&'a str> {
    element?
        .get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(url))?
        .get(value_key)?
        .as_str()
        .map(str::trim)
}

/// `birthDate` as `yyyymmdd`; a partial date gets `00` for its unknown parts, as the BRP
/// writes them.
fn geboortedatum(patient: &Value) -> Result<String, SbvzError> {
    let text = patient
        .get("birthDate")
        .and_then(Value::as_str)
        .ok_or_else(|| SbvzError::Patient("birthDate is missing".to_owned()))?;
    let digits =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_digit());
    let in_range = |part: &str, max: u32| part.parse::<u32>().is_ok_and(|n| (1..=max).contains(&n));
    let parts: Vec<&str> = text.split('-').collect();
    let date = match parts.as_slice() {
        [y] if digits(y, 4) => format!("{y}0000"),
        [y, m] if digits(y, 4) && digits(m, 2) && in_range(m, 12) => format!("{y}{m}00"),
        [y, m, d]
            if digits(y, 4)
                && digits(m, 2)
                && digits(d, 2)
                && in_range(m, 12)
                && in_range(d, 31) =>
        {
            format!("{y}{m}{d}")
        }
        _ => {
            let shape: String = text
                .chars()
                .map(|c| if c.is_ascii_digit() { 'd' } else { c })
                .collect();
            return Err(SbvzError::Patient(format!(
                "birthDate is not a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD); found the shape {shape}"
            )));
        }
    };
    Ok(date)
}

/// `gender` as `M`, `V` or `O`.
fn geslachtsaanduiding(patient: &Value) -> Result<String, SbvzError> {
    let gender = patient.get("gender").and_then(Value::as_str);
    let code = match gender {
        Some("male") => "M",
        Some("female") => "V",
        Some("other" | "unknown") => "O",
        Some(other) => {
            return Err(SbvzError::Patient(format!(
                "gender {other} is not one of male, female, other, unknown"
            )));
        }
        None => return Err(SbvzError::Patient("gender is missing".to_owned())),
    };
    Ok(code.to_owned())
}

/// Builds `OpvragenVerifieren`. Refuses a BSN that fails the 11-proef, a query that
/// satisfies neither search path, an empty `LokaalKenmerk`, and characters XML cannot carry.
pub fn verifieren_request(
    vraag: &Vraag,
    lokaal_kenmerk: &str,
    version: SbvzVersion,
) -> Result<SbvzRequest, SbvzError> {
    if let Some(bsn) = &vraag.persoon.bsn {
        Bsn::parse(bsn).map_err(SbvzError::InvalidBsn)?;
    }
    if vraag.search_path().is_none() {
        return Err(SbvzError::Request(
            "the query satisfies neither search path: path 1 needs Geboortedatum, \
             Geslachtsaanduiding, Huisnummer and Postcode; path 2 needs Geboortedatum, \
             Geslachtsaanduiding and Geslachtsnaam"
                .to_owned(),
        ));
    }
    if lokaal_kenmerk.trim().is_empty() {
        return Err(SbvzError::Request("LokaalKenmerk is empty".to_owned()));
    }
    let adres_fields = vraag.adres.as_ref().map(Adres::fields);
    let all_fields = vraag
        .persoon
        .fields()
        .into_iter()
        .chain(adres_fields.into_iter().flatten())
        .filter_map(|(element, value)| value.map(|v| (element, v.as_str())))
        .chain([("LokaalKenmerk", lokaal_kenmerk)]);
    for (element, value) in all_fields {
        if !value.chars().all(soap::is_xml_char) {
            return Err(SbvzError::Request(format!(
                "{element} holds a character XML cannot carry"
            )));
        }
    }

    let operation = SbvzOperation::OpvragenVerifieren;
    let mut writer = XmlWriter::soap_envelope();
    writer.open(operation.name(), &[("xmlns", version.namespace())]);
    writer.open(operation.request_message(), &[]);
    writer.open("Vraag", &[]);
    write_fields(&mut writer, "Persoon", vraag.persoon.fields());
    if let Some(adres) = &vraag.adres {
        write_fields(&mut writer, "Adres", adres.fields());
    }
    writer.close();
    writer.leaf("LokaalKenmerk", &[], lokaal_kenmerk);
    Ok(SbvzRequest {
        operation,
        version,
        body: writer.finish(),
    })
}

/// Writes a group element with its given fields; nothing when none is given.
fn write_fields<const N: usize>(
    writer: &mut XmlWriter,
    group: &str,
    fields: [(&'static str, Option<&String>); N],
) {
    let given: Vec<(&str, &String)> = fields
        .into_iter()
        .filter_map(|(element, value)| value.map(|v| (element, v)))
        .filter(|(_, v)| !v.trim().is_empty())
        .collect();
    if given.is_empty() {
        return;
    }
    writer.open(group, &[]);
    for (element, value) in given {
        writer.leaf(element, &[], value.trim());
    }
    writer.close();
}

/// Builds `OpvragenPersoonsgegevens`, which holds only `Vraag/BSN`. Refuses a BSN that fails
/// the 11-proef.
pub fn persoonsgegevens_request(bsn: &str, version: SbvzVersion) -> Result<SbvzRequest, SbvzError> {
    let bsn = Bsn::parse(bsn).map_err(SbvzError::InvalidBsn)?;
    let operation = SbvzOperation::OpvragenPersoonsgegevens;
    let mut writer = XmlWriter::soap_envelope();
    writer.open(operation.name(), &[("xmlns", version.namespace())]);
    writer.open(operation.request_message(), &[]);
    writer.open("Vraag", &[]);
    writer.leaf("BSN", &[], bsn.as_str());
    Ok(SbvzRequest {
        operation,
        version,
        body: writer.finish(),
    })
}

/// `Resultaat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resultaat {
    /// `G`: good.
    Goed,
    /// `A`: good, with deviating data.
    GoedMetAfwijkingen,
    /// `F`: failure.
    Fout,
}

impl Resultaat {
    /// The one-letter wire code.
    pub fn code(self) -> &'static str {
        match self {
            Resultaat::Goed => "G",
            Resultaat::GoedMetAfwijkingen => "A",
            Resultaat::Fout => "F",
        }
    }

    /// The value of a wire code.
    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "G" => Some(Resultaat::Goed),
            "A" => Some(Resultaat::GoedMetAfwijkingen),
            "F" => Some(Resultaat::Fout),
            _ => None,
        }
    }
}

/// `Melding/@Soort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeldingSoort {
    /// `G`: good.
    Goed,
    /// `F`: failure.
    Fout,
    /// `W`: warning.
    Waarschuwing,
}

impl MeldingSoort {
    /// The one-letter wire code.
    pub fn code(self) -> &'static str {
        match self {
            MeldingSoort::Goed => "G",
            MeldingSoort::Fout => "F",
            MeldingSoort::Waarschuwing => "W",
        }
    }

    /// The value of a wire code.
    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "G" => Some(MeldingSoort::Goed),
            "F" => Some(MeldingSoort::Fout),
            "W" => Some(MeldingSoort::Waarschuwing),
            _ => None,
        }
    }
}

/// `Melding`: a coded message about the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Melding {
    pub soort: MeldingSoort,
    pub code: String,
    pub tekst: String,
}

/// `Antwoord/Inschrijving`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inschrijving {
    pub omschrijving_reden_opschorting: Option<String>,
    pub indicatie_geheim: Option<String>,
}

/// `Antwoord/Overlijden`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlijden {
    /// `yyyymmdd`.
    pub datum_overlijden: Option<String>,
}

/// `Antwoord`: what the register holds, each compared field flagged when it deviates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Antwoord {
    pub persoon: Option<Persoon<Vergeleken>>,
    pub adres: Option<Adres<Vergeleken>>,
    pub inschrijving: Option<Inschrijving>,
    pub overlijden: Option<Overlijden>,
}

/// An answer message (not a Fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbvzResponse {
    pub operation: SbvzOperation,
    /// The version whose namespace the answer used.
    pub version: SbvzVersion,
    /// The echoed `Vraag`; for `OpvragenPersoonsgegevens` only `persoon.bsn` is set.
    pub vraag: Option<Vraag>,
    pub antwoord: Option<Antwoord>,
    /// Absent in a technical failure.
    pub resultaat: Option<Resultaat>,
    pub meldingen: Vec<Melding>,
    pub lokaal_kenmerk: Option<String>,
}

impl SbvzResponse {
    /// Whether any `Melding` has this code.
    pub fn has_melding(&self, code: &str) -> bool {
        self.meldingen.iter().any(|m| m.code == code)
    }

    /// Whether a `Melding` reports a technical error or asks to retry later.
    pub fn is_technical_failure(&self) -> bool {
        self.meldingen
            .iter()
            .any(|m| TECHNICAL_CODES.contains(&m.code.as_str()))
    }

    /// The element names flagged `Afwijkend=true` in `Antwoord/Persoon` and `Antwoord/Adres`.
    pub fn deviating_fields(&self) -> Vec<&'static str> {
        let Some(antwoord) = &self.antwoord else {
            return Vec::new();
        };
        let persoon = antwoord.persoon.as_ref().map(Persoon::fields);
        let adres = antwoord.adres.as_ref().map(Adres::fields);
        persoon
            .into_iter()
            .flatten()
            .chain(adres.into_iter().flatten())
            .filter(|(_, value)| value.is_some_and(|v| v.afwijkend))
            .map(|(element, _)| element)
            .collect()
    }

    /// Whether the answer says the person died.
    pub fn is_deceased(&self) -> bool {
        let Some(antwoord) = &self.antwoord else {
            return false;
        };
        let suspended = antwoord.inschrijving.as_ref().is_some_and(|i| {
            i.omschrijving_reden_opschorting.as_deref() == Some(REDEN_OPSCHORTING_OVERLIJDEN)
        });
        let dated = antwoord
            .overlijden
            .as_ref()
            .is_some_and(|o| o.datum_overlijden.is_some());
        suspended || dated
    }

    /// Whether the answer carries the restriction on passing the data on.
    pub fn is_restricted(&self) -> bool {
        self.antwoord
            .as_ref()
            .and_then(|a| a.inschrijving.as_ref())
            .is_some_and(|i| i.indicatie_geheim.as_deref() == Some(INDICATIE_GEHEIM_BEPERKT))
    }
}

/// What came back: an answer message or a SOAP Fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SbvzReply {
    /// Boxed: an answer is large next to a Fault.
    Answer(Box<SbvzResponse>),
    Fault(SoapFault),
}

/// Reads the answer to `operation` within `limits`. Hostile input gives an error, never a
/// panic: see [`soap`] for what the reader refuses.
pub fn parse_response(
    operation: SbvzOperation,
    bytes: &[u8],
    limits: &XmlLimits,
) -> Result<SbvzReply, SbvzError> {
    let root = soap::parse(bytes, limits).map_err(SbvzError::Soap)?;
    let payload = match soap::read_envelope(&root).map_err(SbvzError::Soap)? {
        SoapBody::Fault(fault) => return Ok(SbvzReply::Fault(fault)),
        SoapBody::Payload(payload) => payload,
    };

    let version = payload
        .namespace
        .as_deref()
        .and_then(SbvzVersion::from_namespace)
        .filter(|_| payload.name == operation.response_wrapper())
        .ok_or_else(|| {
            SbvzError::Answer(format!(
                "expected {} in the dec14 or mrt21 namespace as the Body's element, found {}",
                operation.response_wrapper(),
                payload.expanded_name()
            ))
        })?;
    let ns = version.namespace();
    let message = payload
        .child(ns, operation.response_message())
        .ok_or_else(|| {
            SbvzError::Answer(format!(
                "{} has no {}",
                operation.response_wrapper(),
                operation.response_message()
            ))
        })?;

    let resultaat = match message
        .child_text(ns, "Resultaat")
        .filter(|r| !r.is_empty())
    {
        Some(code) => Some(Resultaat::from_code(code).ok_or_else(|| {
            SbvzError::Answer(format!("Resultaat is {code}, expected G, A or F"))
        })?),
        None => None,
    };
    let meldingen = message
        .children_named(ns, "Melding")
        .map(read_melding)
        .collect::<Result<Vec<_>, _>>()?;
    let antwoord = message
        .child(ns, "Antwoord")
        .map(|a| read_antwoord(a, ns))
        .transpose()?;

    Ok(SbvzReply::Answer(Box::new(SbvzResponse {
        operation,
        version,
        vraag: message.child(ns, "Vraag").map(|v| read_vraag(v, ns)),
        antwoord,
        resultaat,
        meldingen,
        lokaal_kenmerk: message
            .child_text(ns, "LokaalKenmerk")
            .filter(|k| !k.is_empty())
            .map(str::to_owned),
    })))
}

/// Reads a `Vraag`: `Persoon` and `Adres` children, or a bare `BSN` child.
pub(crate) fn read_vraag(vraag: &Element, ns: &str) -> Vraag {
    let mut persoon = Persoon::default();
    if let Some(group) = vraag.child(ns, "Persoon") {
        for child in own_children(group, ns) {
            if let Some(slot) = persoon.field_mut(&child.name) {
                *slot = non_empty(child);
            }
        }
    }
    if let Some(bsn) = vraag.child(ns, "BSN") {
        persoon.bsn = non_empty(bsn);
    }
    let adres = vraag.child(ns, "Adres").map(|group| {
        let mut adres = Adres::default();
        for child in own_children(group, ns) {
            if let Some(slot) = adres.field_mut(&child.name) {
                *slot = non_empty(child);
            }
        }
        adres
    });
    Vraag { persoon, adres }
}

fn own_children<'a>(group: &'a Element, ns: &'a str) -> impl Iterator<Item = &'a Element> {
    group
        .children
        .iter()
        .filter(move |c| c.namespace.as_deref() == Some(ns))
}

fn non_empty(element: &Element) -> Option<String> {
    let text = element.trimmed_text();
    (!text.is_empty()).then(|| text.to_owned())
}

fn read_melding(melding: &Element) -> Result<Melding, SbvzError> {
    let soort = melding.attribute("Soort").unwrap_or_default().trim();
    let soort = MeldingSoort::from_code(soort).ok_or_else(|| {
        SbvzError::Answer(format!("Melding has Soort \"{soort}\", expected G, F or W"))
    })?;
    let code = melding.attribute("Code").unwrap_or_default().trim();
    if code.is_empty() {
        return Err(SbvzError::Answer("a Melding has no Code".to_owned()));
    }
    Ok(Melding {
        soort,
        code: code.to_owned(),
        tekst: melding.trimmed_text().to_owned(),
    })
}

fn read_antwoord(antwoord: &Element, ns: &str) -> Result<Antwoord, SbvzError> {
    let persoon = match antwoord.child(ns, "Persoon") {
        Some(group) => {
            let mut persoon = Persoon::default();
            for child in own_children(group, ns) {
                if let Some(slot) = persoon.field_mut(&child.name) {
                    *slot = Some(read_vergeleken(child)?);
                }
            }
            Some(persoon)
        }
        None => None,
    };
    let adres = match antwoord.child(ns, "Adres") {
        Some(group) => {
            let mut adres = Adres::default();
            for child in own_children(group, ns) {
                if let Some(slot) = adres.field_mut(&child.name) {
                    *slot = Some(read_vergeleken(child)?);
                }
            }
            adres.functie_adres = group.child(ns, "FunctieAdres").and_then(non_empty);
            adres.woonplaatsnaam = group.child(ns, "Woonplaatsnaam").and_then(non_empty);
            Some(adres)
        }
        None => None,
    };
    let inschrijving = antwoord.child(ns, "Inschrijving").map(|i| Inschrijving {
        omschrijving_reden_opschorting: i
            .child(ns, "OmschrijvingRedenOpschorting")
            .and_then(non_empty),
        indicatie_geheim: i.child(ns, "IndicatieGeheim").and_then(non_empty),
    });
    let overlijden = antwoord.child(ns, "Overlijden").map(|o| Overlijden {
        datum_overlijden: o.child(ns, "DatumOverlijden").and_then(non_empty),
    });
    Ok(Antwoord {
        persoon,
        adres,
        inschrijving,
        overlijden,
    })
}

fn read_vergeleken(element: &Element) -> Result<Vergeleken, SbvzError> {
    let afwijkend = match element.attribute("Afwijkend").map(str::trim) {
        None => false,
        Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => {
            return Err(SbvzError::Answer(format!(
                "{} has Afwijkend=\"{other}\", expected true or false",
                element.name
            )));
        }
    };
    Ok(Vergeleken {
        waarde: element.trimmed_text().to_owned(),
        afwijkend,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const DEC14: &str = "http://CIBG.SBV.Interface.XIS.Webservice/dec14";
    const VALID_BSN: &str = "999000019";

    /// A Patient with own and partner name parts and qualified given names.
    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "name": [
                { "use": "usual", "family": "Jo" },
                {
                    "use": "official",
                    "family": "van Putten-Helleman",
                    "_family": { "extension": [
                        { "url": OWN_PREFIX_URL, "valueString": "van" },
                        { "url": OWN_NAME_URL, "valueString": "Putten" },
                        { "url": "http://hl7.org/fhir/StructureDefinition/humanname-partner-name",
                          "valueString": "Helleman" }
                    ]},
                    "given": ["Johanna", "Maria", "Jo", "J."],
                    "_given": [
                        { "extension": [{ "url": EN_QUALIFIER_URL, "valueCode": "BR" }] },
                        null,
                        { "extension": [{ "url": EN_QUALIFIER_URL, "valueCode": "CL" }] },
                        { "extension": [{ "url": EN_QUALIFIER_URL, "valueCode": "IN" }] }
                    ]
                }
            ],
            "gender": "female",
            "birthDate": "1950-03-01"
        })
    }

    fn children<'a>(node: roxmltree::Node<'a, 'a>) -> Vec<roxmltree::Node<'a, 'a>> {
        node.children().filter(|c| c.is_element()).collect()
    }

    fn only_child<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> roxmltree::Node<'a, 'a> {
        let found: Vec<_> = children(node)
            .into_iter()
            .filter(|c| c.tag_name().name() == name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one {name} under {:?}",
            node.tag_name()
        );
        found[0]
    }

    #[test]
    fn a_patient_maps_to_bsn_plus_search_path_two() {
        let vraag = Vraag::from_patient(&patient(), VALID_BSN).unwrap();
        let expected = Persoon {
            bsn: Some(VALID_BSN.to_owned()),
            voornamen: Some("Johanna Maria".to_owned()),
            voorvoegsel_geslachtsnaam: Some("van".to_owned()),
            geslachtsnaam: Some("Putten".to_owned()),
            geboortedatum: Some("19500301".to_owned()),
            geslachtsaanduiding: Some("V".to_owned()),
            ..Persoon::default()
        };
        assert_eq!(vraag.persoon, expected);
        assert_eq!(vraag.adres, None);
        assert_eq!(vraag.search_path(), Some(SearchPath::BirthSexSurname));
    }

    #[test]
    fn a_plain_family_is_the_surname_when_the_own_name_extension_is_absent() {
        let patient = json!({
            "resourceType": "Patient",
            "name": [{ "family": " Jansen ", "given": ["Piet"] }],
            "gender": "male",
            "birthDate": "1980-12-31"
        });
        let persoon = Vraag::from_patient(&patient, VALID_BSN).unwrap().persoon;
        assert_eq!(persoon.geslachtsnaam.as_deref(), Some("Jansen"));
        assert_eq!(persoon.voorvoegsel_geslachtsnaam, None);
        assert_eq!(persoon.voornamen.as_deref(), Some("Piet"));
        assert_eq!(persoon.geslachtsaanduiding.as_deref(), Some("M"));
    }

    #[test]
    fn other_and_unknown_gender_map_to_o() {
        for gender in ["other", "unknown"] {
            let mut patient = patient();
            patient["gender"] = json!(gender);
            let persoon = Vraag::from_patient(&patient, VALID_BSN).unwrap().persoon;
            assert_eq!(persoon.geslachtsaanduiding.as_deref(), Some("O"));
        }
    }

    #[test]
    fn partial_birth_dates_get_zeroes_and_date_times_are_refused() {
        let mut patient = patient();
        for (birth_date, expected) in [("1950", "19500000"), ("1950-03", "19500300")] {
            patient["birthDate"] = json!(birth_date);
            let persoon = Vraag::from_patient(&patient, VALID_BSN).unwrap().persoon;
            assert_eq!(persoon.geboortedatum.as_deref(), Some(expected));
        }
        for bad in [
            "1950-03-01T10:00:00Z",
            "1950-13-01",
            "19500301",
            "",
            "1950-02-32",
        ] {
            patient["birthDate"] = json!(bad);
            let error = Vraag::from_patient(&patient, VALID_BSN).unwrap_err();
            assert!(matches!(error, SbvzError::Patient(_)), "{bad}: {error}");
            assert!(
                !error.to_string().contains("1950"),
                "no birth date in {error}"
            );
        }
    }

    #[test]
    fn a_patient_without_what_path_two_needs_is_refused() {
        for field in ["gender", "birthDate", "name"] {
            let mut patient = patient();
            patient.as_object_mut().unwrap().remove(field);
            assert!(matches!(
                Vraag::from_patient(&patient, VALID_BSN),
                Err(SbvzError::Patient(_))
            ));
        }
        let not_a_patient = json!({ "resourceType": "Practitioner" });
        assert!(Vraag::from_patient(&not_a_patient, VALID_BSN).is_err());
    }

    #[test]
    fn no_request_is_built_for_a_bsn_failing_the_eleven_proof() {
        assert_eq!(
            Vraag::from_patient(&patient(), "999000010"),
            Err(SbvzError::InvalidBsn(BsnError::ElevenProof))
        );
        let mut vraag = Vraag::from_patient(&patient(), VALID_BSN).unwrap();
        vraag.persoon.bsn = Some("999000010".to_owned());
        assert_eq!(
            verifieren_request(&vraag, "k1", SbvzVersion::Dec14),
            Err(SbvzError::InvalidBsn(BsnError::ElevenProof))
        );
        assert_eq!(
            persoonsgegevens_request("999000010", SbvzVersion::Dec14),
            Err(SbvzError::InvalidBsn(BsnError::ElevenProof))
        );
        assert_eq!(
            persoonsgegevens_request("99900001", SbvzVersion::Dec14),
            Err(SbvzError::InvalidBsn(BsnError::Length(8)))
        );
    }

    #[test]
    fn the_verifieren_request_has_the_wire_shape() {
        let vraag = Vraag::from_patient(&patient(), VALID_BSN).unwrap();
        let request = verifieren_request(&vraag, "case-7 & co", SbvzVersion::Dec14).unwrap();
        assert_eq!(
            request.soap_action_header(),
            "\"http://CIBG.SBV.Interface.XIS.Webservice/dec14/OpvragenVerifieren\""
        );
        assert_eq!(
            request.url("https://webservice.sbv-z.nl/"),
            "https://webservice.sbv-z.nl/cibg.sbv.interface.xis.webservice.dec14/opvragenverifieren.asmx"
        );

        let document = roxmltree::Document::parse(&request.body).unwrap();
        let envelope = document.root_element();
        assert_eq!(envelope.tag_name().namespace(), Some(soap::ENVELOPE_NS));
        assert_eq!(envelope.tag_name().name(), "Envelope");
        let body = only_child(envelope, "Body");
        let operation = only_child(body, "OpvragenVerifieren");
        assert_eq!(operation.tag_name().namespace(), Some(DEC14));
        let message = only_child(operation, "OpvragenVerifierenVraagBericht");
        assert_eq!(message.tag_name().namespace(), Some(DEC14));
        let vraag_node = only_child(message, "Vraag");
        assert!(
            children(vraag_node)
                .iter()
                .all(|c| c.tag_name().name() != "Adres")
        );
        let persoon = only_child(vraag_node, "Persoon");
        let fields: Vec<(&str, Option<&str>, Option<&str>)> = children(persoon)
            .iter()
            .map(|c| (c.tag_name().name(), c.tag_name().namespace(), c.text()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("BSN", Some(DEC14), Some(VALID_BSN)),
                ("Voornamen", Some(DEC14), Some("Johanna Maria")),
                ("VoorvoegselGeslachtsnaam", Some(DEC14), Some("van")),
                ("Geslachtsnaam", Some(DEC14), Some("Putten")),
                ("Geboortedatum", Some(DEC14), Some("19500301")),
                ("Geslachtsaanduiding", Some(DEC14), Some("V")),
            ]
        );
        assert_eq!(
            only_child(message, "LokaalKenmerk").text(),
            Some("case-7 & co")
        );
    }

    #[test]
    fn the_mrt21_version_changes_namespace_action_and_path() {
        let vraag = Vraag::from_patient(&patient(), VALID_BSN).unwrap();
        let request = verifieren_request(&vraag, "k", SbvzVersion::Mrt21).unwrap();
        let mrt21 = "http://CIBG.SBV.Interface.XIS.Webservice/mrt21";
        assert!(
            request
                .body
                .contains(&format!("<OpvragenVerifieren xmlns=\"{mrt21}\">"))
        );
        assert_eq!(
            request.soap_action_header(),
            format!("\"{mrt21}/OpvragenVerifieren\"")
        );
        assert_eq!(
            request.url("http://127.0.0.1:1"),
            "http://127.0.0.1:1/cibg.sbv.interface.xis.webservice.mrt21/opvragenverifieren.asmx"
        );
    }

    #[test]
    fn the_persoonsgegevens_request_holds_only_vraag_bsn() {
        let request = persoonsgegevens_request(VALID_BSN, SbvzVersion::Dec14).unwrap();
        let expected = format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body>
    <OpvragenPersoonsgegevens xmlns="{DEC14}">
      <OpvragenPersoonsgegevensVraagBericht>
        <Vraag>
          <BSN>{VALID_BSN}</BSN>
        </Vraag>
      </OpvragenPersoonsgegevensVraagBericht>
    </OpvragenPersoonsgegevens>
  </soap:Body>
</soap:Envelope>
"#
        );
        assert_eq!(request.body, expected);
        assert_eq!(
            request.soap_action_header(),
            format!("\"{DEC14}/OpvragenPersoonsgegevens\"")
        );
    }

    #[test]
    fn a_query_without_a_search_path_or_with_unwritable_text_is_refused() {
        let mut vraag = Vraag::from_patient(&patient(), VALID_BSN).unwrap();
        vraag.persoon.geslachtsnaam = None;
        assert!(matches!(
            verifieren_request(&vraag, "k", SbvzVersion::Dec14),
            Err(SbvzError::Request(_))
        ));
        vraag.adres = Some(Adres {
            huisnummer: Some("12".to_owned()),
            postcode: Some("1234AB".to_owned()),
            ..Adres::default()
        });
        assert_eq!(vraag.search_path(), Some(SearchPath::BirthSexAddress));
        assert!(verifieren_request(&vraag, "k", SbvzVersion::Dec14).is_ok());

        vraag.persoon.voornamen = Some("Jo\u{0}".to_owned());
        assert!(matches!(
            verifieren_request(&vraag, "k", SbvzVersion::Dec14),
            Err(SbvzError::Request(_))
        ));
        vraag.persoon.voornamen = None;
        assert!(matches!(
            verifieren_request(&vraag, " ", SbvzVersion::Dec14),
            Err(SbvzError::Request(_))
        ));
    }

    /// An `OpvragenVerifieren` answer around `inner`, written by hand in the published shape
    /// so that the reader is not only tested against the double's writer.
    fn answer(inner: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <soap:Body>
    <OpvragenVerifierenResponse xmlns="{DEC14}">
      <OpvragenVerifierenAntwoordBericht>
        <Vraag><Persoon><BSN>{VALID_BSN}</BSN><Geslachtsnaam>Putten</Geslachtsnaam></Persoon></Vraag>
        {inner}
        <LokaalKenmerk>k-1</LokaalKenmerk>
      </OpvragenVerifierenAntwoordBericht>
    </OpvragenVerifierenResponse>
  </soap:Body>
</soap:Envelope>"#
        )
    }

    fn antwoord(geslachtsnaam_afwijkend: bool, inschrijving: &str, overlijden: &str) -> String {
        format!(
            r#"<Antwoord>
          <Persoon>
            <BSN Afwijkend="false">{VALID_BSN}</BSN>
            <Voornamen Afwijkend="false">Johanna Maria</Voornamen>
            <VoorvoegselGeslachtsnaam Afwijkend="false">van</VoorvoegselGeslachtsnaam>
            <Geslachtsnaam Afwijkend="{geslachtsnaam_afwijkend}">Putten</Geslachtsnaam>
            <Geboortedatum Afwijkend="false">19500301</Geboortedatum>
            <Geslachtsaanduiding Afwijkend="false">V</Geslachtsaanduiding>
          </Persoon>
          <Adres>
            <GemeenteVanInschrijving Afwijkend="false">Utrecht</GemeenteVanInschrijving>
            <FunctieAdres>Woonadres</FunctieAdres>
            <Straatnaam Afwijkend="false">Domplein</Straatnaam>
            <Huisnummer Afwijkend="false">1</Huisnummer>
            <Postcode Afwijkend="false">3512JC</Postcode>
            <Woonplaatsnaam>Utrecht</Woonplaatsnaam>
            <Regel1AdresBuitenland/>
          </Adres>
          {inschrijving}
          {overlijden}
        </Antwoord>"#
        )
    }

    fn read(xml: &str) -> SbvzResponse {
        match parse_response(
            SbvzOperation::OpvragenVerifieren,
            xml.as_bytes(),
            &XmlLimits::default(),
        ) {
            Ok(SbvzReply::Answer(response)) => *response,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    const GEEN_BEPERKING: &str =
        "<Inschrijving><IndicatieGeheim>Geen beperking</IndicatieGeheim></Inschrijving>";

    #[test]
    fn found_reads_g_23002_and_the_full_antwoord() {
        let xml = answer(&format!(
            r#"{}<Resultaat>G</Resultaat>
            <Melding Soort="G" Code="23002">BSN gevonden.</Melding>"#,
            antwoord(false, GEEN_BEPERKING, "")
        ));
        let response = read(&xml);
        assert_eq!(response.version, SbvzVersion::Dec14);
        assert_eq!(response.resultaat, Some(Resultaat::Goed));
        assert_eq!(
            response.meldingen,
            vec![Melding {
                soort: MeldingSoort::Goed,
                code: MELDING_BSN_GEVONDEN.to_owned(),
                tekst: "BSN gevonden.".to_owned(),
            }]
        );
        assert_eq!(response.lokaal_kenmerk.as_deref(), Some("k-1"));
        let echoed = response.vraag.as_ref().unwrap();
        assert_eq!(echoed.persoon.geslachtsnaam.as_deref(), Some("Putten"));

        let antwoord = response.antwoord.as_ref().unwrap();
        let persoon = antwoord.persoon.as_ref().unwrap();
        assert_eq!(
            persoon.geboortedatum,
            Some(Vergeleken {
                waarde: "19500301".to_owned(),
                afwijkend: false
            })
        );
        let adres = antwoord.adres.as_ref().unwrap();
        assert_eq!(adres.functie_adres.as_deref(), Some("Woonadres"));
        assert_eq!(adres.postcode.as_ref().unwrap().waarde, "3512JC");
        assert_eq!(adres.woonplaatsnaam.as_deref(), Some("Utrecht"));
        assert!(response.deviating_fields().is_empty());
        assert!(!response.is_deceased());
        assert!(!response.is_restricted());
        assert!(!response.is_technical_failure());
    }

    #[test]
    fn found_with_deviations_reads_a_w_and_the_flagged_fields() {
        let xml = answer(&format!(
            r#"{}<Resultaat>A</Resultaat>
            <Melding Soort="W" Code="23002">Gegevens wijken af.</Melding>"#,
            antwoord(true, GEEN_BEPERKING, "")
        ));
        let response = read(&xml);
        assert_eq!(response.resultaat, Some(Resultaat::GoedMetAfwijkingen));
        assert_eq!(response.meldingen[0].soort, MeldingSoort::Waarschuwing);
        assert_eq!(response.deviating_fields(), vec!["Geslachtsnaam"]);
    }

    #[test]
    fn not_found_and_ambiguous_read_f_without_antwoord() {
        for code in [MELDING_GEEN_RESULTAAT, MELDING_NIET_EENDUIDIG] {
            let xml = answer(&format!(
                r#"<Resultaat>F</Resultaat><Melding Soort="F" Code="{code}">Nee.</Melding>"#
            ));
            let response = read(&xml);
            assert_eq!(response.resultaat, Some(Resultaat::Fout));
            assert!(response.has_melding(code));
            assert_eq!(response.antwoord, None);
        }
    }

    #[test]
    fn deceased_reads_the_reason_and_the_date() {
        let inschrijving = "<Inschrijving>\
            <OmschrijvingRedenOpschorting>Overlijden</OmschrijvingRedenOpschorting>\
            <IndicatieGeheim>Geen beperking</IndicatieGeheim></Inschrijving>";
        let overlijden = "<Overlijden><DatumOverlijden>20240102</DatumOverlijden></Overlijden>";
        let xml = answer(&format!(
            r#"{}<Resultaat>G</Resultaat><Melding Soort="G" Code="23002">BSN gevonden.</Melding>"#,
            antwoord(false, inschrijving, overlijden)
        ));
        let response = read(&xml);
        assert!(response.is_deceased());
        let antwoord = response.antwoord.unwrap();
        assert_eq!(
            antwoord.overlijden.unwrap().datum_overlijden.as_deref(),
            Some("20240102")
        );
        assert_eq!(
            antwoord
                .inschrijving
                .unwrap()
                .omschrijving_reden_opschorting
                .as_deref(),
            Some(REDEN_OPSCHORTING_OVERLIJDEN)
        );
    }

    #[test]
    fn restricted_reads_indicatie_geheim() {
        let inschrijving = format!(
            "<Inschrijving><IndicatieGeheim>{INDICATIE_GEHEIM_BEPERKT}</IndicatieGeheim></Inschrijving>"
        );
        let xml = answer(&format!(
            r#"{}<Resultaat>G</Resultaat><Melding Soort="G" Code="23002">BSN gevonden.</Melding>"#,
            antwoord(false, &inschrijving, "")
        ));
        assert!(read(&xml).is_restricted());
    }

    #[test]
    fn a_technical_failure_reads_md01_without_resultaat() {
        let xml = answer(r#"<Melding Soort="F" Code="MD01">Technische fout.</Melding>"#);
        let response = read(&xml);
        assert_eq!(response.resultaat, None);
        assert!(response.is_technical_failure());
        assert!(response.has_melding(MELDING_TECHNISCHE_FOUT));
    }

    #[test]
    fn a_soap_fault_is_read_as_a_fault() {
        let xml = SoapFault::server("SBV-Z is not available").to_xml();
        let reply = parse_response(
            SbvzOperation::OpvragenVerifieren,
            xml.as_bytes(),
            &XmlLimits::default(),
        )
        .unwrap();
        let SbvzReply::Fault(fault) = reply else {
            panic!("expected a Fault");
        };
        assert_eq!(fault.code_local_name(), "Server");
        assert_eq!(fault.string, "SBV-Z is not available");
    }

    #[test]
    fn a_persoonsgegevens_answer_echoes_only_the_bsn() {
        let xml = format!(
            "\u{FEFF}<?xml version=\"1.0\" encoding=\"utf-8\"?>\
            <soap:Envelope xmlns:soap=\"{}\"><soap:Body>\
            <OpvragenPersoonsgegevensResponse xmlns=\"{DEC14}\">\
            <OpvragenPersoonsgegevensAntwoordBericht>\
            <Vraag><BSN>{VALID_BSN}</BSN></Vraag>{}\
            <Resultaat>G</Resultaat><Melding Soort=\"G\" Code=\"3002\">BSN gevonden.</Melding>\
            </OpvragenPersoonsgegevensAntwoordBericht></OpvragenPersoonsgegevensResponse>\
            </soap:Body></soap:Envelope>",
            soap::ENVELOPE_NS,
            antwoord(false, GEEN_BEPERKING, "")
        );
        let reply = parse_response(
            SbvzOperation::OpvragenPersoonsgegevens,
            xml.as_bytes(),
            &XmlLimits::default(),
        )
        .unwrap();
        let SbvzReply::Answer(response) = reply else {
            panic!("expected an answer");
        };
        assert!(response.has_melding(MELDING_BSN_GEVONDEN_PERSOONSGEGEVENS));
        assert_eq!(
            response.vraag.unwrap().persoon.bsn.as_deref(),
            Some(VALID_BSN)
        );
    }

    #[test]
    fn answers_off_the_contract_are_errors() {
        let cases = [
            answer("<Resultaat>X</Resultaat>"),
            answer(r#"<Melding Code="23002">x</Melding>"#),
            answer(r#"<Melding Soort="Q" Code="23002">x</Melding>"#),
            answer(r#"<Melding Soort="G">x</Melding>"#),
            answer(
                r#"<Antwoord><Persoon><Geslachtsnaam Afwijkend="ja">P</Geslachtsnaam></Persoon></Antwoord>"#,
            ),
            answer("").replace(DEC14, "urn:other"),
            answer("").replace("OpvragenVerifierenAntwoordBericht", "Other"),
        ];
        for xml in cases {
            assert!(
                matches!(
                    parse_response(
                        SbvzOperation::OpvragenVerifieren,
                        xml.as_bytes(),
                        &XmlLimits::default()
                    ),
                    Err(SbvzError::Answer(_))
                ),
                "{xml}"
            );
        }
        let other_operation = parse_response(
            SbvzOperation::OpvragenPersoonsgegevens,
            answer("").as_bytes(),
            &XmlLimits::default(),
        );
        assert!(matches!(other_operation, Err(SbvzError::Answer(_))));
    }

    fn hostile(bytes: &[u8]) -> SbvzError {
        parse_response(
            SbvzOperation::OpvragenVerifieren,
            bytes,
            &XmlLimits::default(),
        )
        .expect_err("hostile input must be refused")
    }

    #[test]
    fn a_truncated_answer_is_an_error() {
        let xml = answer("<Resultaat>G</Resultaat>");
        for cut in [10, xml.len() / 2, xml.len() - 3] {
            assert!(matches!(
                hostile(&xml.as_bytes()[..cut]),
                SbvzError::Soap(_)
            ));
        }
    }

    #[test]
    fn a_ten_megabyte_answer_is_refused_by_size() {
        let padding = "<Melding Soort=\"G\" Code=\"1\">x</Melding>".repeat(300_000);
        let xml = answer(&padding);
        assert!(xml.len() > 10_000_000);
        assert!(matches!(
            hostile(xml.as_bytes()),
            SbvzError::Soap(SoapError::TooLarge { .. })
        ));
    }

    #[test]
    fn ten_thousand_nested_elements_are_refused_by_depth() {
        let xml = answer(&format!(
            "{}{}",
            "<a>".repeat(10_000),
            "</a>".repeat(10_000)
        ));
        assert!(matches!(
            hostile(xml.as_bytes()),
            SbvzError::Soap(SoapError::TooDeep { .. })
        ));
        let unclosed = "<a>".repeat(10_000);
        assert!(matches!(hostile(unclosed.as_bytes()), SbvzError::Soap(_)));
    }

    #[test]
    fn a_doctype_with_entities_is_refused_and_nothing_is_expanded() {
        let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE soap:Envelope [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY xxe SYSTEM "file:///etc/passwd">
]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body><x>&lol3;&xxe;</x></soap:Body>
</soap:Envelope>"#;
        assert!(matches!(
            hostile(laughs.as_bytes()),
            SbvzError::Soap(SoapError::Doctype { .. })
        ));
        let without_doctype = answer("<Resultaat>&xxe;</Resultaat>");
        assert!(matches!(
            hostile(without_doctype.as_bytes()),
            SbvzError::Soap(SoapError::UnknownEntity { .. })
        ));
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_response(SbvzOperation::OpvragenVerifieren, &bytes, &XmlLimits::default());
        }

        #[test]
        fn parsing_mangled_answers_never_panics(cut in 0usize..2000, insert in "[<>&;#x0-9a-zA-Z:=\"'/! \\[\\]-]{0,40}") {
            let xml = answer(&antwoord(true, GEEN_BEPERKING, ""));
            let at = cut.min(xml.len());
            let at = (0..=at).rev().find(|i| xml.is_char_boundary(*i)).unwrap_or(0);
            let mangled = format!("{}{insert}{}", &xml[..at], &xml[at..]);
            let _ = parse_response(SbvzOperation::OpvragenVerifieren, mangled.as_bytes(), &XmlLimits::default());
        }
    }
}

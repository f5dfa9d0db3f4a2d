//! The SBV-Z double: answers `OpvragenVerifieren` and `OpvragenPersoonsgegevens` for each
//! registered BSN as the test-double table of protocol.md §9 prescribes, and remembers every
//! call with its time, so that checks can tell whether the target verified the right BSN
//! before it registered the patient. Every exchange goes through the recording transport and
//! is journaled as an SBV-Z call of the registered person's case. It is a double, not a
//! register: it serves plain HTTP without the UZI server certificate of the real service,
//! and its answers are scripted per case, not derived from any BRP logic.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::attributed;
use crate::fhir::bsn::Bsn;
use crate::journal::{ExchangeKind, Journal, Party};
use crate::protocol::sbvz::{
    Adres, INDICATIE_GEHEIM_BEPERKT, INDICATIE_GEHEIM_GEEN, MELDING_BSN_GEVONDEN,
    MELDING_BSN_GEVONDEN_PERSOONSGEGEVENS, MELDING_GEEN_RESULTAAT, MELDING_NIET_EENDUIDIG,
    MELDING_TECHNISCHE_FOUT, MeldingSoort, Persoon, REDEN_OPSCHORTING_OVERLIJDEN, Resultaat,
    SbvzOperation, SbvzVersion, SearchPath, Vraag, read_vraag,
};
use crate::protocol::soap::{self, SoapBody, SoapError, SoapFault, XmlLimits, XmlWriter};
use crate::redact::{Redactor, Sensitive};
use crate::transport::RecordingServer;

/// Default `@Code` of the `W` melding in a "found with deviations" answer. protocol.md §13
/// leaves the code open; "BSN found" with Soort `W` is the double's choice.
pub const DEFAULT_DEVIATION_CODE: &str = MELDING_BSN_GEVONDEN;

/// How the double answers for one BSN (protocol.md §9, test-double table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SbvzCase {
    /// `G`, `23002`, the full `Antwoord`.
    Found,
    /// `A`, a `W` melding with this code, `Afwijkend=true` on every field that differs from
    /// the `Vraag`. Register person data that differs from what the target will send.
    FoundWithDeviations { melding_code: String },
    /// `F`, `23001`, no `Antwoord`.
    NotFound,
    /// `F`, `23006`, no `Antwoord`.
    Ambiguous,
    /// `G`, `23002`, `OmschrijvingRedenOpschorting=Overlijden` and this `DatumOverlijden`
    /// (`yyyymmdd`).
    Deceased { datum_overlijden: String },
    /// The underlying case, with the restriction in `IndicatieGeheim` whenever it answers
    /// an `Antwoord`.
    Restricted(Box<SbvzCase>),
    /// No `Resultaat` and no `Antwoord`.
    TechnicalFailure(TechnicalFailure),
}

impl SbvzCase {
    /// "Found with deviations" with [`DEFAULT_DEVIATION_CODE`].
    pub fn found_with_deviations() -> Self {
        SbvzCase::FoundWithDeviations {
            melding_code: DEFAULT_DEVIATION_CODE.to_owned(),
        }
    }

    /// This case with the restriction on passing data on.
    pub fn restricted(self) -> Self {
        SbvzCase::Restricted(Box::new(self))
    }

    fn is_restricted(&self) -> bool {
        matches!(self, SbvzCase::Restricted(_))
    }
}

/// The two forms of a technical failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TechnicalFailure {
    /// An answer with only an `MD01` melding (Soort `F`).
    Melding,
    /// HTTP 500 with a `soap:Server` Fault.
    SoapFault,
}

/// What the double's register holds about a person. `persoon.bsn` is ignored: the BSN is the
/// one the person is registered under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SbvzPerson {
    pub persoon: Persoon,
    /// `functie_adres` defaults to `Woonadres` in answers.
    pub adres: Option<Adres>,
}

impl SbvzPerson {
    /// Teaches the redactor this person's names, birth date and address, so that they are
    /// redacted from the journaled SBV-Z messages in reports even where they differ from the
    /// patient fixture.
    pub fn teach(&self, redactor: &Redactor) {
        let p = &self.persoon;
        let names = [&p.voornamen, &p.voorvoegsel_geslachtsnaam, &p.geslachtsnaam];
        for name in names.into_iter().flatten() {
            redactor.learn_name(name);
        }
        if let Some(date) = &p.geboortedatum {
            redactor.learn(Sensitive::BirthDate, date);
        }
        let address = self.adres.as_ref().map(Adres::fields);
        for (_, value) in address.into_iter().flatten() {
            if let Some(value) = value {
                redactor.learn(Sensitive::Address, value);
            }
        }
    }
}

/// One call the double received, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbvzCall {
    /// When it arrived, in microseconds on the journal's clock, as [`crate::journal::Exchange::at_us`].
    pub at_us: u64,
    pub operation: SbvzOperation,
    /// The version of the endpoint called.
    pub version: SbvzVersion,
    /// The `SOAPAction` header exactly as sent.
    pub soap_action: Option<String>,
    /// The BSN exactly as sent, valid or not.
    pub bsn: Option<String>,
    /// The case of the registered person the call was about.
    pub case_id: Option<String>,
    /// The `Vraag` as sent, when the body could be read.
    pub vraag: Option<Vraag>,
    pub lokaal_kenmerk: Option<String>,
    /// The search path the `Vraag` satisfies.
    pub search_path: Option<SearchPath>,
    pub outcome: CallOutcome,
}

/// How the double answered a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// An answer message (HTTP 200).
    Answered {
        resultaat: Option<Resultaat>,
        melding_code: String,
        /// Element names answered with `Afwijkend=true`.
        deviating: Vec<&'static str>,
    },
    /// A SOAP Fault with this HTTP status.
    Fault {
        status: u16,
        code: String,
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Registration {
    case: SbvzCase,
    person: SbvzPerson,
    case_id: String,
}

struct DoubleState {
    journal: Arc<Journal>,
    limits: XmlLimits,
    register: Mutex<HashMap<String, Arc<Registration>>>,
    calls: Mutex<Vec<SbvzCall>>,
}

/// The running SBV-Z double.
pub struct SbvzDouble {
    state: Arc<DoubleState>,
    server: RecordingServer,
}

impl SbvzDouble {
    /// Starts the double on `listen` (port 0 lets the OS choose). It serves both the `dec14`
    /// and the `mrt21` endpoints; each call records which one it used.
    pub async fn start(listen: SocketAddr, journal: Arc<Journal>) -> std::io::Result<Self> {
        Self::start_with_tls(listen, journal, None).await
    }

    /// Starts the double serving HTTPS with mutual TLS, as the real service demands a UZI
    /// server certificate from its clients.
    pub async fn start_with_tls(
        listen: SocketAddr,
        journal: Arc<Journal>,
        tls: Option<crate::transport::ServerTls>,
    ) -> std::io::Result<Self> {
        let state = Arc::new(DoubleState {
            journal: journal.clone(),
            limits: XmlLimits::default(),
            register: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
        });
        let mut router = Router::new();
        for version in SbvzVersion::ALL {
            for operation in SbvzOperation::ALL {
                let handler = move |State(state): State<Arc<DoubleState>>,
                                    headers: HeaderMap,
                                    body: Bytes| async move {
                    serve(&state, operation, version, &headers, &body)
                };
                let route = post(handler).fallback(method_not_allowed);
                router = router.route(&operation.endpoint_path(version), route);
            }
        }
        let router = router.fallback(unknown_path).with_state(state.clone());
        let server =
            RecordingServer::start(listen, router, journal, Party::Target, Party::Sbvz, tls)
                .await?;
        Ok(Self { state, server })
    }

    /// `http://addr`, the base the target's SBV-Z client is configured with.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The full endpoint URL of one operation.
    pub fn endpoint(&self, operation: SbvzOperation, version: SbvzVersion) -> String {
        format!("{}{}", self.base_url(), operation.endpoint_path(version))
    }

    /// Where the double listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Registers how to answer for `bsn` (kept byte for byte) and the case its calls belong
    /// to. Registering a BSN again replaces the earlier registration.
    pub fn register(&self, bsn: &str, case: SbvzCase, person: SbvzPerson, case_id: &str) {
        let registration = Arc::new(Registration {
            case,
            person,
            case_id: case_id.to_owned(),
        });
        lock(&self.state.register).insert(bsn.to_owned(), registration);
    }

    /// Every call received, in arrival order.
    pub fn calls(&self) -> Vec<SbvzCall> {
        lock(&self.state.calls).clone()
    }

    /// The calls that carried exactly this BSN, in arrival order.
    pub fn calls_for(&self, bsn: &str) -> Vec<SbvzCall> {
        lock(&self.state.calls)
            .iter()
            .filter(|c| c.bsn.as_deref() == Some(bsn))
            .cloned()
            .collect()
    }

    /// The calls grouped by the BSN they carried; calls without a readable BSN are left out.
    pub fn calls_by_bsn(&self) -> BTreeMap<String, Vec<SbvzCall>> {
        let mut grouped: BTreeMap<String, Vec<SbvzCall>> = BTreeMap::new();
        for call in lock(&self.state.calls).iter() {
            if let Some(bsn) = &call.bsn {
                grouped.entry(bsn.clone()).or_default().push(call.clone());
            }
        }
        grouped
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map or a Vec half-written.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request the double refuses, with the Fault and status it answers.
struct Refusal {
    status: StatusCode,
    fault: SoapFault,
}

impl Refusal {
    fn header(reason: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            fault: SoapFault::client(reason),
        }
    }

    fn body(reason: String) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            fault: SoapFault::client(reason),
        }
    }
}

/// What the double read from a request body.
struct ReadRequest {
    vraag: Vraag,
    lokaal_kenmerk: Option<String>,
}

fn serve(
    state: &DoubleState,
    operation: SbvzOperation,
    version: SbvzVersion,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let soap_action = headers
        .get("soapaction")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mut call = SbvzCall {
        at_us: state.journal.now_us(),
        operation,
        version,
        soap_action: soap_action.clone(),
        bsn: None,
        case_id: None,
        vraag: None,
        lokaal_kenmerk: None,
        search_path: None,
        outcome: CallOutcome::Answered {
            resultaat: None,
            melding_code: String::new(),
            deviating: Vec::new(),
        },
    };

    let read = read_request(operation, version, body, &state.limits);
    if let Ok(request) = &read {
        call.bsn = request.vraag.persoon.bsn.clone();
        call.vraag = Some(request.vraag.clone());
        call.lokaal_kenmerk = request.lokaal_kenmerk.clone();
        call.search_path = request.vraag.search_path();
    }
    let lookup = match &read {
        Ok(request) => look_up(state, &request.vraag),
        Err(_) => Lookup::Unregistered,
    };
    if let Lookup::Registered(_, registration) = &lookup {
        call.case_id = Some(registration.case_id.clone());
    }

    let checked = check_headers(operation, version, headers, soap_action.as_deref())
        .and(read)
        .and_then(|request| check_query(operation, request));
    let response = match checked {
        Err(refusal) => refuse(&mut call, refusal),
        Ok(request) => answer(&mut call, operation, version, &request, &lookup),
    };
    let case_id = call.case_id.clone();
    lock(&state.calls).push(call);
    attributed(response, case_id.as_deref(), ExchangeKind::Sbvz)
}

/// `Content-Type: text/xml; charset=utf-8` and the operation's `SOAPAction`, quoted as SOAP
/// 1.1 writes it or bare.
fn check_headers(
    operation: SbvzOperation,
    version: SbvzVersion,
    headers: &HeaderMap,
    soap_action: Option<&str>,
) -> Result<(), Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if !content_type.as_deref().is_some_and(is_soap_11_media_type) {
        return Err(Refusal::header(format!(
            "Content-Type must be {}, found {}",
            soap::CONTENT_TYPE,
            content_type.as_deref().unwrap_or("none")
        )));
    }
    let expected = operation.soap_action(version);
    let sent = soap_action.map(|a| {
        let a = a.trim();
        a.strip_prefix('"')
            .and_then(|a| a.strip_suffix('"'))
            .unwrap_or(a)
    });
    if sent != Some(expected.as_str()) {
        return Err(Refusal::header(format!(
            "SOAPAction must be \"{expected}\", found {}",
            soap_action.unwrap_or("none")
        )));
    }
    Ok(())
}

/// `text/xml` with `charset=utf-8`, case-insensitively, the charset optionally quoted.
fn is_soap_11_media_type(value: &str) -> bool {
    let mut parts = value.split(';').map(str::trim);
    let media_type_ok = parts
        .next()
        .is_some_and(|m| m.eq_ignore_ascii_case("text/xml"));
    let charset_ok = parts.any(|p| {
        p.split_once('=').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("charset")
                && value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        })
    });
    media_type_ok && charset_ok
}

/// Reads the body: a SOAP 1.1 envelope whose Body holds the operation's element in the
/// endpoint version's namespace, its message element, and a `Vraag`.
fn read_request(
    operation: SbvzOperation,
    version: SbvzVersion,
    body: &[u8],
    limits: &XmlLimits,
) -> Result<ReadRequest, Refusal> {
    let unreadable = |e: SoapError| match e {
        SoapError::VersionMismatch => Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            fault: SoapFault::version_mismatch(e.to_string()),
        },
        other => Refusal::body(format!(
            "the request is not a usable SOAP 1.1 message: {other}"
        )),
    };
    let root = soap::parse(body, limits).map_err(unreadable)?;
    let payload = match soap::read_envelope(&root).map_err(unreadable)? {
        SoapBody::Payload(payload) => payload,
        SoapBody::Fault(_) => {
            return Err(Refusal::body("the request Body holds a Fault".to_owned()));
        }
    };
    let ns = version.namespace();
    if !payload.is(ns, operation.name()) {
        return Err(Refusal::body(format!(
            "expected {{{ns}}}{} in the Body, found {}",
            operation.name(),
            payload.expanded_name()
        )));
    }
    let message = payload
        .child(ns, operation.request_message())
        .ok_or_else(|| {
            Refusal::body(format!(
                "{} has no {}",
                operation.name(),
                operation.request_message()
            ))
        })?;
    let vraag = message
        .child(ns, "Vraag")
        .ok_or_else(|| Refusal::body(format!("{} has no Vraag", operation.request_message())))?;
    Ok(ReadRequest {
        vraag: read_vraag(vraag, ns),
        lokaal_kenmerk: message
            .child_text(ns, "LokaalKenmerk")
            .filter(|k| !k.is_empty())
            .map(str::to_owned),
    })
}

/// What each operation needs: a BSN that passes the 11-proef when one is sent (always for
/// `OpvragenPersoonsgegevens`), and for `OpvragenVerifieren` a search path and a
/// `LokaalKenmerk`.
fn check_query(operation: SbvzOperation, request: ReadRequest) -> Result<ReadRequest, Refusal> {
    let bsn = request.vraag.persoon.bsn.as_deref();
    if operation == SbvzOperation::OpvragenPersoonsgegevens && bsn.is_none() {
        return Err(Refusal::body("Vraag/BSN is missing".to_owned()));
    }
    if let Some(bsn) = bsn
        && let Err(e) = Bsn::parse(bsn)
    {
        return Err(Refusal::body(format!("the BSN is not valid: {e}")));
    }
    if operation == SbvzOperation::OpvragenVerifieren {
        if request.vraag.search_path().is_none() {
            return Err(Refusal::body(
                "the Vraag satisfies neither search path (1: Geboortedatum, \
                 Geslachtsaanduiding, Huisnummer, Postcode; 2: Geboortedatum, \
                 Geslachtsaanduiding, Geslachtsnaam)"
                    .to_owned(),
            ));
        }
        if request.lokaal_kenmerk.is_none() {
            return Err(Refusal::body("LokaalKenmerk is missing".to_owned()));
        }
    }
    Ok(request)
}

/// Whom a `Vraag` is about.
enum Lookup {
    Registered(String, Arc<Registration>),
    Unregistered,
    /// A query without BSN that matched more than one registered person.
    Ambiguous,
}

/// By BSN when one is sent; otherwise by the search path among registered persons.
fn look_up(state: &DoubleState, vraag: &Vraag) -> Lookup {
    let register = lock(&state.register);
    if let Some(bsn) = &vraag.persoon.bsn {
        return match register.get(bsn) {
            Some(registration) => Lookup::Registered(bsn.clone(), registration.clone()),
            None => Lookup::Unregistered,
        };
    }
    let mut matches = register
        .iter()
        .filter(|(_, r)| matches_search_path(&r.person, vraag));
    match (matches.next(), matches.next()) {
        (Some((bsn, registration)), None) => Lookup::Registered(bsn.clone(), registration.clone()),
        (None, _) => Lookup::Unregistered,
        (Some(_), Some(_)) => Lookup::Ambiguous,
    }
}

fn matches_search_path(person: &SbvzPerson, vraag: &Vraag) -> bool {
    let (asked, held) = (&vraag.persoon, &person.persoon);
    let same = |a: &Option<String>, b: &Option<String>| match (a, b) {
        (Some(a), Some(b)) => normalized(a) == normalized(b),
        _ => false,
    };
    let base = same(&asked.geboortedatum, &held.geboortedatum)
        && same(&asked.geslachtsaanduiding, &held.geslachtsaanduiding);
    match vraag.search_path() {
        Some(SearchPath::BirthSexSurname) => {
            base && same(&asked.geslachtsnaam, &held.geslachtsnaam)
        }
        Some(SearchPath::BirthSexAddress) => {
            let (Some(asked), Some(held)) = (&vraag.adres, &person.adres) else {
                return false;
            };
            base && same(&asked.huisnummer, &held.huisnummer)
                && same(&asked.postcode, &held.postcode)
        }
        None => false,
    }
}

/// Comparison form: case and spacing ignored.
fn normalized(value: &str) -> String {
    value
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn refuse(call: &mut SbvzCall, refusal: Refusal) -> Response {
    call.outcome = CallOutcome::Fault {
        status: refusal.status.as_u16(),
        code: refusal.fault.code.clone(),
        reason: refusal.fault.string.clone(),
    };
    soap_response(refusal.status, refusal.fault.to_xml())
}

fn soap_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(soap::CONTENT_TYPE),
    );
    response
}

/// The scripted answer to an accepted request.
fn answer(
    call: &mut SbvzCall,
    operation: SbvzOperation,
    version: SbvzVersion,
    request: &ReadRequest,
    lookup: &Lookup,
) -> Response {
    let not_found = SbvzCase::NotFound;
    let ambiguous = SbvzCase::Ambiguous;
    let (case, registered) = match lookup {
        Lookup::Registered(bsn, registration) => (&registration.case, Some((bsn, registration))),
        Lookup::Unregistered => (&not_found, None),
        Lookup::Ambiguous => (&ambiguous, None),
    };
    let restricted = case.is_restricted();
    let found_code = match operation {
        SbvzOperation::OpvragenVerifieren => MELDING_BSN_GEVONDEN,
        SbvzOperation::OpvragenPersoonsgegevens => MELDING_BSN_GEVONDEN_PERSOONSGEGEVENS,
    };
    let Some(script) = Script::for_case(case, found_code) else {
        let refusal = Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            fault: SoapFault::server("SBV-Z is temporarily unavailable (simulated failure)"),
        };
        return refuse(call, refusal);
    };

    let antwoord = match (script.with_antwoord, registered) {
        (true, Some((bsn, registration))) => Some(AntwoordPlan {
            bsn,
            person: &registration.person,
            restricted,
            datum_overlijden: script.datum_overlijden,
        }),
        _ => None,
    };
    let mut deviating = Vec::new();
    let body = write_answer(
        operation,
        version,
        request,
        &script,
        antwoord.as_ref(),
        &mut deviating,
    );
    call.outcome = CallOutcome::Answered {
        resultaat: script.resultaat,
        melding_code: script.melding_code.to_owned(),
        deviating,
    };
    soap_response(StatusCode::OK, body)
}

/// The parts of an answer message the case fixes.
struct Script<'a> {
    resultaat: Option<Resultaat>,
    soort: MeldingSoort,
    melding_code: &'a str,
    tekst: &'a str,
    with_antwoord: bool,
    datum_overlijden: Option<&'a str>,
}

impl<'a> Script<'a> {
    /// The answer the case prescribes; `None` for a technical failure answered as a Fault.
    fn for_case(case: &'a SbvzCase, found_code: &'a str) -> Option<Self> {
        let script = match case {
            SbvzCase::TechnicalFailure(TechnicalFailure::SoapFault) => return None,
            SbvzCase::TechnicalFailure(TechnicalFailure::Melding) => Script::failure(
                None,
                MELDING_TECHNISCHE_FOUT,
                "Technische fout; probeer het later opnieuw.",
            ),
            SbvzCase::NotFound => Script::failure(
                Some(Resultaat::Fout),
                MELDING_GEEN_RESULTAAT,
                "Geen resultaat gevonden.",
            ),
            SbvzCase::Ambiguous => Script::failure(
                Some(Resultaat::Fout),
                MELDING_NIET_EENDUIDIG,
                "De zoekvraag leidt niet tot een enkele persoon.",
            ),
            SbvzCase::Found => Script::found(Resultaat::Goed, MeldingSoort::Goed, found_code),
            SbvzCase::FoundWithDeviations { melding_code } => Script::found(
                Resultaat::GoedMetAfwijkingen,
                MeldingSoort::Waarschuwing,
                melding_code,
            ),
            SbvzCase::Deceased { datum_overlijden } => Script {
                datum_overlijden: Some(datum_overlijden),
                ..Script::found(Resultaat::Goed, MeldingSoort::Goed, found_code)
            },
            SbvzCase::Restricted(inner) => return Script::for_case(inner, found_code),
        };
        Some(script)
    }

    fn failure(resultaat: Option<Resultaat>, melding_code: &'a str, tekst: &'a str) -> Self {
        Self {
            resultaat,
            soort: MeldingSoort::Fout,
            melding_code,
            tekst,
            with_antwoord: false,
            datum_overlijden: None,
        }
    }

    fn found(resultaat: Resultaat, soort: MeldingSoort, melding_code: &'a str) -> Self {
        let tekst = if soort == MeldingSoort::Waarschuwing {
            "BSN gevonden; een of meer opgegeven gegevens wijken af."
        } else {
            "BSN gevonden. Controleer of het resultaat bij de juiste persoon hoort."
        };
        Self {
            resultaat: Some(resultaat),
            soort,
            melding_code,
            tekst,
            with_antwoord: true,
            datum_overlijden: None,
        }
    }
}

/// What goes into an `Antwoord`.
struct AntwoordPlan<'a> {
    bsn: &'a str,
    person: &'a SbvzPerson,
    restricted: bool,
    datum_overlijden: Option<&'a str>,
}

fn write_answer(
    operation: SbvzOperation,
    version: SbvzVersion,
    request: &ReadRequest,
    script: &Script<'_>,
    antwoord: Option<&AntwoordPlan<'_>>,
    deviating: &mut Vec<&'static str>,
) -> String {
    let mut w = XmlWriter::soap_envelope();
    w.open(
        operation.response_wrapper(),
        &[("xmlns", version.namespace())],
    );
    w.open(operation.response_message(), &[]);
    write_echoed_vraag(&mut w, operation, &request.vraag);
    if let Some(plan) = antwoord {
        write_antwoord(&mut w, plan, &request.vraag, deviating);
    }
    if let Some(resultaat) = script.resultaat {
        w.leaf("Resultaat", &[], resultaat.code());
    }
    w.leaf(
        "Melding",
        &[
            ("Soort", script.soort.code()),
            ("Code", script.melding_code),
        ],
        script.tekst,
    );
    if let Some(kenmerk) = &request.lokaal_kenmerk {
        w.leaf("LokaalKenmerk", &[], kenmerk);
    }
    w.finish()
}

fn write_echoed_vraag(w: &mut XmlWriter, operation: SbvzOperation, vraag: &Vraag) {
    w.open("Vraag", &[]);
    if operation == SbvzOperation::OpvragenPersoonsgegevens {
        if let Some(bsn) = &vraag.persoon.bsn {
            w.leaf("BSN", &[], bsn);
        }
    } else {
        w.open("Persoon", &[]);
        for (element, value) in vraag.persoon.fields() {
            if let Some(value) = value {
                w.leaf(element, &[], value);
            }
        }
        w.close();
        if let Some(adres) = &vraag.adres {
            w.open("Adres", &[]);
            for (element, value) in adres.fields() {
                if let Some(value) = value {
                    w.leaf(element, &[], value);
                }
            }
            w.close();
        }
    }
    w.close();
}

/// The register's data, each compared field flagged when the `Vraag` gave it differently.
fn write_antwoord(
    w: &mut XmlWriter,
    plan: &AntwoordPlan<'_>,
    vraag: &Vraag,
    deviating: &mut Vec<&'static str>,
) {
    let mut compared =
        |w: &mut XmlWriter, element: &'static str, asked: Option<&String>, held: &str| {
            let differs = asked.is_some_and(|a| normalized(a) != normalized(held));
            if differs {
                deviating.push(element);
            }
            let flag = if differs { "true" } else { "false" };
            w.leaf(element, &[("Afwijkend", flag)], held);
        };

    w.open("Antwoord", &[]);
    w.open("Persoon", &[]);
    let held_bsn = plan.bsn.to_owned();
    let held = Persoon {
        bsn: Some(held_bsn),
        ..plan.person.persoon.clone()
    };
    for ((element, held), (_, asked)) in held.fields().into_iter().zip(vraag.persoon.fields()) {
        if let Some(held) = held {
            compared(w, element, asked, held);
        }
    }
    w.close();

    if let Some(adres) = &plan.person.adres {
        let asked = vraag.adres.clone().unwrap_or_default();
        let asked_fields = asked.fields();
        w.open("Adres", &[]);
        let functie = adres.functie_adres.as_deref().unwrap_or("Woonadres");
        for (index, (element, held)) in adres.fields().into_iter().enumerate() {
            if let Some(held) = held {
                compared(w, element, asked_fields[index].1, held);
            }
            if element == "GemeenteVanInschrijving" {
                w.leaf("FunctieAdres", &[], functie);
            }
        }
        if let Some(woonplaats) = &adres.woonplaatsnaam {
            w.leaf("Woonplaatsnaam", &[], woonplaats);
        }
        w.close();
    }

    w.open("Inschrijving", &[]);
    if plan.datum_overlijden.is_some() {
        w.leaf(
            "OmschrijvingRedenOpschorting",
            &[],
            REDEN_OPSCHORTING_OVERLIJDEN,
        );
    }
    let geheim = if plan.restricted {
        INDICATIE_GEHEIM_BEPERKT
    } else {
        INDICATIE_GEHEIM_GEEN
    };
    w.leaf("IndicatieGeheim", &[], geheim);
    w.close();

    if let Some(datum) = plan.datum_overlijden {
        w.open("Overlijden", &[]);
        w.leaf("DatumOverlijden", &[], datum);
        w.close();
    }
    w.close();
}

async fn method_not_allowed() -> Response {
    let fault = SoapFault::client("SBV-Z operations accept only POST");
    attributed(
        soap_response(StatusCode::METHOD_NOT_ALLOWED, fault.to_xml()),
        None,
        ExchangeKind::Sbvz,
    )
}

async fn unknown_path() -> Response {
    let fault = SoapFault::client("no SBV-Z operation at this path");
    attributed(
        soap_response(StatusCode::NOT_FOUND, fault.to_xml()),
        None,
        ExchangeKind::Sbvz,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_media_type_must_be_text_xml_in_utf_8() {
        for good in [
            "text/xml; charset=utf-8",
            "Text/XML;charset=\"UTF-8\"",
            "text/xml; action=x; charset=utf-8",
        ] {
            assert!(is_soap_11_media_type(good), "{good}");
        }
        for bad in [
            "text/xml",
            "application/soap+xml; charset=utf-8",
            "text/xml; charset=iso-8859-1",
            "text/xmlx; charset=utf-8",
            "",
        ] {
            assert!(!is_soap_11_media_type(bad), "{bad}");
        }
    }

    #[test]
    fn restriction_layers_keep_the_underlying_script() {
        let case = SbvzCase::Deceased {
            datum_overlijden: "20240102".to_owned(),
        }
        .restricted()
        .restricted();
        assert!(case.is_restricted());
        let script = Script::for_case(&case, MELDING_BSN_GEVONDEN).expect("an answer");
        assert_eq!(script.resultaat, Some(Resultaat::Goed));
        assert_eq!(script.datum_overlijden, Some("20240102"));
        let fault = SbvzCase::TechnicalFailure(TechnicalFailure::SoapFault).restricted();
        assert!(Script::for_case(&fault, MELDING_BSN_GEVONDEN).is_none());
    }

    #[test]
    fn a_request_without_vraag_or_in_another_namespace_is_refused() {
        let ns = SbvzVersion::Dec14.namespace();
        let envelope = |inner: &str| {
            format!(
                "<s:Envelope xmlns:s=\"{}\"><s:Body>{inner}</s:Body></s:Envelope>",
                soap::ENVELOPE_NS
            )
        };
        let refused = [
            envelope(&format!("<OpvragenVerifieren xmlns=\"{ns}\"/>")),
            envelope(&format!(
                "<OpvragenVerifieren xmlns=\"{ns}\"><OpvragenVerifierenVraagBericht/></OpvragenVerifieren>"
            )),
            envelope(
                "<OpvragenVerifieren xmlns=\"http://CIBG.SBV.Interface.XIS.Webservice/mrt21\"/>",
            ),
            envelope("<OpvragenVerifieren/>"),
        ];
        for body in refused {
            let read = read_request(
                SbvzOperation::OpvragenVerifieren,
                SbvzVersion::Dec14,
                body.as_bytes(),
                &XmlLimits::default(),
            );
            assert!(read.is_err(), "{body}");
        }
    }

    proptest! {
        #[test]
        fn reading_arbitrary_request_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            for operation in SbvzOperation::ALL {
                let read = read_request(operation, SbvzVersion::Dec14, &bytes, &XmlLimits::default());
                if let Ok(request) = read {
                    let _ = check_query(operation, request);
                }
            }
        }
    }
}

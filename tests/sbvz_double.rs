//! The SBV-Z double over real HTTP on loopback: the client's requests get each case of the
//! protocol.md §9 test-double table, malformed requests get SOAP Faults, and every exchange is
//! journaled as an SBV-Z call of the registered person's case.

use std::sync::Arc;

use bgz_harness::journal::{ExchangeKind, Journal, Party};
use bgz_harness::protocol::sbvz::{
    Adres, INDICATIE_GEHEIM_BEPERKT, MeldingSoort, Persoon, Resultaat, SbvzOperation, SbvzReply,
    SbvzRequest, SbvzResponse, SbvzVersion, Vraag, parse_response, persoonsgegevens_request,
    verifieren_request,
};
use bgz_harness::protocol::soap::{self, SoapFault, XmlLimits};
use bgz_harness::sim::sbvz::{CallOutcome, SbvzCase, SbvzDouble, SbvzPerson, TechnicalFailure};
use bgz_harness::transport::{ClientSettings, Outgoing, RecordingClient};
use serde_json::{Value, json};

const FOUND: &str = "999000007";
const DEVIATING: &str = "999000019";
const NOT_FOUND: &str = "999000020";
const AMBIGUOUS: &str = "999000032";
const DECEASED: &str = "999000044";
const RESTRICTED: &str = "999000056";
const FAILING_MELDING: &str = "999000068";
const FAILING_FAULT: &str = "999000081";
const UNREGISTERED: &str = "999000093";
const RESTRICTED_NOT_FOUND: &str = "999000111";

struct Setup {
    double: SbvzDouble,
    journal: Arc<Journal>,
    client: RecordingClient,
}

/// The Patient the target pulled: Johanna Maria van Putten, female, born 1950-03-01.
fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{
            "use": "official",
            "family": "van Putten",
            "_family": { "extension": [
                { "url": "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix",
                  "valueString": "van" },
                { "url": "http://hl7.org/fhir/StructureDefinition/humanname-own-name",
                  "valueString": "Putten" }
            ]},
            "given": ["Johanna", "Maria"]
        }],
        "gender": "female",
        "birthDate": "1950-03-01"
    })
}

/// The register's data for the same person, written by hand (not mapped from the Patient).
fn person(geslachtsnaam: &str) -> SbvzPerson {
    SbvzPerson {
        persoon: Persoon {
            voornamen: Some("Johanna Maria".to_owned()),
            voorvoegsel_geslachtsnaam: Some("van".to_owned()),
            geslachtsnaam: Some(geslachtsnaam.to_owned()),
            geboortedatum: Some("19500301".to_owned()),
            geslachtsaanduiding: Some("V".to_owned()),
            ..Persoon::default()
        },
        adres: Some(Adres {
            gemeente_van_inschrijving: Some("Utrecht".to_owned()),
            straatnaam: Some("Domplein".to_owned()),
            huisnummer: Some("1".to_owned()),
            postcode: Some("3512JC".to_owned()),
            woonplaatsnaam: Some("Utrecht".to_owned()),
            ..Adres::default()
        }),
    }
}

async fn setup() -> Setup {
    let journal = Arc::new(Journal::new());
    let listen = "127.0.0.1:0".parse().expect("a loopback socket address");
    let double = SbvzDouble::start(listen, journal.clone())
        .await
        .expect("the double binds loopback");
    let cases = [
        (FOUND, SbvzCase::Found, "Putten"),
        (DEVIATING, SbvzCase::found_with_deviations(), "Putter"),
        (NOT_FOUND, SbvzCase::NotFound, "Putten"),
        (AMBIGUOUS, SbvzCase::Ambiguous, "Putten"),
        (
            DECEASED,
            SbvzCase::Deceased {
                datum_overlijden: "20240102".to_owned(),
            },
            "Putten",
        ),
        (RESTRICTED, SbvzCase::Found.restricted(), "Putten"),
        (
            RESTRICTED_NOT_FOUND,
            SbvzCase::NotFound.restricted(),
            "Putten",
        ),
        (
            FAILING_MELDING,
            SbvzCase::TechnicalFailure(TechnicalFailure::Melding),
            "Putten",
        ),
        (
            FAILING_FAULT,
            SbvzCase::TechnicalFailure(TechnicalFailure::SoapFault),
            "Putten",
        ),
    ];
    for (bsn, case, surname) in cases {
        double.register(bsn, case, person(surname), &format!("case-{bsn}"));
    }
    // The client's own journal stays apart, so the double's journal shows only what it served.
    let client = RecordingClient::new(
        &ClientSettings::default(),
        Arc::new(Journal::new()),
        Party::Target,
        Party::Sbvz,
    )
    .expect("a plain HTTP client");
    Setup {
        double,
        journal,
        client,
    }
}

/// Sends a built request the way a conforming client does; returns status and parsed reply.
async fn send(setup: &Setup, request: &SbvzRequest) -> (u16, SbvzReply) {
    let outgoing = Outgoing::with_body(
        reqwest::Method::POST,
        request.url(&setup.double.base_url()),
        soap::CONTENT_TYPE,
        request.body.clone(),
        ExchangeKind::Sbvz,
    )
    .header("SOAPAction", request.soap_action_header());
    let exchange = setup
        .client
        .send(outgoing)
        .await
        .expect("the double answers");
    let response = exchange.response.expect("a response");
    let reply = parse_response(
        request.operation,
        &response.body.bytes,
        &XmlLimits::default(),
    )
    .expect("the double's answer is readable");
    (response.status, reply)
}

async fn verify(setup: &Setup, bsn: &str) -> (u16, SbvzReply) {
    let vraag = Vraag::from_patient(&patient(), bsn).expect("the Patient maps");
    let request = verifieren_request(&vraag, &format!("k-{bsn}"), SbvzVersion::Dec14)
        .expect("a valid request");
    send(setup, &request).await
}

fn answer(reply: SbvzReply) -> SbvzResponse {
    match reply {
        SbvzReply::Answer(response) => *response,
        SbvzReply::Fault(fault) => panic!("expected an answer, got the Fault {fault:?}"),
    }
}

/// The one exchange journaled for the case: an SBV-Z call from the target to the double.
fn assert_journaled(journal: &Journal, bsn: &str, status: u16) {
    let exchanges = journal.for_case(&format!("case-{bsn}"));
    assert_eq!(exchanges.len(), 1, "one exchange for {bsn}");
    let exchange = &exchanges[0];
    assert_eq!(exchange.kind, ExchangeKind::Sbvz);
    assert_eq!((exchange.from, exchange.to), (Party::Target, Party::Sbvz));
    assert_eq!(exchange.response.as_ref().map(|r| r.status), Some(status));
    assert_eq!(
        exchange
            .response
            .as_ref()
            .and_then(|r| r.header("content-type")),
        Some(soap::CONTENT_TYPE)
    );
}

#[tokio::test]
async fn found_answers_g_23002_with_the_full_antwoord() {
    let setup = setup().await;
    let (status, reply) = verify(&setup, FOUND).await;
    let response = answer(reply);
    assert_eq!(status, 200);
    assert_eq!(response.resultaat, Some(Resultaat::Goed));
    assert_eq!(response.meldingen[0].soort, MeldingSoort::Goed);
    assert!(response.has_melding("23002"));
    assert_eq!(response.lokaal_kenmerk.as_deref(), Some("k-999000007"));
    assert!(response.deviating_fields().is_empty());
    let antwoord = response.antwoord.as_ref().expect("an Antwoord");
    let persoon = antwoord.persoon.as_ref().expect("Antwoord/Persoon");
    assert_eq!(persoon.bsn.as_ref().map(|b| b.waarde.as_str()), Some(FOUND));
    let adres = antwoord.adres.as_ref().expect("Antwoord/Adres");
    assert_eq!(adres.functie_adres.as_deref(), Some("Woonadres"));
    assert!(!response.is_restricted());
    assert!(!response.is_deceased());
    assert_journaled(&setup.journal, FOUND, 200);
}

#[tokio::test]
async fn found_with_deviations_answers_a_w_and_flags_the_differing_field() {
    let setup = setup().await;
    let response = answer(verify(&setup, DEVIATING).await.1);
    assert_eq!(response.resultaat, Some(Resultaat::GoedMetAfwijkingen));
    assert_eq!(response.meldingen[0].soort, MeldingSoort::Waarschuwing);
    assert_eq!(response.deviating_fields(), vec!["Geslachtsnaam"]);
    assert_journaled(&setup.journal, DEVIATING, 200);

    let calls = setup.double.calls_for(DEVIATING);
    let CallOutcome::Answered { deviating, .. } = &calls[0].outcome else {
        panic!("expected an answer");
    };
    assert_eq!(deviating, &vec!["Geslachtsnaam"]);
}

#[tokio::test]
async fn not_found_and_ambiguous_answer_f_without_antwoord() {
    let setup = setup().await;
    for (bsn, code) in [(NOT_FOUND, "23001"), (AMBIGUOUS, "23006")] {
        let response = answer(verify(&setup, bsn).await.1);
        assert_eq!(response.resultaat, Some(Resultaat::Fout));
        assert!(response.has_melding(code), "{bsn} answers {code}");
        assert_eq!(response.antwoord, None);
        assert_journaled(&setup.journal, bsn, 200);
    }
}

#[tokio::test]
async fn an_unregistered_bsn_answers_not_found_unattributed() {
    let setup = setup().await;
    let response = answer(verify(&setup, UNREGISTERED).await.1);
    assert_eq!(response.resultaat, Some(Resultaat::Fout));
    assert!(response.has_melding("23001"));
    let all = setup.journal.all();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].kind, ExchangeKind::Sbvz);
    assert_eq!(all[0].case_id, None);
}

#[tokio::test]
async fn deceased_answers_g_with_the_reason_and_the_date_of_death() {
    let setup = setup().await;
    let response = answer(verify(&setup, DECEASED).await.1);
    assert_eq!(response.resultaat, Some(Resultaat::Goed));
    assert!(response.has_melding("23002"));
    assert!(response.is_deceased());
    let antwoord = response.antwoord.expect("an Antwoord");
    let inschrijving = antwoord.inschrijving.expect("Inschrijving");
    assert_eq!(
        inschrijving.omschrijving_reden_opschorting.as_deref(),
        Some("Overlijden")
    );
    let overlijden = antwoord.overlijden.expect("Overlijden");
    assert_eq!(overlijden.datum_overlijden.as_deref(), Some("20240102"));
    assert_journaled(&setup.journal, DECEASED, 200);
}

#[tokio::test]
async fn restricted_adds_indicatie_geheim_to_the_underlying_case() {
    let setup = setup().await;
    let response = answer(verify(&setup, RESTRICTED).await.1);
    assert_eq!(response.resultaat, Some(Resultaat::Goed));
    assert!(response.is_restricted());
    let inschrijving = response.antwoord.and_then(|a| a.inschrijving);
    assert_eq!(
        inschrijving.and_then(|i| i.indicatie_geheim).as_deref(),
        Some(INDICATIE_GEHEIM_BEPERKT)
    );
    assert_journaled(&setup.journal, RESTRICTED, 200);

    let response = answer(verify(&setup, RESTRICTED_NOT_FOUND).await.1);
    assert_eq!(response.resultaat, Some(Resultaat::Fout));
    assert_eq!(response.antwoord, None);
}

#[tokio::test]
async fn a_technical_failure_answers_md01_or_a_server_fault() {
    let setup = setup().await;
    let (status, reply) = verify(&setup, FAILING_MELDING).await;
    let response = answer(reply);
    assert_eq!(status, 200);
    assert_eq!(response.resultaat, None);
    assert!(response.has_melding("MD01"));
    assert!(response.is_technical_failure());
    assert_eq!(response.antwoord, None);
    assert_journaled(&setup.journal, FAILING_MELDING, 200);

    let (status, reply) = verify(&setup, FAILING_FAULT).await;
    assert_eq!(status, 500);
    let SbvzReply::Fault(fault) = reply else {
        panic!("expected a Fault");
    };
    assert_eq!(fault.code_local_name(), "Server");
    assert_journaled(&setup.journal, FAILING_FAULT, 500);
}

#[tokio::test]
async fn opvragen_persoonsgegevens_answers_3002_and_echoes_the_bsn() {
    let setup = setup().await;
    let request = persoonsgegevens_request(FOUND, SbvzVersion::Dec14).expect("a valid BSN");
    let response = answer(send(&setup, &request).await.1);
    assert_eq!(response.operation, SbvzOperation::OpvragenPersoonsgegevens);
    assert_eq!(response.resultaat, Some(Resultaat::Goed));
    assert!(response.has_melding("3002"));
    let echoed = response.vraag.expect("the echoed Vraag");
    assert_eq!(echoed.persoon.bsn.as_deref(), Some(FOUND));
    assert!(response.antwoord.is_some());
    assert_journaled(&setup.journal, FOUND, 200);
}

#[tokio::test]
async fn the_mrt21_endpoint_answers_in_the_mrt21_namespace() {
    let setup = setup().await;
    let vraag = Vraag::from_patient(&patient(), FOUND).expect("the Patient maps");
    let request = verifieren_request(&vraag, "k", SbvzVersion::Mrt21).expect("a valid request");
    let response = answer(send(&setup, &request).await.1);
    assert_eq!(response.version, SbvzVersion::Mrt21);
    assert_eq!(setup.double.calls_for(FOUND)[0].version, SbvzVersion::Mrt21);
}

#[tokio::test]
async fn a_query_without_bsn_is_matched_by_search_path_two() {
    let setup = setup().await;
    // Every registered person has the same birth date, sex and surname except DEVIATING.
    let mut vraag = Vraag::from_patient(&patient(), FOUND).expect("the Patient maps");
    vraag.persoon.bsn = None;
    let request = verifieren_request(&vraag, "k", SbvzVersion::Dec14).expect("path 2 suffices");
    let response = answer(send(&setup, &request).await.1);
    assert!(response.has_melding("23006"), "several persons match");

    vraag.persoon.geslachtsnaam = Some("Putter".to_owned());
    let request = verifieren_request(&vraag, "k", SbvzVersion::Dec14).expect("path 2 suffices");
    let response = answer(send(&setup, &request).await.1);
    assert_eq!(response.resultaat, Some(Resultaat::GoedMetAfwijkingen));
    assert_eq!(
        setup.journal.for_case(&format!("case-{DEVIATING}")).len(),
        1
    );
}

/// Posts `body` with this Content-Type and SOAPAction; returns the status and the Fault.
async fn post_raw(
    setup: &Setup,
    content_type: &str,
    soap_action: Option<&str>,
    body: &str,
) -> (u16, SoapFault) {
    let path = SbvzOperation::OpvragenVerifieren.endpoint_path(SbvzVersion::Dec14);
    let mut outgoing = Outgoing::with_body(
        reqwest::Method::POST,
        format!("{}{path}", setup.double.base_url()),
        content_type,
        body.to_owned(),
        ExchangeKind::Sbvz,
    );
    if let Some(action) = soap_action {
        outgoing = outgoing.header("SOAPAction", action);
    }
    let exchange = setup
        .client
        .send(outgoing)
        .await
        .expect("the double answers");
    let response = exchange.response.expect("a response");
    let reply = parse_response(
        SbvzOperation::OpvragenVerifieren,
        &response.body.bytes,
        &XmlLimits::default(),
    )
    .expect("a readable Fault");
    let SbvzReply::Fault(fault) = reply else {
        panic!("expected a Fault");
    };
    (response.status, fault)
}

#[tokio::test]
async fn malformed_requests_get_soap_faults_and_are_still_journaled() {
    let setup = setup().await;
    let vraag = Vraag::from_patient(&patient(), FOUND).expect("the Patient maps");
    let good = verifieren_request(&vraag, "k", SbvzVersion::Dec14).expect("a valid request");
    let action = good.soap_action_header();
    let action = Some(action.as_str());
    let xml = soap::CONTENT_TYPE;
    let invalid_bsn = good.body.replace(FOUND, "999000010");
    let soap12 = good.body.replace(
        "http://schemas.xmlsoap.org/soap/envelope/",
        "http://www.w3.org/2003/05/soap-envelope",
    );
    let doctype = good.body.replace(
        "<soap:Envelope",
        "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><soap:Envelope",
    );

    let cases = [
        (
            "application/soap+xml",
            action,
            good.body.as_str(),
            400,
            "Client",
        ),
        ("text/xml", action, &good.body, 400, "Client"),
        (xml, None, &good.body, 400, "Client"),
        (xml, Some("\"urn:wrong\""), &good.body, 400, "Client"),
        (xml, action, "<oops", 500, "Client"),
        (xml, action, &doctype, 500, "Client"),
        (xml, action, &invalid_bsn, 500, "Client"),
        (xml, action, &soap12, 500, "VersionMismatch"),
    ];
    for (content_type, soap_action, body, status, code) in cases {
        let (got_status, fault) = post_raw(&setup, content_type, soap_action, body).await;
        let got = (got_status, fault.code_local_name());
        assert_eq!(
            got,
            (status, code),
            "{content_type} {soap_action:?} {body:.40}"
        );
    }

    let exchanges = setup.journal.all();
    assert_eq!(exchanges.len(), 8);
    assert!(exchanges.iter().all(|e| e.kind == ExchangeKind::Sbvz));
    let invalid = setup.double.calls_for("999000010");
    assert_eq!(
        invalid.len(),
        1,
        "a BSN failing the 11-proef is still recorded"
    );
    assert!(matches!(
        invalid[0].outcome,
        CallOutcome::Fault { status: 500, .. }
    ));
}

#[tokio::test]
async fn a_bare_soap_action_is_accepted_as_well_as_a_quoted_one() {
    let setup = setup().await;
    let vraag = Vraag::from_patient(&patient(), FOUND).expect("the Patient maps");
    let request = verifieren_request(&vraag, "k", SbvzVersion::Dec14).expect("a valid request");
    let outgoing = Outgoing::with_body(
        reqwest::Method::POST,
        request.url(&setup.double.base_url()),
        "Text/XML; Charset=\"UTF-8\"",
        request.body.clone(),
        ExchangeKind::Sbvz,
    )
    .header(
        "SOAPAction",
        SbvzOperation::OpvragenVerifieren.soap_action(SbvzVersion::Dec14),
    );
    let exchange = setup
        .client
        .send(outgoing)
        .await
        .expect("the double answers");
    assert_eq!(exchange.response.map(|r| r.status), Some(200));
}

#[tokio::test]
async fn calls_are_listed_per_bsn_with_their_time() {
    let setup = setup().await;
    let before = setup.journal.now_us();
    verify(&setup, FOUND).await;
    verify(&setup, NOT_FOUND).await;
    verify(&setup, FOUND).await;
    let after = setup.journal.now_us();

    let found = setup.double.calls_for(FOUND);
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|c| (before..=after).contains(&c.at_us)));
    assert!(found[0].at_us <= found[1].at_us);
    assert_eq!(found[0].case_id.as_deref(), Some("case-999000007"));
    assert_eq!(found[0].lokaal_kenmerk.as_deref(), Some("k-999000007"));
    let asked = found[0].vraag.as_ref().expect("the Vraag was read");
    assert_eq!(asked.persoon.geslachtsnaam.as_deref(), Some("Putten"));

    let by_bsn = setup.double.calls_by_bsn();
    assert_eq!(by_bsn.keys().collect::<Vec<_>>(), vec![FOUND, NOT_FOUND]);
    assert_eq!(setup.double.calls().len(), 3);
}

#[tokio::test]
async fn other_methods_and_paths_get_faults_journaled_as_sbvz() {
    let setup = setup().await;
    let get = Outgoing::get(
        setup
            .double
            .endpoint(SbvzOperation::OpvragenVerifieren, SbvzVersion::Dec14),
        ExchangeKind::Sbvz,
    );
    let exchange = setup.client.send(get).await.expect("the double answers");
    assert_eq!(exchange.response.map(|r| r.status), Some(405));
    let elsewhere = Outgoing::get(
        format!("{}/elsewhere.asmx", setup.double.base_url()),
        ExchangeKind::Sbvz,
    );
    let exchange = setup
        .client
        .send(elsewhere)
        .await
        .expect("the double answers");
    assert_eq!(exchange.response.map(|r| r.status), Some(404));
    assert!(
        setup
            .journal
            .all()
            .iter()
            .all(|e| e.kind == ExchangeKind::Sbvz)
    );
}

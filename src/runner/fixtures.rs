//! Patient fixtures: a BgZ Bundle per patient under `fixtures/patients/<key>/bgz.json`,
//! with the facts a case needs about it (BSN, letter, referral request).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::fhir::BSN_SYSTEM;
use crate::fhir::store::{PatientScope, ResourceStore, identifiers, resource_key};
use crate::journal::hex;

/// The referral letter of a fixture.
#[derive(Debug, Clone)]
pub struct LetterFacts {
    /// `DocumentReference/{id}`.
    pub document_reference: String,
    /// `Binary/{id}`.
    pub binary: String,
    pub size: usize,
    pub sha256: String,
}

/// One patient's BgZ and the facts derived from it.
#[derive(Debug)]
pub struct PatientFixture {
    pub key: String,
    pub store: Arc<ResourceStore>,
    pub scope: PatientScope,
    pub letter: Option<LetterFacts>,
    /// `ReferralRequest/{id}`, the focus of the workflow Task.
    pub referral_request: Option<String>,
}

impl PatientFixture {
    /// Loads `fixtures/patients/<key>/bgz.json` below `root`.
    pub fn load(root: &Path, key: &str) -> Result<Self, String> {
        let path = root
            .join("fixtures")
            .join("patients")
            .join(key)
            .join("bgz.json");
        let store = ResourceStore::load_file(&path).map_err(|e| e.to_string())?;
        let shown = path.display();

        let mut patients = store.of_type("Patient");
        let patient = patients
            .next()
            .ok_or_else(|| format!("{shown}: the Bundle holds no Patient"))?;
        if patients.next().is_some() {
            return Err(format!("{shown}: the Bundle holds more than one Patient"));
        }
        let bsn = identifiers(patient)
            .find(|(system, _)| *system == BSN_SYSTEM)
            .map(|(_, value)| value.to_owned())
            .ok_or_else(|| format!("{shown}: the Patient has no BSN identifier"))?;
        crate::fhir::bsn::Bsn::parse(&bsn)
            .map_err(|e| format!("{shown}: the Patient's BSN is not valid: {e}"))?;
        let patient_ref = resource_key(patient).unwrap_or_default();
        drop(patients);

        let letter = store.of_type("DocumentReference").find_map(|doc| {
            let url = doc["content"][0]["attachment"]["url"].as_str()?;
            let binary = store.get(url)?;
            let bytes = STANDARD.decode(binary["content"].as_str()?).ok()?;
            Some(LetterFacts {
                document_reference: resource_key(doc)?,
                binary: url.to_owned(),
                size: bytes.len(),
                sha256: hex(&Sha256::digest(&bytes)),
            })
        });
        let referral_request = store
            .of_type("ReferralRequest")
            .next()
            .and_then(|r| resource_key(r));

        Ok(Self {
            key: key.to_owned(),
            store: Arc::new(store),
            scope: PatientScope { patient_ref, bsn },
            letter,
            referral_request,
        })
    }

    /// The Patient resource.
    pub fn patient(&self) -> Option<&serde_json::Value> {
        self.store.get(&self.scope.patient_ref).map(|r| r.as_ref())
    }
}

/// Fixtures loaded once per run, by key.
#[derive(Debug, Default)]
pub struct Fixtures {
    pub patients: BTreeMap<String, Arc<PatientFixture>>,
}

impl Fixtures {
    /// Loads every key once.
    pub fn load<'a>(root: &Path, keys: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut patients = BTreeMap::new();
        for key in keys {
            if !patients.contains_key(key) {
                patients.insert(key.to_owned(), Arc::new(PatientFixture::load(root, key)?));
            }
        }
        Ok(Self { patients })
    }
}

//! The one redaction point. Everything that leaves the harness for a report or a log passes
//! through a [`Redactor`]: BSNs, names, birth dates, addresses, telecoms, tokens, assertions,
//! authorization bases and letter contents are replaced by labels. Known values get stable
//! numbered labels (`[bsn-1]`), so evidence can still show that two values differ.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::fhir::BSN_SYSTEM;
use crate::fhir::bsn::Bsn;

/// OID form of the BSN system.
const BSN_OID: &str = "urn:oid:2.16.840.1.113883.2.4.6.3";
/// Form fields and JSON keys whose values are secrets.
const SECRET_KEYS: [&str; 6] = [
    "access_token",
    "refresh_token",
    "id_token",
    "assertion",
    "client_assertion",
    "authorization_base",
];

/// What kind of sensitive value a label stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sensitive {
    Bsn,
    Name,
    BirthDate,
    Address,
    Token,
    AuthorizationBase,
}

impl Sensitive {
    fn label(self) -> &'static str {
        match self {
            Sensitive::Bsn => "bsn",
            Sensitive::Name => "name",
            Sensitive::BirthDate => "birth-date",
            Sensitive::Address => "address",
            Sensitive::Token => "token",
            Sensitive::AuthorizationBase => "authorization-base",
        }
    }
}

#[derive(Debug, Default)]
struct Known {
    /// value -> label
    labels: BTreeMap<String, String>,
    counters: BTreeMap<Sensitive, usize>,
    /// One automaton over every known value and its percent-encoded form, rebuilt only
    /// after something new was learned; with it a text is scanned once, whatever the
    /// number of known values.
    matcher: Option<(aho_corasick::AhoCorasick, Vec<String>)>,
}

impl Known {
    fn matcher(&mut self) -> Option<&(aho_corasick::AhoCorasick, Vec<String>)> {
        if self.matcher.is_none() && !self.labels.is_empty() {
            let mut patterns = Vec::new();
            let mut labels = Vec::new();
            for (value, label) in &self.labels {
                let encoded = crate::fhir::search::encode(value);
                if encoded != *value {
                    patterns.push(encoded);
                    labels.push(label.clone());
                }
                patterns.push(value.clone());
                labels.push(label.clone());
            }
            let built = aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()?;
            self.matcher = Some((built, labels));
        }
        self.matcher.as_ref()
    }
}

/// Replaces sensitive values with labels.
#[derive(Debug)]
pub struct Redactor {
    enabled: bool,
    known: Mutex<Known>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new()
    }
}

impl Redactor {
    /// A redactor that redacts.
    pub fn new() -> Self {
        Self {
            enabled: true,
            known: Mutex::new(Known::default()),
        }
    }

    /// A redactor that passes everything through (local debugging; reports say so).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            known: Mutex::new(Known::default()),
        }
    }

    /// True unless redaction was switched off.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Remembers a sensitive value so that it is replaced wherever it appears.
    pub fn learn(&self, kind: Sensitive, value: &str) {
        let value = value.trim();
        // Very short values (initials, prefixes such as "de") would redact ordinary words.
        if value.chars().count() < 3 {
            return;
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.labels.contains_key(value) {
            return;
        }
        let counter = known.counters.entry(kind).or_default();
        *counter += 1;
        let label = format!("[{}-{}]", kind.label(), counter);
        known.labels.insert(value.to_owned(), label);
        known.matcher = None;
    }

    /// Learns every sensitive value a FHIR resource or a JSON answer holds: BSNs and secrets
    /// anywhere, names, birth dates, addresses and telecoms of patients (and their related
    /// persons) only, so that a GP practice named after its street stays readable.
    pub fn learn_json(&self, value: &Value) {
        self.learn_within(value, false);
    }

    fn learn_within(&self, value: &Value, patient_context: bool) {
        match value {
            Value::Object(map) => {
                let patient_context = match map.get("resourceType").and_then(Value::as_str) {
                    Some(rtype) => matches!(rtype, "Patient" | "RelatedPerson"),
                    None => patient_context,
                };
                if is_bsn_identifier(map)
                    && let Some(v) = map.get("value").and_then(Value::as_str)
                {
                    self.learn(Sensitive::Bsn, v);
                }
                for (key, child) in map {
                    match key.as_str() {
                        "birthDate" | "deceasedDateTime" if patient_context => {
                            // A date-time of death: its date is what texts show.
                            if let Some(date) = child.as_str().and_then(|d| d.get(..10)) {
                                for form in birth_date_forms(date) {
                                    self.learn(Sensitive::BirthDate, &form);
                                }
                            }
                        }
                        "name" if patient_context && is_human_name_list(child) => {
                            self.learn_strings(Sensitive::Name, child)
                        }
                        "address" | "telecom" if patient_context => {
                            self.learn_strings(Sensitive::Address, child)
                        }
                        k if SECRET_KEYS.contains(&k) => {
                            if let Some(s) = child.as_str() {
                                self.learn(Sensitive::Token, s);
                            }
                        }
                        _ => {}
                    }
                    if key == "input" {
                        self.learn_authorization_bases(child);
                    }
                    self.learn_within(child, patient_context);
                }
            }
            Value::Array(items) => items
                .iter()
                .for_each(|i| self.learn_within(i, patient_context)),
            _ => {}
        }
    }

    /// Learns the secret fields of a form body.
    pub fn learn_form(&self, body: &[u8]) {
        for (name, value) in url::form_urlencoded::parse(body) {
            if name == "authorization_base" {
                self.learn(Sensitive::AuthorizationBase, &value);
            } else if SECRET_KEYS.contains(&name.as_ref()) {
                self.learn(Sensitive::Token, &value);
            }
        }
    }

    fn learn_strings(&self, kind: Sensitive, value: &Value) {
        match value {
            Value::String(s) if kind == Sensitive::Name => self.learn_name(s),
            Value::String(s) => {
                self.learn(kind, s);
                // Also each word, so "Jansen" is caught inside other texts. Short numbers
                // (house numbers, postcode digits) are left out: they would cut through
                // codes such as SNOMED ids; the whole address is still learned.
                for word in s.split_whitespace() {
                    let word = word.trim_matches(|c: char| !c.is_alphanumeric());
                    // Single short words are prefixes such as "van" or "der" or house
                    // numbers: they would cut through ordinary text and codes.
                    let short_number = word.len() < 6 && word.chars().all(|c| c.is_ascii_digit());
                    if !short_number && word.chars().count() >= 4 {
                        self.learn(kind, word);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| self.learn_strings(kind, i)),
            Value::Object(map) => {
                // Names keep their parts in extensions (own name, partner name); their
                // `url` is no name.
                let skipped: &[&str] = if kind == Sensitive::Name {
                    &["use", "system", "type", "url"]
                } else {
                    &["use", "system", "type", "extension"]
                };
                for (key, child) in map {
                    if !skipped.contains(&key.as_str()) {
                        self.learn_strings(kind, child);
                    }
                }
            }
            _ => {}
        }
    }

    fn learn_authorization_bases(&self, inputs: &Value) {
        for input in inputs.as_array().into_iter().flatten() {
            let is_base = input["type"]["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["code"] == "authorization-base");
            if is_base && let Some(v) = input["valueString"].as_str() {
                self.learn(Sensitive::AuthorizationBase, v);
            }
        }
    }

    /// The label of a learned value.
    fn label_of(&self, value: &str) -> Option<String> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.labels.get(value).cloned()
    }

    /// Learns the personal data an SBV-Z message (XML) carries in its elements: names,
    /// birth and death dates, address lines. Element names are matched without a prefix.
    pub fn learn_sbvz_xml(&self, xml: &str) {
        for (element, kind) in SBVZ_PERSONAL_ELEMENTS {
            for value in element_texts(xml, element) {
                if kind == Sensitive::Name {
                    self.learn_name(&value);
                } else {
                    self.learn(kind, &value);
                }
            }
        }
    }

    /// Learns a name and each part of it that identifies someone.
    pub fn learn_name(&self, name: &str) {
        // A prefix alone ("van", an own-prefix extension) would cut through words.
        if NAME_PREFIXES
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name.trim()))
        {
            return;
        }
        for part in family_name_parts(name) {
            self.learn(Sensitive::Name, &part);
        }
    }

    /// Redacts free text: known values first (longest first), then patterns that catch
    /// what was never learned: bearer tokens, JWTs, and 9-digit numbers passing the 11-proef.
    pub fn text(&self, text: &str) -> String {
        if !self.enabled {
            return text.to_owned();
        }
        redact_bearer(&redact_jwts(&redact_bsn_like(&self.known_values(text))))
    }

    /// Replaces the learned values only.
    fn known_values(&self, text: &str) -> String {
        if !self.enabled {
            return text.to_owned();
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        match known.matcher() {
            Some((matcher, labels)) => matcher.replace_all(text, labels),
            None => text.to_owned(),
        }
    }

    /// Redacts a JSON value: structure-aware rules, then [`Self::text`] on every string.
    pub fn json(&self, value: &Value) -> Value {
        if !self.enabled {
            return value.clone();
        }
        match value {
            Value::Object(map) => {
                let is_binary = map.get("resourceType").and_then(Value::as_str) == Some("Binary");
                let mut out = Map::new();
                for (key, child) in map {
                    let redacted = match key.as_str() {
                        "birthDate" => Value::String("[birth-date]".to_owned()),
                        "name" if is_human_name_list(child) => {
                            serde_json::json!([{ "text": "[name]" }])
                        }
                        "address" => serde_json::json!([{ "text": "[address]" }]),
                        "telecom" => serde_json::json!([{ "value": "[telecom]" }]),
                        "content" if is_binary => {
                            let size = child.as_str().map(|s| s.len() * 3 / 4).unwrap_or(0);
                            Value::String(format!("[letter content, about {size} bytes]"))
                        }
                        "value" if is_bsn_identifier(map) => {
                            Value::String(self.label_or(child, "[bsn]"))
                        }
                        k if SECRET_KEYS.contains(&k) => {
                            Value::String(self.label_or(child, "[secret]"))
                        }
                        // A code of a code system (SNOMED, LOINC, …) is no BSN, even when it
                        // passes the 11-proef; learned values are still replaced.
                        "code" if map.contains_key("system") => match child.as_str() {
                            Some(code) => Value::String(self.known_values(code)),
                            None => self.json(child),
                        },
                        _ => self.json(child),
                    };
                    out.insert(key.clone(), redacted);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|i| self.json(i)).collect()),
            Value::String(s) => Value::String(self.text(s)),
            other => other.clone(),
        }
    }

    fn label_or(&self, value: &Value, fallback: &str) -> String {
        let redacted = value.as_str().map(|s| self.text(s));
        match (value.as_str(), redacted) {
            (Some(original), Some(r)) if r != original => r,
            _ => fallback.to_owned(),
        }
    }

    /// Redacts a form body and shows it decoded, one field a line.
    pub fn form(&self, body: &[u8]) -> String {
        url::form_urlencoded::parse(body)
            .map(|(name, value)| {
                let shown = if self.enabled && SECRET_KEYS.contains(&name.as_ref()) {
                    let redacted = self.text(&value);
                    if redacted == value {
                        "[secret]".to_owned()
                    } else {
                        redacted
                    }
                } else {
                    self.text(&value)
                };
                format!("{name}={shown}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Redacts a header value; `Authorization` and cookies never show their values.
    pub fn header(&self, name: &str, value: &str) -> String {
        if !self.enabled {
            return value.to_owned();
        }
        let lower = name.to_ascii_lowercase();
        if lower == "authorization" {
            let mut parts = value.splitn(2, char::is_whitespace);
            let scheme = parts.next().unwrap_or("");
            let credential = parts.next().unwrap_or("").trim();
            let label = self
                .label_of(credential)
                .unwrap_or_else(|| "[token]".to_owned());
            return format!("{scheme} {label}");
        }
        if lower == "cookie" || lower == "set-cookie" {
            return "[redacted]".to_owned();
        }
        self.text(value)
    }
}

/// The ways a FHIR date is written in logs and letters: as given, without dashes, and in
/// the Dutch day-month-year order with a dash, slash or dot.
pub fn birth_date_forms(date: &str) -> Vec<String> {
    let mut forms = vec![date.to_owned()];
    let parts: Vec<&str> = date.split('-').collect();
    if let [year, month, day] = parts[..]
        && year.len() == 4
        && month.len() == 2
        && day.len() == 2
    {
        forms.push(format!("{year}{month}{day}"));
        for separator in ['-', '/', '.'] {
            forms.push(format!("{day}{separator}{month}{separator}{year}"));
        }
    }
    forms
}

/// Name prefixes (voorvoegsels) that are no name by themselves.
const NAME_PREFIXES: [&str; 14] = [
    "van", "de", "der", "den", "het", "ten", "ter", "te", "in", "op", "'t", "la", "le", "du",
];

/// What of a family name identifies someone: the whole name and each of its words that is
/// no prefix ("van Lindeboom": also "Lindeboom"; "Jansen-de Vries": also "Jansen",
/// "Vries").
pub fn family_name_parts(family: &str) -> Vec<String> {
    let mut parts = vec![family.trim().to_owned()];
    for word in family.split(|c: char| c.is_whitespace() || c == '-') {
        let word = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'');
        let is_prefix = NAME_PREFIXES.iter().any(|p| p.eq_ignore_ascii_case(word));
        if word.chars().count() >= 2 && !is_prefix && !parts.iter().any(|p| p == word) {
            parts.push(word.to_owned());
        }
    }
    parts.retain(|p| !p.is_empty());
    parts
}

fn is_bsn_identifier(map: &Map<String, Value>) -> bool {
    matches!(
        map.get("system").and_then(Value::as_str),
        Some(BSN_SYSTEM | BSN_OID)
    )
}

fn is_human_name_list(value: &Value) -> bool {
    let looks_human = |v: &Value| {
        v.get("family").is_some() || v.get("given").is_some() || v.get("text").is_some()
    };
    match value {
        Value::Array(items) => items.iter().any(looks_human),
        Value::Object(_) => looks_human(value),
        _ => false,
    }
}

/// Replaces runs of exactly nine digits that pass the 11-proef.
pub(crate) fn redact_bsn_like(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let run = &text[start..i];
            // A fraction of a second ("15:48:22.123456789") is no BSN, nor are digits
            // inside a word (a UUID's "7b123456782c"); a percent-escape ("%7C") before
            // them is no word.
            let before = &text[..start];
            let fraction = before
                .strip_suffix('.')
                .is_some_and(|b| b.ends_with(|c: char| c.is_ascii_digit()));
            let escaped = before.len() >= 3
                && before.is_char_boundary(before.len() - 3)
                && before[before.len() - 3..].starts_with('%');
            let in_word = (before.ends_with(|c: char| c.is_alphabetic()) && !escaped)
                || text[i..].starts_with(|c: char| c.is_alphabetic());
            if run.len() == 9 && !fraction && !in_word && Bsn::parse(run).is_ok() {
                out.push_str("[bsn]");
            } else {
                out.push_str(run);
            }
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Replaces compact JWS values (`eyJ….….…`).
fn redact_jwts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("eyJ") {
        out.push_str(&rest[..start]);
        let candidate = &rest[start..];
        let end = candidate
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(candidate.len());
        let token = &candidate[..end];
        if token.matches('.').count() == 2 {
            out.push_str("[jwt]");
        } else {
            out.push_str(token);
        }
        rest = &candidate[end..];
    }
    out.push_str(rest);
    out
}

/// Words of letters only, shorter than this, after `Bearer ` are taken for words of a
/// message ("Bearer token"), not credentials: access tokens are long random strings.
const PLAIN_WORD_LENGTH: usize = 12;

/// The elements of SBV-Z messages that hold personal data, and what they hold.
/// House numbers are left out: short numbers would cut through codes and counts.
const SBVZ_PERSONAL_ELEMENTS: [(&str, Sensitive); 9] = [
    ("Geslachtsnaam", Sensitive::Name),
    ("Voornamen", Sensitive::Name),
    ("Voorletters", Sensitive::Name),
    ("Geboortedatum", Sensitive::BirthDate),
    ("DatumOverlijden", Sensitive::BirthDate),
    ("Straatnaam", Sensitive::Address),
    ("Woonplaatsnaam", Sensitive::Address),
    ("Postcode", Sensitive::Address),
    ("Locatieomschrijving", Sensitive::Address),
];

/// The texts of every `element` in `xml`, with or without a namespace prefix. A lenient
/// scan rather than `protocol::soap::parse`: a message that the strict parser refuses is
/// shown in reports too, and its names must not be.
fn element_texts(xml: &str, element: &str) -> Vec<String> {
    let mut texts = Vec::new();
    let mut rest = xml;
    while let Some(at) = rest.find(element) {
        let before = &rest[..at];
        let after = &rest[at + element.len()..];
        rest = after;
        // An opening tag: `<Element` or `<prefix:Element`, then `>` or attributes.
        let opens = before.rsplit_once('<').is_some_and(|(_, name)| {
            name.is_empty() || (name.ends_with(':') && !name.contains(['/', ' ', '>']))
        });
        if !opens || !after.starts_with(['>', ' ']) {
            continue;
        }
        let Some(close) = after.find('>') else { break };
        let content = &after[close + 1..];
        let text = content.split('<').next().unwrap_or("").trim();
        if !text.is_empty() && !after[..close].ends_with('/') {
            texts.push(text.to_owned());
        }
    }
    texts
}

/// Replaces the credential after `Bearer `.
fn redact_bearer(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("Bearer ") {
        out.push_str(&rest[..start + 7]);
        let after = &rest[start + 7..];
        let end = after
            .find(|c: char| c.is_whitespace() || c == '"' || c == ',')
            .unwrap_or(after.len());
        let word = &after[..end];
        // "Bearer token is required" names no credential, nor does an auth-param such as
        // `error="invalid_token"`, nor a label put there before.
        let plain_word = word.chars().all(char::is_alphabetic) && word.len() < PLAIN_WORD_LENGTH;
        let auth_param = word.trim_end_matches('=').contains('=')
            || (word.ends_with('=') && after[end..].starts_with('"'));
        if word.is_empty() || plain_word || auth_param || word.starts_with('[') {
            out.push_str(word);
        } else {
            out.push_str("[token]");
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patient() -> Value {
        json!({"resourceType":"Patient","identifier":[{"system":BSN_SYSTEM,"value":"999000019"}],
               "name":[{"family":"Jansen-de Vries","given":["Marieke"]}],"birthDate":"1950-03-01",
               "address":[{"line":["Dorpsstraat 12"],"postalCode":"1234 AB","city":"Ergens"}]})
    }

    #[test]
    fn learned_values_disappear_from_any_text_with_stable_labels() {
        let redactor = Redactor::new();
        redactor.learn_json(&patient());
        let text = "Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn%7C999000019 Marieke Jansen-de Vries 19500301";
        let redacted = redactor.text(text);
        for secret in ["999000019", "Marieke", "Jansen", "19500301"] {
            assert!(!redacted.contains(secret), "{redacted}");
        }
        assert!(redacted.contains("[bsn-1]"));
        assert_eq!(
            redactor.text("999000019"),
            redacted
                .split("%7C")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
        );
    }

    #[test]
    fn structure_rules_catch_unlearned_patients() {
        let redactor = Redactor::new();
        let out = redactor.json(&patient()).to_string();
        for secret in ["999000019", "Marieke", "1950-03-01", "Dorpsstraat"] {
            assert!(!out.contains(secret), "{out}");
        }
    }

    #[test]
    fn tokens_jwts_and_bsn_like_numbers_are_caught_by_pattern() {
        let redactor = Redactor::new();
        let text = "Authorization: Bearer abc.def-123 then eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0. and 999000019 but not 123456789";
        let out = redactor.text(text);
        assert!(!out.contains("abc.def-123"));
        assert!(!out.contains("eyJhbGci"));
        assert!(!out.contains("999000019"));
        assert!(
            out.contains("123456789"),
            "a number failing the 11-proef is not a BSN: {out}"
        );
    }

    #[test]
    fn secrets_in_forms_and_headers_are_hidden() {
        let redactor = Redactor::new();
        let form = b"grant_type=x&authorization_base=ab-123456&client_assertion=eyJa.eyJb.c";
        redactor.learn_form(form);
        let shown = redactor.form(form);
        assert!(
            !shown.contains("ab-123456") && !shown.contains("eyJa"),
            "{shown}"
        );
        assert_eq!(
            redactor.header("Authorization", "Bearer xyz"),
            "Bearer [token]"
        );
    }

    #[test]
    fn house_numbers_do_not_cut_through_codes() {
        let redactor = Redactor::new();
        redactor.learn_json(&json!({"resourceType":"Patient","address":[{"line":["Dorpsstraat 1000"],"postalCode":"1234 AB"}]}));
        assert_eq!(
            redactor.text("http://snomed.info/sct|11291000146105"),
            "http://snomed.info/sct|11291000146105"
        );
        assert!(!redactor.text("Dorpsstraat 1000").contains("Dorpsstraat"));
    }

    #[test]
    fn name_prefixes_and_other_peoples_addresses_stay_readable() {
        let redactor = Redactor::new();
        redactor.learn_json(&json!({"resourceType":"Patient","name":[{"family":"van Lindeboom"}]}));
        redactor.learn_json(
            &json!({"resourceType":"Organization","address":[{"line":["Wilgenhoek 2"]}]}),
        );
        assert_eq!(
            redactor.text("AdvanceDirective at Wilgenhoek"),
            "AdvanceDirective at Wilgenhoek"
        );
        assert!(!redactor.text("Mr van Lindeboom").contains("Lindeboom"));
    }

    #[test]
    fn binary_content_is_never_shown() {
        let redactor = Redactor::new();
        let out = redactor.json(&json!({"resourceType":"Binary","contentType":"application/pdf","content":"JVBERi0xLjQK"}));
        assert!(
            out["content"]
                .as_str()
                .unwrap()
                .starts_with("[letter content")
        );
    }

    #[test]
    fn birth_dates_are_known_in_the_ways_they_are_written() {
        assert_eq!(
            birth_date_forms("1958-11-14"),
            [
                "1958-11-14",
                "19581114",
                "14-11-1958",
                "14/11/1958",
                "14.11.1958"
            ]
        );
        assert_eq!(birth_date_forms("1958"), ["1958"]);
        let redactor = Redactor::new();
        redactor.learn_json(&patient());
        let shown = redactor.text("geboren 01-03-1950 (19500301)");
        assert!(!shown.contains("1950"), "{shown}");
    }

    #[test]
    fn family_names_are_known_with_and_without_their_prefixes() {
        assert_eq!(
            family_name_parts("van Lindeboom"),
            ["van Lindeboom", "Lindeboom"]
        );
        assert_eq!(
            family_name_parts("Jansen-de Vries"),
            ["Jansen-de Vries", "Jansen", "Vries"]
        );
        assert_eq!(family_name_parts("Bos"), ["Bos"]);
    }

    #[test]
    fn sbvz_messages_teach_their_personal_data() {
        let redactor = Redactor::new();
        redactor.learn_sbvz_xml(
            "<s:Body><Persoon><ns1:Geslachtsnaam Afwijkend=\"false\">Zwanenburg</ns1:Geslachtsnaam>\
             <Voornamen>Femke</Voornamen><Geboortedatum/><Postcode>1234AB</Postcode></Persoon>\
             <Overlijden><DatumOverlijden>20261101</DatumOverlijden></Overlijden></s:Body>",
        );
        let shown = redactor.text("Zwanenburg Femke 1234AB died 20261101; GeslachtsnaamX");
        for secret in ["Zwanenburg", "Femke", "1234AB", "20261101"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("GeslachtsnaamX"), "{shown}");
    }

    #[test]
    fn name_parts_in_double_names_and_extensions_are_learned() {
        let redactor = Redactor::new();
        redactor.learn_json(&json!({"resourceType":"Patient","name":[{"family":"Zwanenburg-de Kroon",
            "_family":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/humanname-own-name","valueString":"Zwanenburg"}]}}]}));
        redactor.learn_json(&json!({"resourceType":"Patient","name":[{"family":"van Dijk",
            "_family":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/humanname-own-prefix","valueString":"van"}]}}]}));
        let shown =
            redactor.text("Kroon and Zwanenburg; humanname-own-name stays; AdvanceDirective");
        assert!(shown.contains("AdvanceDirective"), "{shown}");
        assert!(
            !shown.contains("Kroon") && !shown.contains("Zwanenburg"),
            "{shown}"
        );
        assert!(shown.contains("humanname-own-name"), "{shown}");
    }

    #[test]
    fn codes_times_uuids_and_words_after_bearer_are_not_taken_for_secrets() {
        let redactor = Redactor::new();
        // 123456782 passes the 11-proef.
        let coding = json!({"system":"http://snomed.info/sct","code":"123456782"});
        assert_eq!(redactor.json(&coding)["code"], "123456782");
        for text in [
            "at 2026-12-04T15:48:22.123456782Z",
            "id 30e173e5-a674-42e2-8c08-7b123456782c",
            "a valid Bearer token is required",
        ] {
            assert_eq!(redactor.text(text), text);
        }
        assert_eq!(redactor.text("bsn 123456782"), "bsn [bsn]");
        assert_eq!(redactor.text("bsn%7C123456782&x"), "bsn%7C[bsn]&x");
        assert_eq!(
            redactor.text("Authorization: Bearer abcdefghijklmnop"),
            "Authorization: Bearer [token]"
        );
    }

    #[test]
    fn authorization_headers_show_the_learned_token_label() {
        let redactor = Redactor::new();
        redactor.learn(Sensitive::Token, "abcdefghijklmnopqrstuvwxyz");
        let learned = redactor.header("Authorization", "Bearer abcdefghijklmnopqrstuvwxyz");
        assert!(learned.starts_with("Bearer [token-"), "{learned}");
        assert_eq!(
            redactor.header("authorization", "Bearer other"),
            "Bearer [token]"
        );
    }

    #[test]
    fn a_disabled_redactor_passes_everything() {
        let redactor = Redactor::disabled();
        redactor.learn_json(&patient());
        assert_eq!(redactor.text("999000019"), "999000019");
    }
}

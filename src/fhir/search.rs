//! Search URLs: parsing a relative or absolute FHIR search into its resource type, operation
//! and decoded parameters, and comparing two searches after percent-decoding.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// One FHIR search or read, split into its parts. Parameters are percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchUrl {
    /// The resource type, e.g. `Observation`.
    pub resource_type: String,
    /// A type-level operation such as `$lastn`, without further path segments.
    pub operation: Option<String>,
    /// A logical id when the URL is a read (`Type/id`).
    pub id: Option<String>,
    /// Decoded `name=value` pairs in the order given.
    pub params: Vec<(String, String)>,
}

/// Why a search URL could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchUrlError {
    #[error("the search URL is empty")]
    Empty,
    #[error("`{0}` is not a FHIR resource type (it must start with an upper-case letter)")]
    BadType(String),
    #[error("the path `{0}` has more segments than `Type`, `Type/id` or `Type/$operation`")]
    TooDeep(String),
    #[error("the absolute URL `{url}` is not below the FHIR base `{base}`")]
    ForeignBase { url: String, base: String },
    #[error("a parameter is not valid UTF-8 after percent-decoding")]
    NotUtf8,
}

/// Parameters that paging adds to a `next` link; they never count as part of the search.
pub const PAGING_PARAMS: [&str; 2] = ["_getpagesoffset", "_count_page"];

impl SearchUrl {
    /// Parses `value` as a search or read relative to `base`. An absolute URL must start with
    /// `base`; a relative one is taken as is.
    pub fn parse(value: &str, base: &str) -> Result<Self, SearchUrlError> {
        let relative = relative_to_base(value, base)?;
        Self::parse_relative(relative)
    }

    /// Parses a relative search `Type[/id|/$op][?query]`.
    pub fn parse_relative(relative: &str) -> Result<Self, SearchUrlError> {
        let relative = relative.trim_start_matches('/');
        if relative.is_empty() {
            return Err(SearchUrlError::Empty);
        }
        let (path, query) = match relative.split_once('?') {
            Some((path, query)) => (path, query),
            None => (relative, ""),
        };

        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let resource_type = segments.next().ok_or(SearchUrlError::Empty)?.to_owned();
        if !resource_type.starts_with(|c: char| c.is_ascii_uppercase())
            || !resource_type.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(SearchUrlError::BadType(resource_type));
        }
        let (mut operation, mut id) = (None, None);
        if let Some(second) = segments.next() {
            let second = decode(second)?;
            if second.starts_with('$') {
                operation = Some(second);
            } else {
                id = Some(second);
            }
        }
        if segments.next().is_some() {
            return Err(SearchUrlError::TooDeep(path.to_owned()));
        }

        Ok(Self {
            resource_type,
            operation,
            id,
            params: parse_query(query)?,
        })
    }

    /// The parameters without the ones paging adds.
    pub fn search_params(&self) -> Vec<(String, String)> {
        self.params
            .iter()
            .filter(|(name, _)| !PAGING_PARAMS.contains(&name.as_str()))
            .cloned()
            .collect()
    }

    /// True when both name the same search: same type, operation and id, and the same
    /// decoded parameters in any order (paging parameters ignored).
    pub fn same_search(&self, other: &SearchUrl) -> bool {
        let mut mine = self.search_params();
        let mut theirs = other.search_params();
        mine.sort();
        theirs.sort();
        self.resource_type == other.resource_type
            && self.operation == other.operation
            && self.id == other.id
            && mine == theirs
    }

    /// All values of one parameter.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The relative URL with every parameter percent-encoded as on the wire.
    pub fn to_relative(&self) -> String {
        let mut out = self.resource_type.clone();
        if let Some(op) = &self.operation {
            out.push('/');
            out.push_str(op);
        }
        if let Some(id) = &self.id {
            out.push('/');
            out.push_str(&encode(id));
        }
        if !self.params.is_empty() {
            out.push('?');
            let pairs: Vec<String> = self
                .params
                .iter()
                .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
                .collect();
            out.push_str(&pairs.join("&"));
        }
        out
    }
}

/// Characters encoded in a query component: reserved and unsafe ones, but `/` and `,`
/// stay readable (RFC 3986 allows both in a query).
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b':')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b']')
    .add(b'|')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Percent-encodes one query name or value.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, QUERY_VALUE).to_string()
}

fn decode(text: &str) -> Result<String, SearchUrlError> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| SearchUrlError::NotUtf8)
}

/// Splits and decodes a query string. `+` is kept literally (RFC 3986, not HTML forms), so
/// a time offset such as `+01:00` survives.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, SearchUrlError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

fn relative_to_base<'a>(value: &'a str, base: &str) -> Result<&'a str, SearchUrlError> {
    let is_absolute = value.starts_with("http://") || value.starts_with("https://");
    if !is_absolute {
        return Ok(value);
    }
    let base = base.trim_end_matches('/');
    match value.strip_prefix(base) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => Ok(rest),
        _ => Err(SearchUrlError::ForeignBase {
            url: value.to_owned(),
            base: base.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_catalogue_query_splits_into_type_and_decoded_params() {
        let url = SearchUrl::parse_relative(
            "Observation?patient.identifier=http%3A%2F%2Ffhir.nl%2Ffhir%2FNamingSystem%2Fbsn%7C999000019&code=http://loinc.org|29463-7",
        )
        .unwrap();
        assert_eq!(url.resource_type, "Observation");
        assert_eq!(
            url.params,
            vec![
                (
                    "patient.identifier".to_owned(),
                    "http://fhir.nl/fhir/NamingSystem/bsn|999000019".to_owned()
                ),
                ("code".to_owned(), "http://loinc.org|29463-7".to_owned()),
            ]
        );
    }

    #[test]
    fn lastn_is_an_operation_and_a_read_has_an_id() {
        let op = SearchUrl::parse_relative("Observation/$lastn?code=x").unwrap();
        assert_eq!(op.operation.as_deref(), Some("$lastn"));
        let read = SearchUrl::parse_relative("DocumentReference/doc-1").unwrap();
        assert_eq!(read.id.as_deref(), Some("doc-1"));
    }

    #[test]
    fn absolute_urls_must_sit_below_the_base() {
        let base = "http://127.0.0.1:8080/fhir";
        let ok = SearchUrl::parse("http://127.0.0.1:8080/fhir/Condition?x=1", base).unwrap();
        assert_eq!(ok.resource_type, "Condition");
        let err = SearchUrl::parse("http://127.0.0.1:8080/other/Condition", base).unwrap_err();
        assert!(matches!(err, SearchUrlError::ForeignBase { .. }));
    }

    #[test]
    fn encoded_and_plain_forms_are_the_same_search_in_any_order() {
        let a = SearchUrl::parse_relative("Flag?a=1&b=x%7Cy").unwrap();
        let b = SearchUrl::parse_relative("Flag?b=x|y&a=1&_getpagesoffset=3").unwrap();
        assert!(a.same_search(&b));
        let c = SearchUrl::parse_relative("Flag?b=x|z&a=1").unwrap();
        assert!(!a.same_search(&c));
    }

    #[test]
    fn plus_is_kept_literally() {
        let url = SearchUrl::parse_relative("Observation?date=2020-01-01T10:00:00+01:00").unwrap();
        assert_eq!(url.values("date").next(), Some("2020-01-01T10:00:00+01:00"));
    }

    #[test]
    fn bad_types_and_deep_paths_are_errors() {
        assert!(matches!(
            SearchUrl::parse_relative("observation?x=1"),
            Err(SearchUrlError::BadType(_))
        ));
        assert!(matches!(
            SearchUrl::parse_relative("Patient/1/_history/2"),
            Err(SearchUrlError::TooDeep(_))
        ));
        assert_eq!(SearchUrl::parse_relative(""), Err(SearchUrlError::Empty));
    }

    proptest! {
        #[test]
        fn encoding_round_trips(name in "[a-z_.:-]{1,12}", value in "\\PC{0,30}") {
            let url = SearchUrl {
                resource_type: "Condition".to_owned(),
                operation: None,
                id: None,
                params: vec![(name, value)],
            };
            let parsed = SearchUrl::parse_relative(&url.to_relative()).unwrap();
            prop_assert_eq!(parsed, url);
        }

        #[test]
        fn parsing_never_panics(text in "\\PC{0,60}") {
            let _ = SearchUrl::parse(&text, "http://127.0.0.1/fhir");
        }
    }
}

//! SOAP 1.1 framing for the SBV-Z exchange (protocol.md §9): writing envelopes and Faults, and
//! a hardened reader that turns a peer's bytes into a small element tree. The reader refuses
//! document type declarations (SOAP 1.1 forbids them, so no entity is ever defined, let alone
//! expanded), bounds size, nesting and element count, and reports every problem as an error,
//! never a panic. It is not a general XML library: no DTDs, no encodings but UTF-8.

use std::borrow::Cow;

use quick_xml::NsReader;
use quick_xml::XmlVersion;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::ResolveResult;

/// Namespace of the SOAP 1.1 envelope.
pub const ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// Namespace of the SOAP 1.2 envelope, recognised only to answer `VersionMismatch`.
pub const SOAP12_ENVELOPE_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
/// Media type of a SOAP 1.1 message, requests and answers alike.
pub const CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// Bounds on what the reader accepts from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmlLimits {
    /// Largest message in bytes.
    pub max_bytes: usize,
    /// Deepest element nesting; the root is depth 1.
    pub max_depth: usize,
    /// Most elements in one message.
    pub max_elements: usize,
}

impl Default for XmlLimits {
    /// Generous for SBV-Z messages, which are a few kilobytes with a nesting of about seven.
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_depth: 32,
            max_elements: 4096,
        }
    }
}

/// Why bytes from a peer are not a usable SOAP 1.1 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoapError {
    #[error("the message has {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("elements nest deeper than the limit of {limit}, near byte {position}")]
    TooDeep { limit: usize, position: u64 },
    #[error("the message has more than the limit of {limit} elements")]
    TooManyElements { limit: usize },
    #[error("a document type declaration at byte {position}; SOAP 1.1 messages must not have one")]
    Doctype { position: u64 },
    #[error("a processing instruction at byte {position}; SOAP 1.1 messages must not have one")]
    ProcessingInstruction { position: u64 },
    #[error("the reference &{name}; near byte {position} is not a predefined XML entity")]
    UnknownEntity { name: String, position: u64 },
    #[error("the message declares encoding {found}; expected UTF-8")]
    Encoding { found: String },
    #[error("malformed XML near byte {position}: {reason}")]
    Malformed { position: u64, reason: String },
    #[error("the message ended before its root element was closed")]
    Truncated,
    #[error("the message has no root element")]
    NoRoot,
    #[error("content after the root element, near byte {position}")]
    TrailingContent { position: u64 },
    #[error("the root element is {found}, expected a SOAP 1.1 Envelope")]
    NotEnvelope { found: String },
    #[error("the envelope is SOAP 1.2; expected SOAP 1.1 ({ENVELOPE_NS})")]
    VersionMismatch,
    #[error("the envelope has no Body")]
    NoBody,
    #[error("the SOAP Body is empty")]
    EmptyBody,
}

/// One element of a parsed message: its expanded name, its attributes by local name (namespace
/// declarations left out), its character data, and its child elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Element {
    pub namespace: Option<String>,
    pub name: String,
    pub attributes: Vec<(String, String)>,
    /// All character data directly inside the element, references resolved.
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// Whether the element has this namespace and local name.
    pub fn is(&self, namespace: &str, name: &str) -> bool {
        self.name == name && self.namespace.as_deref() == Some(namespace)
    }

    /// `{namespace}name`, for messages.
    pub fn expanded_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{{{ns}}}{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The first child with this namespace and local name.
    pub fn child(&self, namespace: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(namespace, name))
    }

    /// Every child with this namespace and local name.
    pub fn children_named<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.is(namespace, name))
    }

    /// The character data with surrounding whitespace removed.
    pub fn trimmed_text(&self) -> &str {
        self.text.trim()
    }

    /// The trimmed text of the first such child, if that child exists.
    pub fn child_text(&self, namespace: &str, name: &str) -> Option<&str> {
        self.child(namespace, name).map(Element::trimmed_text)
    }

    /// An attribute's value by local name.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a whole message into its root element within `limits`.
pub(crate) fn parse(bytes: &[u8], limits: &XmlLimits) -> Result<Element, SoapError> {
    if bytes.len() > limits.max_bytes {
        return Err(SoapError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let mut reader = NsReader::from_reader(bytes);
    let mut tree = TreeBuilder::new(limits);

    loop {
        let position = reader.buffer_position();
        let (namespace, event) = match reader.read_resolved_event() {
            Ok((resolved, event)) => (resolved_namespace(resolved, position)?, event),
            Err(error) => return Err(malformed(position, &error)),
        };
        match event {
            Event::Start(start) => {
                let element = tree.begin(namespace, &start, position)?;
                tree.open.push(element);
            }
            Event::Empty(start) => {
                let element = tree.begin(namespace, &start, position)?;
                tree.attach(element);
            }
            Event::End(_) => {
                let Some(element) = tree.open.pop() else {
                    return Err(SoapError::Malformed {
                        position,
                        reason: "an end tag without a start tag".to_owned(),
                    });
                };
                tree.attach(element);
            }
            Event::Text(text) => {
                let text = text
                    .xml10_content()
                    .map_err(|e| malformed(position, &e.into()))?;
                tree.add_text(&text, position)?;
            }
            Event::CData(data) => {
                let data = data
                    .xml10_content()
                    .map_err(|e| malformed(position, &e.into()))?;
                tree.add_text(&data, position)?;
            }
            Event::GeneralRef(reference) => {
                let resolved = resolve_reference(&reference, position)?;
                tree.add_text(&resolved, position)?;
            }
            Event::Decl(declaration) => check_encoding(&declaration)?,
            Event::DocType(_) => return Err(SoapError::Doctype { position }),
            Event::PI(_) => return Err(SoapError::ProcessingInstruction { position }),
            Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    tree.finish()
}

/// The elements being read: the chain of open ones and, once closed, the root.
struct TreeBuilder<'l> {
    limits: &'l XmlLimits,
    open: Vec<Element>,
    root: Option<Element>,
    elements: usize,
}

impl<'l> TreeBuilder<'l> {
    fn new(limits: &'l XmlLimits) -> Self {
        Self {
            limits,
            open: Vec::new(),
            root: None,
            elements: 0,
        }
    }

    /// A new element from its start tag, within the limits and only inside the root.
    fn begin(
        &mut self,
        namespace: Option<String>,
        start: &BytesStart<'_>,
        position: u64,
    ) -> Result<Element, SoapError> {
        if self.root.is_some() {
            return Err(SoapError::TrailingContent { position });
        }
        if self.elements >= self.limits.max_elements {
            return Err(SoapError::TooManyElements {
                limit: self.limits.max_elements,
            });
        }
        if self.open.len() >= self.limits.max_depth {
            return Err(SoapError::TooDeep {
                limit: self.limits.max_depth,
                position,
            });
        }
        self.elements += 1;
        new_element(namespace, start, position)
    }

    /// Hangs a finished element under its parent, or makes it the root.
    fn attach(&mut self, element: Element) {
        match self.open.last_mut() {
            Some(parent) => parent.children.push(element),
            None => self.root = Some(element),
        }
    }

    /// Adds character data to the open element; outside the root only whitespace may appear.
    fn add_text(&mut self, text: &str, position: u64) -> Result<(), SoapError> {
        match self.open.last_mut() {
            Some(element) => {
                element.text.push_str(text);
                Ok(())
            }
            None if text.trim().is_empty() => Ok(()),
            None => Err(SoapError::Malformed {
                position,
                reason: "character data outside the root element".to_owned(),
            }),
        }
    }

    fn finish(self) -> Result<Element, SoapError> {
        if !self.open.is_empty() {
            return Err(SoapError::Truncated);
        }
        self.root.ok_or(SoapError::NoRoot)
    }
}

fn resolved_namespace(
    resolved: ResolveResult<'_>,
    position: u64,
) -> Result<Option<String>, SoapError> {
    match resolved {
        ResolveResult::Bound(ns) => Ok(Some(String::from_utf8_lossy(ns.0).into_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(prefix) => Err(SoapError::Malformed {
            position,
            reason: format!(
                "the prefix {} is not declared",
                String::from_utf8_lossy(&prefix)
            ),
        }),
    }
}

fn new_element(
    namespace: Option<String>,
    start: &BytesStart<'_>,
    position: u64,
) -> Result<Element, SoapError> {
    let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| malformed(position, &e.into()))?;
        if attribute.key.as_namespace_binding().is_some() {
            continue;
        }
        let local = String::from_utf8_lossy(attribute.key.local_name().as_ref()).into_owned();
        let value = attribute
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| match e {
                quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(
                    _,
                    name,
                )) => SoapError::UnknownEntity { name, position },
                other => malformed(position, &other),
            })?;
        attributes.push((local, value.into_owned()));
    }
    Ok(Element {
        namespace,
        name,
        attributes,
        ..Element::default()
    })
}

/// Resolves a character reference or one of the five predefined entities; anything else is
/// refused, because without a DTD no other entity can exist.
fn resolve_reference(
    reference: &BytesRef<'_>,
    position: u64,
) -> Result<Cow<'static, str>, SoapError> {
    let name = String::from_utf8_lossy(reference.as_ref()).into_owned();
    if reference.is_char_ref() {
        return match reference.resolve_char_ref() {
            Ok(Some(c)) if is_xml_char(c) => Ok(Cow::Owned(c.to_string())),
            _ => Err(SoapError::Malformed {
                position,
                reason: format!("&{name}; is not a character XML allows"),
            }),
        };
    }
    let text = match name.as_str() {
        "lt" => "<",
        "gt" => ">",
        "amp" => "&",
        "apos" => "'",
        "quot" => "\"",
        _ => return Err(SoapError::UnknownEntity { name, position }),
    };
    Ok(Cow::Borrowed(text))
}

fn check_encoding(declaration: &quick_xml::events::BytesDecl<'_>) -> Result<(), SoapError> {
    let Some(encoding) = declaration.encoding() else {
        return Ok(());
    };
    let found = match encoding {
        Ok(value) => String::from_utf8_lossy(&value).into_owned(),
        Err(_) => "(unreadable)".to_owned(),
    };
    if found.eq_ignore_ascii_case("utf-8") || found.eq_ignore_ascii_case("utf8") {
        Ok(())
    } else {
        Err(SoapError::Encoding { found })
    }
}

fn malformed(position: u64, error: &quick_xml::Error) -> SoapError {
    SoapError::Malformed {
        position,
        reason: error.to_string(),
    }
}

/// Whether XML 1.0 can carry the character at all.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        || c >= '\u{10000}'
}

/// What the Body of a parsed envelope holds.
#[derive(Debug)]
pub(crate) enum SoapBody<'a> {
    Fault(SoapFault),
    /// The first element inside the Body.
    Payload(&'a Element),
}

/// Opens a parsed SOAP 1.1 envelope: a Fault, or the Body's first element.
pub(crate) fn read_envelope(root: &Element) -> Result<SoapBody<'_>, SoapError> {
    if root.is(SOAP12_ENVELOPE_NS, "Envelope") {
        return Err(SoapError::VersionMismatch);
    }
    if !root.is(ENVELOPE_NS, "Envelope") {
        return Err(SoapError::NotEnvelope {
            found: root.expanded_name(),
        });
    }
    let body = root.child(ENVELOPE_NS, "Body").ok_or(SoapError::NoBody)?;
    let payload = body.children.first().ok_or(SoapError::EmptyBody)?;
    if payload.is(ENVELOPE_NS, "Fault") {
        return Ok(SoapBody::Fault(SoapFault::from_element(payload)));
    }
    Ok(SoapBody::Payload(payload))
}

/// A SOAP 1.1 Fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoapFault {
    /// `faultcode` as written, a qualified name such as `soap:Client`.
    pub code: String,
    /// `faultstring`: the human explanation.
    pub string: String,
    pub actor: Option<String>,
    /// The text content of `detail`, when there is one.
    pub detail: Option<String>,
}

impl SoapFault {
    /// A `soap:Client` Fault: the request was wrong and must not be repeated unchanged.
    pub fn client(reason: impl Into<String>) -> Self {
        Self::with_code("soap:Client", reason)
    }

    /// A `soap:Server` Fault: the request may succeed later.
    pub fn server(reason: impl Into<String>) -> Self {
        Self::with_code("soap:Server", reason)
    }

    /// A `soap:VersionMismatch` Fault: the envelope was not SOAP 1.1.
    pub fn version_mismatch(reason: impl Into<String>) -> Self {
        Self::with_code("soap:VersionMismatch", reason)
    }

    fn with_code(code: &str, reason: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            string: reason.into(),
            actor: None,
            detail: None,
        }
    }

    /// The local part of the fault code (`Client`, `Server`, ...), prefix dropped.
    pub fn code_local_name(&self) -> &str {
        self.code
            .rsplit_once(':')
            .map_or(self.code.as_str(), |(_, local)| local)
    }

    /// The whole envelope carrying this Fault.
    pub fn to_xml(&self) -> String {
        let mut writer = XmlWriter::soap_envelope();
        writer.open("soap:Fault", &[]);
        // Fault children are unqualified in SOAP 1.1.
        writer.leaf("faultcode", &[], &self.code);
        writer.leaf("faultstring", &[], &self.string);
        if let Some(actor) = &self.actor {
            writer.leaf("faultactor", &[], actor);
        }
        if let Some(detail) = &self.detail {
            writer.leaf("detail", &[], detail);
        }
        writer.finish()
    }

    fn from_element(fault: &Element) -> Self {
        let field = |name: &str| {
            fault
                .children
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.trimmed_text().to_owned())
        };
        Self {
            code: field("faultcode").unwrap_or_default(),
            string: field("faultstring").unwrap_or_default(),
            actor: field("faultactor"),
            detail: field("detail"),
        }
    }
}

/// Writes indented XML. Element names come from this crate; text and attribute values are
/// escaped, and characters XML cannot carry are replaced by U+FFFD.
#[derive(Debug)]
pub(crate) struct XmlWriter {
    out: String,
    open: Vec<String>,
}

impl XmlWriter {
    /// A document with its XML declaration, `soap:Envelope` and `soap:Body` already open.
    pub fn soap_envelope() -> Self {
        let mut writer = Self {
            out: String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"),
            open: Vec::new(),
        };
        writer.open("soap:Envelope", &[("xmlns:soap", ENVELOPE_NS)]);
        writer.open("soap:Body", &[]);
        writer
    }

    /// Opens an element.
    pub fn open(&mut self, name: &str, attributes: &[(&str, &str)]) {
        self.start_tag(name, attributes);
        self.out.push_str(">\n");
        self.open.push(name.to_owned());
    }

    /// Writes an element holding only text.
    pub fn leaf(&mut self, name: &str, attributes: &[(&str, &str)], text: &str) {
        self.start_tag(name, attributes);
        self.out.push('>');
        self.out.push_str(&escape(text));
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }

    /// Closes the innermost open element.
    pub fn close(&mut self) {
        if let Some(name) = self.open.pop() {
            self.indent();
            self.out.push_str("</");
            self.out.push_str(&name);
            self.out.push_str(">\n");
        }
    }

    /// Closes every open element and returns the document.
    pub fn finish(mut self) -> String {
        while !self.open.is_empty() {
            self.close();
        }
        self.out
    }

    fn start_tag(&mut self, name: &str, attributes: &[(&str, &str)]) {
        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attributes {
            self.out.push(' ');
            self.out.push_str(key);
            self.out.push_str("=\"");
            self.out.push_str(&escape(value));
            self.out.push('"');
        }
    }

    fn indent(&mut self) {
        for _ in 0..self.open.len() {
            self.out.push_str("  ");
        }
    }
}

fn escape(text: &str) -> Cow<'_, str> {
    if text.chars().all(is_xml_char) {
        return quick_xml::escape::escape(text);
    }
    let cleaned: String = text
        .chars()
        .map(|c| if is_xml_char(c) { c } else { '\u{FFFD}' })
        .collect();
    Cow::Owned(quick_xml::escape::escape(cleaned).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_default(text: &str) -> Result<Element, SoapError> {
        parse(text.as_bytes(), &XmlLimits::default())
    }

    #[test]
    fn names_are_resolved_against_their_namespaces() {
        let root = parse_default(
            r#"<?xml version="1.0" encoding="utf-8"?>
            <s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">
              <s:Body><Op xmlns="urn:x" a="1">t &amp; &#x41;<![CDATA[<b>]]></Op></s:Body>
            </s:Envelope>"#,
        )
        .unwrap();
        assert!(root.is(ENVELOPE_NS, "Envelope"));
        let SoapBody::Payload(op) = read_envelope(&root).unwrap() else {
            panic!("expected a payload");
        };
        assert!(op.is("urn:x", "Op"));
        assert_eq!(op.attribute("a"), Some("1"));
        assert_eq!(op.trimmed_text(), "t & A<b>");
    }

    #[test]
    fn a_doctype_is_refused_before_any_entity_is_defined() {
        let xml = r#"<?xml version="1.0"?>
            <!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd"><!ENTITY y "yy">]>
            <e>&x;&y;</e>"#;
        assert!(matches!(parse_default(xml), Err(SoapError::Doctype { .. })));
    }

    #[test]
    fn an_undeclared_entity_is_refused_in_text_and_attributes() {
        assert!(matches!(
            parse_default("<e>&x;</e>"),
            Err(SoapError::UnknownEntity { .. })
        ));
        assert!(matches!(
            parse_default(r#"<e a="&x;"/>"#),
            Err(SoapError::UnknownEntity { .. })
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = XmlLimits {
            max_bytes: 100,
            max_depth: 3,
            max_elements: 4,
        };
        let big = format!("<e>{}</e>", "x".repeat(200));
        assert!(matches!(
            parse(big.as_bytes(), &limits),
            Err(SoapError::TooLarge { .. })
        ));
        assert!(matches!(
            parse(b"<a><b><c><d/></c></b></a>", &limits),
            Err(SoapError::TooDeep { limit: 3, .. })
        ));
        assert!(matches!(
            parse(b"<a><b/><b/><b/><b/></a>", &limits),
            Err(SoapError::TooManyElements { limit: 4 })
        ));
    }

    #[test]
    fn broken_documents_are_errors() {
        assert_eq!(parse_default("<a><b>"), Err(SoapError::Truncated));
        assert_eq!(parse_default("  "), Err(SoapError::NoRoot));
        assert!(matches!(
            parse_default("<a></b>"),
            Err(SoapError::Malformed { .. })
        ));
        assert!(matches!(
            parse_default("<a/><b/>"),
            Err(SoapError::TrailingContent { .. })
        ));
        assert!(matches!(
            parse_default("<p:a/>"),
            Err(SoapError::Malformed { .. })
        ));
        assert!(matches!(
            parse_default("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>"),
            Err(SoapError::Encoding { .. })
        ));
        assert!(matches!(
            parse_default("<a><?pi x?></a>"),
            Err(SoapError::ProcessingInstruction { .. })
        ));
        assert!(parse(b"<a>\xff\xfe</a>", &XmlLimits::default()).is_err());
    }

    #[test]
    fn a_soap_12_envelope_is_a_version_mismatch() {
        let root =
            parse_default(r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"/>"#)
                .unwrap();
        assert_eq!(
            read_envelope(&root).unwrap_err(),
            SoapError::VersionMismatch
        );
    }

    #[test]
    fn a_fault_survives_writing_and_reading() {
        let mut fault = SoapFault::server("try <later> & again");
        fault.detail = Some("MD01".to_owned());
        let root = parse_default(&fault.to_xml()).unwrap();
        let SoapBody::Fault(read) = read_envelope(&root).unwrap() else {
            panic!("expected a Fault");
        };
        assert_eq!(read, fault);
        assert_eq!(read.code_local_name(), "Server");
    }

    #[test]
    fn the_writer_replaces_characters_xml_cannot_carry() {
        let mut writer = XmlWriter::soap_envelope();
        writer.leaf("x", &[("a", "\u{1}\"")], "a\u{0}b<");
        let xml = writer.finish();
        assert!(xml.contains("<x a=\"\u{FFFD}&quot;\">a\u{FFFD}b&lt;</x>"));
        assert!(parse_default(&xml).is_ok());
    }
}

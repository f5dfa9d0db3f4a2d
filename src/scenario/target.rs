//! Target files: the node under test, its organisation and departments, its endpoints,
//! where the harness's simulators listen, its protocol profile and the patients it knows.
//! With no target file, the embedded reference node is the target.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::load::{InputError, parse_duration, parse_yaml, read_text};
use crate::fhir::catalogue::{CatalogueId, LastKnownForm, QueryOptions};
use crate::node::Department;
use crate::protocol::notification::Ident;
use crate::transport::{PemSource, TlsFiles};

/// Whether the harness starts the target itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// The reference node, started in-process on ports the OS picks.
    Embedded,
    /// A node reached over the network at the configured endpoints.
    Remote,
}

/// The protocol profile: settings where the agreement leaves a choice (protocol.md §13).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProtocolProfile {
    #[serde(default)]
    pub catalogue: CatalogueId,
    #[serde(default)]
    pub last_known: LastKnownForm,
    #[serde(default = "yes")]
    pub provenance: bool,
    /// How long the target's access tokens live (protocol.md §13.9; default 300 s). The
    /// expired-token probes wait this long, up to their step's limit.
    #[serde(default = "default_token_lifetime", with = "duration_text")]
    pub access_token_lifetime: Duration,
    /// TLS versions: `1.2+` (default) or `1.3` only (protocol.md §3), for the harness's
    /// clients and servers and for `node serve`.
    #[serde(default)]
    pub tls_versions: crate::transport::TlsVersions,
    /// How often CRLs are re-read by the harness's servers and `node serve` (protocol.md
    /// §13.19; default 60m).
    #[serde(default = "default_crl_refresh", with = "duration_text")]
    pub crl_refresh: Duration,
}

fn default_crl_refresh() -> Duration {
    Duration::from_secs(3600)
}

fn default_token_lifetime() -> Duration {
    Duration::from_secs(300)
}

/// How long the embedded reference node's access tokens live: short, so that the
/// expired-token probes of a default run take seconds; the harness renews tokens that run
/// out during a pull, as a client must.
pub const EMBEDDED_TOKEN_LIFETIME: Duration = Duration::from_secs(4);

/// A duration written as `500ms`, `2s` or `1m` in YAML.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", value.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        let duration =
            super::parse_duration(&text).map_err(<D::Error as serde::de::Error>::custom)?;
        if duration < Duration::from_secs(1) {
            return Err(<D::Error as serde::de::Error>::custom(
                "expected at least 1s",
            ));
        }
        Ok(duration)
    }
}

fn yes() -> bool {
    true
}

impl Default for ProtocolProfile {
    fn default() -> Self {
        Self {
            catalogue: CatalogueId::Msz2,
            last_known: LastKnownForm::SortCount,
            provenance: true,
            access_token_lifetime: default_token_lifetime(),
            tls_versions: crate::transport::TlsVersions::default(),
            crl_refresh: default_crl_refresh(),
        }
    }
}

impl ProtocolProfile {
    /// The catalogue options this profile asks for.
    pub fn query_options(&self) -> QueryOptions {
        QueryOptions {
            catalogue: self.catalogue,
            last_known: self.last_known,
            provenance: self.provenance,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TargetDoc {
    name: String,
    kind: TargetKind,
    organisation: OrganisationDoc,
    departments: Vec<Department>,
    #[serde(default)]
    endpoints: Option<Spanned<EndpointsDoc>>,
    #[serde(default)]
    simulators: Option<SimulatorsDoc>,
    #[serde(default)]
    protocol: ProtocolProfile,
    #[serde(default)]
    known_patients: Vec<String>,
    #[serde(default)]
    exchange_timeout: Option<Spanned<String>>,
    #[serde(default)]
    triggers: Triggers,
    #[serde(default)]
    tls: Option<TlsDoc>,
}

/// The harness's TLS material for a remote target. Every value is a file path (relative to
/// the target file) or `env:NAME`; PEM text itself is refused, so no secret sits in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TlsDoc {
    /// The CA (PEM, may hold several certificates) that the target's server and client
    /// certificates chain to.
    ca: Spanned<String>,
    /// CRLs (PEM) of that hierarchy; with any given, each CA in a chain needs one.
    #[serde(default)]
    crl: Vec<Spanned<String>>,
    /// The harness's client certificate chain and key; the key also signs assertions.
    client_cert: Spanned<String>,
    client_key: Spanned<String>,
    /// The simulators' server certificate chain and key; default: the client's.
    #[serde(default)]
    server_cert: Option<Spanned<String>>,
    #[serde(default)]
    server_key: Option<Spanned<String>>,
    /// Client certificates the certificate probes present; a probe whose certificate is not
    /// named does not run.
    #[serde(default)]
    probe_certificates: ProbeCertificatesDoc,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ProbeCertificatesDoc {
    #[serde(default)]
    foreign_ca: Option<CertAndKeyDoc>,
    #[serde(default)]
    expired: Option<CertAndKeyDoc>,
    #[serde(default)]
    revoked: Option<CertAndKeyDoc>,
    #[serde(default)]
    other_organisation: Option<CertAndKeyDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CertAndKeyDoc {
    cert: Spanned<String>,
    key: Spanned<String>,
}

/// A client certificate chain and its key, by source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertAndKey {
    pub cert: PemSource,
    pub key: PemSource,
}

/// The client certificates the certificate probes present to the target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeCertificates {
    /// Issued by a CA the target must not trust.
    pub foreign_ca: Option<CertAndKey>,
    /// Issued by the target's CA, expired.
    pub expired: Option<CertAndKey>,
    /// Issued by the target's CA, listed in its CRL.
    pub revoked: Option<CertAndKey>,
    /// Valid, but of another organisation than the harness's client certificate.
    pub other_organisation: Option<CertAndKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct OrganisationDoc {
    name: String,
    ura: Spanned<String>,
}

/// How the harness makes a sending target act, when the target has no control API.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Triggers {
    /// Makes the target send a referral for the case's patient.
    #[serde(default)]
    pub send: Option<Trigger>,
    /// Makes the target cancel the referral it sent.
    #[serde(default)]
    pub cancel: Option<Trigger>,
}

/// One trigger: a shell command or an HTTP call. Placeholders `{bsn}`,
/// `{notification-base}`, `{token-url}`, `{department}` and `{identifier}` are filled in.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Trigger {
    /// Run with `sh -c`; exit status 0 means done.
    Command(String),
    /// An HTTP request; a 2xx answer means done.
    Http {
        #[serde(default = "post")]
        method: String,
        url: String,
        #[serde(default)]
        body: Option<String>,
    },
}

fn post() -> String {
    "POST".to_owned()
}

/// The target's endpoints.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EndpointsDoc {
    /// FHIR base that accepts `POST Task` (notifications).
    pub notification: String,
    /// Token endpoint of the target's authorization server.
    pub token: String,
    /// Inspection API (reference node only): answers confirm steps automatically.
    #[serde(default)]
    pub inspect: Option<String>,
    /// Control API (reference node only): the harness registers its simulators there and
    /// triggers sends and cancels.
    #[serde(default)]
    pub control: Option<String>,
    /// FHIR base the target serves its BgZ from when it is the sender.
    #[serde(default)]
    pub sender_fhir_base: Option<String>,
    /// Token endpoint of the target's sending side (pull tokens).
    #[serde(default)]
    pub sender_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SimulatorsDoc {
    listen: Spanned<String>,
    #[serde(default)]
    public_base: Option<String>,
    /// How the target reaches the simulated receiver (it listens on the same address,
    /// on a port the OS picks, unless this is set).
    #[serde(default)]
    receiver_public_base: Option<String>,
    /// Where the SBV-Z double listens; the target's SBV-Z client must point here.
    #[serde(default)]
    sbvz_listen: Option<Spanned<String>>,
}

/// A validated target.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    pub organisation_name: String,
    pub ura: String,
    pub departments: Vec<Department>,
    /// Set for remote targets.
    pub endpoints: Option<EndpointsDoc>,
    /// Where the simulators listen.
    pub simulator_listen: SocketAddr,
    /// How the target reaches the simulated sender, when not at `simulator_listen`.
    pub simulator_public_base: Option<String>,
    /// How the target reaches the simulated receiver.
    pub receiver_public_base: Option<String>,
    /// Where the SBV-Z double listens (the target's SBV-Z binding points here).
    pub sbvz_listen: SocketAddr,
    pub protocol: ProtocolProfile,
    /// Fixture keys of the patients the target knows.
    pub known_patients: Vec<String>,
    pub exchange_timeout: Duration,
    /// The harness's TLS material for a remote target; an embedded run makes its own.
    pub tls: Option<TlsFiles>,
    /// Certificates for the certificate probes (remote targets; an embedded run makes its own).
    pub probe_certificates: ProbeCertificates,
    /// How to make a sending target act without a control API.
    pub triggers: Triggers,
    /// The file it came from, or `(embedded)`.
    pub file: String,
}

/// Checks that an endpoint is an http(s) URL with a host and a valid port.
fn usable_url(text: &str) -> Result<(), &'static str> {
    let url =
        url::Url::parse(text).map_err(|_| "is not a URL (expected https://host[:port]/path)")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("is not an http(s) URL");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    Ok(())
}

/// URA of the embedded reference node.
pub const EMBEDDED_URA: &str = "90000456";

impl Target {
    /// The embedded reference node with its defaults.
    pub fn embedded() -> Self {
        let department = |id: &str, name: &str| Department {
            id: id.to_owned(),
            name: name.to_owned(),
            identifier: Ident::new("urn:oid:2.999.90000456.1", id),
        };
        Self {
            name: "reference-node (embedded)".to_owned(),
            kind: TargetKind::Embedded,
            organisation_name: "Referentieziekenhuis (reference node)".to_owned(),
            ura: EMBEDDED_URA.to_owned(),
            departments: vec![
                department("cardiologie", "Cardiologie (poli)"),
                department("longziekten", "Longziekten (verpleegafdeling)"),
                department("interne", "Interne geneeskunde (poli)"),
            ],
            endpoints: None,
            simulator_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            simulator_public_base: None,
            receiver_public_base: None,
            sbvz_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            protocol: ProtocolProfile {
                access_token_lifetime: EMBEDDED_TOKEN_LIFETIME,
                ..ProtocolProfile::default()
            },
            known_patients: vec!["known".to_owned(), "other".to_owned()],
            exchange_timeout: Duration::from_secs(10),
            tls: None,
            probe_certificates: ProbeCertificates::default(),
            triggers: Triggers::default(),
            file: "(embedded)".to_owned(),
        }
    }

    /// Loads and validates a target file.
    pub fn load(path: &Path) -> Result<Self, InputError> {
        let file = path.display().to_string();
        let text = read_text(path)?;
        let doc: TargetDoc = parse_yaml(&file, &text)?;

        let ura = &doc.organisation.ura;
        if ura.value.len() != 8 || !ura.value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InputError::at(
                &file,
                &text,
                ura,
                "a URA is 8 digits, written as a string",
            ));
        }
        if doc.departments.is_empty() {
            return Err(InputError::File {
                file,
                message: "departments needs at least one department".to_owned(),
            });
        }
        let endpoints = match (doc.kind, doc.endpoints) {
            (TargetKind::Remote, None) => {
                return Err(InputError::File {
                    file,
                    message: "a remote target needs endpoints (notification, token)".to_owned(),
                });
            }
            (TargetKind::Remote, Some(spanned)) => {
                let e = &spanned.value;
                // The exchange runs over mutual TLS; plain http would be refused at run time.
                let all = [
                    Some(&e.notification),
                    Some(&e.token),
                    e.inspect.as_ref(),
                    e.control.as_ref(),
                    e.sender_fhir_base.as_ref(),
                    e.sender_token.as_ref(),
                ];
                if let Some(plain) = all.into_iter().flatten().find(|u| u.starts_with("http://")) {
                    return Err(InputError::at(
                        &file,
                        &text,
                        &spanned,
                        format!(
                            "`{plain}` is plain http; a remote target is reached over https (mutual TLS)"
                        ),
                    ));
                }
                let optional = [&e.inspect, &e.control, &e.sender_fhir_base, &e.sender_token];
                let urls = [Some(&e.notification), Some(&e.token)]
                    .into_iter()
                    .chain(optional.map(Option::as_ref))
                    .flatten();
                for url in urls {
                    if let Err(why) = usable_url(url) {
                        return Err(InputError::at(
                            &file,
                            &text,
                            &spanned,
                            format!("`{url}` {why}"),
                        ));
                    }
                }
                Some(spanned.value)
            }
            (TargetKind::Embedded, Some(spanned)) => {
                return Err(InputError::at(
                    &file,
                    &text,
                    &spanned,
                    "an embedded target picks its own endpoints; remove `endpoints` or use kind: remote",
                ));
            }
            (TargetKind::Embedded, None) => None,
        };
        let mut sbvz_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let (listen, public_base, receiver_public_base) = match doc.simulators {
            None => (SocketAddr::from(([127, 0, 0, 1], 0)), None, None),
            Some(sims) => {
                let listen: SocketAddr = sims.listen.value.parse().map_err(|_| {
                    InputError::at(
                        &file,
                        &text,
                        &sims.listen,
                        format!(
                            "expected an address such as 127.0.0.1:8400, found `{}`",
                            sims.listen.value
                        ),
                    )
                })?;
                if let Some(spanned) = &sims.sbvz_listen {
                    sbvz_listen = spanned.value.parse().map_err(|_| {
                        InputError::at(
                            &file,
                            &text,
                            spanned,
                            format!(
                                "expected an address such as 127.0.0.1:8500, found `{}`",
                                spanned.value
                            ),
                        )
                    })?;
                }
                (listen, sims.public_base, sims.receiver_public_base)
            }
        };
        let exchange_timeout = match &doc.exchange_timeout {
            None => Duration::from_secs(10),
            Some(spanned) => {
                let timeout = parse_duration(&spanned.value)
                    .map_err(|m| InputError::at(&file, &text, spanned, m))?;
                if timeout < Duration::from_millis(100) {
                    return Err(InputError::at(
                        &file,
                        &text,
                        spanned,
                        "an exchange timeout under 100ms would fail every exchange",
                    ));
                }
                timeout
            }
        };

        let (tls, probe_certificates) = match &doc.tls {
            None => (None, ProbeCertificates::default()),
            Some(tls) => (
                Some(tls_files(&file, &text, path, tls)?),
                probe_certificates(&file, &text, path, &tls.probe_certificates)?,
            ),
        };

        Ok(Self {
            name: doc.name,
            kind: doc.kind,
            organisation_name: doc.organisation.name,
            ura: doc.organisation.ura.value,
            departments: doc.departments,
            endpoints,
            simulator_listen: listen,
            simulator_public_base: public_base,
            receiver_public_base,
            sbvz_listen,
            protocol: doc.protocol,
            known_patients: doc.known_patients,
            exchange_timeout,
            triggers: doc.triggers,
            tls,
            probe_certificates,
            file,
        })
    }
}

/// Resolves `tls.probe-certificates`.
fn probe_certificates(
    file: &str,
    text: &str,
    path: &Path,
    doc: &ProbeCertificatesDoc,
) -> Result<ProbeCertificates, InputError> {
    let pair = |doc: &Option<CertAndKeyDoc>| -> Result<Option<CertAndKey>, InputError> {
        doc.as_ref()
            .map(|d| {
                Ok(CertAndKey {
                    cert: pem_source(file, text, path, &d.cert)?,
                    key: pem_source(file, text, path, &d.key)?,
                })
            })
            .transpose()
    };
    Ok(ProbeCertificates {
        foreign_ca: pair(&doc.foreign_ca)?,
        expired: pair(&doc.expired)?,
        revoked: pair(&doc.revoked)?,
        other_organisation: pair(&doc.other_organisation)?,
    })
}

/// Resolves the `tls` section's values, refusing inline PEM text.
fn tls_files(file: &str, text: &str, path: &Path, doc: &TlsDoc) -> Result<TlsFiles, InputError> {
    let source = |value: &Spanned<String>| pem_source(file, text, path, value);
    let client_cert = source(&doc.client_cert)?;
    let client_key = source(&doc.client_key)?;
    Ok(TlsFiles {
        ca: vec![source(&doc.ca)?],
        crl: doc.crl.iter().map(source).collect::<Result<_, _>>()?,
        server_cert: match &doc.server_cert {
            Some(value) => source(value)?,
            None => client_cert.clone(),
        },
        server_key: match &doc.server_key {
            Some(value) => source(value)?,
            None => client_key.clone(),
        },
        client_cert,
        client_key,
    })
}

/// One file path (relative to the target file) or `env:NAME`, refusing inline PEM text.
fn pem_source(
    file: &str,
    text: &str,
    path: &Path,
    value: &Spanned<String>,
) -> Result<PemSource, InputError> {
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    if value.value.contains("-----BEGIN") || value.value.contains('\n') {
        // No excerpt: the offending line may hold key material.
        return Err(InputError::At {
            file: file.to_owned(),
            line: value.referenced.line(),
            column: value.referenced.column(),
            message: "PEM text is not allowed here; name a file or env:NAME".to_owned(),
            excerpt: String::new(),
        });
    }
    if value.value.trim().is_empty() || value.value == "env:" {
        return Err(InputError::at(
            file,
            text,
            value,
            "expected a file path or env:NAME, found nothing",
        ));
    }
    // Files are not required to exist yet: `node serve` and `certs` write the test PKI
    // later; a run reports a missing file with its path.
    Ok(PemSource::parse(&value.value, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REMOTE: &str = "name: r\nkind: remote\norganisation: { name: N, ura: \"90001234\" }\n\
        departments:\n  - id: c\n    name: C\n    identifier: { system: s, value: c }\n\
        endpoints: { notification: https://n.example/fhir, token: https://n.example/token }\n";

    /// Loads the remote target plus `tls` from `<tempdir>/targets/t.yaml`; returns the
    /// result and that folder.
    fn load(tls: &str) -> (Result<Target, InputError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("targets").join("t.yaml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{REMOTE}{tls}")).unwrap();
        (Target::load(&path), dir)
    }

    #[test]
    fn the_tls_section_resolves_files_next_to_the_target_and_env_names() {
        let (target, dir) = load(
            "tls:\n  ca: ../pki/root-ca.pem\n  crl: [../pki/root-ca.crl.pem]\n  \
             client-cert: ../pki/c.pem\n  client-key: env:CLIENT_KEY\n",
        );
        let tls = target.unwrap().tls.unwrap();
        let file = |name: &str| PemSource::File(dir.path().join("targets").join(name));
        assert_eq!(tls.ca, vec![file("../pki/root-ca.pem")]);
        assert_eq!(tls.crl, vec![file("../pki/root-ca.crl.pem")]);
        assert_eq!(tls.client_key, PemSource::Env("CLIENT_KEY".into()));
        // Without a server certificate the simulators serve with the client's.
        assert_eq!(tls.server_cert, file("../pki/c.pem"));
        assert_eq!(tls.server_key, PemSource::Env("CLIENT_KEY".into()));
        assert!(load("").0.unwrap().tls.is_none());
    }

    #[test]
    fn inline_pem_and_empty_values_are_refused_without_quoting_them() {
        let error = load(
            "tls:\n  ca: ca.pem\n  client-cert: c.pem\n  \
             client-key: \"-----BEGIN PRIVATE KEY-----\\nMIIEsecret\"\n",
        )
        .0
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(":12:") && error.contains("PEM text is not allowed"),
            "{error}"
        );
        assert!(!error.contains("MIIEsecret"), "{error}");
        let error = load("tls:\n  ca: \"\"\n  client-cert: c.pem\n  client-key: k.pem\n")
            .0
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("expected a file path or env:NAME"),
            "{error}"
        );
        let error = load("tls:\n  ca: ca.pem\n  client-cert: c.pem\n")
            .0
            .unwrap_err()
            .to_string();
        assert!(error.contains("client-key"), "{error}");
    }

    #[test]
    fn probe_certificates_resolve_like_the_rest_and_refuse_inline_keys() {
        let tls = "tls:\n  ca: ca.pem\n  client-cert: c.pem\n  client-key: k.pem\n  \
                   probe-certificates:\n    expired: { cert: e.pem, key: env:EXPIRED_KEY }\n";
        let (target, dir) = load(tls);
        let probes = target.unwrap().probe_certificates;
        assert_eq!(
            probes.expired,
            Some(CertAndKey {
                cert: PemSource::File(dir.path().join("targets").join("e.pem")),
                key: PemSource::Env("EXPIRED_KEY".into()),
            })
        );
        assert!(probes.foreign_ca.is_none() && probes.other_organisation.is_none());

        let inline = tls.replace("env:EXPIRED_KEY", "\"-----BEGIN PRIVATE KEY-----\"");
        let error = load(&inline).0.unwrap_err().to_string();
        assert!(error.contains("PEM text is not allowed"), "{error}");
        let unknown = tls.replace("expired:", "expird:");
        let error = load(&unknown).0.unwrap_err().to_string();
        assert!(error.contains("expird"), "{error}");
    }

    #[test]
    fn the_access_token_lifetime_is_a_duration_of_at_least_a_second() {
        let (target, _dir) = load("protocol:\n  access-token-lifetime: 2m\n");
        assert_eq!(
            target.unwrap().protocol.access_token_lifetime,
            Duration::from_secs(120)
        );
        let (target, _dir) = load("");
        assert_eq!(
            target.unwrap().protocol.access_token_lifetime,
            Duration::from_secs(300)
        );
        for bad in ["soon", "500ms"] {
            let (target, _dir) = load(&format!("protocol:\n  access-token-lifetime: {bad}\n"));
            let error = target.unwrap_err().to_string();
            assert!(error.contains(":10:26:"), "{bad}: {error}");
        }
        assert_eq!(
            Target::embedded().protocol.access_token_lifetime,
            EMBEDDED_TOKEN_LIFETIME
        );
    }

    #[test]
    fn tls_versions_are_1_2_and_up_or_1_3_only() {
        use crate::transport::TlsVersions;
        let (target, _dir) = load("");
        assert_eq!(
            target.unwrap().protocol.tls_versions,
            TlsVersions::Tls12AndUp
        );
        let (target, _dir) = load("protocol:\n  tls-versions: \"1.3\"\n");
        assert_eq!(
            target.unwrap().protocol.tls_versions,
            TlsVersions::Tls13Only
        );
        let (target, _dir) = load("protocol:\n  tls-versions: \"1.1\"\n");
        let error = target.unwrap_err().to_string();
        assert!(error.contains(":10:") && error.contains("1.2+"), "{error}");
    }
}

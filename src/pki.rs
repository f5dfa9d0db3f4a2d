//! A PKIoverheid-like test PKI, written as PEM files: a root CA and an issuing (intermediate)
//! CA in the style of the "Staat der Nederlanden" hierarchy, server and client certificates
//! for the harness and the reference node shaped like UZI-servercertificaten, CRLs, and the
//! certificates a conformant node must refuse (revoked, expired, from a foreign CA). The
//! `certs` subcommand writes one for technical tests; every embedded run makes a fresh one in
//! a temporary folder.
//!
//! It is test material only: every name is invented and marked TEST, and private keys are
//! written unencrypted as PKCS#8 (mode 0600). It does not model a real PKIoverheid chain.
//!
//! **Where the URA goes.** A UZI-servercertificaat is issued to a care provider, and the
//! provider's URA (UZI-register abonneenummer) is what identifies it. These certificates
//! carry the URA in the subject `serialNumber` attribute, with the organisation's name in
//! `O` and the host name in `CN`, so a verifier can map a certificate to a URA from the
//! subject alone. Real UZI certificates also encode the subscriber number in a
//! subjectAltName `otherName` string whose exact form is set by the UZI-register CPS; this
//! test PKI does not imitate that string.
//!
//! **Key types.** Client certificates get RSA-2048 keys, because they also sign client
//! assertions and the protocol's default `alg` is PS256 (RSA). The CAs use ECDSA P-384 and
//! the server and probe certificates ECDSA P-256: RSA key generation is slow, and every
//! embedded run makes a fresh PKI. Verifiers accept both key types.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::string::PrintableString;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, RsaKeySize, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::scenario::target::EMBEDDED_URA;
use crate::transport::{PemSource, TlsFiles};

/// One file of the test PKI; [`PkiFile::name`] is its file name, and `README.txt` in the
/// folder describes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PkiFile {
    RootCa,
    RootCaKey,
    RootCrl,
    IntermediateCa,
    IntermediateCaKey,
    IntermediateCrl,
    HarnessServer,
    HarnessServerKey,
    HarnessClient,
    HarnessClientKey,
    NodeServer,
    NodeServerKey,
    NodeClient,
    NodeClientKey,
    RevokedClient,
    RevokedClientKey,
    ExpiredClient,
    ExpiredClientKey,
    ForeignCa,
    ForeignCaKey,
    ForeignClient,
    ForeignClientKey,
    OtherClient,
    OtherClientKey,
}

impl PkiFile {
    /// Every file, in the order `README.txt` lists them.
    pub const ALL: [PkiFile; 24] = [
        PkiFile::RootCa,
        PkiFile::RootCaKey,
        PkiFile::RootCrl,
        PkiFile::IntermediateCa,
        PkiFile::IntermediateCaKey,
        PkiFile::IntermediateCrl,
        PkiFile::HarnessServer,
        PkiFile::HarnessServerKey,
        PkiFile::HarnessClient,
        PkiFile::HarnessClientKey,
        PkiFile::NodeServer,
        PkiFile::NodeServerKey,
        PkiFile::NodeClient,
        PkiFile::NodeClientKey,
        PkiFile::RevokedClient,
        PkiFile::RevokedClientKey,
        PkiFile::ExpiredClient,
        PkiFile::ExpiredClientKey,
        PkiFile::ForeignCa,
        PkiFile::ForeignCaKey,
        PkiFile::ForeignClient,
        PkiFile::ForeignClientKey,
        PkiFile::OtherClient,
        PkiFile::OtherClientKey,
    ];

    /// The file name inside the PKI folder.
    pub fn name(self) -> &'static str {
        match self {
            PkiFile::RootCa => "root-ca.pem",
            PkiFile::RootCaKey => "root-ca.key.pem",
            PkiFile::RootCrl => "root-ca.crl.pem",
            PkiFile::IntermediateCa => "intermediate-ca.pem",
            PkiFile::IntermediateCaKey => "intermediate-ca.key.pem",
            PkiFile::IntermediateCrl => "intermediate-ca.crl.pem",
            PkiFile::HarnessServer => "harness-server.pem",
            PkiFile::HarnessServerKey => "harness-server.key.pem",
            PkiFile::HarnessClient => "harness-client.pem",
            PkiFile::HarnessClientKey => "harness-client.key.pem",
            PkiFile::NodeServer => "node-server.pem",
            PkiFile::NodeServerKey => "node-server.key.pem",
            PkiFile::NodeClient => "node-client.pem",
            PkiFile::NodeClientKey => "node-client.key.pem",
            PkiFile::RevokedClient => "revoked-client.pem",
            PkiFile::RevokedClientKey => "revoked-client.key.pem",
            PkiFile::ExpiredClient => "expired-client.pem",
            PkiFile::ExpiredClientKey => "expired-client.key.pem",
            PkiFile::ForeignCa => "foreign-ca.pem",
            PkiFile::ForeignCaKey => "foreign-ca.key.pem",
            PkiFile::ForeignClient => "foreign-client.pem",
            PkiFile::ForeignClientKey => "foreign-client.key.pem",
            PkiFile::OtherClient => "other-org-client.pem",
            PkiFile::OtherClientKey => "other-org-client.key.pem",
        }
    }

    /// True for private keys, which are written with mode 0600.
    pub fn is_secret(self) -> bool {
        self.name().ends_with(".key.pem")
    }

    fn description(self) -> &'static str {
        match self {
            PkiFile::RootCa => "root CA certificate: the trust anchor (configure it as `ca`)",
            PkiFile::RootCaKey => "root CA private key",
            PkiFile::RootCrl => "CRL of the root CA (empty)",
            PkiFile::IntermediateCa => "issuing CA certificate, signed by the root",
            PkiFile::IntermediateCaKey => "issuing CA private key",
            PkiFile::IntermediateCrl => "CRL of the issuing CA, listing revoked-client.pem",
            PkiFile::HarnessServer => "harness server certificate + issuing CA (chain)",
            PkiFile::HarnessServerKey => "harness server private key",
            PkiFile::HarnessClient => "harness client certificate + issuing CA (chain)",
            PkiFile::HarnessClientKey => "harness client private key (also signs assertions)",
            PkiFile::NodeServer => "reference node server certificate + issuing CA (chain)",
            PkiFile::NodeServerKey => "reference node server private key",
            PkiFile::NodeClient => "reference node client certificate + issuing CA (chain)",
            PkiFile::NodeClientKey => "reference node client private key (also signs assertions)",
            PkiFile::RevokedClient => "client certificate listed in intermediate-ca.crl.pem",
            PkiFile::RevokedClientKey => "its private key",
            PkiFile::ExpiredClient => "client certificate that expired 30 days ago",
            PkiFile::ExpiredClientKey => "its private key",
            PkiFile::ForeignCa => "a CA outside the test hierarchy (for refusal probes)",
            PkiFile::ForeignCaKey => "its private key",
            PkiFile::ForeignClient => "client certificate issued by foreign-ca.pem",
            PkiFile::ForeignClientKey => "its private key",
            PkiFile::OtherClient => {
                "valid client certificate of another organisation (token-binding probes)"
            }
            PkiFile::OtherClientKey => "its private key",
        }
    }
}

/// An organisation a certificate is issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organisation {
    /// The organisation's name, put in the subject `O`.
    pub name: String,
    /// URA (UZI-register abonneenummer), 8 digits.
    pub ura: String,
}

/// The parties of a test PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiSpec {
    /// The harness (simulated sender and its clients).
    pub harness: Organisation,
    /// The reference node.
    pub node: Organisation,
    /// A third organisation with a valid client certificate: a client that must not be able
    /// to use tokens issued to the harness.
    pub other: Organisation,
}

impl Default for PkiSpec {
    fn default() -> Self {
        Self {
            harness: Organisation {
                name: "Ziekenhuis Zender (harness)".to_owned(),
                ura: "90000123".to_owned(),
            },
            node: Organisation {
                name: "Referentieziekenhuis (reference node)".to_owned(),
                ura: EMBEDDED_URA.to_owned(),
            },
            other: Organisation {
                name: "Ander Ziekenhuis (TEST)".to_owned(),
                ura: "90000789".to_owned(),
            },
        }
    }
}

/// Why a test PKI could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("failed to generate the {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("failed to write {path}: the file exists; choose an empty folder")]
    Exists { path: String },
    #[error("failed to write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A test PKI on disk.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The folder holding every file of [`PkiFile::ALL`] and `README.txt`.
    pub dir: PathBuf,
}

impl PkiFiles {
    /// A PKI folder made earlier (by `certs` or [`generate`]).
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The path of one file.
    pub fn path(&self, file: PkiFile) -> PathBuf {
        self.dir.join(file.name())
    }

    /// True when every file is there.
    pub fn is_complete(&self) -> bool {
        PkiFile::ALL.iter().all(|f| self.path(*f).is_file())
    }

    fn source(&self, file: PkiFile) -> PemSource {
        PemSource::File(self.path(file))
    }

    fn tls_files(&self, server: [PkiFile; 2], client: [PkiFile; 2]) -> TlsFiles {
        TlsFiles {
            ca: vec![self.source(PkiFile::RootCa)],
            crl: vec![
                self.source(PkiFile::RootCrl),
                self.source(PkiFile::IntermediateCrl),
            ],
            server_cert: self.source(server[0]),
            server_key: self.source(server[1]),
            client_cert: self.source(client[0]),
            client_key: self.source(client[1]),
        }
    }

    /// TLS material of the harness: its server and client identities, trusting the root.
    pub fn harness_tls(&self) -> TlsFiles {
        self.tls_files(
            [PkiFile::HarnessServer, PkiFile::HarnessServerKey],
            [PkiFile::HarnessClient, PkiFile::HarnessClientKey],
        )
    }

    /// The certificates the certificate probes present.
    pub fn probe_certificates(&self) -> crate::scenario::target::ProbeCertificates {
        let pair = |cert, key| {
            Some(crate::scenario::target::CertAndKey {
                cert: self.source(cert),
                key: self.source(key),
            })
        };
        crate::scenario::target::ProbeCertificates {
            foreign_ca: pair(PkiFile::ForeignClient, PkiFile::ForeignClientKey),
            expired: pair(PkiFile::ExpiredClient, PkiFile::ExpiredClientKey),
            revoked: pair(PkiFile::RevokedClient, PkiFile::RevokedClientKey),
            other_organisation: pair(PkiFile::OtherClient, PkiFile::OtherClientKey),
        }
    }

    /// TLS material of the reference node.
    pub fn node_tls(&self) -> TlsFiles {
        self.tls_files(
            [PkiFile::NodeServer, PkiFile::NodeServerKey],
            [PkiFile::NodeClient, PkiFile::NodeClientKey],
        )
    }
}

const COUNTRY: &str = "NL";
const HIERARCHY_ORG: &str = "Proefstaat der Nederlanden (TEST)";
const ROOT_CN: &str = "Proefstaat der Nederlanden Root CA - T1 (TEST)";
const ISSUING_CN: &str = "Proefstaat Zorg Server CA - T1 (TEST)";
const FOREIGN_ORG: &str = "Onbekende Uitgever (TEST)";
const FOREIGN_CN: &str = "Onbekende Uitgever Root CA - X1 (TEST)";

/// Generates a test PKI into `dir` (created when missing). Refuses to overwrite: every file
/// must be new.
pub fn generate(spec: &PkiSpec, dir: &Path) -> Result<PkiFiles, PkiError> {
    let files = PkiFiles::at(dir);
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let taken = PkiFile::ALL
        .iter()
        .map(|f| files.path(*f))
        .chain(std::iter::once(dir.join("README.txt")))
        .find(|p| p.exists());
    if let Some(path) = taken {
        return Err(PkiError::Exists {
            path: path.display().to_string(),
        });
    }

    let contents = build(spec, OffsetDateTime::now_utc())?;
    for (file, text) in &contents {
        write_new(&files.path(*file), text, file.is_secret())?;
    }
    write_new(&dir.join("README.txt"), &readme(spec), false)?;
    Ok(files)
}

fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    let error = |source| PkiError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(error)?;
    file.write_all(text.as_bytes()).map_err(error)
}

fn readme(spec: &PkiSpec) -> String {
    let mut text = String::from(
        "bgz-harness test PKI (TEST ONLY: invented names, unencrypted keys)\n\
         ===================================================================\n\n\
         Made by `bgz-harness certs`. A PKIoverheid-like chain: root CA -> issuing CA ->\n\
         server and client certificates shaped like UZI-servercertificaten. Each subject\n\
         carries the organisation's URA in serialNumber, its name in O and the host name\n\
         in CN; every leaf has the subjectAltNames 127.0.0.1, ::1 and localhost.\n\
         Leaf files hold the certificate followed by the issuing CA, so a server or client\n\
         sends the whole chain. Private keys are PKCS#8 PEM, mode 0600. Certificates and\n\
         CRLs are valid for a year; the harness refuses a chain whose CRL has expired.\n\n",
    );
    text.push_str(&format!(
        "harness: {} (URA {})\nnode:    {} (URA {})\n\n",
        spec.harness.name, spec.harness.ura, spec.node.name, spec.node.ura
    ));
    for file in PkiFile::ALL {
        text.push_str(&format!("{:<26} {}\n", file.name(), file.description()));
    }
    text.push_str(
        "\nA target file (here targets/my-node.yaml, next to this pki/ folder) names them in\n\
         its tls section; paths are relative to the target file, keys may be env:NAME:\n\
         tls:\n  ca: ../pki/root-ca.pem\n  \
         crl: [../pki/root-ca.crl.pem, ../pki/intermediate-ca.crl.pem]\n  \
         client-cert: ../pki/harness-client.pem\n  client-key: ../pki/harness-client.key.pem\n  \
         server-cert: ../pki/harness-server.pem\n  server-key: ../pki/harness-server.key.pem\n\n\
         The node under test gets node-server.pem and node-client.pem (and their keys) and\n\
         trusts root-ca.pem with both CRLs. Serve the chain files as they are.\n",
    );
    text
}

/// Which of the three key types a certificate gets (see the module documentation).
#[derive(Clone, Copy)]
enum KeyKind {
    Rsa2048,
    EcdsaP256,
    EcdsaP384,
}

fn new_key(kind: KeyKind, what: &'static str) -> Result<KeyPair, PkiError> {
    let generated = match kind {
        KeyKind::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyKind::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyKind::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
    };
    generated.map_err(|source| PkiError::Generate { what, source })
}

fn failed(what: &'static str) -> impl Fn(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

/// A positive 16-byte serial number.
fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn name(entries: &[(DnType, DnValue)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (kind, value) in entries {
        dn.push(kind.clone(), value.clone());
    }
    dn
}

fn ca_params(
    org: &str,
    common_name: &str,
    path_len: Option<u8>,
    now: OffsetDateTime,
    years: i64,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&[
        (DnType::CountryName, COUNTRY.into()),
        (DnType::OrganizationName, org.into()),
        (DnType::CommonName, common_name.into()),
    ]);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - Duration::days(400);
    params.not_after = now + Duration::days(365 * years);
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
    /// A client certificate that must be refused; the label starts its CN.
    Probe(&'static str),
}

/// An UZI-servercertificaat-like leaf: URA in serialNumber, name in O, host in CN.
fn leaf_params(
    org: &Organisation,
    role: Role,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let ura =
        PrintableString::try_from(org.ura.as_str()).map_err(failed("subject serialNumber"))?;
    let common_name = match role {
        Role::Server => "localhost".to_owned(),
        Role::Client => format!("client {}", org.ura),
        Role::Probe(label) => format!("{label} client {}", org.ura),
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&[
        (DnType::CountryName, COUNTRY.into()),
        (DnType::OrganizationName, org.name.as_str().into()),
        (
            DnType::CustomDnType(vec![2, 5, 4, 5]),
            DnValue::PrintableString(ura),
        ),
        (DnType::CommonName, common_name.into()),
    ]);
    params.subject_alt_names = vec![
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        SanType::DnsName(
            "localhost"
                .try_into()
                .map_err(failed("subjectAltName localhost"))?,
        ),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client | Role::Probe(_) => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Builds every file's PEM text in memory.
fn build(spec: &PkiSpec, now: OffsetDateTime) -> Result<Vec<(PkiFile, String)>, PkiError> {
    // The two RSA keys take most of the time; make them on two threads.
    let (harness_client_key, node_client_key) = std::thread::scope(|scope| {
        let harness = scope.spawn(|| new_key(KeyKind::Rsa2048, "harness client key"));
        let node = new_key(KeyKind::Rsa2048, "node client key");
        let harness = harness
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (harness, node)
    });
    let (harness_client_key, node_client_key) = (harness_client_key?, node_client_key?);

    let mut out = Vec::new();
    let root_key = new_key(KeyKind::EcdsaP384, "root CA key")?;
    out.push((PkiFile::RootCaKey, root_key.serialize_pem()));
    let root = CertifiedIssuer::self_signed(
        ca_params(HIERARCHY_ORG, ROOT_CN, Some(1), now, 20),
        root_key,
    )
    .map_err(failed("root CA certificate"))?;
    out.push((PkiFile::RootCa, root.pem()));

    let issuing_key = new_key(KeyKind::EcdsaP384, "issuing CA key")?;
    out.push((PkiFile::IntermediateCaKey, issuing_key.serialize_pem()));
    let issuing = CertifiedIssuer::signed_by(
        ca_params(HIERARCHY_ORG, ISSUING_CN, Some(0), now, 10),
        issuing_key,
        &*root,
    )
    .map_err(failed("issuing CA certificate"))?;
    let issuing_pem = issuing.pem();
    out.push((PkiFile::IntermediateCa, issuing_pem.clone()));

    let valid = (now - Duration::days(1), now + Duration::days(365));
    let mut issue = |org: &Organisation,
                     role: Role,
                     key: KeyPair,
                     window: (OffsetDateTime, OffsetDateTime),
                     files: [PkiFile; 2],
                     what: &'static str|
     -> Result<SerialNumber, PkiError> {
        let params = leaf_params(org, role, window.0, window.1)?;
        let serial = params.serial_number.clone().unwrap_or_else(random_serial);
        let cert = params.signed_by(&key, &*issuing).map_err(failed(what))?;
        out.push((files[0], format!("{}{issuing_pem}", cert.pem())));
        out.push((files[1], key.serialize_pem()));
        Ok(serial)
    };
    issue(
        &spec.harness,
        Role::Server,
        new_key(KeyKind::EcdsaP256, "harness server key")?,
        valid,
        [PkiFile::HarnessServer, PkiFile::HarnessServerKey],
        "harness server certificate",
    )?;
    issue(
        &spec.harness,
        Role::Client,
        harness_client_key,
        valid,
        [PkiFile::HarnessClient, PkiFile::HarnessClientKey],
        "harness client certificate",
    )?;
    issue(
        &spec.node,
        Role::Server,
        new_key(KeyKind::EcdsaP256, "node server key")?,
        valid,
        [PkiFile::NodeServer, PkiFile::NodeServerKey],
        "node server certificate",
    )?;
    issue(
        &spec.node,
        Role::Client,
        node_client_key,
        valid,
        [PkiFile::NodeClient, PkiFile::NodeClientKey],
        "node client certificate",
    )?;
    let revoked = issue(
        &spec.harness,
        Role::Probe("revoked"),
        new_key(KeyKind::EcdsaP256, "revoked client key")?,
        valid,
        [PkiFile::RevokedClient, PkiFile::RevokedClientKey],
        "revoked client certificate",
    )?;
    issue(
        &spec.other,
        Role::Client,
        new_key(KeyKind::EcdsaP256, "other organisation's client key")?,
        valid,
        [PkiFile::OtherClient, PkiFile::OtherClientKey],
        "other organisation's client certificate",
    )?;
    issue(
        &spec.harness,
        Role::Probe("expired"),
        new_key(KeyKind::EcdsaP256, "expired client key")?,
        (now - Duration::days(395), now - Duration::days(30)),
        [PkiFile::ExpiredClient, PkiFile::ExpiredClientKey],
        "expired client certificate",
    )?;

    let crl = |revoked_certs: Vec<RevokedCertParams>| CertificateRevocationListParams {
        this_update: now - Duration::hours(1),
        // As long as the leaf certificates: verifiers refuse chains whose CRL has expired.
        next_update: valid.1,
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let root_crl = crl(Vec::new())
        .signed_by(&*root)
        .and_then(|c| c.pem())
        .map_err(failed("root CA CRL"))?;
    out.push((PkiFile::RootCrl, root_crl));
    let issuing_crl = crl(vec![RevokedCertParams {
        serial_number: revoked,
        revocation_time: now - Duration::hours(1),
        reason_code: Some(RevocationReason::KeyCompromise),
        invalidity_date: None,
    }])
    .signed_by(&*issuing)
    .and_then(|c| c.pem())
    .map_err(failed("issuing CA CRL"))?;
    out.push((PkiFile::IntermediateCrl, issuing_crl));

    let foreign_key = new_key(KeyKind::EcdsaP256, "foreign CA key")?;
    out.push((PkiFile::ForeignCaKey, foreign_key.serialize_pem()));
    let foreign = CertifiedIssuer::self_signed(
        ca_params(FOREIGN_ORG, FOREIGN_CN, Some(0), now, 10),
        foreign_key,
    )
    .map_err(failed("foreign CA certificate"))?;
    out.push((PkiFile::ForeignCa, foreign.pem()));
    let foreign_client_key = new_key(KeyKind::EcdsaP256, "foreign client key")?;
    let foreign_client = leaf_params(&spec.harness, Role::Probe("foreign"), valid.0, valid.1)?
        .signed_by(&foreign_client_key, &*foreign)
        .map_err(failed("foreign client certificate"))?;
    out.push((PkiFile::ForeignClient, foreign_client.pem()));
    out.push((
        PkiFile::ForeignClientKey,
        foreign_client_key.serialize_pem(),
    ));

    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_written_once_with_private_keys_readable_by_the_owner_only() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let files = generate(&PkiSpec::default(), dir.path()).expect("the PKI is generated");
        assert!(files.is_complete());
        let readme = std::fs::read_to_string(dir.path().join("README.txt")).unwrap();
        for file in PkiFile::ALL {
            assert!(
                readme.contains(file.name()),
                "README.txt lists {}",
                file.name()
            );
            let text = std::fs::read_to_string(files.path(file)).unwrap();
            let expected = if file.is_secret() {
                "-----BEGIN PRIVATE KEY-----"
            } else if file.name().ends_with(".crl.pem") {
                "-----BEGIN X509 CRL-----"
            } else {
                "-----BEGIN CERTIFICATE-----"
            };
            assert!(
                text.starts_with(expected),
                "{} starts with {expected}",
                file.name()
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(files.path(file))
                    .unwrap()
                    .permissions()
                    .mode();
                let wanted = if file.is_secret() { 0o600 } else { 0o644 };
                assert_eq!(mode & 0o777, wanted, "{}", file.name());
            }
        }
        assert!(matches!(
            generate(&PkiSpec::default(), dir.path()),
            Err(PkiError::Exists { .. })
        ));
    }
}

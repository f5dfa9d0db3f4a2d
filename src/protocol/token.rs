//! OAuth2 token requests as protocol.md §3 describes: the JWT-bearer grant with a client
//! assertion, the authorization assertion, and, when pulling, the authorization base.
//!
//! Assertions are signed JWS (compact serialization) by a [`JwsSigner`]; the one shipped is
//! [`CertificateSigner`], which signs with the private key of a client certificate (PS256 by
//! default, RS256 or ES256) and names the certificate in `kid` and, optionally, `x5c`.
//! [`AssertionValidator`] accepts PS256, RS256, ES256, ES384 and ES512, never `none`: it
//! verifies the signature with the public key of a certificate chain that chains to the
//! configured CA (the `x5c` header when present, otherwise the TLS client certificate of
//! the connection the request came in on), then checks the claims.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self as lc, EcdsaKeyPair, EcdsaSigningAlgorithm, RsaKeyPair, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls::pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, PrivateKeyDer,
    SignatureVerificationAlgorithm, alg_id,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::transport::ChainVerifier;

/// `grant_type` of the token request.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// `client_assertion_type` of the token request.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A JWS `alg` the protocol allows (protocol.md §3). `none` is not one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsAlg {
    /// RSASSA-PSS with SHA-256: the one emitted by default.
    Ps256,
    Rs256,
    Es256,
    Es384,
    Es512,
}

impl JwsAlg {
    /// Every accepted algorithm.
    pub const ACCEPTED: [JwsAlg; 5] = [
        JwsAlg::Ps256,
        JwsAlg::Rs256,
        JwsAlg::Es256,
        JwsAlg::Es384,
        JwsAlg::Es512,
    ];

    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            JwsAlg::Ps256 => "PS256",
            JwsAlg::Rs256 => "RS256",
            JwsAlg::Es256 => "ES256",
            JwsAlg::Es384 => "ES384",
            JwsAlg::Es512 => "ES512",
        }
    }

    /// The algorithm with this `alg` value (case-sensitive, as RFC 7515 says).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ACCEPTED.into_iter().find(|alg| alg.name() == name)
    }
}

impl fmt::Display for JwsAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an assertion could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("failed to read the signing key: it is no RSA or ECDSA (P-256, P-384, P-521) key")]
    Key,
    #[error("failed to sign with {alg}: the signing key is {key}")]
    Mismatch { alg: JwsAlg, key: &'static str },
    #[error("failed to sign: the signing certificate chain is empty")]
    NoCertificate,
    #[error("failed to sign the assertion")]
    Signing,
}

/// Produces the header fields and signature of a JWS in compact serialization.
pub trait JwsSigner: Send + Sync {
    /// The `alg` header value.
    fn alg(&self) -> JwsAlg;
    /// The `kid` header value, if any.
    fn kid(&self) -> Option<&str>;
    /// The `x5c` header value (standard base64 DER, leaf first), if any.
    fn x5c(&self) -> Option<&[String]>;
    /// Signs `header.payload` (both already base64url) and returns the raw signature.
    fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, SignError>;
}

enum SigningKey {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair, JwsAlg),
}

/// Signs with the private key of a client certificate. `kid` is the certificate's SHA-256
/// thumbprint (base64url, as `x5t#S256`); `x5c` carries the chain when asked for.
pub struct CertificateSigner {
    alg: JwsAlg,
    key: SigningKey,
    kid: String,
    x5c: Option<Vec<String>>,
    rng: SystemRandom,
}

impl fmt::Debug for CertificateSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateSigner")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("x5c", &self.x5c.is_some())
            .finish_non_exhaustive()
    }
}

const EC_CURVES: [(&EcdsaSigningAlgorithm, JwsAlg); 3] = [
    (&lc::ECDSA_P256_SHA256_FIXED_SIGNING, JwsAlg::Es256),
    (&lc::ECDSA_P384_SHA384_FIXED_SIGNING, JwsAlg::Es384),
    (&lc::ECDSA_P521_SHA512_FIXED_SIGNING, JwsAlg::Es512),
];

impl CertificateSigner {
    /// A signer for `key`, whose certificate chain (leaf first) is `chain`. Without `alg`,
    /// an RSA key signs PS256 and an ECDSA key the ES algorithm of its curve.
    pub fn new(
        key: &PrivateKeyDer<'_>,
        chain: &[CertificateDer<'_>],
        alg: Option<JwsAlg>,
    ) -> Result<Self, SignError> {
        let leaf = chain.first().ok_or(SignError::NoCertificate)?;
        let der = key.secret_der();
        let rsa = RsaKeyPair::from_pkcs8(der).or_else(|_| RsaKeyPair::from_der(der));
        let key = match rsa {
            Ok(rsa) => SigningKey::Rsa(rsa),
            Err(_) => EC_CURVES
                .iter()
                .find_map(|(curve, alg)| {
                    EcdsaKeyPair::from_private_key_der(curve, der)
                        .ok()
                        .map(|pair| SigningKey::Ecdsa(pair, *alg))
                })
                .ok_or(SignError::Key)?,
        };
        let alg = match (&key, alg) {
            (SigningKey::Rsa(_), None) => JwsAlg::Ps256,
            (SigningKey::Rsa(_), Some(alg @ (JwsAlg::Ps256 | JwsAlg::Rs256))) => alg,
            (SigningKey::Rsa(_), Some(alg)) => return Err(SignError::Mismatch { alg, key: "RSA" }),
            (SigningKey::Ecdsa(_, curve_alg), None) => *curve_alg,
            (SigningKey::Ecdsa(_, curve_alg), Some(alg)) if alg == *curve_alg => alg,
            (SigningKey::Ecdsa(..), Some(alg)) => {
                return Err(SignError::Mismatch {
                    alg,
                    key: "an ECDSA key of another curve",
                });
            }
        };
        let thumbprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
        Ok(Self {
            alg,
            key,
            kid: URL_SAFE_NO_PAD.encode(thumbprint.as_ref()),
            x5c: None,
            rng: SystemRandom::new(),
        })
    }

    /// Puts the certificate chain (leaf first) into every header as `x5c`.
    pub fn with_x5c(mut self, chain: &[CertificateDer<'_>]) -> Self {
        self.x5c = Some(chain.iter().map(|c| STANDARD.encode(c.as_ref())).collect());
        self
    }
}

impl JwsSigner for CertificateSigner {
    fn alg(&self) -> JwsAlg {
        self.alg
    }

    fn kid(&self) -> Option<&str> {
        Some(&self.kid)
    }

    fn x5c(&self) -> Option<&[String]> {
        self.x5c.as_deref()
    }

    fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, SignError> {
        match &self.key {
            SigningKey::Rsa(pair) => {
                let padding: &'static dyn lc::RsaEncoding = match self.alg {
                    JwsAlg::Rs256 => &lc::RSA_PKCS1_SHA256,
                    _ => &lc::RSA_PSS_SHA256,
                };
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &self.rng, signing_input, &mut signature)
                    .map_err(|_| SignError::Signing)?;
                Ok(signature)
            }
            SigningKey::Ecdsa(pair, _) => pair
                .sign(&self.rng, signing_input)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| SignError::Signing),
        }
    }
}

/// Checks a JWS signature with a certificate's public key; the verifier webpki applies to
/// the certificate's `subjectPublicKeyInfo`. ECDSA signatures are the fixed-size `r || s`
/// of RFC 7518, not DER.
#[derive(Debug)]
struct JwsVerification(JwsAlg);

impl SignatureVerificationAlgorithm for JwsVerification {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let algorithm: &'static dyn lc::VerificationAlgorithm = match self.0 {
            JwsAlg::Ps256 => &lc::RSA_PSS_2048_8192_SHA256,
            JwsAlg::Rs256 => &lc::RSA_PKCS1_2048_8192_SHA256,
            JwsAlg::Es256 => &lc::ECDSA_P256_SHA256_FIXED,
            JwsAlg::Es384 => &lc::ECDSA_P384_SHA384_FIXED,
            JwsAlg::Es512 => &lc::ECDSA_P521_SHA512_FIXED,
        };
        UnparsedPublicKey::new(algorithm, public_key)
            .verify(message, signature)
            .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        match self.0 {
            JwsAlg::Ps256 | JwsAlg::Rs256 => alg_id::RSA_ENCRYPTION,
            JwsAlg::Es256 => alg_id::ECDSA_P256,
            JwsAlg::Es384 => alg_id::ECDSA_P384,
            JwsAlg::Es512 => alg_id::ECDSA_P521,
        }
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        match self.0 {
            JwsAlg::Ps256 => alg_id::RSA_PSS_SHA256,
            JwsAlg::Rs256 => alg_id::RSA_PKCS1_SHA256,
            JwsAlg::Es256 => alg_id::ECDSA_SHA256,
            JwsAlg::Es384 => alg_id::ECDSA_SHA384,
            JwsAlg::Es512 => alg_id::ECDSA_SHA512,
        }
    }
}

/// Claims of a client or authorization assertion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AssertionClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nbf: Option<i64>,
}

impl AssertionClaims {
    /// Claims for `client` talking to `audience`, valid for `lifetime_s` from `now`.
    pub fn new(client: &str, audience: &str, now: i64, lifetime_s: i64) -> Self {
        Self {
            iss: client.to_owned(),
            sub: client.to_owned(),
            aud: audience.to_owned(),
            iat: now,
            exp: now + lifetime_s,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: None,
        }
    }
}

/// Builds a signed compact JWS over `claims`, with the header `typ: JWT`, `alg`, and the
/// signer's `kid` and `x5c`.
pub fn encode_jwt(claims: &AssertionClaims, signer: &dyn JwsSigner) -> Result<String, SignError> {
    let mut header = json!({ "typ": "JWT", "alg": signer.alg().name() });
    if let Some(kid) = signer.kid() {
        header["kid"] = json!(kid);
    }
    if let Some(x5c) = signer.x5c() {
        header["x5c"] = json!(x5c);
    }
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_string(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(signer.sign(signing_input.as_bytes())?);
    Ok(format!("{signing_input}.{signature}"))
}

/// Why an assertion was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("the assertion is not a compact JWS with three parts")]
    Shape,
    #[error("the assertion's {0} is not base64url JSON")]
    Encoding(&'static str),
    #[error("the assertion misses the claim or has a wrong type: {0}")]
    Claims(String),
    #[error("the audience is `{found}`, expected `{expected}`")]
    Audience { expected: String, found: String },
    #[error("the assertion expired at {exp} (now {now}, leeway {leeway}s)")]
    Expired { exp: i64, now: i64, leeway: i64 },
    #[error("the assertion is issued in the future (iat {iat}, now {now}, leeway {leeway}s)")]
    Future { iat: i64, now: i64, leeway: i64 },
    #[error(
        "the assertion claims to live {lifetime} s (exp − iat); at most {MAX_ASSERTION_LIFETIME_S} s is accepted"
    )]
    Lifetime { lifetime: i64 },
    #[error("iss and sub differ")]
    IssSub,
    #[error("the jti was used before")]
    Replayed,
    #[error(
        "the assertion's alg `{0}` is not accepted (expected PS256, RS256, ES256, ES384 or ES512)"
    )]
    Algorithm(String),
    #[error("the assertion names no certificate: no x5c header and no TLS client certificate")]
    NoCertificate,
    #[error("the assertion's signing certificate is not trusted: {0}")]
    Untrusted(String),
    #[error("the assertion's signature does not verify with its certificate's public key")]
    Signature,
}

/// Decodes the header and claims of a compact JWS without checking the signature.
pub fn decode_jwt(token: &str) -> Result<(Value, AssertionClaims), AssertionError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(AssertionError::Shape);
    }
    let decode = |part: &str, what| {
        URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .ok_or(AssertionError::Encoding(what))
    };
    let header = decode(parts[0], "header")?;
    let claims = decode(parts[1], "payload")?;
    let claims: AssertionClaims =
        serde_json::from_value(claims).map_err(|e| AssertionError::Claims(e.to_string()))?;
    Ok((header, claims))
}

/// Checks a client assertion: its signature against a certificate that chains to the
/// configured CA, then its claims: audience, time window with leeway, iss = sub, and that
/// its `jti` is new.
pub struct AssertionValidator {
    pub audience: String,
    pub leeway_s: i64,
    chains: ChainVerifier,
    /// Each `jti` seen, with the `exp` of its assertion; kept until that has passed.
    seen_jti: Mutex<HashMap<String, i64>>,
    /// Where each new `jti` is also written, so that a restart still knows it.
    journal: Mutex<Option<std::fs::File>>,
}

/// The longest lifetime (`exp` − `iat`) an assertion may claim: the agreement's
/// assertions live 60 s (protocol.md §3); one that lives for hours is a reusable credential.
pub const MAX_ASSERTION_LIFETIME_S: i64 = 300;

impl AssertionValidator {
    /// A validator for assertions addressed to `audience`, signed with a key whose
    /// certificate `chains` accepts.
    pub fn new(audience: &str, leeway_s: i64, chains: ChainVerifier) -> Self {
        Self {
            audience: audience.to_owned(),
            leeway_s,
            chains,
            seen_jti: Mutex::new(HashMap::new()),
            journal: Mutex::new(None),
        }
    }

    /// Keeps the `jti` memory in the file at `path` (JSON lines), so that an assertion is
    /// refused as a replay after a restart too: reads the entries that have not expired,
    /// rewrites the file with them, and appends each new one.
    pub fn remember_in(self, path: &std::path::Path) -> std::io::Result<Self> {
        let now = unix_now();
        let kept: HashMap<String, i64> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<(String, i64)>(line).ok())
            .filter(|(_, exp)| exp + self.leeway_s >= now)
            .collect();
        let mut text = String::new();
        for entry in &kept {
            text.push_str(&serde_json::to_string(&entry).unwrap_or_default());
            text.push('\n');
        }
        std::fs::write(path, text)?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        *self.seen_jti.lock().unwrap_or_else(|e| e.into_inner()) = kept;
        *self.journal.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
        Ok(self)
    }

    /// Validates and remembers the `jti`. `presented` is the TLS client certificate chain of
    /// the connection (empty on plain HTTP); it is used when the header has no `x5c`.
    pub fn validate(
        &self,
        token: &str,
        now: i64,
        presented: &[CertificateDer<'static>],
    ) -> Result<AssertionClaims, AssertionError> {
        let (header, claims) = decode_jwt(token)?;
        self.verify_signature(token, &header, presented, now)?;
        if claims.aud != self.audience {
            return Err(AssertionError::Audience {
                expected: self.audience.clone(),
                found: claims.aud,
            });
        }
        if claims.exp + self.leeway_s < now {
            return Err(AssertionError::Expired {
                exp: claims.exp,
                now,
                leeway: self.leeway_s,
            });
        }
        let not_before = claims.nbf.unwrap_or(claims.iat).max(claims.iat);
        if not_before - self.leeway_s > now {
            return Err(AssertionError::Future {
                iat: claims.iat,
                now,
                leeway: self.leeway_s,
            });
        }
        if claims.iss != claims.sub {
            return Err(AssertionError::IssSub);
        }
        if claims.exp.saturating_sub(claims.iat) > MAX_ASSERTION_LIFETIME_S {
            return Err(AssertionError::Lifetime {
                lifetime: claims.exp.saturating_sub(claims.iat),
            });
        }
        let mut seen = self.seen_jti.lock().unwrap_or_else(|e| e.into_inner());
        // An expired assertion is refused anyway: its jti need not be kept.
        seen.retain(|_, exp| *exp + self.leeway_s >= now);
        if seen.insert(claims.jti.clone(), claims.exp).is_some() {
            return Err(AssertionError::Replayed);
        }
        if let Some(file) = self
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            let line = serde_json::to_string(&(&claims.jti, claims.exp)).unwrap_or_default();
            // A write that fails costs only the memory across a restart.
            let _ = std::io::Write::write_all(file, format!("{line}\n").as_bytes());
        }
        Ok(claims)
    }

    /// Checks `alg`, finds the certificate chain (`x5c`, else the TLS client certificate),
    /// verifies that it chains to the CA, and verifies the signature with its leaf's key.
    fn verify_signature(
        &self,
        token: &str,
        header: &Value,
        presented: &[CertificateDer<'static>],
        now: i64,
    ) -> Result<(), AssertionError> {
        let alg_name = header["alg"].as_str().unwrap_or_default();
        let alg = JwsAlg::from_name(alg_name)
            .ok_or_else(|| AssertionError::Algorithm(alg_name.into()))?;
        let (signing_input, signature) = token.rsplit_once('.').ok_or(AssertionError::Shape)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AssertionError::Encoding("signature"))?;

        let chain = match header.get("x5c") {
            Some(x5c) => x5c_chain(x5c)?,
            None => presented.to_vec(),
        };
        if chain.is_empty() {
            return Err(AssertionError::NoCertificate);
        }
        self.chains
            .verify(&chain, now)
            .map_err(AssertionError::Untrusted)?;
        let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
            AssertionError::Untrusted(format!("the certificate is unreadable: {e}"))
        })?;
        leaf.verify_signature(&JwsVerification(alg), signing_input.as_bytes(), &signature)
            .map_err(|_| AssertionError::Signature)
    }
}

/// The certificates of an `x5c` header: standard base64 DER, leaf first (RFC 7515 §4.1.6).
fn x5c_chain(x5c: &Value) -> Result<Vec<CertificateDer<'static>>, AssertionError> {
    let entries = x5c.as_array().ok_or(AssertionError::Encoding("x5c"))?;
    entries
        .iter()
        .map(|entry| {
            entry
                .as_str()
                .and_then(|text| STANDARD.decode(text).ok())
                .map(CertificateDer::from)
                .ok_or(AssertionError::Encoding("x5c"))
        })
        .collect()
}

/// The form fields of a token request; without an authorization assertion only to probe
/// that a token endpoint refuses such a request.
pub fn token_request_form(
    client_assertion: &str,
    authorization_assertion: Option<&str>,
    authorization_base: Option<&str>,
) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", GRANT_TYPE);
    if let Some(assertion) = authorization_assertion {
        form.append_pair("assertion", assertion);
    }
    form.append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE);
    form.append_pair("client_assertion", client_assertion);
    if let Some(base) = authorization_base {
        form.append_pair("authorization_base", base);
    }
    form.finish()
}

/// Parses an `application/x-www-form-urlencoded` body into pairs.
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// The first value of a form field.
pub fn form_value<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// RFC 6749 token response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
}

/// The lifetime an RFC 6749 §5.1 token response gives in `expires_in`: `None` when it has
/// none, an error naming the value when it is not a non-negative number of seconds.
pub fn expires_in(body: &Value) -> Result<Option<std::time::Duration>, String> {
    let value = &body["expires_in"];
    if value.is_null() {
        return Ok(None);
    }
    let lifetime = match value.as_u64() {
        Some(seconds) => Some(std::time::Duration::from_secs(seconds)),
        None => value
            .as_f64()
            .and_then(|seconds| std::time::Duration::try_from_secs_f64(seconds).ok()),
    };
    lifetime.map(Some).ok_or_else(|| {
        let shown: String = value.to_string().chars().take(40).collect();
        format!("the token response's expires_in is {shown}, not a non-negative number of seconds (RFC 6749 §5.1)")
    })
}

/// RFC 6749 error body.
pub fn token_error(error: &str, description: &str) -> Value {
    json!({ "error": error, "error_description": description })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A random opaque token (access tokens and authorization bases).
pub fn opaque_token(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose, SignatureAlgorithm,
    };

    #[test]
    fn expires_in_is_a_non_negative_number_of_seconds() {
        use std::time::Duration;
        let of = |body: Value| expires_in(&body);
        assert_eq!(of(json!({})), Ok(None));
        assert_eq!(
            of(json!({"expires_in": 300})),
            Ok(Some(Duration::from_secs(300)))
        );
        assert_eq!(
            of(json!({"expires_in": 1.5})),
            Ok(Some(Duration::from_millis(1500)))
        );
        assert_eq!(
            of(json!({"expires_in": u64::MAX})),
            Ok(Some(Duration::from_secs(u64::MAX)))
        );
        for bad in [
            json!("300"),
            json!(-5),
            json!(-0.5),
            json!(true),
            json!([1]),
        ] {
            let problem = of(json!({ "expires_in": bad })).unwrap_err();
            assert!(problem.contains("expires_in"), "{problem}");
        }
    }

    /// A CA and its client certificates, one per key type.
    struct Keys {
        ca: CertifiedIssuer<'static, KeyPair>,
        chains: ChainVerifier,
        rsa: (PrivateKeyDer<'static>, Vec<CertificateDer<'static>>),
        ec: [(PrivateKeyDer<'static>, Vec<CertificateDer<'static>>); 3],
    }

    fn client(
        ca: &CertifiedIssuer<'static, KeyPair>,
        key: KeyPair,
    ) -> (PrivateKeyDer<'static>, Vec<CertificateDer<'static>>) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &**ca).unwrap();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (der, vec![cert.der().clone()])
    }

    fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        CertifiedIssuer::self_signed(params, key).unwrap()
    }

    fn keys() -> Keys {
        let ca = ca();
        let ec =
            |alg: &'static SignatureAlgorithm| client(&ca, KeyPair::generate_for(alg).unwrap());
        let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048);
        let rsa = client(&ca, rsa.unwrap());
        let ec = [
            ec(&rcgen::PKCS_ECDSA_P256_SHA256),
            ec(&rcgen::PKCS_ECDSA_P384_SHA384),
            ec(&rcgen::PKCS_ECDSA_P521_SHA512),
        ];
        Keys {
            chains: ChainVerifier::new(vec![ca.der().clone()], Vec::new()).unwrap(),
            ca,
            rsa,
            ec,
        }
    }

    fn signer(
        identity: &(PrivateKeyDer<'static>, Vec<CertificateDer<'static>>),
    ) -> CertificateSigner {
        CertificateSigner::new(&identity.0, &identity.1, None).unwrap()
    }

    const AUDIENCE: &str = "https://as.example/token";

    #[test]
    fn every_accepted_algorithm_verifies_with_the_presented_certificate_or_x5c() {
        let keys = keys();
        let validator = AssertionValidator::new(AUDIENCE, 5, keys.chains.clone());
        let now = unix_now();
        let mut cases = vec![
            (signer(&keys.rsa), &keys.rsa.1, JwsAlg::Ps256),
            (
                CertificateSigner::new(&keys.rsa.0, &keys.rsa.1, Some(JwsAlg::Rs256)).unwrap(),
                &keys.rsa.1,
                JwsAlg::Rs256,
            ),
        ];
        for (identity, alg) in keys
            .ec
            .iter()
            .zip([JwsAlg::Es256, JwsAlg::Es384, JwsAlg::Es512])
        {
            cases.push((signer(identity), &identity.1, alg));
        }
        for (signer, chain, alg) in cases {
            assert_eq!(signer.alg(), alg);
            let claims = AssertionClaims::new("client", AUDIENCE, now, 60);
            let jwt = encode_jwt(&claims, &signer).unwrap();
            let (header, _) = decode_jwt(&jwt).unwrap();
            assert_eq!(header["typ"], "JWT");
            assert_eq!(header["alg"], alg.name());
            assert!(header["kid"].is_string() && header.get("x5c").is_none());
            assert_eq!(validator.validate(&jwt, now, chain), Ok(claims), "{alg}");

            let with_x5c = signer.with_x5c(chain);
            let claims = AssertionClaims::new("client", AUDIENCE, now, 60);
            let jwt = encode_jwt(&claims, &with_x5c).unwrap();
            assert_eq!(validator.validate(&jwt, now, &[]), Ok(claims), "{alg} x5c");
        }
    }

    #[test]
    fn long_lived_assertions_are_refused_and_spent_jtis_are_forgotten() {
        let keys = keys();
        let validator = AssertionValidator::new(AUDIENCE, 5, keys.chains.clone());
        let now = unix_now();
        let sign = |claims: &AssertionClaims| encode_jwt(claims, &signer(&keys.rsa)).unwrap();
        let mut long = AssertionClaims::new("client", AUDIENCE, now, MAX_ASSERTION_LIFETIME_S + 1);
        long.iat = now;
        assert_eq!(
            validator.validate(&sign(&long), now, &keys.rsa.1),
            Err(AssertionError::Lifetime {
                lifetime: MAX_ASSERTION_LIFETIME_S + 1
            })
        );
        let short = sign(&AssertionClaims::new("client", AUDIENCE, now, 60));
        assert!(validator.validate(&short, now, &keys.rsa.1).is_ok());
        assert_eq!(
            validator.validate(&short, now + 30, &keys.rsa.1),
            Err(AssertionError::Replayed)
        );
        // Later, the first jti has expired and is forgotten; the set stays small.
        let later = now + 120;
        let fresh = sign(&AssertionClaims::new("client", AUDIENCE, later, 60));
        assert!(validator.validate(&fresh, later, &keys.rsa.1).is_ok());
        assert_eq!(validator.seen_jti.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_remembered_jti_is_refused_after_a_restart_until_it_expires() {
        let keys = keys();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jti.jsonl");
        let now = unix_now();
        let assertion = encode_jwt(
            &AssertionClaims::new("client", AUDIENCE, now, 60),
            &signer(&keys.rsa),
        )
        .unwrap();
        let first = AssertionValidator::new(AUDIENCE, 5, keys.chains.clone())
            .remember_in(&path)
            .unwrap();
        assert!(first.validate(&assertion, now, &keys.rsa.1).is_ok());
        drop(first);
        // A "restart": a new validator on the same file.
        let second = AssertionValidator::new(AUDIENCE, 5, keys.chains.clone())
            .remember_in(&path)
            .unwrap();
        assert_eq!(
            second.validate(&assertion, now + 1, &keys.rsa.1),
            Err(AssertionError::Replayed)
        );
        // Garbage lines are skipped, and nothing is kept of an expired assertion.
        std::fs::write(&path, "not json\n[\"old\", 1]\n").unwrap();
        let third = AssertionValidator::new(AUDIENCE, 5, keys.chains.clone())
            .remember_in(&path)
            .unwrap();
        assert!(third.seen_jti.lock().unwrap().is_empty());
    }

    #[test]
    fn a_tampered_payload_fails_the_signature_check() {
        let keys = keys();
        let validator = AssertionValidator::new(AUDIENCE, 5, keys.chains.clone());
        let now = unix_now();
        let jwt = encode_jwt(
            &AssertionClaims::new("client", AUDIENCE, now, 60),
            &signer(&keys.rsa),
        )
        .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        let forged = AssertionClaims::new("intruder", AUDIENCE, now, 60);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_string(&forged).unwrap());
        let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert_eq!(
            validator.validate(&tampered, now, &keys.rsa.1),
            Err(AssertionError::Signature)
        );
    }

    #[test]
    fn a_signature_by_another_key_than_the_certificate_fails() {
        let keys = keys();
        let validator = AssertionValidator::new(AUDIENCE, 5, keys.chains.clone());
        let now = unix_now();
        let claims = AssertionClaims::new("client", AUDIENCE, now, 60);
        let p256 = || KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();

        // A trusted certificate, but of another P-256 key than the one that signed.
        let other = client(&keys.ca, p256());
        let jwt = encode_jwt(&claims, &signer(&keys.ec[0])).unwrap();
        assert_eq!(
            validator.validate(&jwt, now, &other.1),
            Err(AssertionError::Signature)
        );
        let lying_x5c = CertificateSigner::new(&keys.ec[0].0, &other.1, None)
            .unwrap()
            .with_x5c(&other.1);
        let jwt = encode_jwt(&claims, &lying_x5c).unwrap();
        assert_eq!(
            validator.validate(&jwt, now, &[]),
            Err(AssertionError::Signature)
        );

        // An RSA signature checked against an EC certificate.
        let jwt = encode_jwt(&claims, &signer(&keys.rsa)).unwrap();
        assert_eq!(
            validator.validate(&jwt, now, &keys.ec[0].1),
            Err(AssertionError::Signature)
        );

        // A correct signature by a certificate of a CA the validator does not trust.
        let stranger = client(&ca(), p256());
        let jwt = encode_jwt(&claims, &signer(&stranger)).unwrap();
        assert!(matches!(
            validator.validate(&jwt, now, &stranger.1),
            Err(AssertionError::Untrusted(_))
        ));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let keys = keys();
        let validator = AssertionValidator::new(AUDIENCE, 5, keys.chains.clone());
        let now = unix_now();
        let claims = URL_SAFE_NO_PAD
            .encode(serde_json::to_string(&AssertionClaims::new("c", AUDIENCE, now, 60)).unwrap());
        for alg in ["none", "None", "HS256", "ps256", ""] {
            let header = URL_SAFE_NO_PAD.encode(json!({ "typ": "JWT", "alg": alg }).to_string());
            let unsigned = format!("{header}.{claims}.");
            assert_eq!(
                validator.validate(&unsigned, now, &keys.rsa.1),
                Err(AssertionError::Algorithm(alg.to_owned()))
            );
        }
        let header = URL_SAFE_NO_PAD.encode(json!({ "typ": "JWT" }).to_string());
        assert!(matches!(
            validator.validate(&format!("{header}.{claims}.c2ln"), now, &keys.rsa.1),
            Err(AssertionError::Algorithm(_))
        ));
    }

    #[test]
    fn without_a_certificate_nothing_is_accepted() {
        let keys = keys();
        let validator = AssertionValidator::new(AUDIENCE, 5, keys.chains.clone());
        let now = unix_now();
        let jwt = encode_jwt(
            &AssertionClaims::new("c", AUDIENCE, now, 60),
            &signer(&keys.rsa),
        )
        .unwrap();
        assert_eq!(
            validator.validate(&jwt, now, &[]),
            Err(AssertionError::NoCertificate)
        );
    }

    #[test]
    fn a_key_signs_only_the_algorithms_of_its_type() {
        let keys = keys();
        assert!(matches!(
            CertificateSigner::new(&keys.rsa.0, &keys.rsa.1, Some(JwsAlg::Es256)),
            Err(SignError::Mismatch { .. })
        ));
        assert!(matches!(
            CertificateSigner::new(&keys.ec[0].0, &keys.ec[0].1, Some(JwsAlg::Ps256)),
            Err(SignError::Mismatch { .. })
        ));
        assert!(matches!(
            CertificateSigner::new(&keys.rsa.0, &[], None),
            Err(SignError::NoCertificate)
        ));
    }

    #[test]
    fn claims_are_checked_once_with_audience_and_time_window_leeway() {
        let keys = keys();
        let validator = AssertionValidator::new(AUDIENCE, 5, keys.chains.clone());
        let signer = signer(&keys.ec[0]);
        let chain = &keys.ec[0].1;
        let now = unix_now();
        let sign = |claims: &AssertionClaims| encode_jwt(claims, &signer).unwrap();

        let claims = AssertionClaims::new("client", AUDIENCE, now, 60);
        let jwt = sign(&claims);
        assert_eq!(validator.validate(&jwt, now + 10, chain), Ok(claims));
        assert_eq!(
            validator.validate(&jwt, now + 10, chain),
            Err(AssertionError::Replayed)
        );

        let wrong = AssertionClaims::new("c", "https://other/token", now, 60);
        assert!(matches!(
            validator.validate(&sign(&wrong), now, chain),
            Err(AssertionError::Audience { .. })
        ));
        let expired = AssertionClaims::new("c", AUDIENCE, now - 66, 60);
        assert!(matches!(
            validator.validate(&sign(&expired), now, chain),
            Err(AssertionError::Expired { .. })
        ));
        let early = AssertionClaims::new("c", AUDIENCE, now + 3, 60);
        assert!(validator.validate(&sign(&early), now, chain).is_ok());
        let future = AssertionClaims::new("c", AUDIENCE, now + 300, 60);
        assert!(matches!(
            validator.validate(&sign(&future), now, chain),
            Err(AssertionError::Future { .. })
        ));
        let mut mixed = AssertionClaims::new("c", AUDIENCE, now, 60);
        mixed.sub = "d".to_owned();
        assert_eq!(
            validator.validate(&sign(&mixed), now, chain),
            Err(AssertionError::IssSub)
        );
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let keys = keys();
        let validator = AssertionValidator::new("a", 5, keys.chains);
        assert_eq!(validator.validate("x", 0, &[]), Err(AssertionError::Shape));
        assert!(matches!(
            validator.validate("a.b.c", 0, &[]),
            Err(AssertionError::Encoding(_))
        ));
    }

    #[test]
    fn the_form_carries_the_authorization_base_only_when_pulling() {
        let form = token_request_form("ca", Some("aa"), Some("ab-1"));
        let pairs = parse_form(form.as_bytes());
        assert_eq!(form_value(&pairs, "authorization_base"), Some("ab-1"));
        assert_eq!(form_value(&pairs, "grant_type"), Some(GRANT_TYPE));
        let form = token_request_form("ca", Some("aa"), None);
        assert_eq!(
            form_value(&parse_form(form.as_bytes()), "authorization_base"),
            None
        );
    }
}

//! OAuth2 token requests as protocol.md §3 describes: the JWT-bearer grant with a client
//! assertion, the authorization assertion, and, when pulling, the authorization base.
//!
//! The JWS signature is produced by a [`JwsSigner`]. This build ships only the
//! [`UnsignedJws`] signer (`alg: none`), used on plain loopback HTTP until mutual TLS and
//! signed assertions land; receivers validate every claim but not yet the signature.

use std::collections::HashSet;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `grant_type` of the token request.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// `client_assertion_type` of the token request.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Produces a JWS in compact serialization.
pub trait JwsSigner: Send + Sync {
    /// The `alg` header value.
    fn alg(&self) -> &str;
    /// Signs `header.payload` (both already base64url) and returns the signature part.
    fn sign(&self, signing_input: &str) -> String;
}

/// `alg: none`: no signature. Only for the plain-HTTP transport of this build.
pub struct UnsignedJws;

impl JwsSigner for UnsignedJws {
    fn alg(&self) -> &str {
        "none"
    }

    fn sign(&self, _signing_input: &str) -> String {
        String::new()
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

/// Builds a compact JWS over `claims`.
pub fn encode_jwt(claims: &AssertionClaims, signer: &dyn JwsSigner) -> String {
    let header = json!({ "typ": "JWT", "alg": signer.alg() });
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_string(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let signature = signer.sign(&signing_input);
    format!("{signing_input}.{signature}")
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
    #[error("iss and sub differ")]
    IssSub,
    #[error("the jti was used before")]
    Replayed,
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

/// Checks a client assertion's claims: audience, time window with leeway, iss = sub, and
/// that its `jti` is new.
pub struct AssertionValidator {
    pub audience: String,
    pub leeway_s: i64,
    seen_jti: Mutex<HashSet<String>>,
}

impl AssertionValidator {
    /// A validator for assertions addressed to `audience`.
    pub fn new(audience: &str, leeway_s: i64) -> Self {
        Self {
            audience: audience.to_owned(),
            leeway_s,
            seen_jti: Mutex::new(HashSet::new()),
        }
    }

    /// Validates and remembers the `jti`.
    pub fn validate(&self, token: &str, now: i64) -> Result<AssertionClaims, AssertionError> {
        let (_, claims) = decode_jwt(token)?;
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
        let mut seen = self.seen_jti.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.insert(claims.jti.clone()) {
            return Err(AssertionError::Replayed);
        }
        Ok(claims)
    }
}

/// The form fields of a token request.
pub fn token_request_form(
    client_assertion: &str,
    authorization_assertion: &str,
    authorization_base: Option<&str>,
) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", GRANT_TYPE);
    form.append_pair("assertion", authorization_assertion);
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

    #[test]
    fn an_assertion_round_trips_and_is_checked_once() {
        let validator = AssertionValidator::new("http://as/token", 5);
        let claims = AssertionClaims::new("client", "http://as/token", 1000, 60);
        let jwt = encode_jwt(&claims, &UnsignedJws);
        assert_eq!(validator.validate(&jwt, 1010).unwrap(), claims);
        assert_eq!(
            validator.validate(&jwt, 1010),
            Err(AssertionError::Replayed)
        );
    }

    #[test]
    fn audience_and_time_window_are_enforced_with_leeway() {
        let validator = AssertionValidator::new("http://as/token", 5);
        let wrong = AssertionClaims::new("c", "http://other/token", 1000, 60);
        assert!(matches!(
            validator.validate(&encode_jwt(&wrong, &UnsignedJws), 1000),
            Err(AssertionError::Audience { .. })
        ));
        let claims = AssertionClaims::new("c", "http://as/token", 1000, 60);
        let jwt = encode_jwt(&claims, &UnsignedJws);
        assert!(matches!(
            validator.validate(&jwt, 1066),
            Err(AssertionError::Expired { .. })
        ));
        let early = AssertionClaims::new("c", "http://as/token", 1003, 60);
        assert!(
            validator
                .validate(&encode_jwt(&early, &UnsignedJws), 1000)
                .is_ok()
        );
        let future = AssertionClaims::new("c", "http://as/token", 1300, 60);
        assert!(matches!(
            validator.validate(&encode_jwt(&future, &UnsignedJws), 1000),
            Err(AssertionError::Future { .. })
        ));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let validator = AssertionValidator::new("a", 5);
        assert_eq!(validator.validate("x", 0), Err(AssertionError::Shape));
        assert!(matches!(
            validator.validate("a.b.c", 0),
            Err(AssertionError::Encoding(_))
        ));
    }

    #[test]
    fn the_form_carries_the_authorization_base_only_when_pulling() {
        let form = token_request_form("ca", "aa", Some("ab-1"));
        let pairs = parse_form(form.as_bytes());
        assert_eq!(form_value(&pairs, "authorization_base"), Some("ab-1"));
        assert_eq!(form_value(&pairs, "grant_type"), Some(GRANT_TYPE));
        let form = token_request_form("ca", "aa", None);
        assert_eq!(
            form_value(&parse_form(form.as_bytes()), "authorization_base"),
            None
        );
    }
}

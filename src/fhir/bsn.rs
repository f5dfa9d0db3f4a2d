//! The BSN (burgerservicenummer): nine digits kept as a string, checked with the 11-proef.

use std::fmt;

/// A BSN that passed the 11-proef. The digits are kept byte for byte, leading zeros included.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Bsn(String);

/// Why a string is not a valid BSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BsnError {
    #[error("a BSN has exactly 9 digits, found {0} characters")]
    Length(usize),
    #[error("a BSN has only digits 0-9")]
    NotDigits,
    #[error("000000000 is not a BSN")]
    AllZero,
    #[error("the BSN fails the 11-proef")]
    ElevenProof,
}

impl Bsn {
    /// Parses a BSN; 8-digit input is rejected, not padded (protocol profile default).
    pub fn parse(text: &str) -> Result<Self, BsnError> {
        if text.len() != 9 {
            return Err(BsnError::Length(text.chars().count()));
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BsnError::NotDigits);
        }
        if text == "000000000" {
            return Err(BsnError::AllZero);
        }
        if !passes_eleven_proof(text) {
            return Err(BsnError::ElevenProof);
        }
        Ok(Self(text.to_owned()))
    }

    /// The nine digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The 11-proef: weights 9..2 and -1, the weighted sum must be a multiple of 11.
fn passes_eleven_proof(digits: &str) -> bool {
    const WEIGHTS: [i64; 9] = [9, 8, 7, 6, 5, 4, 3, 2, -1];
    let sum: i64 = digits
        .bytes()
        .zip(WEIGHTS)
        .map(|(b, w)| i64::from(b - b'0') * w)
        .sum();
    sum % 11 == 0
}

impl fmt::Display for Bsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Debug output never shows the digits, so a BSN cannot leak through `{:?}` in a log.
impl fmt::Debug for Bsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bsn(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn worked_example_from_the_protocol_is_valid() {
        assert_eq!(Bsn::parse("999000019").unwrap().as_str(), "999000019");
    }

    #[test]
    fn worked_counter_example_fails_the_eleven_proof() {
        assert_eq!(Bsn::parse("999000010"), Err(BsnError::ElevenProof));
    }

    #[test]
    fn eight_digits_are_rejected_not_padded() {
        assert_eq!(Bsn::parse("99900001"), Err(BsnError::Length(8)));
    }

    #[test]
    fn all_zero_and_non_digits_are_rejected() {
        assert_eq!(Bsn::parse("000000000"), Err(BsnError::AllZero));
        assert_eq!(Bsn::parse("99900001a"), Err(BsnError::NotDigits));
    }

    #[test]
    fn leading_zeros_are_kept() {
        // 0*9 + 1*8 + ... chosen so the sum is a multiple of 11.
        let bsn = Bsn::parse("012345672").unwrap();
        assert_eq!(bsn.to_string(), "012345672");
    }

    #[test]
    fn debug_output_hides_the_digits() {
        let bsn = Bsn::parse("999000019").unwrap();
        assert!(!format!("{bsn:?}").contains("999000019"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,12}") {
            let _ = Bsn::parse(&s);
        }

        #[test]
        fn changing_one_digit_breaks_a_valid_bsn(pos in 0usize..8, delta in 1u8..10) {
            let valid = "999000019";
            let mut bytes = valid.as_bytes().to_vec();
            bytes[pos] = b'0' + (bytes[pos] - b'0' + delta) % 10;
            let changed = String::from_utf8(bytes).unwrap();
            // Weights 9..2 are all coprime with 11, so one changed digit always breaks it.
            prop_assert!(Bsn::parse(&changed).is_err());
        }
    }
}

//! Phone numbers, parsed once at the boundary and carried in E.164 form.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A valid phone number in E.164 form (`+` followed by 7–15 digits).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PhoneNumberError {
    #[error("empty number")]
    Empty,
    #[error("not a phone number: {0}")]
    Unparsable(String),
    #[error("no country code (write it as +CC… or pass a default region)")]
    NoCountryCode,
    #[error("not a valid number for its country")]
    Invalid,
    #[error("unknown default region {0:?} (use an ISO 3166 code such as US or GB)")]
    UnknownRegion(String),
}

impl PhoneNumber {
    /// Parses `raw` as written by a person: international (`+44 20 7946 0958`)
    /// or, with `default_region` (ISO 3166 alpha-2), national
    /// (`020 7946 0958`). The number must be valid for its country.
    pub fn parse(raw: &str, default_region: Option<&str>) -> Result<Self, PhoneNumberError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(PhoneNumberError::Empty);
        }
        let region = match default_region {
            Some(code) => Some(
                code.to_ascii_uppercase()
                    .parse::<phonenumber::country::Id>()
                    .map_err(|_| PhoneNumberError::UnknownRegion(code.to_owned()))?,
            ),
            None => None,
        };
        let parsed = phonenumber::parse(region, raw).map_err(|e| match e {
            phonenumber::ParseError::InvalidCountryCode => PhoneNumberError::NoCountryCode,
            other => PhoneNumberError::Unparsable(other.to_string()),
        })?;
        if !phonenumber::is_valid(&parsed) {
            return Err(PhoneNumberError::Invalid);
        }
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        Ok(Self(e164))
    }

    /// Accepts a string already in E.164 form without consulting numbering
    /// plans: used for numbers we wrote ourselves (job messages, rows).
    pub fn from_e164(s: &str) -> Result<Self, PhoneNumberError> {
        let digits = s.strip_prefix('+').ok_or(PhoneNumberError::NoCountryCode)?;
        if (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(PhoneNumberError::Unparsable(s.to_owned()))
        }
    }

    /// `+14155550100`
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `14155550100`: the form Vonage wants.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PhoneNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_e164(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn international_numbers_normalise_to_e164() {
        let n = PhoneNumber::parse("+1 (415) 555-2671", None).unwrap();
        assert_eq!(n.as_str(), "+14155552671");
        assert_eq!(n.digits(), "14155552671");
        let uk = PhoneNumber::parse("+44 20 7946 0958", None).unwrap();
        assert_eq!(uk.as_str(), "+442079460958");
    }

    #[test]
    fn national_numbers_need_a_region() {
        assert_eq!(PhoneNumber::parse("020 7946 0958", Some("gb")).unwrap().as_str(), "+442079460958");
        assert!(PhoneNumber::parse("020 7946 0958", None).is_err());
    }

    #[test]
    fn rejects_garbage_and_invalid_numbers() {
        assert_eq!(PhoneNumber::parse("  ", None), Err(PhoneNumberError::Empty));
        assert!(PhoneNumber::parse("hello", None).is_err());
        assert!(PhoneNumber::parse("+1 555", None).is_err());
        assert!(matches!(
            PhoneNumber::parse("+14155552671", Some("XX")),
            Err(PhoneNumberError::UnknownRegion(_))
        ));
    }

    #[test]
    fn e164_round_trips_through_serde() {
        let n = PhoneNumber::from_e164("+14155552671").unwrap();
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, "\"+14155552671\"");
        assert_eq!(serde_json::from_str::<PhoneNumber>(&json).unwrap(), n);
        assert!(serde_json::from_str::<PhoneNumber>("\"14155552671\"").is_err());
    }
}

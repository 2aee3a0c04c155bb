//! What each provider can say: the longest message, the languages and the
//! voices it accepts, checked when a campaign is created or changed so a
//! message a provider would refuse (and a callee would never hear) is an
//! error at enqueue, naming the limit, instead of a silent call.
//!
//! The facts themselves live with each provider's wire format
//! (`vonage::speech`, `twilio::speech`, `telnyx::speech`); this module asks
//! the campaign's provider and maps equivalent language codes (Arabic is
//! `ar` at Vonage and `arb` at Telnyx) so one campaign can move between
//! providers without its operator learning three code lists.

use crate::campaign::FieldError;
use crate::provider::Provider;
use crate::{telnyx, twilio, vonage};

/// How a provider counts a message's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Characters,
    /// UTF-8 bytes (Twilio: "UTF-8 single byte characters").
    Bytes,
}

/// The longest message a provider takes in one speech command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageLimit {
    pub max: usize,
    pub unit: Unit,
    /// Where the figure comes from, shown in the error.
    pub source: &'static str,
}

impl MessageLimit {
    fn measure(self, text: &str) -> usize {
        match self.unit {
            Unit::Characters => text.chars().count(),
            Unit::Bytes => text.len(),
        }
    }
}

/// Language codes that mean the same language at different providers. A
/// code a provider does not list is replaced by its equivalent that it does.
const EQUIVALENT: &[&[&str]] = &[
    // Arabic: Vonage `ar`; Telnyx and Amazon Polly `arb`; Google `ar-XA`.
    &["ar", "arb", "ar-XA"],
    // Mandarin (Simplified): Vonage, Telnyx `cmn-CN`; Twilio's alice `zh-CN`.
    &["cmn-CN", "zh-CN"],
    // Taiwanese Mandarin: Vonage `cmn-TW`; Twilio's alice `zh-TW`.
    &["cmn-TW", "zh-TW"],
    // Cantonese: Vonage `yue-CN`; Twilio's alice `zh-HK`.
    &["yue-CN", "zh-HK"],
    // Norwegian Bokmål: `nb-NO` everywhere; Vonage's Voice API also `no-NO`.
    &["nb-NO", "no-NO"],
];

/// A provider's speech rules for one voice choice.
pub struct Rules {
    pub limit: MessageLimit,
    /// The language codes it accepts; `None`: any well-formed code (the
    /// voice decides the language, e.g. Twilio's Polly and Google voices).
    pub languages: Option<&'static [&'static str]>,
}

/// The language to send: `language` itself when the provider lists it, else
/// the listed code of the same language (any letter case). `Err` names the
/// provider's accepted codes.
fn map_language(provider: Provider, language: &str, listed: &[&str]) -> Result<String, FieldError> {
    if let Some(same) = listed.iter().find(|l| l.eq_ignore_ascii_case(language)) {
        return Ok((*same).to_owned());
    }
    let equivalent = EQUIVALENT
        .iter()
        .find(|group| group.iter().any(|g| g.eq_ignore_ascii_case(language)))
        .and_then(|group| group.iter().find(|g| listed.contains(g)));
    if let Some(code) = equivalent {
        return Ok((*code).to_owned());
    }
    Err(FieldError::new(
        "language",
        format!("{provider} does not speak {language:?} with this voice; it accepts {}", listed.join(", ")),
    ))
}

/// A syntactically valid language tag (`en-US`, `arb`, `cmn-CN`, `en-GB-WLS`).
fn well_formed(language: &str) -> bool {
    let mut parts = language.split('-');
    let first = parts.next().unwrap_or_default();
    (2..=3).contains(&first.len())
        && first.chars().all(|c| c.is_ascii_alphabetic())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Checks a campaign's message, language and voice against `provider`.
/// `Ok` is the language to store (mapped to the provider's own code); the
/// errors name every bad field.
pub fn check(
    provider: Provider,
    message: &str,
    language: &str,
    voice: Option<&str>,
) -> Result<String, Vec<FieldError>> {
    let rules = match provider {
        Provider::Vonage => vonage::speech::rules(voice),
        Provider::Twilio => twilio::speech::rules(voice),
        Provider::Telnyx => telnyx::speech::rules(voice),
    };
    let mut errors = Vec::new();
    let rules = match rules {
        Ok(rules) => Some(rules),
        Err(message) => {
            errors.push(FieldError::new("voice", message));
            None
        }
    };
    let mut mapped = language.to_owned();
    if let Some(rules) = rules {
        let length = rules.limit.measure(message);
        if length > rules.limit.max {
            let unit = match rules.limit.unit {
                Unit::Characters => "characters",
                Unit::Bytes => "bytes of UTF-8",
            };
            errors.push(FieldError::new(
                "message",
                format!(
                    "{provider} speaks at most {} {unit} at a time ({}); this message is {length}",
                    rules.limit.max, rules.limit.source
                ),
            ));
        }
        match rules.languages {
            Some(listed) => match map_language(provider, language, listed) {
                Ok(code) => mapped = code,
                Err(e) => errors.push(e),
            },
            None if !well_formed(language) => errors.push(FieldError::new(
                "language",
                format!("{language:?} is not a language code such as en-US or arb"),
            )),
            None => {}
        }
    }
    if errors.is_empty() { Ok(mapped) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_provider_has_its_own_message_limit() {
        let long = "a".repeat(2_000);
        assert!(check(Provider::Vonage, &long, "en-US", None).is_err(), "Vonage talk: 1500");
        assert!(check(Provider::Telnyx, &long, "en-US", None).is_ok(), "Telnyx speak: 3000");
        assert!(check(Provider::Twilio, &long, "en-US", None).is_ok(), "Twilio basic voices: 4096");
        let e = check(Provider::Telnyx, &"a".repeat(3_001), "en-US", None).unwrap_err();
        assert_eq!(e[0].field, "message");
        assert!(e[0].message.contains("3000"), "{}", e[0].message);
        // Twilio counts bytes: 1,100 three-byte characters are 3,300 bytes, over Polly's 3,000.
        assert!(check(Provider::Twilio, &"€".repeat(1_100), "en-US", Some("Polly.Joanna")).is_err());
    }

    #[test]
    fn equivalent_language_codes_are_mapped_and_unknown_ones_named() {
        assert_eq!(check(Provider::Vonage, "hi", "arb", None).unwrap(), "ar");
        assert_eq!(check(Provider::Telnyx, "hi", "ar", None).unwrap(), "arb");
        assert_eq!(check(Provider::Telnyx, "hi", "en-us", None).unwrap(), "en-US");
        assert_eq!(check(Provider::Twilio, "hi", "cmn-CN", Some("alice")).unwrap(), "zh-CN");
        let e = check(Provider::Telnyx, "hi", "th-TH", None).unwrap_err();
        assert_eq!(e[0].field, "language");
        assert!(e[0].message.contains("telnyx") && e[0].message.contains("en-US"), "{}", e[0].message);
        assert!(check(Provider::Vonage, "hi", "th-TH", None).is_ok());
    }

    #[test]
    fn voices_are_checked_per_provider() {
        assert!(check(Provider::Telnyx, "hi", "en-US", Some("AWS.Polly.Joanna-Neural")).is_ok());
        assert!(check(Provider::Telnyx, "hi", "en-US", Some("female")).is_ok());
        assert_eq!(check(Provider::Telnyx, "hi", "en-US", Some("Joanna")).unwrap_err()[0].field, "voice");
        assert!(check(Provider::Twilio, "hi", "ja-JP", Some("Polly.Mizuki")).is_ok());
        assert!(
            check(Provider::Twilio, "hi", "ja-JP", None).is_err(),
            "the default voice speaks 5 languages"
        );
        assert_eq!(check(Provider::Twilio, "hi", "en-US", Some("robot")).unwrap_err()[0].field, "voice");
        assert!(check(Provider::Vonage, "hi", "en-US", Some("3")).is_ok(), "a Vonage style number");
        assert_eq!(check(Provider::Vonage, "hi", "en-US", Some("Kimberly")).unwrap_err()[0].field, "voice");
    }
}

//! Validating contacts as they stream in: every number normalised to E.164,
//! duplicates within the list dropped, per-contact time zones checked. Each
//! rejected line keeps its line number and a reason.
//!
//! Memory grows only with the set of distinct numbers (12 bytes a slot,
//! 25 MB at a million); everything else is per record.

use chrono_tz::Tz;
use tocsin_core::PhoneNumber;

use crate::input::{Bad, ContactInput, Record};

/// A contact ready to be written.
#[derive(Debug, Clone)]
pub struct Contact {
    pub line: u64,
    pub number: PhoneNumber,
    pub timezone: Option<Tz>,
    /// The row's other columns, as a JSON object.
    pub attributes: String,
}

/// Why a line was not enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Invalid(String),
    Duplicate {
        first_line: u64,
    },
    DoNotCall,
    Malformed(String),
    TooLong {
        len: u64,
    },
    BadTimezone(String),
    /// The campaign's message has a placeholder this contact cannot fill.
    Template(String),
    /// The contact's own language or voice is not one the provider speaks.
    Speech(String),
}

impl Reason {
    /// A stable keyword for the rejects file and `--json`.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Duplicate { .. } => "duplicate",
            Self::DoNotCall => "do_not_call",
            Self::Malformed(_) => "malformed",
            Self::TooLong { .. } => "too_long",
            Self::BadTimezone(_) => "bad_timezone",
            Self::Template(_) => "template",
            Self::Speech(_) => "speech",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(why) => write!(f, "invalid number: {why}"),
            Self::Duplicate { first_line } => write!(f, "duplicate of line {first_line}"),
            Self::DoNotCall => write!(f, "on the do-not-call list"),
            Self::Malformed(why) => write!(f, "malformed line: {why}"),
            Self::TooLong { len } => {
                write!(f, "line is {len} bytes long (at most {} for a contact)", crate::input::MAX_LINE)
            }
            Self::BadTimezone(tz) => {
                write!(f, "unknown time zone {tz:?} (use an IANA name such as Europe/London)")
            }
            Self::Template(why) => write!(f, "cannot fill the message: {why}"),
            Self::Speech(why) => write!(f, "its own language or voice: {why}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rejection {
    pub line: u64,
    /// The number as written (may be empty when it could not be found).
    pub value: String,
    pub reason: Reason,
}

#[derive(Debug, Clone)]
pub enum Row {
    Contact(Contact),
    Rejected(Rejection),
}

/// Where raw records come from: a text list (`ContactInput`) or contacts
/// already parsed (the API's body, a saved list).
pub trait RecordSource: Send {
    /// The next record; `Err` when reading the input failed (the run stops).
    fn next_record(&mut self) -> Option<std::io::Result<Record>>;
}

impl RecordSource for ContactInput {
    fn next_record(&mut self) -> Option<std::io::Result<Record>> {
        ContactInput::next_record(self)
    }
}

impl<T: RecordSource + ?Sized> RecordSource for Box<T> {
    fn next_record(&mut self) -> Option<std::io::Result<Record>> {
        (**self).next_record()
    }
}

/// A contact's message as it will be spoken (the dry run's preview).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    pub line: u64,
    pub number: String,
    pub text: String,
}

/// How many rendered messages a reader keeps for the preview.
pub const SAMPLES: usize = 3;

/// Turns raw records into contacts or rejections.
pub struct ContactReader {
    input: Box<dyn RecordSource>,
    default_region: Option<String>,
    /// Numbers seen so far and the line each was first seen on.
    seen: Seen,
    /// The campaign's personalised texts (message, voicemail): each contact
    /// must fill them.
    templates: Vec<tocsin_core::template::Template>,
    /// The first contacts' rendered messages.
    samples: std::sync::Arc<std::sync::Mutex<Vec<Sample>>>,
    /// The campaign's settings, to check contacts' own `language` / `voice`.
    settings: Option<tocsin_core::campaign::Settings>,
}

impl ContactReader {
    pub fn new(input: impl RecordSource + 'static, default_region: Option<String>) -> Self {
        Self {
            input: Box::new(input),
            default_region,
            seen: Seen::new(),
            templates: Vec::new(),
            samples: Default::default(),
            settings: None,
        }
    }

    /// Contacts with their own `language` / `voice` columns must be speakable
    /// so by the campaign's provider.
    pub fn with_speech(mut self, settings: tocsin_core::campaign::Settings) -> Self {
        self.settings = Some(settings);
        self
    }

    /// Contacts must fill these texts' placeholders (those without any are
    /// ignored); the first contacts' rendering of the first one is kept in
    /// `samples`.
    pub fn with_templates(
        mut self,
        texts: &[&str],
        samples: std::sync::Arc<std::sync::Mutex<Vec<Sample>>>,
    ) -> Self {
        self.templates = texts
            .iter()
            .filter_map(|t| tocsin_core::template::Template::parse(t).ok())
            .filter(tocsin_core::template::Template::is_personal)
            .collect();
        self.samples = samples;
        self
    }

    /// The next row; `Err` when reading the input failed (the run stops).
    pub fn next_row(&mut self) -> Option<std::io::Result<Row>> {
        let record = match self.input.next_record()? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(self.check(record)))
    }

    fn check(&mut self, record: Record) -> Row {
        let raw = match record {
            Record::Contact(c) => c,
            Record::Bad { line, value, bad } => {
                let reason = match bad {
                    Bad::Malformed(why) => Reason::Malformed(why),
                    Bad::TooLong { len } => Reason::TooLong { len },
                };
                return Row::Rejected(Rejection { line, value, reason });
            }
        };
        let reject = |reason| Row::Rejected(Rejection { line: raw.line, value: raw.number.clone(), reason });
        // PostgreSQL refuses NUL in text and JSONB: one such value would fail
        // the whole batch it is written in, so the line is rejected alone.
        if raw.number.contains('\0') || raw.timezone.as_deref().is_some_and(|t| t.contains('\0')) {
            return reject(Reason::Malformed("contains a NUL character".into()));
        }
        if json_has_nul(&raw.attributes) {
            return reject(Reason::Malformed("an attribute contains a NUL character".into()));
        }
        let number = match PhoneNumber::parse(&raw.number, self.default_region.as_deref()) {
            Ok(n) => n,
            Err(e) => return reject(Reason::Invalid(e.to_string())),
        };
        let timezone = match &raw.timezone {
            None => None,
            Some(name) => match name.parse::<Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => return reject(Reason::BadTimezone(name.clone())),
            },
        };
        let own_speech = raw.attributes.contains("\"language\"") || raw.attributes.contains("\"voice\"");
        if let (Some(settings), true) = (&self.settings, own_speech) {
            let columns: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&raw.attributes).unwrap_or_default();
            if let Err(why) = tocsin_core::campaign::contact_speech(settings, &columns) {
                return reject(Reason::Speech(why));
            }
        }
        if !self.templates.is_empty() {
            let columns: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&raw.attributes).unwrap_or_default();
            for (i, template) in self.templates.iter().enumerate() {
                match template.render(&columns) {
                    Ok(text) if i == 0 => {
                        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
                        if samples.len() < SAMPLES {
                            samples.push(Sample { line: raw.line, number: number.to_string(), text });
                        }
                    }
                    Ok(_) => {}
                    Err(why) => return reject(Reason::Template(why)),
                }
            }
        }
        let key: u64 = number.digits().parse().unwrap_or(u64::MAX);
        if let Some(first_line) = self.seen.insert(key, u32::try_from(raw.line).unwrap_or(u32::MAX)) {
            return reject(Reason::Duplicate { first_line: u64::from(first_line) });
        }
        Row::Contact(Contact { line: raw.line, number, timezone, attributes: raw.attributes })
    }
}

/// Whether serialized JSON text holds a NUL: the escape `\u0000` (not itself
/// escaped, i.e. after an even run of backslashes) or a raw NUL byte.
fn json_has_nul(json: &str) -> bool {
    if json.contains('\0') {
        return true;
    }
    let bytes = json.as_bytes();
    let mut from = 0;
    while let Some(at) = json[from..].find("\\u0000").map(|i| i + from) {
        let backslashes = bytes[..at].iter().rev().take_while(|b| **b == b'\\').count();
        if backslashes % 2 == 0 {
            return true;
        }
        from = at + 1;
    }
    false
}

/// A set of numbers with the line each was first seen on: open addressing
/// with linear probing over two flat arrays, 12 bytes a slot (a std
/// `HashMap<u64, u32>` takes 17 and SipHash; this is most of the producer's
/// memory at a million contacts). Keys are E.164 digits as an integer:
/// injective (at most 15 digits, no leading zero) and never 0, which marks
/// an empty slot.
struct Seen {
    keys: Vec<u64>,
    lines: Vec<u32>,
    len: usize,
    /// Random per run, so a crafted list cannot make probing quadratic.
    seed: u64,
}

impl Seen {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish() | 1;
        Self { keys: vec![0; 1024], lines: vec![0; 1024], len: 0, seed }
    }

    fn slot(&self, key: u64) -> usize {
        let h = (key ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h ^ (h >> 29)) as usize) & (self.keys.len() - 1)
    }

    /// Inserts `key` first seen on `line`; if it was there already, returns
    /// the line it was first seen on instead.
    fn insert(&mut self, key: u64, line: u32) -> Option<u32> {
        let key = key.max(1);
        let mut i = self.slot(key);
        loop {
            match self.keys[i] {
                0 => break,
                k if k == key => return Some(self.lines[i]),
                _ => i = (i + 1) & (self.keys.len() - 1),
            }
        }
        self.keys[i] = key;
        self.lines[i] = line;
        self.len += 1;
        // Keep at most 7/8 full so probes stay short.
        if self.len * 8 > self.keys.len() * 7 {
            self.grow();
        }
        None
    }

    fn grow(&mut self) {
        let size = self.keys.len() * 2;
        let keys = std::mem::replace(&mut self.keys, vec![0; size]);
        let lines = std::mem::replace(&mut self.lines, vec![0; size]);
        for (k, l) in keys.into_iter().zip(lines) {
            if k != 0 {
                let mut i = self.slot(k);
                while self.keys[i] != 0 {
                    i = (i + 1) & (self.keys.len() - 1);
                }
                self.keys[i] = k;
                self.lines[i] = l;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::input::{Columns, Format, Source};

    #[test]
    fn nul_is_found_in_json_text_and_an_escaped_backslash_is_not_one() {
        assert!(json_has_nul(r#"{"name":"a\u0000b"}"#));
        assert!(!json_has_nul(r#"{"name":"a\\u0000b"}"#), "a backslash, then the text u0000");
        assert!(json_has_nul(r#"{"name":"a\\\u0000b"}"#));
        assert!(!json_has_nul(r#"{"name":"plain"}"#));
    }

    fn rows(csv: &str, region: Option<&str>) -> Vec<String> {
        let dir = std::env::temp_dir().join(format!("tocsin-contacts-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.csv");
        std::fs::write(&path, csv).unwrap();
        let columns =
            Columns { number: "number".into(), timezone: Some("tz".into()), timezone_required: false };
        let input = ContactInput::open(
            &Source::File(path),
            Some(Format::Csv),
            b',',
            &columns,
            Arc::new(AtomicU64::new(0)),
        )
        .unwrap();
        let mut reader = ContactReader::new(input, region.map(str::to_owned));
        let mut out = Vec::new();
        while let Some(row) = reader.next_row() {
            out.push(match row.unwrap() {
                Row::Contact(c) => {
                    format!("{} ok {} {}", c.line, c.number, c.timezone.map(|t| t.name()).unwrap_or("-"))
                }
                Row::Rejected(r) => format!("{} {}: {}", r.line, r.reason.keyword(), r.reason),
            });
        }
        std::fs::remove_dir_all(dir).unwrap();
        out
    }

    #[test]
    fn seen_remembers_the_first_line_across_growth() {
        let mut seen = Seen::new();
        for i in 0..100_000u64 {
            assert_eq!(seen.insert(14_155_550_000 + i * 7, i as u32 + 2), None);
        }
        for i in 0..100_000u64 {
            assert_eq!(seen.insert(14_155_550_000 + i * 7, 0), Some(i as u32 + 2));
        }
        assert_eq!(seen.len, 100_000);
    }

    #[test]
    fn each_rejection_reason_with_its_line() {
        let out = rows(
            "name,number,tz\nAda,+1 415 555 2671,\nBob,garbage,\nCy,+14155552671,\n\nDee,+442079460958,Mars/Base\nEve,020 7946 0959,Europe/London\nFay,+442079460958,x,y\n",
            Some("GB"),
        );
        assert_eq!(out[0], "2 ok +14155552671 -");
        assert!(out[1].starts_with("3 invalid: invalid number"), "{}", out[1]);
        assert_eq!(out[2], "4 duplicate: duplicate of line 2");
        assert!(out[3].starts_with("6 bad_timezone: unknown time zone \"Mars/Base\""), "{}", out[3]);
        assert_eq!(out[4], "7 ok +442079460959 Europe/London");
        assert!(out[5].starts_with("8 malformed: malformed line: 4 fields"), "{}", out[5]);
        assert_eq!(out.len(), 6);
    }
}

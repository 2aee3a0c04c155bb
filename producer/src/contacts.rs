//! Streaming contact-list reader: one CSV record at a time, each number
//! normalised to E.164, invalid and duplicate lines reported with their line
//! number. Memory grows only with the set of numbers seen (8 bytes each).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tocsin_core::PhoneNumber;

/// A contact ready to be enqueued.
#[derive(Debug, Clone)]
pub struct Contact {
    pub line: u64,
    pub number: PhoneNumber,
    /// The row's other columns.
    pub attributes: serde_json::Value,
}

/// Why a line was not enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Invalid(String),
    Duplicate { first_line: u64 },
    Malformed(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(why) => write!(f, "invalid number: {why}"),
            Self::Duplicate { first_line } => write!(f, "duplicate of line {first_line}"),
            Self::Malformed(why) => write!(f, "malformed line: {why}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rejection {
    pub line: u64,
    pub value: String,
    pub reason: Reason,
}

#[derive(Debug, Clone)]
pub enum Row {
    Contact(Contact),
    Rejected(Rejection),
}

/// The contact list cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: cannot open: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: the file is empty (expected a header row naming a {column:?} column)")]
    Empty { path: PathBuf, column: String },
    #[error("{path}:1: no {column:?} column in the header (columns: {found})")]
    NoNumberColumn { path: PathBuf, column: String, found: String },
    #[error("{path}:1: unreadable header: {detail}")]
    BadHeader { path: PathBuf, detail: String },
}

/// Counts lines as the CSV parser reads them and remembers the empty ones.
/// The csv crate skips empty lines but reports a record's line as the line
/// where its parse began, i.e. the first of any empty lines before it; with
/// the set of empty lines we can report the line the record is really on.
struct LineTracker<R> {
    inner: R,
    line: u64,
    line_len: u64,
    empty: Arc<Mutex<BTreeSet<u64>>>,
}

impl<R: Read> Read for LineTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut found = Vec::new();
        for &b in &buf[..n] {
            match b {
                b'\n' => {
                    if self.line_len == 0 {
                        found.push(self.line);
                    }
                    self.line += 1;
                    self.line_len = 0;
                }
                b'\r' => {}
                _ => self.line_len += 1,
            }
        }
        if !found.is_empty() {
            self.empty.lock().unwrap_or_else(|p| p.into_inner()).extend(found);
        }
        Ok(n)
    }
}

pub struct ContactReader {
    records: csv::ByteRecordsIntoIter<LineTracker<BufReader<File>>>,
    empty_lines: Arc<Mutex<BTreeSet<u64>>>,
    headers: Vec<String>,
    number_index: usize,
    default_region: Option<String>,
    /// Numbers seen so far (E.164 digits as an integer: injective, since
    /// E.164 has at most 15 digits and no leading zero) → first line.
    seen: HashMap<u64, u64>,
}

impl ContactReader {
    pub fn open(path: &Path, number_column: &str, default_region: Option<String>) -> Result<Self, OpenError> {
        let file = File::open(path).map_err(|source| OpenError::Io { path: path.to_owned(), source })?;
        let empty_lines = Arc::new(Mutex::new(BTreeSet::new()));
        let tracker = LineTracker {
            inner: BufReader::with_capacity(256 * 1024, file),
            line: 1,
            line_len: 0,
            empty: empty_lines.clone(),
        };
        let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(tracker);
        let headers = reader
            .byte_headers()
            .map_err(|e| OpenError::BadHeader { path: path.to_owned(), detail: e.to_string() })?
            .clone();
        if headers.is_empty() {
            return Err(OpenError::Empty { path: path.to_owned(), column: number_column.to_owned() });
        }
        let headers: Vec<String> = headers.iter().map(|h| String::from_utf8_lossy(h).into_owned()).collect();
        let number_index =
            headers.iter().position(|h| h.eq_ignore_ascii_case(number_column)).ok_or_else(|| {
                OpenError::NoNumberColumn {
                    path: path.to_owned(),
                    column: number_column.to_owned(),
                    found: headers.join(", "),
                }
            })?;
        Ok(Self {
            records: reader.into_byte_records(),
            empty_lines,
            headers,
            number_index,
            default_region,
            seen: HashMap::new(),
        })
    }

    /// The line a record is really on (see `LineTracker`).
    fn true_line(&self, reported: u64) -> u64 {
        let mut empty = self.empty_lines.lock().unwrap_or_else(|p| p.into_inner());
        let mut line = reported;
        while empty.contains(&line) {
            line += 1;
        }
        // Lines before this record are never asked about again.
        *empty = empty.split_off(&line);
        line
    }

    fn row(&mut self, record: &csv::ByteRecord) -> Row {
        let line = self.true_line(record.position().map_or(0, csv::Position::line));
        let raw = record.get(self.number_index).unwrap_or_default();
        let value = String::from_utf8_lossy(raw).into_owned();
        let reject = |reason| Row::Rejected(Rejection { line, value: value.clone(), reason });
        if record.len() != self.headers.len() {
            return reject(Reason::Malformed(format!(
                "{} fields, the header has {}",
                record.len(),
                self.headers.len()
            )));
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            return reject(Reason::Malformed("not valid UTF-8".into()));
        };
        let number = match PhoneNumber::parse(text, self.default_region.as_deref()) {
            Ok(n) => n,
            Err(e) => return reject(Reason::Invalid(e.to_string())),
        };
        let key: u64 = number.digits().parse().unwrap_or(u64::MAX);
        if let Some(first_line) = self.seen.get(&key) {
            return reject(Reason::Duplicate { first_line: *first_line });
        }
        self.seen.insert(key, line);
        let mut attributes = serde_json::Map::new();
        for (i, (name, field)) in self.headers.iter().zip(record.iter()).enumerate() {
            if i != self.number_index {
                let v = String::from_utf8_lossy(field).into_owned();
                attributes.insert(name.clone(), serde_json::Value::String(v));
            }
        }
        Row::Contact(Contact { line, number, attributes: serde_json::Value::Object(attributes) })
    }
}

impl Iterator for ContactReader {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        loop {
            match self.records.next()? {
                Ok(record) => {
                    // Skip blank lines: they are not contacts.
                    if record.iter().all(<[u8]>::is_empty) {
                        continue;
                    }
                    return Some(self.row(&record));
                }
                Err(e) => {
                    let line = self.true_line(e.position().map_or(0, csv::Position::line));
                    return Some(Row::Rejected(Rejection {
                        line,
                        value: String::new(),
                        reason: Reason::Malformed(e.to_string()),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(csv: &str) -> Vec<Row> {
        let dir = std::env::temp_dir().join(format!("tocsin-contacts-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.csv");
        std::fs::write(&path, csv).unwrap();
        let rows = ContactReader::open(&path, "number", None).unwrap().collect();
        std::fs::remove_dir_all(dir).unwrap();
        rows
    }

    #[test]
    fn reports_invalid_duplicate_and_malformed_lines_with_line_numbers() {
        let rows = read(
            "name,number\nAda,+1 415 555 2671\nBob,garbage\nCy,+14155552671\n\nDee,+442079460958,extra\nEve,+442079460958\n\n\n\"Fay\nJr\",+442079460959\nGus,+1 415 555 2672\n",
        );
        let summary: Vec<String> = rows
            .iter()
            .map(|r| match r {
                Row::Contact(c) => format!("{} ok {}", c.line, c.number),
                Row::Rejected(r) => format!("{} {}", r.line, r.reason),
            })
            .collect();
        assert_eq!(summary[0], "2 ok +14155552671");
        assert!(summary[1].starts_with("3 invalid number"), "{}", summary[1]);
        assert_eq!(summary[2], "4 duplicate of line 2");
        assert_eq!(summary[3], "6 malformed line: 3 fields, the header has 2");
        assert_eq!(summary[4], "7 ok +442079460958");
        assert_eq!(summary[5], "10 ok +442079460959");
        assert_eq!(summary[6], "12 ok +14155552672");
        assert_eq!(summary.len(), 7);
        let Row::Contact(first) = &rows[0] else { panic!() };
        assert_eq!(first.attributes["name"], "Ada");
    }

    #[test]
    fn missing_column_and_empty_file_are_fatal_and_name_the_file() {
        let dir = std::env::temp_dir().join(format!("tocsin-contacts-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.csv");
        std::fs::write(&path, "name,phone\nAda,+14155552671\n").unwrap();
        let err = ContactReader::open(&path, "number", None).err().unwrap().to_string();
        assert!(err.contains("c.csv:1") && err.contains("phone"), "{err}");
        std::fs::write(&path, "").unwrap();
        let err = ContactReader::open(&path, "number", None).err().unwrap().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = ContactReader::open(&dir.join("missing.csv"), "number", None).err().unwrap().to_string();
        assert!(err.contains("missing.csv"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

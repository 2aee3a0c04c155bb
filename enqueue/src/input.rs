//! Reading contact lists: CSV (with a header row) and JSON Lines, from a file
//! or standard input, one record at a time.
//!
//! Nothing here holds more than one record: lines are read with a hard
//! length limit (a longer line is skipped to its end and reported, never
//! buffered), CSV records are assembled with `csv-core` a line at a time so
//! that a quoted field may span lines, and a quote that never closes gives
//! up after a bounded number of lines instead of swallowing the rest of the
//! file. Every record carries the line it starts on.
//!
//! One concern at some length: the two formats share the line reader and
//! the record type, and a third of the file is their tests.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The longest line a contact list may have. Contacts are a few dozen bytes;
/// anything near this is a broken file, not a contact.
pub const MAX_LINE: usize = 64 * 1024;

/// A quoted CSV field may span at most this many lines before we decide its
/// closing quote is missing.
const MAX_RECORD_LINES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row naming the columns.
    Csv,
    /// One JSON object per line (also called NDJSON).
    Jsonl,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Self::Csv),
            "jsonl" | "ndjson" => Ok(Self::Jsonl),
            _ => Err(format!("{s:?}: the format is csv or jsonl")),
        }
    }
}

/// Where a contact list comes from: a file, or standard input for `-`.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Stdin,
    /// A list held in memory (an uploaded file), with the name messages use
    /// for it.
    Memory {
        name: String,
        data: Arc<[u8]>,
    },
    /// A list read as it arrives (an upload streamed from a request body),
    /// read once, never held whole.
    Stream {
        name: String,
        reader: SharedReader,
    },
}

/// A blocking reader handed to the source once (`Source` is `Clone`; the
/// reader is taken by the first `open`).
#[derive(Clone)]
pub struct SharedReader(Arc<std::sync::Mutex<Option<Box<dyn Read + Send>>>>);

impl SharedReader {
    pub fn new(reader: impl Read + Send + 'static) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(Box::new(reader)))))
    }

    fn take(&self) -> Option<Box<dyn Read + Send>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl std::fmt::Debug for SharedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedReader")
    }
}

impl Source {
    pub fn from_arg(path: &Path) -> Self {
        if path.as_os_str() == "-" { Self::Stdin } else { Self::File(path.to_owned()) }
    }

    /// How the source is named in messages (`contacts.csv:12: ...`).
    pub fn name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Stdin => "<stdin>".into(),
            Self::Memory { name, .. } | Self::Stream { name, .. } => name.clone(),
        }
    }

    /// The size in bytes when known (a regular file), for progress.
    pub fn size(&self) -> Option<u64> {
        match self {
            Self::File(p) => std::fs::metadata(p).ok().filter(|m| m.is_file()).map(|m| m.len()),
            Self::Stdin => None,
            Self::Memory { data, .. } => Some(data.len() as u64),
            Self::Stream { .. } => None,
        }
    }
}

/// Which columns mean what.
#[derive(Clone, Debug)]
pub struct Columns {
    /// The column (CSV) or key (JSON Lines) holding the phone number.
    pub number: String,
    /// The column holding a per-contact IANA time zone, if any. `required`
    /// says whether the user named it (then it must exist).
    pub timezone: Option<String>,
    pub timezone_required: bool,
}

/// The list cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{name}: cannot open: {source}")]
    Io { name: String, source: std::io::Error },
    #[error("{name}: the file is empty (expected {expected})")]
    Empty { name: String, expected: String },
    #[error("{name}:{line}: {detail}")]
    BadHeader { name: String, line: u64, detail: String },
    #[error("{name}: cannot tell the format from the file name; pass --format csv or --format jsonl")]
    UnknownFormat { name: String },
}

/// A record that is not a usable contact, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// Wrong field count, bad UTF-8, bad JSON, an unterminated quote...
    Malformed(String),
    /// Longer than `MAX_LINE`.
    TooLong { len: u64 },
}

/// One contact as written in the list, not yet validated.
#[derive(Debug, Clone)]
pub struct RawContact {
    pub line: u64,
    pub number: String,
    pub timezone: Option<String>,
    /// The other columns as a JSON object (text), for `calls.attributes`.
    pub attributes: String,
}

#[derive(Debug, Clone)]
pub enum Record {
    Contact(RawContact),
    /// `value` is the number field when it could be found, for the report.
    Bad {
        line: u64,
        value: String,
        bad: Bad,
    },
}

/// A line as read: its bytes, or only its length when it was too long.
enum Line {
    Text,
    TooLong(u64),
}

/// Splits input into lines with a hard length limit, counting lines and
/// bytes. A UTF-8 byte-order mark at the very start is dropped.
struct LineReader {
    inner: Box<dyn BufRead + Send>,
    /// Number of the line last returned (1-based).
    line: u64,
    bytes: Arc<AtomicU64>,
    at_start: bool,
}

impl LineReader {
    /// Reads the next line into `buf` (without its `\n` or `\r\n`).
    fn next(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<Line>> {
        buf.clear();
        let mut total: u64 = 0;
        let mut saw_any = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                if !saw_any {
                    return Ok(None);
                }
                break;
            }
            saw_any = true;
            let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], i + 1),
                None => (available, available.len()),
            };
            total += chunk.len() as u64;
            if buf.len() + chunk.len() <= MAX_LINE {
                buf.extend_from_slice(chunk);
            }
            let found_newline = done > chunk.len();
            self.inner.consume(done);
            self.bytes.fetch_add(done as u64, Ordering::Relaxed);
            if found_newline {
                break;
            }
        }
        self.line += 1;
        if self.at_start {
            self.at_start = false;
            if buf.starts_with(b"\xef\xbb\xbf") {
                buf.drain(..3);
                total -= 3;
            }
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
            total -= 1;
        }
        if total > MAX_LINE as u64 {
            buf.clear();
            return Ok(Some(Line::TooLong(total)));
        }
        Ok(Some(Line::Text))
    }
}

/// Reads records from a contact list.
pub struct ContactInput {
    name: String,
    lines: LineReader,
    kind: Kind,
    columns_found: Vec<String>,
    has_timezone: bool,
}

enum Kind {
    Csv(Box<CsvState>),
    Jsonl { number: String, timezone: Option<String> },
}

impl ContactInput {
    /// Opens `source`, reads the CSV header (or peeks at the first JSON
    /// line) and checks the columns. `bytes` counts bytes read, for progress.
    pub fn open(
        source: &Source,
        format: Option<Format>,
        delimiter: u8,
        columns: &Columns,
        bytes: Arc<AtomicU64>,
    ) -> Result<Self, OpenError> {
        let name = source.name();
        let inner: Box<dyn BufRead + Send> = match source {
            Source::File(path) => {
                let file = File::open(path).map_err(|e| OpenError::Io { name: name.clone(), source: e })?;
                if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                    return Err(OpenError::Io {
                        name,
                        source: std::io::Error::other("is a directory, not a file"),
                    });
                }
                Box::new(BufReader::with_capacity(256 * 1024, file))
            }
            Source::Stdin => Box::new(BufReader::with_capacity(256 * 1024, StdinReader)),
            Source::Memory { data, .. } => Box::new(std::io::Cursor::new(data.clone())),
            Source::Stream { reader, .. } => match reader.take() {
                Some(r) => Box::new(BufReader::with_capacity(256 * 1024, r)),
                None => {
                    return Err(OpenError::Io {
                        name,
                        source: std::io::Error::other("the upload was already read"),
                    });
                }
            },
        };
        let mut lines = LineReader { inner, line: 0, bytes, at_start: true };
        let format = match format.or_else(|| format_from_name(source)) {
            Some(f) => f,
            None => sniff(&mut lines).map_err(|e| OpenError::Io { name: name.clone(), source: e })?,
        };
        match format {
            Format::Csv => {
                let (state, headers) = CsvState::open(&name, &mut lines, delimiter, columns)?;
                let has_timezone = state.timezone_index.is_some();
                Ok(Self {
                    name,
                    lines,
                    kind: Kind::Csv(Box::new(state)),
                    columns_found: headers,
                    has_timezone,
                })
            }
            Format::Jsonl => Ok(Self {
                name,
                lines,
                has_timezone: columns.timezone.is_some(),
                kind: Kind::Jsonl { number: columns.number.clone(), timezone: columns.timezone.clone() },
                columns_found: Vec::new(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CSV header's columns (empty for JSON Lines).
    pub fn columns(&self) -> &[String] {
        &self.columns_found
    }

    /// Whether contacts may carry their own time zone.
    pub fn has_timezone_column(&self) -> bool {
        self.has_timezone
    }

    /// The next record; `Err` only when the input itself fails (an I/O error).
    pub fn next_record(&mut self) -> Option<Result<Record, std::io::Error>> {
        match &mut self.kind {
            Kind::Csv(state) => state.next(&mut self.lines).transpose(),
            Kind::Jsonl { number, timezone } => {
                jsonl_next(&mut self.lines, number, timezone.as_deref()).transpose()
            }
        }
    }
}

/// Standard input as an owned `Read` (locks per read; cheap with the buffer above).
struct StdinReader;

impl Read for StdinReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::io::stdin().read(buf)
    }
}

fn format_from_name(source: &Source) -> Option<Format> {
    let path = match source {
        Source::File(path) => path.clone(),
        Source::Stream { name, .. } => PathBuf::from(name),
        Source::Stdin | Source::Memory { .. } => return None,
    };
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "csv" | "tsv" | "txt" => Some(Format::Csv),
        "jsonl" | "ndjson" => Some(Format::Jsonl),
        _ => None,
    }
}

/// JSON Lines when the first non-blank byte opens an object, else CSV.
fn sniff(lines: &mut LineReader) -> std::io::Result<Format> {
    let buf = lines.inner.fill_buf()?;
    let first =
        buf.iter().copied().find(|b| !b.is_ascii_whitespace() && *b != 0xef && *b != 0xbb && *b != 0xbf);
    Ok(if first == Some(b'{') { Format::Jsonl } else { Format::Csv })
}

/// A physical line: its number, its bytes (`None` when too long) and then its length.
type RawLine = (u64, Option<Vec<u8>>, u64);

/// CSV: `csv-core` fed one line at a time, so a record's first line is
/// known exactly and a missing closing quote costs only a bounded lookahead.
struct CsvState {
    reader: csv_core::Reader,
    delimiter: u8,
    width: usize,
    headers: Arc<[String]>,
    number_index: usize,
    timezone_index: Option<usize>,
    /// Lines read ahead while looking for a closing quote that never came,
    /// to be parsed again as records of their own.
    replay: VecDeque<RawLine>,
    line_buf: Vec<u8>,
    output: Vec<u8>,
    out_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
}

/// A parsed CSV record: the fields live in `output`, split at `ends`.
enum Parsed {
    Fields {
        line: u64,
    },
    Blank,
    TooLong {
        line: u64,
        len: u64,
    },
    Unterminated {
        line: u64,
    },
    /// A quoted field opened on `line` ran on into `next`, a line that reads
    /// as a contact of its own: a closing quote is missing, most likely.
    Swallows {
        line: u64,
        next: u64,
    },
}

impl CsvState {
    fn open(
        name: &str,
        lines: &mut LineReader,
        delimiter: u8,
        columns: &Columns,
    ) -> Result<(Self, Vec<String>), OpenError> {
        let mut state = Self {
            reader: csv_core::ReaderBuilder::new()
                .delimiter(delimiter)
                .terminator(csv_core::Terminator::Any(b'\n'))
                .build(),
            delimiter,
            width: 0,
            headers: Arc::from(Vec::new()),
            number_index: 0,
            timezone_index: None,
            replay: VecDeque::new(),
            line_buf: Vec::with_capacity(1024),
            output: Vec::new(),
            out_len: 0,
            ends: Vec::new(),
            ends_len: 0,
        };
        let io = |e| OpenError::Io { name: name.to_owned(), source: e };
        let expected = format!("a header row naming a {:?} column", columns.number);
        let line = loop {
            match state.parse(lines).map_err(io)? {
                None => return Err(OpenError::Empty { name: name.to_owned(), expected }),
                Some(Parsed::Blank) => continue,
                Some(Parsed::TooLong { line, len }) => {
                    return Err(OpenError::BadHeader {
                        name: name.to_owned(),
                        line,
                        detail: format!(
                            "the header line is {len} bytes long (at most {MAX_LINE}); is this a contact list?"
                        ),
                    });
                }
                Some(Parsed::Unterminated { line } | Parsed::Swallows { line, .. }) => {
                    return Err(OpenError::BadHeader {
                        name: name.to_owned(),
                        line,
                        detail: "the header has a quoted name whose closing quote is missing".into(),
                    });
                }
                Some(Parsed::Fields { line }) => break line,
            }
        };
        // Old Mac files end lines with CR alone: the whole file reads as one
        // line, and would look like a header with no contacts.
        if state.line_buf.iter().rev().skip_while(|&&b| b == b'\r').any(|&b| b == b'\r') {
            return Err(OpenError::BadHeader {
                name: name.to_owned(),
                line,
                detail: "the lines end with CR alone (old Mac line endings), so the file reads as one line; \
                         convert them first, e.g. tr '\\r' '\\n' < list.csv > fixed.csv"
                    .into(),
            });
        }
        let bad = |detail: String| OpenError::BadHeader { name: name.to_owned(), line, detail };
        let mut headers = Vec::new();
        for field in state.fields() {
            let h = std::str::from_utf8(field)
                .map_err(|_| bad("the header is not valid UTF-8 (save the file as UTF-8)".into()))?;
            headers.push(h.to_owned());
        }
        let find = |want: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(want));
        let Some(number_index) = find(&columns.number) else {
            let looks_like_contact = headers.iter().any(|h| {
                let digits = h.bytes().filter(u8::is_ascii_digit).count();
                digits >= 7
            });
            let hint = if looks_like_contact {
                format!(
                    "the first line looks like a contact, not a header: add a header row naming the columns, e.g. `{}`",
                    columns.number
                )
            } else if headers.len() == 1 && delimiter == b',' && headers[0].contains(';') {
                "the columns seem to be separated by ';': pass --delimiter ';'".to_owned()
            } else {
                "pass --number-column NAME to use another column".to_owned()
            };
            return Err(bad(format!(
                "no {:?} column in the header (columns: {}); {hint}",
                columns.number,
                headers.join(", ")
            )));
        };
        let timezone_index = match &columns.timezone {
            Some(tz) => match find(tz) {
                Some(i) => Some(i),
                None if columns.timezone_required => {
                    return Err(bad(format!(
                        "no {tz:?} column in the header (columns: {})",
                        headers.join(", ")
                    )));
                }
                None => None,
            },
            None => None,
        };
        state.width = headers.len();
        state.number_index = number_index;
        state.timezone_index = timezone_index;
        state.headers = Arc::from(headers.clone());
        Ok((state, headers))
    }

    fn fields(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends[..self.ends_len].iter().map(move |&end| {
            let f = &self.output[start..end];
            start = end;
            f
        })
    }

    fn next_line(&mut self, lines: &mut LineReader) -> std::io::Result<Option<RawLine>> {
        if let Some(l) = self.replay.pop_front() {
            return Ok(Some(l));
        }
        Ok(match lines.next(&mut self.line_buf)? {
            None => None,
            Some(Line::Text) => Some((lines.line, Some(std::mem::take(&mut self.line_buf)), 0)),
            Some(Line::TooLong(len)) => Some((lines.line, None, len)),
        })
    }

    /// Parses the next record into `output`/`ends`.
    fn parse(&mut self, lines: &mut LineReader) -> std::io::Result<Option<Parsed>> {
        self.reader.reset();
        self.out_len = 0;
        self.ends_len = 0;
        let mut consumed: Vec<RawLine> = Vec::new();
        loop {
            let Some((line, text, len)) = self.next_line(lines)? else {
                if consumed.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(self.unterminated(consumed)));
            };
            let Some(mut text) = text else {
                if consumed.is_empty() {
                    return Ok(Some(Parsed::TooLong { line, len }));
                }
                // A too-long line inside an open quote: the quote is broken.
                consumed.push((line, None, len));
                return Ok(Some(self.unterminated(consumed)));
            };
            if consumed.is_empty() && text.iter().all(|&b| b == b' ' || b == b'\t') {
                return Ok(Some(Parsed::Blank));
            }
            text.push(b'\n');
            let done = self.feed(&text);
            text.pop();
            consumed.push((line, Some(text), 0));
            if done {
                let first = consumed[0].0;
                if consumed.len() == 1 {
                    self.line_buf = consumed.pop().and_then(|c| c.1).unwrap_or_default();
                    return Ok(Some(Parsed::Fields { line: first }));
                }
                // A field that runs across lines is legal CSV (an address,
                // a note), but not when the lines it took are contacts
                // themselves: then a closing quote is missing, and they are
                // read again on their own instead of vanishing silently.
                // (The record's last line holds the closing quote and the
                // fields after it: only the lines wholly inside are checked.)
                let swallowed = consumed[1..consumed.len() - 1]
                    .iter()
                    .find(|(_, text, _)| text.as_deref().is_some_and(|t| self.reads_as_contact(t)))
                    .map(|(line, _, _)| *line);
                if let Some(next) = swallowed {
                    let Parsed::Unterminated { line } = self.unterminated(consumed) else { unreachable!() };
                    return Ok(Some(Parsed::Swallows { line, next }));
                }
                return Ok(Some(Parsed::Fields { line: first }));
            }
            if consumed.len() >= MAX_RECORD_LINES || self.out_len > MAX_LINE {
                return Ok(Some(self.unterminated(consumed)));
            }
        }
    }

    /// Whether a physical line, split naively on the delimiter, has the
    /// header's width and a phone number in the number column.
    fn reads_as_contact(&self, text: &[u8]) -> bool {
        if self.width == 0 {
            return false;
        }
        let fields: Vec<&[u8]> = text.split(|b| *b == self.delimiter).collect();
        if fields.len() != self.width {
            return false;
        }
        let number = fields[self.number_index];
        let digits = number.iter().filter(|b| b.is_ascii_digit()).count();
        (7..=15).contains(&digits) && number.iter().all(|b| b.is_ascii_digit() || b" +-().\"\t\r".contains(b))
    }

    /// Gives up on a record whose quote never closed: its first line is
    /// reported, the lines after it are read again as records of their own.
    fn unterminated(&mut self, mut consumed: Vec<RawLine>) -> Parsed {
        let first = consumed.remove(0).0;
        for c in consumed.into_iter().rev() {
            self.replay.push_front(c);
        }
        Parsed::Unterminated { line: first }
    }

    /// Feeds one line (with its `\n`); true when a record is complete.
    /// `output` and `ends` are scratch buffers whose logical lengths are
    /// `out_len` and `ends_len`; they only ever grow.
    fn feed(&mut self, mut input: &[u8]) -> bool {
        loop {
            if self.output.len() < self.out_len + input.len() + 1 {
                self.output.resize((self.out_len + input.len() + 1).max(self.output.len() * 2), 0);
            }
            if self.ends.len() <= self.ends_len {
                self.ends.resize((self.ends.len() * 2).max(16), 0);
            }
            let (result, nin, nout, nend) = self.reader.read_record(
                input,
                &mut self.output[self.out_len..],
                &mut self.ends[self.ends_len..],
            );
            // Field ends are relative to the record's start: csv-core keeps
            // its output position across calls until `reset`.
            self.out_len += nout;
            self.ends_len += nend;
            input = &input[nin..];
            match result {
                csv_core::ReadRecordResult::Record => return true,
                csv_core::ReadRecordResult::InputEmpty | csv_core::ReadRecordResult::End => {
                    if input.is_empty() {
                        return false;
                    }
                }
                csv_core::ReadRecordResult::OutputFull => {
                    self.output.resize(self.output.len() * 2 + 64, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    self.ends.resize(self.ends.len() * 2 + 16, 0);
                }
            }
        }
    }

    fn next(&mut self, lines: &mut LineReader) -> std::io::Result<Option<Record>> {
        loop {
            let parsed = match self.parse(lines)? {
                None => return Ok(None),
                Some(p) => p,
            };
            let line = match parsed {
                Parsed::Blank => continue,
                Parsed::TooLong { line, len } => {
                    return Ok(Some(Record::Bad { line, value: String::new(), bad: Bad::TooLong { len } }));
                }
                Parsed::Unterminated { line } => {
                    return Ok(Some(Record::Bad {
                        line,
                        value: String::new(),
                        bad: Bad::Malformed(format!(
                            "a quoted field is never closed (no closing \" within {MAX_RECORD_LINES} lines)"
                        )),
                    }));
                }
                Parsed::Swallows { line, next } => {
                    return Ok(Some(Record::Bad {
                        line,
                        value: String::new(),
                        bad: Bad::Malformed(format!(
                            "a quoted field opened on this line runs on into line {next}, which reads as a \
                             contact of its own: a closing \" is missing? (the lines after this one are read \
                             on their own)"
                        )),
                    }));
                }
                Parsed::Fields { line } => line,
            };
            // A line of separators only (`,,,`) is blank too.
            if self.fields().all(|f| f.iter().all(|&b| b == b' ' || b == b'\t')) {
                continue;
            }
            return Ok(Some(self.record(line)));
        }
    }

    fn record(&self, line: u64) -> Record {
        let number_raw = self.fields().nth(self.number_index).unwrap_or_default();
        let value = String::from_utf8_lossy(number_raw).trim().to_owned();
        let bad = |bad| Record::Bad { line, value: value.clone(), bad };
        if self.ends_len != self.width {
            return bad(Bad::Malformed(format!(
                "{} fields, the header has {}{}",
                self.ends_len,
                self.width,
                if self.delimiter == b',' { " (a comma inside a value needs \"quotes\")" } else { "" }
            )));
        }
        let mut attributes = String::with_capacity(64);
        attributes.push('{');
        let mut number = String::new();
        let mut timezone = None;
        for (i, field) in self.fields().enumerate() {
            let Ok(text) = std::str::from_utf8(field) else {
                let at = field.iter().position(|b| !b.is_ascii()).unwrap_or(0);
                return bad(Bad::Malformed(format!(
                    "column {:?} is not valid UTF-8 (byte 0x{:02X}); save the file as UTF-8",
                    self.headers[i], field[at]
                )));
            };
            let text = text.trim();
            if i == self.number_index {
                number = text.to_owned();
            } else if Some(i) == self.timezone_index {
                timezone = (!text.is_empty()).then(|| text.to_owned());
            } else {
                if attributes.len() > 1 {
                    attributes.push(',');
                }
                push_json_string(&mut attributes, &self.headers[i]);
                attributes.push(':');
                push_json_string(&mut attributes, text);
            }
        }
        attributes.push('}');
        Record::Contact(RawContact { line, number, timezone, attributes })
    }
}

fn push_json_string(out: &mut String, s: &str) {
    // Writing a &str as a JSON string cannot fail.
    if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

fn jsonl_next(
    lines: &mut LineReader,
    number_key: &str,
    timezone_key: Option<&str>,
) -> std::io::Result<Option<Record>> {
    let mut buf = Vec::with_capacity(256);
    loop {
        let line = match lines.next(&mut buf)? {
            None => return Ok(None),
            Some(Line::TooLong(len)) => {
                return Ok(Some(Record::Bad {
                    line: lines.line,
                    value: String::new(),
                    bad: Bad::TooLong { len },
                }));
            }
            Some(Line::Text) => lines.line,
        };
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad =
            |value: String, why: String| Ok(Some(Record::Bad { line, value, bad: Bad::Malformed(why) }));
        if let Err(e) = std::str::from_utf8(&buf) {
            let at = e.valid_up_to();
            return bad(
                String::new(),
                format!("not valid UTF-8 (byte 0x{:02X} at column {})", buf[at], at + 1),
            );
        }
        return match serde_json::from_slice::<serde_json::Value>(&buf) {
            Ok(value) => Ok(Some(Record::from_json(line, value, number_key, timezone_key))),
            Err(e) => bad(
                String::new(),
                format!("not valid JSON: {}", e.to_string().replace(" at line 1 column", " at column")),
            ),
        };
    }
}

impl Record {
    /// A contact longer than `MAX_LINE` bytes, given as one object.
    pub fn too_long(line: u64, len: u64) -> Record {
        Record::Bad { line, value: String::new(), bad: Bad::TooLong { len } }
    }

    /// A contact given as a JSON object (a JSON Lines line, an element of
    /// the API's `contacts` array): the number under `number_key`, the time
    /// zone under `timezone_key`, every other key kept as attributes. Keys
    /// match without regard to case.
    pub fn from_json(
        line: u64,
        value: serde_json::Value,
        number_key: &str,
        timezone_key: Option<&str>,
    ) -> Record {
        let bad = |value: String, why: String| Record::Bad { line, value, bad: Bad::Malformed(why) };
        let serde_json::Value::Object(mut object) = value else {
            return bad(String::new(), "expected a JSON object".into());
        };
        let take = |object: &mut serde_json::Map<String, serde_json::Value>, key: &str| {
            let found = object.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned();
            found.and_then(|k| object.remove(&k))
        };
        let number = match take(&mut object, number_key) {
            Some(serde_json::Value::String(s)) => s.trim().to_owned(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(other) => return bad(other.to_string(), format!("{number_key:?} must be a string")),
            None => return bad(String::new(), format!("no {number_key:?} key")),
        };
        let timezone = match timezone_key.and_then(|k| take(&mut object, k)) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Some(serde_json::Value::String(_) | serde_json::Value::Null) | None => None,
            Some(other) => return bad(number, format!("time zone must be a string, not {other}")),
        };
        let attributes = serde_json::Value::Object(object).to_string();
        Record::Contact(RawContact { line, number, timezone, attributes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Columns {
        Columns { number: "number".into(), timezone: Some("timezone".into()), timezone_required: false }
    }

    fn read(format: Format, text: &[u8]) -> Result<Vec<String>, OpenError> {
        let dir = std::env::temp_dir().join(format!("tocsin-input-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("list");
        std::fs::write(&path, text).unwrap();
        let input = ContactInput::open(
            &Source::File(path),
            Some(format),
            b',',
            &columns(),
            Arc::new(AtomicU64::new(0)),
        );
        let out = input.map(|mut input| {
            let mut out = Vec::new();
            while let Some(r) = input.next_record() {
                out.push(match r.unwrap() {
                    Record::Contact(c) => format!(
                        "{} {} {} {}",
                        c.line,
                        c.number,
                        c.timezone.as_deref().unwrap_or("-"),
                        c.attributes
                    ),
                    Record::Bad { line, bad, .. } => format!("{line} bad {bad:?}"),
                });
            }
            out
        });
        std::fs::remove_dir_all(dir).unwrap();
        out
    }

    #[test]
    fn an_unbalanced_quote_is_reported_where_it_opened_and_swallows_no_contact() {
        let csv = b"number,name\n+14155551000,\"Bob\n+14155551001,Ann\n+14155551002,Cy\n+14155551003,\"Dee\"\n+14155551004,Eve\n";
        let out = read(Format::Csv, csv).unwrap();
        assert_eq!(out.len(), 5, "{out:#?}");
        assert!(out[0].starts_with("2 bad Malformed") && out[0].contains("line 3"), "{}", out[0]);
        for (i, n) in [(1, "+14155551001"), (2, "+14155551002"), (3, "+14155551003"), (4, "+14155551004")] {
            assert!(out[i].contains(n), "{out:#?}");
        }
        // A field that legitimately runs across lines (an address) stays one contact.
        let address = b"number,address\n+14155551000,\"1 Main St\nFloor 2\"\n+14155551001,x\n";
        let out = read(Format::Csv, address).unwrap();
        assert_eq!(out.len(), 2, "{out:#?}");
        assert!(out[0].contains("Floor 2"), "{out:#?}");
    }

    #[test]
    fn cr_only_line_endings_are_named() {
        let err = read(Format::Csv, b"number,name\r+14155551000,Ann\r+14155551001,Bo\r").unwrap_err();
        assert!(err.to_string().contains("CR alone"), "{err}");
    }

    #[test]
    fn csv_records_carry_their_first_line_and_attributes() {
        let out = read(
            Format::Csv,
            b"\xef\xbb\xbfName,Number,Timezone\r\nAda,+14155552671,America/New_York\r\n\r\n\"Fay\nJr\",+442079460959,\n,,\nBo \"x\",+1,\n",
        )
        .unwrap();
        assert_eq!(out[0], r#"2 +14155552671 America/New_York {"Name":"Ada"}"#);
        assert_eq!(out[1], "4 +442079460959 - {\"Name\":\"Fay\\nJr\"}");
        assert_eq!(out[2], r#"7 +1 - {"Name":"Bo \"x\""}"#);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn csv_bad_lines_are_reported_and_reading_goes_on() {
        let mut text = b"name,number\nAda,+14155552671,extra\n".to_vec();
        text.extend_from_slice(b"\"Unclosed,+14155552672\n");
        for i in 0..40 {
            text.extend_from_slice(format!("P{i},+1415555{:04}\n", 3000 + i).as_bytes());
        }
        text.extend_from_slice(b"Caf\xe9,+14155550001\n");
        text.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
        text.extend_from_slice(b"\nLast,+14155550002");
        let out = read(Format::Csv, &text).unwrap();
        assert!(out[0].starts_with("2 bad Malformed(\"3 fields, the header has 2"), "{}", out[0]);
        assert!(out[1].starts_with("3 bad Malformed(\"a quoted field is never closed"), "{}", out[1]);
        assert!(
            out[2].starts_with("4 +14155553000 "),
            "the lines after a broken quote are read again: {}",
            out[2]
        );
        assert_eq!(out.iter().filter(|l| l.contains(" +1415555")).count(), 41);
        assert!(
            out[42].starts_with("44 bad Malformed(\"column \\\"name\\\" is not valid UTF-8"),
            "{}",
            out[42]
        );
        assert_eq!(out[43], "45 bad TooLong { len: 10485760 }");
        assert_eq!(out[44], "46 +14155550002 - {\"name\":\"Last\"}");
    }

    #[test]
    fn csv_header_problems_are_fatal_with_a_hint() {
        let err = read(Format::Csv, b"").unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = read(Format::Csv, b"\n\n").unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = read(Format::Csv, b"+14155552671\n+14155552672\n").unwrap_err().to_string();
        assert!(err.contains(":1:") && err.contains("looks like a contact"), "{err}");
        let err = read(Format::Csv, b"name;number\nAda;+14155552671\n").unwrap_err().to_string();
        assert!(err.contains("--delimiter"), "{err}");
        let err = read(Format::Csv, b"na\xffme,number\n").unwrap_err().to_string();
        assert!(err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn jsonl_objects_become_contacts() {
        let out = read(
            Format::Jsonl,
            b"{\"number\":\"+14155552671\",\"name\":\"Ada\",\"age\":36}\n\n{\"number\":14155552672,\"timezone\":\"Europe/Paris\"}\n[1]\n{\"name\":\"x\"}\n{bad\n\xff\n",
        )
        .unwrap();
        assert_eq!(out[0], r#"1 +14155552671 - {"age":36,"name":"Ada"}"#);
        assert_eq!(out[1], "3 14155552672 Europe/Paris {}");
        assert!(out[2].starts_with("4 bad Malformed(\"expected a JSON object"), "{}", out[2]);
        assert!(out[3].starts_with("5 bad Malformed(\"no \\\"number\\\" key"), "{}", out[3]);
        assert!(out[4].starts_with("6 bad Malformed(\"not valid JSON"), "{}", out[4]);
        assert!(out[5].starts_with("7 bad Malformed(\"not valid UTF-8"), "{}", out[5]);
    }

    #[test]
    fn format_is_taken_from_the_name_or_sniffed() {
        assert_eq!(format_from_name(&Source::File("a.CSV".into())), Some(Format::Csv));
        assert_eq!(format_from_name(&Source::File("a.ndjson".into())), Some(Format::Jsonl));
        assert_eq!(format_from_name(&Source::File("a.dat".into())), None);
        assert_eq!(format_from_name(&Source::Stdin), None);
    }
}

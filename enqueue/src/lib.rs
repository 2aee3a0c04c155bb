//! The enqueue pipeline, as a library with no command line and no printing.
//!
//! It takes a campaign specification (`Spec`: the name, the requested
//! settings, where to publish) and contacts — already parsed records (the
//! HTTP API's JSON body, a saved contact list read from PostgreSQL) or a
//! CSV / JSON Lines text read by `input` — and returns a `Report` or an
//! `EnqueueError` whose variants the CLI maps to exit codes and the API to
//! HTTP statuses. Progress is reported through shared `Counters` and an
//! `Observer` of rejected lines; the CLI draws them with indicatif, the API
//! collects them.
//!
//! ```text
//! contacts ──► ContactReader ──batches──► write stage ──new rows──► publish stage ──confirmed──► mark stage
//! (records or   (E.164, dedupe,          (DNC filter + multi-row   (pipelined confirms,        (INSERT INTO
//!  CSV/JSONL)    time zones)              INSERT … ON CONFLICT)      bounded window)              enqueue_batches)
//! ```
//!
//! Guarantees (see `pipeline`): every contact is enqueued once per campaign
//! however often a run is repeated or interrupted; one run per campaign at a
//! time; a rejected line is reported with its line number and reason and
//! never stops the rest.

pub mod contacts;
mod error;
pub mod input;
pub mod lists;
mod pipeline;
mod publish;
pub mod spec;

pub use contacts::{Reason, Rejection};
pub use error::EnqueueError;
pub use input::{Columns, Format, RawContact, Record, Source};
pub use pipeline::{Contacts, Counters, Observer, Report, enqueue};
pub use spec::{Prepared, Spec};

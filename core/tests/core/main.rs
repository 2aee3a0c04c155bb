//! The core's integration tests, one binary: every provider adapter
//! against a `wiremock` server, and the call-state module against the real
//! PostgreSQL, and the adapters against the providers' documented payloads
//! (`fixtures/`).

mod adapters;
mod calls;
mod fixtures;
mod health;
mod lines;

//! The core's integration tests, one binary: every provider adapter
//! against a `wiremock` server, and the call-state module against the real
//! PostgreSQL.

mod adapters;
mod calls;

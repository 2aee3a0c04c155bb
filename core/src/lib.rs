//! Shared building blocks of Tocsin's binaries: the domain types (phone
//! numbers, ids, call states), the one wire contract (the call job), typed
//! configuration pieces, telemetry, the RabbitMQ topology, the Redis rate
//! limiter, the provider clients and the PostgreSQL helpers.
//!
//! Nothing in this crate opens a socket by itself: every connection is made
//! by a function a binary calls with its configuration.

pub mod account;
pub mod apikey;
pub mod audit;
pub mod calls;
pub mod campaign;
pub mod config;
pub mod confirm;
pub mod db;
pub mod dead;
pub mod export;
pub mod health;
pub mod http;
pub mod ids;
pub mod job;
pub mod limiter;
pub mod lines;
pub mod phone;
pub mod provider;
pub mod queue;
pub mod route;
pub mod shutdown;
pub mod speech;
pub mod state;
pub mod telemetry;
pub mod telnyx;
pub mod template;
#[cfg(feature = "testing")]
pub mod testing;
pub mod twilio;
pub mod vonage;

pub use ids::{CallId, CampaignId};
pub use job::CallJob;
pub use phone::PhoneNumber;
pub use state::{CallState, StateCounts};

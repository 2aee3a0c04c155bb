//! The webhook service's tests, one binary (one link) for all of them:
//! the API (campaigns, Alertmanager, live stream, dashboard routes) and the
//! provider hooks against the real PostgreSQL and RabbitMQ through the
//! shared harness (`common`), and the parsers under arbitrary input.

mod api_alertmanager;
mod api_campaigns;
mod api_live;
mod common;
mod keypresses;
mod parsers_never_panic;
mod ui;
mod vonage_events;

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    tocsin_core::testing::assert_help_hides_secrets(env!("CARGO_BIN_EXE_webhook"), &["--help"]);
}

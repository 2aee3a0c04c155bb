use anyhow::Context;
use clap::Parser;
use webhook::config::WebhookConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WebhookConfig::parse();
    tocsin_core::telemetry::init(config.telemetry.log_format);
    config.validate()?;
    let (listener, _) = tocsin_core::http::bind(config.http_addr)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    webhook::run(config, listener, tocsin_core::shutdown::token_on_signal()).await
}

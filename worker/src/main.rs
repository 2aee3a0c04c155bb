use clap::Parser;
use worker::config::WorkerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::parse();
    tocsin_core::telemetry::init(config.telemetry.log_format);
    config.validate()?;
    worker::run(config, tocsin_core::shutdown::token_on_signal()).await
}

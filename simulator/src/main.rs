use anyhow::Context;
use clap::Parser;
use simulator::config::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen { out } => {
            simulator::keygen::write_vonage_keys(&out)?;
            simulator::keygen::write_telnyx_keys(&out)
        }
        Command::Serve(config) => {
            tocsin_core::telemetry::init(config.telemetry.log_format);
            config.validate()?;
            let (listener, _) = tocsin_core::http::bind(config.http_addr)
                .await
                .with_context(|| format!("binding {}", config.http_addr))?;
            simulator::run(config, listener, tocsin_core::shutdown::token_on_signal()).await
        }
    }
}

use std::process::ExitCode;

use clap::Parser;
use producer::config::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tocsin_core::telemetry::init(cli.telemetry.log_format);
    match producer::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(producer::exit_code(&e))
        }
    }
}

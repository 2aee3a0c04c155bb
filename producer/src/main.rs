use std::process::ExitCode;

use clap::Parser;
use producer::config::Cli;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tocsin_core::telemetry::init(cli.telemetry.log_format);
    // The first Ctrl-C / SIGTERM lets the command finish what is in flight
    // and report; a second one exits at once (still safe to re-run).
    let stop = CancellationToken::new();
    let signalled = stop.clone();
    tokio::spawn(async move {
        tocsin_core::shutdown::signal().await;
        eprintln!("stopping: finishing the jobs in flight (Ctrl-C again to quit at once)");
        signalled.cancel();
        tocsin_core::shutdown::signal().await;
        std::process::exit(130);
    });
    match producer::run(cli, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(producer::exit_code(&e))
        }
    }
}

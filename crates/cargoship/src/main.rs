//! `cargoship`: the command-line tool. Thin: parsing, wiring and output; the work is in
//! the `s3opt` library and the `testbed` crate.

mod archive_cmds;
mod cli;
mod commands;
mod exit;
mod mount;
mod progress;
mod put_many;
mod s3url;
mod setup;

use clap::Parser;

use cli::{Cli, Command};

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn,fuser=error",
        1 => "info,s3opt=info,cargoship=info",
        _ => "debug,aws_smithy_runtime=info,aws_config=info,hyper_util=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_tracing(cli.global.verbose);
    let result = match &cli.command {
        Command::Survey(a) => archive_cmds::survey(&cli.global, a).await,
        Command::Ship(a) => archive_cmds::ship(&cli.global, a).await,
        Command::Restore(a) => archive_cmds::restore(&cli.global, a).await,
        Command::Verify(a) => archive_cmds::verify(&cli.global, a).await,
        Command::Put(a) => commands::put(&cli.global, a).await,
        Command::Get(a) => commands::get(&cli.global, a).await,
        Command::Ls(a) => commands::ls(&cli.global, a).await,
        Command::Serve(a) => commands::serve(a).await,
        Command::Emulate(a) => commands::emulate(a).await,
        Command::Mount(a) => mount::run(&cli.global, a).await,
        Command::Unmount(a) => mount::unmount(a).await,
    };
    if let Err(err) = result {
        eprintln!("cargoship: error: {}", exit::one_line(&err));
        std::process::exit(exit::code(&err));
    }
}

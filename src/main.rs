//! `fer-edge` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = fer_edge::cli::Cli::parse();
    match fer_edge::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("fer-edge: {e:#}");
            std::process::exit(2);
        }
    }
}

//! The `ringcast` command: parse flags and config, check the host, run the shards until
//! SIGINT or SIGTERM.

use clap::Parser;
use ringcast::config::{self, Config};
use ringcast::server::Server;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// ringcast: a thread-per-core MQTT 3.1.1 / 5.0 broker.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on (repeatable); default 0.0.0.0:1883.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// CPUs to pin shards to, e.g. `0,1` or `0-3`; default: every online CPU.
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// Number of shards; default one per CPU (more than CPUs is allowed, for tests).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Hardware profile (a TOML file from hw-profiles/), applied before --config.
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Config file (TOML, same keys as the profile).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match build_config(&cli) {
        Ok(config) => config,
        Err(message) => return fail(&message),
    };
    init_logging(&config.log_level);
    // Block the stop signals before any shard thread starts, so only `wait_for_stop` sees them.
    let signals = stop_signals();
    let server = match Server::start(&config) {
        Ok(server) => server,
        Err(message) => return fail(&message),
    };
    for addr in server.local_addrs() {
        tracing::info!("ringcast listening on {addr}");
    }
    wait_for_stop(&signals);
    tracing::info!("stopping: closing connections and sending wills");
    server.stop();
    server.join();
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("ringcast: {message}");
    ExitCode::FAILURE
}

/// Defaults, then the profile, then the config file, then flags.
fn build_config(cli: &Cli) -> Result<Config, String> {
    let files: Vec<&PathBuf> = cli.profile.iter().chain(cli.config.iter()).collect();
    let mut config = config::load_layers(&files).map_err(|e| e.to_string())?;
    if !cli.listen.is_empty() {
        config.listen = cli.listen.clone();
    }
    if let Some(cpus) = &cli.cpus {
        config.cpus = config::parse_cpu_list(cpus).map_err(|e| e.to_string())?;
    }
    if let Some(shards) = cli.shards {
        config.shards = shards;
    }
    if let Some(level) = &cli.log_level {
        config.log_level = level.clone();
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a set we own; pthread_sigmask on the calling thread, whose
    // mask the shard threads inherit.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_stop(set: &libc::sigset_t) {
    let mut signal = 0;
    // SAFETY: sigwait reads the set and writes the signal number into our integer.
    unsafe { libc::sigwait(set, &mut signal) };
}

//! The `ringcast` command: parse flags and config, check the host, run the shards until
//! SIGINT or SIGTERM (SIGHUP reloads the security files).

use clap::Parser;
use ringcast::config::{self, Config};
use ringcast::security::password::{self, Change, Hash};
use ringcast::server::Server;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: a message's allocation is freed a window after it was
/// made, in the order messages came, which glibc's free lists merge and sort at a cost
/// (Cargo.toml says what was measured). The load generator keeps the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ringcast: a thread-per-core MQTT 3.1.1 / 5.0 broker.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to accept MQTT on (repeatable). With no --listen, --ws-listen or
    /// [[listener]]: 127.0.0.1:1883 and [::1]:1883, and WebSocket on 127.0.0.1:8083.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Address to accept MQTT over WebSocket (path /mqtt) and HTTP on (repeatable).
    #[arg(long = "ws-listen", value_name = "ADDR")]
    ws_listen: Vec<SocketAddr>,
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
    /// Log format: `text` (coloured only on a terminal) or `json` (one object per line, for
    /// log shippers).
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Accept clients without credentials on listeners that do not say otherwise, also on
    /// addresses other than loopback (`allow_anonymous = true`).
    #[arg(long)]
    allow_anonymous: bool,
    /// Data directory for retained messages and persistent sessions
    /// (`persistence.dir`, default ./ringcast-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Start even when a data file is corrupt in the middle, dropping the bad records.
    #[arg(long)]
    repair: bool,
    /// Instead of running the broker: `ringcast passwd` edits a password file.
    #[command(subcommand)]
    command: Option<Command>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Passwd(args)) = &cli.command {
        return passwd(args);
    }
    let mut config = match build_config(&cli) {
        Ok(config) => config,
        Err(message) => return fail(&message),
    };
    init_logging(&config.log_level, &config.log_format);
    // Block the stop signals before any shard thread starts, so only `wait_for_stop` sees them.
    let signals = stop_signals();
    let server = match Server::start(&config) {
        Ok(server) => server,
        Err(message) => return fail(&message),
    };
    for addr in server.local_addrs() {
        tracing::info!("ringcast listening on {addr}");
    }
    while wait_for_signal(&signals) == libc::SIGHUP {
        reload(&server, &cli, &mut config);
    }
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
    if !cli.ws_listen.is_empty() {
        config.ws_listen = cli.ws_listen.clone();
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
    if let Some(format) = &cli.log_format {
        config.log_format = format.clone();
    }
    if cli.allow_anonymous {
        config.allow_anonymous = Some(true);
    }
    if let Some(dir) = &cli.data_dir {
        config.persistence.dir = dir.clone();
    }
    config.persistence.repair |= cli.repair;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Logs go to standard output: as text, coloured only when it is a terminal (a file or
/// journald gets no escape sequences; `NO_COLOR` turns colour off anywhere), or as JSON.
fn init_logging(level: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if format == "json" {
        builder.json().with_ansi(false).init();
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        builder.with_ansi(colour).init();
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a set we own; pthread_sigmask on the calling thread, whose
    // mask the shard threads inherit.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for SIGINT, SIGTERM or SIGHUP; returns which came.
fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: sigwait reads the set and writes the signal number into our integer.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

/// SIGHUP: the password file, the ACL and the certificates are read again; a file that does
/// not parse keeps the old one, and the log says why. The config (profile, file, flags) is
/// read again too: the limits of new connections change now, and every other change is
/// named as waiting for a restart.
fn reload(server: &Server, cli: &Cli, running: &mut Config) {
    let errors = server.reload();
    if errors.is_empty() {
        tracing::info!("reloaded the password file, ACL and certificates");
    }
    for error in errors {
        tracing::warn!("reload: {error}; keeping the previous one");
    }
    let new = match build_config(cli) {
        Ok(new) => new,
        Err(e) => return tracing::warn!("reload: {e}; keeping the running configuration"),
    };
    let changes = config::reload::changes(running, &new);
    if !changes.applied.is_empty() {
        running.limits = config::reload::live_limits(&running.limits, &new.limits);
        server.reload_limits(running.limits.clone());
    }
    for change in &changes.applied {
        tracing::info!("reload: {change} (for new connections)");
    }
    for change in &changes.need_restart {
        tracing::warn!("reload: {change} needs a restart to take effect");
    }
}

/// What `ringcast` runs instead of the broker.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Add, change or delete a user in a mosquitto-compatible password file.
    ///
    /// Takes mosquitto_passwd's options and writes mosquitto's format, so mosquitto and
    /// ringcast can share the file. Without -b, the password is asked for twice.
    Passwd(PasswdArgs),
}

/// `ringcast passwd [-c | -D] [-b] [-I ITERATIONS] FILE USER [PASSWORD]`.
#[derive(clap::Args, Debug)]
struct PasswdArgs {
    /// Create the file with only this user, overwriting a file that exists.
    #[arg(short = 'c', conflicts_with = "delete")]
    create: bool,
    /// Delete the user instead of setting its password.
    #[arg(short = 'D', conflicts_with = "batch")]
    delete: bool,
    /// Batch mode: the password is the last argument instead of being asked for.
    #[arg(short = 'b')]
    batch: bool,
    /// PBKDF2 iterations of the new hash.
    #[arg(short = 'I', value_name = "ITERATIONS", default_value_t = password::ITERATIONS_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(password::ITERATIONS_MAX)))]
    iterations: u32,
    /// The password file.
    file: PathBuf,
    /// The user name.
    user: String,
    /// The password (with -b only).
    #[arg(requires = "batch")]
    password: Option<OsString>,
}

fn passwd(args: &PasswdArgs) -> ExitCode {
    match run_passwd(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn run_passwd(args: &PasswdArgs) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    password::check_username(&args.user)?;
    if args.delete {
        return password::update_file(&args.file, &args.user, Change::Delete);
    }
    if !args.create && !args.file.exists() {
        // Say so before asking for a password that could not be stored.
        let file = args.file.display();
        return Err(format!(
            "password file {file} does not exist (-c creates it)"
        ));
    }
    let secret = match (&args.password, args.batch) {
        (Some(secret), _) => secret.as_bytes().to_vec(),
        (None, true) => return Err("-b needs the password after the user name".into()),
        (None, false) => ask_new_password()?,
    };
    if secret.len() > password::FIELD_BYTES_MAX {
        return Err("the password is over 65535 bytes".into());
    }
    let hash = Hash::new(&secret, args.iterations)?;
    let change = if args.create {
        Change::Create(&hash)
    } else {
        Change::Set(&hash)
    };
    password::update_file(&args.file, &args.user, change)
}

/// Asks twice on a terminal, without echo. From a pipe, reads a line, and a second one to
/// compare if there is one (so both `echo pw |` and mosquitto_passwd's two lines work).
fn ask_new_password() -> Result<Vec<u8>, String> {
    use std::io::IsTerminal;
    let tty = std::io::stdin().is_terminal();
    let Some(first) = read_password("Password: ", tty)? else {
        return Err("no password on standard input".into());
    };
    if first.is_empty() {
        return Err("the password is empty".into());
    }
    match read_password("Reenter password: ", tty)? {
        Some(again) if again != first => Err("the passwords do not match".into()),
        None if tty => Err("the password was not entered again".into()),
        _ => Ok(first),
    }
}

/// One line from standard input without its line ending, or `None` at end of input. On a
/// terminal, prompts on standard error and turns echo off while the line is typed.
fn read_password(prompt: &str, tty: bool) -> Result<Option<Vec<u8>>, String> {
    use std::io::{BufRead, Write};
    let echo_off = if tty {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        EchoOff::new()
    } else {
        None
    };
    let mut line = Vec::new();
    let read = std::io::stdin().lock().read_until(b'\n', &mut line);
    if echo_off.is_some() {
        drop(echo_off);
        eprintln!();
    }
    if read.map_err(|e| format!("cannot read the password: {e}"))? == 0 {
        return Ok(None);
    }
    for ending in [b'\n', b'\r'] {
        if line.last() == Some(&ending) {
            line.pop();
        }
    }
    Ok(Some(line))
}

/// Terminal echo turned off on standard input until dropped.
struct EchoOff(libc::termios);

impl EchoOff {
    fn new() -> Option<EchoOff> {
        // SAFETY: tcgetattr fills a termios we own; tcsetattr only reads one.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return None;
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) != 0 {
                return None;
            }
            Some(EchoOff(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings tcgetattr gave us.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0) };
    }
}

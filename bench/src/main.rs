//! `ringcast-bench`: MQTT load generator. Runs one scenario against a broker on loopback (or
//! against its own `--sink` forwarder) and prints a table or one JSON object.

use clap::Parser;
use ringcast_bench::options::{Options, Scenario};
use ringcast_bench::report::Report;
use ringcast_bench::tls::Tls;
use ringcast_bench::transport::Endpoint;
use ringcast_bench::{conns, handshakes, html, retained, run, sink};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

fn main() -> ExitCode {
    let opts = Options::parse();
    match bench(&opts) {
        Ok(report) => {
            if let Some(path) = &opts.html {
                if let Err(e) = std::fs::write(path, html::page(&report)) {
                    eprintln!("ringcast-bench: cannot write {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
            if opts.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
            if report.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(message) => {
            eprintln!("ringcast-bench: {message}");
            ExitCode::from(2)
        }
    }
}

/// Checks the options, finds the target, runs, reports.
fn bench(opts: &Options) -> Result<Report, String> {
    opts.validate()?;
    let (addr, target) = if opts.sink {
        let addr = sink::start(opts.sink_cpu).map_err(|e| format!("sink: {e}"))?;
        (addr, "sink".to_string())
    } else {
        let addr = loopback(&opts.host, opts.port)?;
        (addr, addr.to_string())
    };
    let broker = Endpoint {
        addr,
        tls: Tls::from_options(opts)?,
        websocket: opts.websocket.then(|| opts.ws_path.clone()),
        persistent: opts.persistent,
        source: None,
    };
    match opts.scenario {
        Scenario::Conns => {
            let outcome = conns::run(opts, &broker)?;
            Ok(Report::from_conns(opts, target, outcome))
        }
        Scenario::Retained => {
            let outcome = retained::run(opts, &broker)?;
            Ok(Report::from_retained(opts, target, outcome))
        }
        Scenario::Handshakes => {
            let outcome = handshakes::run(opts, &broker)?;
            Ok(Report::from_handshakes(opts, target, outcome))
        }
        _ => {
            let outcome = run::run(opts, &broker)?;
            Ok(Report::new(opts, target, outcome))
        }
    }
}

/// Resolves `host:port`, refusing anything but a loopback address: this tool floods its target.
fn loopback(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .find(|a| a.ip().is_loopback())
        .ok_or_else(|| {
            format!("{host} is not a loopback address; ringcast-bench only loads loopback")
        })?;
    Ok(addr)
}

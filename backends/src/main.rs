//! `tollgate-demo-backend`: runs named demo backend instances until SIGINT or
//! SIGTERM. See the library docs for what each instance answers.
#![deny(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::ExitCode;

use tollgate_demo_backend::Backend;

const USAGE: &str = "\
usage: tollgate-demo-backend [--tls-cert FILE --tls-key FILE] NAME=ADDR [NAME=ADDR ...]

Runs one demo HTTP/1.1 backend per NAME=ADDR until SIGINT/SIGTERM.
Each answers with `X-Backend: NAME` and a JSON echo of the request.
  --tls-cert FILE   PEM certificate chain; serve HTTPS on every address
  --tls-key FILE    PEM private key for --tls-cert
Query parameters on any path: status=CODE, sleep_ms=MS, hang=1, size=BYTES.
GET /healthz answers 200 ok.

example: tollgate-demo-backend api-1=127.0.0.1:8081 api-2=127.0.0.1:8082";

struct Args {
    cert: Option<String>,
    key: Option<String>,
    instances: Vec<(String, String)>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        cert: None,
        key: None,
        instances: Vec::new(),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--tls-cert" | "--tls-key" => {
                let file = args.next().ok_or(format!("{arg} needs a FILE argument"))?;
                let slot = if arg == "--tls-cert" {
                    &mut parsed.cert
                } else {
                    &mut parsed.key
                };
                *slot = Some(file);
            }
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}")),
            _ => match arg.split_once('=') {
                Some((name, addr)) if !name.is_empty() && !addr.is_empty() => {
                    parsed.instances.push((name.to_owned(), addr.to_owned()));
                }
                _ => return Err(format!("expected NAME=ADDR, got {arg:?}")),
            },
        }
    }
    if parsed.cert.is_some() != parsed.key.is_some() {
        return Err("--tls-cert and --tls-key must be given together".into());
    }
    if parsed.instances.is_empty() {
        return Err("no NAME=ADDR given".into());
    }
    Ok(Some(parsed))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("tollgate-demo-backend: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("tollgate-demo-backend: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let read = |f: &String| std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"));
            Some((read(cert)?, read(key)?))
        }
        _ => None,
    };
    let mut backends = Vec::new();
    for (name, addr) in args.instances {
        let listener =
            TcpListener::bind(&addr).map_err(|e| format!("{name}: cannot bind {addr}: {e}"))?;
        let backend = match &tls {
            Some((cert, key)) => Backend::spawn_tls(listener, name.clone(), cert, key)
                .map_err(|e| format!("{name}: {e}"))?,
            None => Backend::spawn(listener, name.clone()),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("{name} listening on {scheme}://{}", backend.addr());
        backends.push(backend);
    }
    wait_for_signal().map_err(|e| format!("signal handling: {e}"))?;
    for backend in &backends {
        backend.stop();
    }
    Ok(())
}

fn wait_for_signal() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = term.recv() => Ok(()),
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await
    })
}

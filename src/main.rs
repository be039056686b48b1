//! The `tollgate` command: validate a config, or run the edge.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate::{build_server, Config, StartOptions};

// The allocator: see the features in Cargo.toml. mimalloc, when chosen, wins over the default.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's thread caches, sized for a proxy (bench/results/cg-jemalloc-conf.md): each
/// request allocates its state when it starts and frees it when it ends, and with many
/// connections their requests start and end in bursts. jemalloc's defaults cache 20 objects of
/// a size per thread and trim the cache every 64 KiB allocated, so a burst overflows it and the
/// objects go back to their slabs and extents and are carved out again. 200 per size and a trim
/// every 16 MiB keep them cached: ~10 % fewer instructions per request, for at most a few MiB
/// cached per thread. `_RJEM_MALLOC_CONF` in the environment still overrides it.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_CONF: &[u8; 82] =
    b"tcache_nslots_small_min:200,tcache_nslots_large:200,tcache_gc_incr_bytes:16777216\0";

/// An HTTPS edge proxy on Pingora.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The configuration file.
    #[arg(short, long, default_value = "conf/tollgate.yaml")]
    config: PathBuf,
    /// Validate the configuration and exit (non-zero with every error when invalid).
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Take the listening sockets over from a running instance, which is then sent SIGQUIT.
    #[arg(short, long)]
    upgrade: bool,
    /// Run in the background.
    #[arg(short, long)]
    daemon: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: {}: {e}", cli.config.display());
            return ExitCode::from(1);
        }
    };
    if cli.test {
        println!("tollgate: configuration {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = tollgate::logging::init(&config.logging) {
        eprintln!("tollgate: cannot open log file: {e}");
        return ExitCode::from(1);
    }
    let opts = StartOptions {
        config_path: cli.config.clone(),
        upgrade: cli.upgrade,
        daemon: cli.daemon,
    };
    let pid_file = config.server.pid_file.clone();
    match build_server(config, &opts) {
        Ok(built) => {
            // Pingora writes the pid file only when it daemonizes; do the same in the
            // foreground, moving a running instance's file to `.old` as Pingora does.
            let foreground = !cli.daemon;
            if foreground {
                write_pid_file(&pid_file);
            }
            tollgate::server::run(built);
            if foreground {
                remove_own_pid_file(&pid_file);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::from(1)
        }
    }
}

fn write_pid_file(path: &std::path::Path) {
    if path.exists() {
        let old = format!("{}.old", path.display());
        if let Err(e) = std::fs::rename(path, &old) {
            eprintln!("tollgate: cannot move {} to {old}: {e}", path.display());
        }
    }
    if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
        eprintln!("tollgate: cannot write pid file {}: {e}", path.display());
    }
}

/// Removes the pid file if it is still ours (a newer instance may have taken it over).
fn remove_own_pid_file(path: &std::path::Path) {
    let ours = std::fs::read_to_string(path)
        .map(|s| s.trim() == std::process::id().to_string())
        .unwrap_or(false);
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

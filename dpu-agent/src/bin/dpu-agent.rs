//! `dpu-agent`: the DPU control-plane daemon. `run` is production; `dev`
//! runs on embedded defaults with a generated PKI (and a private Open vSwitch
//! when installed) for trying it out. A build without the `dev` feature (the
//! flashed image) still parses `dev` and answers it with an error that says
//! so.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use dpu_agent::agent;
use dpu_agent::config::{Config, FileConfig, Flags, LogFormat, Mode};
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "dpu-agent", version, about = "The DPU control-plane agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run in production from a config file.
    Run {
        /// The TOML config file (see config.sample.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        common: CommonFlags,
    },
    /// Run on embedded defaults: a generated PKI in STATE_DIR/pki, a private
    /// Open vSwitch in STATE_DIR/ovs, listening on 127.0.0.1:9443 (only in a
    /// build with the `dev` feature, the default).
    Dev {
        #[command(flatten)]
        common: CommonFlags,
        /// Do not start a private Open vSwitch.
        #[arg(long)]
        no_ovs: bool,
        /// Stop the private Open vSwitch of the state directory (it
        /// outlives the agent, so that a restart is hitless) and exit.
        #[arg(long)]
        stop: bool,
    },
}

#[derive(Args, Clone)]
struct CommonFlags {
    /// Where the mTLS API listens.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Also serve plain HTTP on this loopback address (every caller is the
    /// fleet controller).
    #[arg(long)]
    insecure_listen: Option<SocketAddr>,
    /// The store and, in dev mode, the PKI and OVS.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[arg(long)]
    trust_domain: Option<String>,
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// A tracing filter such as `info` or `dpu_agent=debug`.
    #[arg(long)]
    log_level: Option<String>,
}

impl CommonFlags {
    fn into_flags(self) -> Flags {
        Flags {
            listen: self.listen,
            insecure_listen: self.insecure_listen,
            state_dir: self.state_dir,
            trust_domain: self.trust_domain,
            log_format: self.log_format,
            log_level: self.log_level,
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Turns SIGTERM and SIGINT into the shutdown signal.
fn shutdown_on_signals() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn main_async(cli: Cli) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    match cli.command {
        Command::Run { config, common } => {
            let file = match &config {
                Some(path) => Config::read_file(path)?,
                None => FileConfig::default(),
            };
            let cfg = Config::resolve(Mode::Run, file, &env, common.into_flags())?;
            init_logging(&cfg);
            let shutdown = shutdown_on_signals()?;
            agent::run(&cfg, agent::default_controllers(), shutdown).await?;
        }
        Command::Dev {
            common,
            no_ovs,
            stop,
        } => dev_mode(common, no_ovs, stop).await?,
    }
    Ok(())
}

/// `dpu-agent dev` (see `dpu_agent::dev`).
#[cfg(feature = "dev")]
async fn dev_mode(common: CommonFlags, no_ovs: bool, stop: bool) -> anyhow::Result<()> {
    use dpu_agent::dev;
    let env = |k: &str| std::env::var(k).ok();
    let mut cfg = Config::resolve(Mode::Dev, FileConfig::default(), &env, common.into_flags())?;
    init_logging(&cfg);
    if stop {
        let stopped = dev::stop_switch(&cfg.state_dir).await?;
        if stopped.programs.is_empty() {
            println!(
                "no private Open vSwitch runs in {}",
                cfg.state_dir.join("ovs").display()
            );
        } else {
            println!("stopped {}", stopped.programs.join(" and "));
        }
        if let Some(ns) = stopped.netns {
            println!("removed network namespace {ns}");
        }
        return Ok(());
    }
    let shutdown = shutdown_on_signals()?;
    let bootstrap = dev::bootstrap(&cfg, !no_ovs).await?;
    println!("{}", bootstrap.banner(&cfg));
    // Representors go where the switch's datapath is.
    cfg.switch_netns = bootstrap.switch_netns();
    let result = agent::run(&cfg, agent::default_controllers(), shutdown).await;
    // The switch stays up with its flows (stop it with --stop).
    bootstrap.leave_switch_running();
    result?;
    Ok(())
}

/// The message of a build without the `dev` feature.
#[cfg(not(feature = "dev"))]
const NO_DEV_MODE: &str = "this build has no dev mode; build with --features dev";

/// `dpu-agent dev` in a build without the `dev` feature (the flashed
/// image): the same command line is accepted and answered with an error.
#[cfg(not(feature = "dev"))]
async fn dev_mode(_common: CommonFlags, _no_ovs: bool, _stop: bool) -> anyhow::Result<()> {
    anyhow::bail!(NO_DEV_MODE)
}

/// glibc's malloc gives each thread that contends for it an arena of its
/// own, up to 8 per core, and keeps what those arenas once held: after a
/// burst of writes over 32 connections the agent's RSS stayed about 25 MB
/// above its data (dpu-agent/BENCHMARKS.md, "Memory after writes"). Two
/// arenas keep that near the data at no measured CPU cost. An operator's
/// `MALLOC_ARENA_MAX` wins; musl (the image's static build) has no arenas.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of the allocator; it is
        // called before the runtime starts any thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// The static build's allocator (see Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Threads of tokio's blocking pool: the backends' blocking jobs (configfs,
/// NVMe/TCP connects, devlink and rtnetlink requests, files) and the checks
/// of large request bodies. The store's work (admission, commits, event
/// pages) has threads of its own (`dpu_agent::threads`), so it never waits
/// behind these. Each thread keeps its own allocator caches, so a burst
/// that spawned many would keep their memory; one second idle and they
/// exit. No blocking task waits for another one (namespace work runs on
/// threads of its own), so the limit queues blocking work and cannot
/// deadlock it.
const BLOCKING_THREADS: usize = 4;

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dpu-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_async(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpu-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The shape of the build, not a TENANCY.md invariant: the image's agent
/// (no `dev` feature) refuses dev mode clearly.
#[cfg(test)]
mod tests {
    use super::*;

    /// Every `dev` command line parses in every build, so that a build
    /// without the feature answers it with its own error, not clap's.
    #[test]
    fn dev_command_lines_parse() {
        for args in [
            &["dpu-agent", "dev"][..],
            &["dpu-agent", "dev", "--no-ovs", "--state-dir", "/tmp/x"],
            &["dpu-agent", "dev", "--stop"],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            assert!(matches!(cli.command, Command::Dev { .. }));
        }
    }

    /// Without the `dev` feature, `dpu-agent dev` fails with the message
    /// that names the feature, before it touches anything.
    #[cfg(not(feature = "dev"))]
    #[test]
    fn dev_without_the_feature_is_a_clear_error() {
        let cli = Cli::try_parse_from(["dpu-agent", "dev", "--no-ovs"]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(main_async(cli)).unwrap_err();
        assert_eq!(err.to_string(), NO_DEV_MODE);
    }
}

//! `host-stub`: discover the DPU's functions on this host, or run the daemon
//! that reports them to the DPU agent and exposes the assigned ones.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use host_stub::config::Config;
use host_stub::daemon::{self, Daemon, DaemonSettings};
use host_stub::discover;
use host_stub::selectors::{self, Selector};
use host_stub::vfio;

#[derive(Debug, Parser)]
#[command(name = "host-stub", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the DPU's functions on this host, without contacting the agent.
    Discover {
        /// Root of the sysfs tree to read.
        #[arg(long, default_value = discover::DEFAULT_SYSFS_ROOT)]
        sysfs_root: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Show every PCI function, not only the DPU's.
        #[arg(long)]
        all: bool,
        /// Replace the BlueField defaults by one selector made of these
        /// (hex ids without 0x); each flag may be repeated.
        #[arg(long = "vendor")]
        vendors: Vec<String>,
        #[arg(long = "device")]
        devices: Vec<String>,
        #[arg(long = "driver")]
        drivers: Vec<String>,
        #[arg(long = "pf-name")]
        pf_names: Vec<String>,
        /// Take the selectors from this daemon config file.
        #[arg(long, conflicts_with_all = ["vendors", "devices", "drivers", "pf_names"])]
        config: Option<PathBuf>,
    },
    /// Bind a function to vfio-pci, or give it back to a driver, by hand.
    Vfio {
        #[command(subcommand)]
        action: VfioAction,
        #[arg(long, global = true, default_value = discover::DEFAULT_SYSFS_ROOT)]
        sysfs_root: PathBuf,
    },
    /// OCI `createRuntime` hook (named by RDMA functions' CDI specs when
    /// `[cdi] rdma_netns_hook` is set): moves RDMA device DEVICE into the
    /// network namespace of the container whose state JSON is on stdin.
    RdmaNetnsHook {
        /// The RDMA device (`mlx5_3`).
        device: String,
    },
    /// Run the daemon.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Overrides `sysfs_root` from the file.
        #[arg(long)]
        sysfs_root: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum VfioAction {
    /// Prints the previous driver and the IOMMU group.
    Bind { pci_address: String },
    /// Clears driver_override, unbinds from vfio-pci, binds `--to`.
    Release {
        pci_address: String,
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Discover {
            sysfs_root,
            output,
            all,
            vendors,
            devices,
            drivers,
            pf_names,
            config,
        } => {
            let functions = discover::scan(&sysfs_root)?;
            let functions = if all {
                functions
            } else {
                let chosen = if let Some(path) = config {
                    Config::load(&path)?.selectors
                } else if vendors.is_empty()
                    && devices.is_empty()
                    && drivers.is_empty()
                    && pf_names.is_empty()
                {
                    selectors::bluefield_defaults()
                } else {
                    vec![Selector {
                        vendors,
                        devices,
                        drivers,
                        pf_names,
                        ..Selector::default()
                    }]
                };
                selectors::select(&chosen, &functions)
            };
            let text = match output {
                Output::Table => discover::render_table(&functions),
                Output::Json => {
                    let summaries: Vec<_> = functions.iter().map(|f| f.summary()).collect();
                    serde_json::to_string_pretty(&summaries)? + "\n"
                }
            };
            write_stdout(&text)
        }
        Command::Vfio { action, sysfs_root } => match action {
            VfioAction::Bind { pci_address } => {
                let b = vfio::bind(&sysfs_root, &pci_address)?;
                println!(
                    "{} bound to vfio-pci: group {} (/dev/vfio/{}), previous driver {}",
                    b.pci_address,
                    b.iommu_group,
                    b.iommu_group,
                    b.previous_driver.as_deref().unwrap_or("none")
                );
                Ok(())
            }
            VfioAction::Release { pci_address, to } => {
                vfio::release_to(&sysfs_root, &pci_address, to.as_deref())?;
                println!(
                    "{pci_address} released to {}",
                    to.as_deref().unwrap_or("no driver")
                );
                Ok(())
            }
        },
        Command::RdmaNetnsHook { device } => {
            let mut state = Vec::new();
            use std::io::Read;
            std::io::stdin()
                .take(1 << 20)
                .read_to_end(&mut state)
                .context("reading the container state from stdin")?;
            let pid = host_stub::rdma_netns::container_pid(&state)?;
            host_stub::rdma_netns::move_device(&device, pid)?;
            eprintln!("RDMA device {device} moved into the network namespace of pid {pid}");
            Ok(())
        }
        Command::Run { config, sysfs_root } => run(config, sysfs_root),
    }
}

/// Prints to stdout; a closed pipe (`| head`) ends the output quietly.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Logs to stdout, filtered by `RUST_LOG` as `target=level` directives
/// (`warn`, `host_stub=debug,info`): tracing-subscriber's `Targets`, which
/// needs no regex engine, unlike its `EnvFilter` (span and field directives
/// are not supported). A `RUST_LOG` that does not parse is reported and
/// `info` used.
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let default = || Targets::new().with_default(LevelFilter::INFO);
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => match text.parse::<Targets>() {
            Ok(filter) => (filter, None),
            Err(e) => (default(), Some((text, e))),
        },
        _ => (default(), None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer())
        .init();
    if let Some((text, e)) = bad {
        tracing::warn!(rust_log = %text, error = %e, "RUST_LOG is not a list of target=level directives; logging at info");
    }
}

fn run(config_path: PathBuf, sysfs_root: Option<PathBuf>) -> anyhow::Result<()> {
    init_logging();
    let mut config = Config::load(&config_path)?;
    if let Some(root) = sysfs_root {
        config.sysfs_root = root;
    }
    // One thread: the stub is I/O-bound and small; a worker per core would
    // cost memory on large hosts for nothing.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let agent = dpu_api::client::Client::from_files(
            &config.agent.url,
            &config.agent.ca,
            Some((&config.agent.cert, &config.agent.key)),
        )
        .with_context(|| {
            format!(
                "cannot set up the client of the DPU agent {}",
                config.agent.url
            )
        })?;
        let daemon = Daemon::new(agent, DaemonSettings::from(&config));
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let metrics_task = match config.metrics.listen {
            Some(listen) => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on metrics.listen = {listen}"))?;
                tracing::info!(%listen, "serving /metrics");
                Some(tokio::spawn(host_stub::metrics::serve(
                    listener,
                    daemon.metrics(),
                    shutdown_rx.clone(),
                )))
            }
            None => None,
        };
        let uevents = daemon::spawn_uevent_listener();
        let plugin = config.device_plugin.enabled.then(|| {
            tokio::spawn(host_stub::deviceplugin::run_with_metrics(
                host_stub::deviceplugin::PluginSettings {
                    dir: config.device_plugin.dir.clone(),
                },
                daemon.plugin_state(),
                shutdown_rx.clone(),
                daemon.metrics(),
            ))
        });
        let task = tokio::spawn(daemon.run(shutdown_rx, uevents));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = shutdown_tx.send(true);
        task.await.context("daemon task panicked")?;
        if let Some(plugin) = plugin {
            plugin.await.context("device plugin task panicked")?;
        }
        if let Some(m) = metrics_task {
            m.await.context("metrics task panicked")?;
        }
        Ok(())
    })
}

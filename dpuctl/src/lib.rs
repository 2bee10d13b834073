//! `dpuctl`, the operator's command line for the v1 API: apply and plan
//! files of objects, get, describe, delete and watch them. The binary only
//! calls [`main`]. Exit codes: 0 done, 1 the agent refused or could not be
//! reached, 2 bad usage or input (nothing was sent). See CLI.md.

pub mod connect;
pub mod documents;
pub mod render;

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dpu_api::Kind;
use dpu_api::client::{Client, ClientError, WatchFilter};
use futures_util::StreamExt;
use serde::Serialize;

use connect::ConnectArgs;
use documents::{DocumentError, DocumentProblem, Documents};

#[derive(Debug, Parser)]
#[command(
    name = "dpuctl",
    version,
    about = "Operate a DPU agent through its v1 API",
    after_help = "After `dpu-agent dev`, no flags are needed: the CA and the admin identity are read from <state-dir>/pki/."
)]
pub struct Cli {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update every object of the files in one transaction.
    Apply(ApplyArgs),
    /// Show what `apply` would do, backend action by action, without doing it.
    Plan(ApplyArgs),
    /// List the objects of a kind, or show one.
    Get {
        #[arg(value_parser = parse_kind)]
        kind: Kind,
        id: Option<String>,
        /// Only this tenant's objects.
        #[arg(long, conflicts_with = "id")]
        tenant: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Spec, status, conditions and recent events of one object.
    Describe {
        #[arg(value_parser = parse_kind)]
        kind: Kind,
        id: String,
    },
    /// Delete one object (its controller then tears it down).
    Delete {
        #[arg(value_parser = parse_kind)]
        kind: Kind,
        id: String,
    },
    /// Print one line per change, as it happens.
    Watch {
        /// Only this kind.
        #[arg(value_parser = parse_kind)]
        kind: Option<Kind>,
        /// Only the object with this id (with a kind).
        #[arg(long, requires = "kind")]
        id: Option<String>,
        /// Start after this revision [default: now].
        #[arg(long)]
        since: Option<u64>,
        /// Print the stored events and stop instead of following.
        #[arg(long)]
        no_follow: bool,
        #[arg(short, long, value_enum, default_value_t = LineOutput::Text)]
        output: LineOutput,
    },
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A YAML or JSON file, or `-` for stdin; may be repeated.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Delete this tenant's objects that the files do not list.
    #[arg(long)]
    pub prune_tenant: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LineOutput {
    Text,
    Json,
}

fn parse_kind(s: &str) -> Result<Kind, dpu_api::kind::UnknownKind> {
    s.parse::<Kind>()
}

/// Why `dpuctl` failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("cannot read {name}")]
    ReadInput {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// `--prune-tenant` names another tenant than the files' `prune`.
    #[error(transparent)]
    Prune(DocumentProblem),
    #[error("the files contain no objects; nothing to do")]
    NothingToDo,
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
    /// stdout was closed (`dpuctl watch | head`): not a failure.
    #[error("stdout closed")]
    BrokenPipe,
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::BrokenPipe => 0,
            CliError::Api(ClientError::ReadFile { .. } | ClientError::Pem { .. })
            | CliError::ReadInput { .. }
            | CliError::Document(_)
            | CliError::Prune(_)
            | CliError::NothingToDo => 2,
            CliError::Api(_) | CliError::Output(_) => 1,
        }
    }
}

/// An error and its causes on one line, separated by `: `.
pub use dpu_api::error_chain;

/// The error and its causes on one line, then hints for the operator.
pub fn report(err: &CliError, cli: &Cli, docs: Option<&Documents>) -> String {
    // A transparent variant's own source is the first cause.
    let mut line = format!("error: {}\n", error_chain(err));
    let id = cli.connect.identity(
        std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .as_deref(),
    );
    match err {
        CliError::Api(e @ ClientError::Problem(p)) => {
            if let Some(origin) = p
                .field
                .as_deref()
                .and_then(|f| docs.and_then(|d| d.origin_of_field(f)))
            {
                line.push_str(&format!(
                    "  {} is {origin}\n",
                    p.field
                        .as_deref()
                        .unwrap_or_default()
                        .split('.')
                        .next()
                        .unwrap_or_default()
                ));
            }
            if matches!(e.status(), Some(401 | 403)) {
                line.push_str(&format!(
                    "hint: the identity in {} may not do this; the admin (fleet-controller) identity may\n",
                    id.cert.display()
                ));
            }
        }
        CliError::Api(ClientError::ReadFile { .. } | ClientError::Pem { .. }) => {
            line.push_str(&format!(
                "hint: run `dpu-agent dev` (it writes {}/) or pass --ca, --cert and --key\n",
                id.ca
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ));
        }
        CliError::Api(ClientError::Transport { .. }) => {
            line.push_str(&format!(
                "hint: is dpu-agent listening at {} and does its certificate come from {}? (--server, DPU_SERVER; --ca)\n",
                cli.connect.server,
                id.ca.display()
            ));
        }
        _ => {}
    }
    line
}

/// The whole of `dpuctl`: parse, run, print, exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut docs = None;
    match runtime.block_on(run(&cli, &mut docs)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if !matches!(err, CliError::BrokenPipe) {
                eprint!("{}", report(&err, &cli, docs.as_ref()));
            }
            ExitCode::from(err.exit_code())
        }
    }
}

/// Runs one command. `docs` keeps what `apply`/`plan` read, so an error
/// naming `objects[N]` can say which file and document that was.
pub async fn run(cli: &Cli, docs: &mut Option<Documents>) -> Result<(), CliError> {
    match &cli.command {
        Command::Apply(args) | Command::Plan(args) => {
            let d = docs.insert(read_documents(args)?);
            if d.request.objects.is_empty() && d.request.prune.is_none() {
                return Err(CliError::NothingToDo);
            }
            let client = cli.connect.client()?;
            if matches!(cli.command, Command::Apply(_)) {
                let resp = client.apply(&d.request).await?;
                print_as(args.output, &resp, || render::apply_result(&resp))
            } else {
                let resp = client.plan(&d.request).await?;
                print_as(args.output, &resp, || render::plan(&resp))
            }
        }
        Command::Get {
            kind,
            id,
            tenant,
            output,
        } => {
            let client = cli.connect.client()?;
            get(&client, *kind, id.as_deref(), tenant.as_deref(), *output).await
        }
        Command::Describe { kind, id } => {
            let client = cli.connect.client()?;
            let object = client.get(*kind, id).await?;
            let events = recent_events(&client, *kind, id).await;
            let events = events.as_deref();
            out(&render::describe(&object, events))
        }
        Command::Delete { kind, id } => {
            let client = cli.connect.client()?;
            let revision = client.delete(*kind, id).await?;
            out(&format!(
                "{}/{id} deleting (revision {revision}); it is gone once its controller has torn it down\n",
                kind.path()
            ))
        }
        Command::Watch {
            kind,
            id,
            since,
            no_follow,
            output,
        } => {
            let client = cli.connect.client()?;
            let filter = WatchFilter {
                kind: *kind,
                id: id.clone(),
                follow: !no_follow,
            };
            watch(&client, filter, *since, *output).await
        }
    }
}

fn read_documents(args: &ApplyArgs) -> Result<Documents, CliError> {
    let mut docs = Documents::default();
    for name in &args.files {
        let text = if name == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|source| CliError::ReadInput {
                    name: "stdin".into(),
                    source,
                })?;
            s
        } else {
            std::fs::read_to_string(name).map_err(|source| CliError::ReadInput {
                name: name.clone(),
                source,
            })?
        };
        let shown = if name == "-" { "stdin" } else { name.as_str() };
        docs.add(shown, &text)?;
    }
    if let Some(t) = &args.prune_tenant {
        docs.set_prune(t).map_err(CliError::Prune)?;
    }
    Ok(docs)
}

async fn get(
    client: &Client,
    kind: Kind,
    id: Option<&str>,
    tenant: Option<&str>,
    output: Output,
) -> Result<(), CliError> {
    match id {
        Some(id) => {
            let o = client.get(kind, id).await?;
            print_as(output, &o, || {
                render::objects_table(std::slice::from_ref(&o))
            })
        }
        None => {
            let list = client.list(kind, tenant).await?;
            match output {
                Output::Table if list.items.is_empty() => {
                    let scope = tenant
                        .map(|t| format!(" in tenant {t}"))
                        .unwrap_or_default();
                    out(&format!("no {}{scope}\n", kind.path()))
                }
                Output::Table => out(&render::objects_table(&list.items)),
                Output::Json => out(&to_json(&list)?),
                // One document per object: the output applies back.
                Output::Yaml => {
                    let mut text = String::new();
                    for o in &list.items {
                        text.push_str("---\n");
                        text.push_str(&to_yaml(o)?);
                    }
                    out(&text)
                }
            }
        }
    }
}

/// Why `describe` shows no events.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("the event log did not answer within 10 s")]
    Timeout,
}

/// The object's last events, oldest first, from the event log (not
/// followed).
async fn recent_events(
    client: &Client,
    kind: Kind,
    id: &str,
) -> Result<Vec<dpu_api::Event>, EventsError> {
    const KEEP: usize = 10;
    let filter = WatchFilter {
        kind: Some(kind),
        id: Some(id.to_string()),
        follow: false,
    };
    let collect = async {
        let mut stream = client.watch(0, &filter).await?;
        let mut events = Vec::new();
        while let Some(ev) = stream.next().await {
            events.push(ev?);
            if events.len() > KEEP {
                events.remove(0);
            }
        }
        Ok(events)
    };
    tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .unwrap_or(Err(EventsError::Timeout))
}

async fn watch(
    client: &Client,
    filter: WatchFilter,
    since: Option<u64>,
    output: LineOutput,
) -> Result<(), CliError> {
    let mut last = match since {
        Some(rev) => rev,
        // Now: the revision of a list (of the watched kind, which the
        // caller may read).
        None if filter.follow => {
            client
                .list(filter.kind.unwrap_or(Kind::Tenant), None)
                .await?
                .revision
        }
        None => 0,
    };
    loop {
        let mut stream = client.watch(last, &filter).await?;
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            last = last.max(ev.revision);
            let line = match output {
                LineOutput::Text => render::watch_line(&ev),
                LineOutput::Json => serde_json::to_string(&ev)
                    .map_err(|e| CliError::Output(std::io::Error::other(e)))?,
            };
            out(&format!("{line}\n"))?;
        }
        if !filter.follow {
            return Ok(());
        }
        // The agent closes a watcher that fell behind: resume after the
        // last event seen. If it is gone, the next request fails and ends
        // the loop.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_as<T: Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<(), CliError> {
    match output {
        Output::Table => out(&table()),
        Output::Json => out(&to_json(value)?),
        Output::Yaml => out(&to_yaml(value)?),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| CliError::Output(std::io::Error::other(e)))
}

fn to_yaml<T: Serialize>(value: &T) -> Result<String, CliError> {
    serde_yaml::to_string(value).map_err(|e| CliError::Output(std::io::Error::other(e)))
}

/// Writes to stdout; a closed pipe ends the command quietly.
fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => CliError::BrokenPipe,
            _ => CliError::Output(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_api::Problem;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dpuctl").chain(args.iter().copied()))
    }

    #[test]
    fn kinds_parse_loosely_and_usage_errors_exit_2() {
        let c = cli(&["get", "ipsec-tunnel", "t1"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Get {
                kind: Kind::IpsecTunnel,
                ..
            }
        ));
        let c = cli(&["describe", "Port", "web-1"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Describe {
                kind: Kind::Port,
                ..
            }
        ));
        let err = cli(&["get", "pods"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("unknown kind"), "{err}");
        assert_eq!(cli(&["apply"]).unwrap_err().exit_code(), 2);
        assert_eq!(
            cli(&["get", "ports", "p1", "--tenant", "a"])
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(cli(&["watch", "--id", "x"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn global_flags_go_anywhere() {
        let c = cli(&[
            "get",
            "ports",
            "--server",
            "http://127.0.0.1:8080",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(c.connect.server, "http://127.0.0.1:8080");
        let c = cli(&["--ca", "/x/ca.pem", "apply", "-f", "a.yaml", "-f", "-"]).unwrap();
        let Command::Apply(args) = c.command else {
            panic!("apply")
        };
        assert_eq!(args.files, ["a.yaml", "-"]);
    }

    #[test]
    fn api_errors_print_detail_and_field_and_exit_1() {
        let c = cli(&["apply", "-f", "x.yaml"]).unwrap();
        let mut docs = Documents::default();
        docs.add(
            "x.yaml",
            "kind: Tenant\nid: acme\nspec: {}\n---\nkind: Network\nid: n1\ntenant: acme\nspec: {vni: 0}\n",
        )
        .unwrap();
        let problem = Problem::new(422, "objects[1].spec.vni: 0 is outside 1-16777215")
            .with_field("objects[1].spec.vni");
        let err = CliError::Api(ClientError::Problem(problem));
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            report(&err, &c, Some(&docs)),
            "error: 422 Unprocessable Content: objects[1].spec.vni: 0 is outside 1-16777215 (field objects[1].spec.vni)\n  \
             objects[1] is networks/n1 (x.yaml, document 2)\n"
        );
        let err = CliError::Api(ClientError::Pem {
            source_name: "/s/pki/ca.pem".into(),
            reason: "contains no CERTIFICATE block".into(),
        });
        assert_eq!(err.exit_code(), 2);
        assert!(report(&err, &c, None).contains("hint: run `dpu-agent dev`"));
    }
}

//! `dpuctl`: the operator's command line for the v1 API. The logic is in
//! `dpu_agent::cli`; see CLI.md.

fn main() -> std::process::ExitCode {
    dpu_agent::cli::main()
}

//! `dpuctl`: the operator's command line for the v1 API. The logic is in
//! the library (`dpuctl::main`); see CLI.md.

fn main() -> std::process::ExitCode {
    dpuctl::main()
}

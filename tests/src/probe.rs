//! The `main` of the async probe binaries (`src/bin`): the command line
//! (without the program name) to an async `run` on a current-thread
//! runtime; an error is printed as `NAME: error` and exits 1.

use std::future::Future;
use std::process::ExitCode;

/// Runs `run` with the command line's arguments; `name` prefixes errors.
pub fn main<F>(name: &str, run: impl FnOnce(Vec<String>) -> F) -> ExitCode
where
    F: Future<Output = Result<(), String>>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

//! The `alcove` command: parses flags into validated specs, hands them to the
//! crates that own the work, and maps every failure to one clear line and an
//! exit code.

mod bench;
mod cli;
mod doctor;
mod functions;
mod image;
mod sandbox_flags;
mod sandboxes;
mod scope;
mod serve;
mod trace;

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = cli::main();
    ExitCode::from(code.clamp(0, 255) as u8)
}

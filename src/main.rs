//! The `faceall` command line; see `cli`.

fn main() -> std::process::ExitCode {
    faceall_cli::main()
}

#[path = "cli/mod.rs"]
mod faceall_cli;

//! The `sluice` command (see [`sluice::cli`]).

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}

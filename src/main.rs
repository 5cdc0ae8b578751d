//! The `kiln` command: see `kiln --help` and docs/training.md. All of it lives in
//! [`kiln::cli`].

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}

//! The `walcast` binary: see [`walcast::cli`].

fn main() -> std::process::ExitCode {
    walcast::cli::main()
}

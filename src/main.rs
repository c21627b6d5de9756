//! The `abha-bulk` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    abha_bulk::cli::main()
}

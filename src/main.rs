//! The `erpsync` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    erpsync::cli::main()
}

//! The `observer` binary: the command line of the library (`observer::command`).
fn main() -> std::process::ExitCode {
    observer::command::main()
}

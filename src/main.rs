fn main() -> std::process::ExitCode {
    segsync::commands::main()
}

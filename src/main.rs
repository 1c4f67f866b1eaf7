fn main() -> std::process::ExitCode {
    segsync::cli::main()
}

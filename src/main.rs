fn main() -> std::process::ExitCode {
    bgz_harness::cli::main()
}

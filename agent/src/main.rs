fn main() -> std::process::ExitCode {
    redis_steward::cli::main()
}

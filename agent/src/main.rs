fn main() -> std::process::ExitCode {
    redis_steward::ops::cli::main()
}

fn main() -> std::process::ExitCode {
    runc_etcd::cli::main()
}

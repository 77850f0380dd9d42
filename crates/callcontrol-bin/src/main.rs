fn main() -> std::process::ExitCode {
    callcontrol_bin::daemon::main()
}

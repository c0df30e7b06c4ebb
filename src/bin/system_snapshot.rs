fn main() {
    std::process::exit(restorepoint::cli::snapshot_main());
}

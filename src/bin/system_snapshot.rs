fn main() {
    std::process::exit(restorepoint::cli::main_by_name(
        restorepoint::cli::snapshot_main,
    ));
}

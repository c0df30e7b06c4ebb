fn main() {
    std::process::exit(restorepoint::cli::restore_main());
}

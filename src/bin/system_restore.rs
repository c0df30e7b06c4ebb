fn main() {
    std::process::exit(restorepoint::cli::main_by_name(
        restorepoint::cli::restore_main,
    ));
}

//! `strata`: the user-facing tool (images, and later access logs, prefetch plans, daemons).

fn main() {
    if let Err(e) = strata::cli::main_with_args(std::env::args_os().collect()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

//! `stratad`: the daemon users start instead of `nydusd` (same command line, configs and API).

fn main() {
    std::process::exit(strata::daemon::run::main(std::env::args_os().collect()));
}

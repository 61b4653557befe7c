//! The `scoutfs` binary: a thin shell over [`scoutfs_cli::run`], which does
//! all parsing and I/O so tests can call it in-process.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(scoutfs_cli::run(&args));
}

//! The scoutfs command line utility as a library.
//!
//! Each subcommand lives in its own module and returns a process exit code;
//! [`run`] dispatches on the first argument. Output formats follow the
//! original utilities (see docs/mkfs-print-check.md and
//! /work/shared/design/cli-contract.md); nothing here panics on device
//! content: every decode goes through checked helpers. The offline tools
//! (mkfs, print, check) read devices; the others talk to a mount's daemon
//! over its control socket ([`mnt`], docs/control-socket.md).

pub mod args;
pub mod check;
pub mod counters;
pub mod dev;
pub mod fenced;
pub mod fiemap;
pub mod inodes;
pub mod mkfs;
pub mod mnt;
pub mod print;
pub mod stat;
pub mod walk;

const COMMANDS: &str = "mkfs, print, check, walk-inodes, stat, statfs, df, sync, ino-path, \
get-referring-entries, get-allocated-inos, get-fiemap, counters, fenced";

/// Exit code of argp usage errors.
pub const EX_USAGE: i32 = 64;

/// Runs `scoutfs <subcmd> <args…>` and returns the exit code.
pub fn run(argv: &[String]) -> i32 {
    let Some((cmd, rest)) = argv.split_first() else {
        eprintln!("Usage: scoutfs <command> [<args>]\n\nCommands: {COMMANDS}");
        return EX_USAGE;
    };
    match cmd.as_str() {
        "mkfs" => mkfs::main(rest),
        "print" => print::main(rest),
        "check" => check::main(rest),
        "walk-inodes" => walk::main(rest),
        "stat" => stat::stat_main(rest),
        "statfs" => stat::statfs_main(rest),
        "df" => stat::df_main(rest),
        "sync" => stat::sync_main(rest),
        "ino-path" => inodes::ino_path_main(rest),
        "get-referring-entries" => inodes::referring_main(rest),
        "get-allocated-inos" => inodes::allocated_main(rest),
        "get-fiemap" => fiemap::main(rest),
        "counters" => counters::main(rest),
        "fenced" => fenced::main(rest),
        "--help" | "-h" | "help" => {
            println!("Usage: scoutfs <command> [<args>]\n\nCommands: {COMMANDS}");
            0
        }
        other => {
            eprintln!("scoutfs: unknown command '{other}'");
            EX_USAGE
        }
    }
}

/// The C library's message for an errno.
pub fn strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno)
        .to_string()
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Prints the trailer every failed command ends with and returns exit 1.
pub fn failed(cmd: &str, errno: i32) -> i32 {
    eprintln!("scoutfs: {cmd} failed: {} ({errno})", strerror(errno));
    1
}

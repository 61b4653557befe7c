//! The scoutfs command line utility as a library.
//!
//! Each subcommand lives in its own module and returns a process exit code;
//! [`run`] dispatches on the first argument. Output formats follow the
//! original utilities (see docs/mkfs-print-check.md and
//! /work/shared/design/cli-contract.md); nothing here panics on device
//! content: every decode goes through checked helpers. The offline tools
//! (mkfs, print, check) read devices; the others talk to a mount's daemon
//! over its control socket ([`mnt`], docs/control-socket.md).

pub mod archive;
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
pub mod quota;
pub mod stat;
pub mod walk;
pub mod xattrs;

const COMMANDS: &str = "mkfs, print, check, walk-inodes, stat, statfs, df, sync, ino-path, \
get-referring-entries, get-allocated-inos, get-fiemap, counters, get-attr-x, set-attr-x, setattr, \
release, stage, punch-offline, move-blocks, data-waiting, data-wait-err, read-xattr-totals, \
read-xattr-index, list-hidden-xattrs, search-xattrs, quota-add, quota-del, quota-list, quota-wipe, quota-restore, fenced";

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
        "get-attr-x" => archive::get_attr_x_main(rest),
        "set-attr-x" => archive::set_attr_x_main(rest),
        "setattr" => archive::setattr_main(rest),
        "release" => archive::release_main(rest),
        "stage" => archive::stage_main(rest),
        "punch-offline" => archive::punch_offline_main(rest),
        "move-blocks" => archive::move_blocks_main(rest),
        "data-waiting" => archive::data_waiting_main(rest),
        "data-wait-err" => archive::data_wait_err_main(rest),
        "read-xattr-totals" => xattrs::totals_main(rest),
        "read-xattr-index" => xattrs::index_main(rest),
        "list-hidden-xattrs" => xattrs::hidden_main(rest),
        "search-xattrs" => xattrs::search_main(rest),
        "quota-add" => quota::change_main(rest, true),
        "quota-del" => quota::change_main(rest, false),
        "quota-list" => quota::list_main(rest),
        "quota-wipe" => quota::wipe_main(rest),
        "quota-restore" => quota::restore_main(rest),
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

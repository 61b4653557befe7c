//! `scoutfs check META [DATA]`: the command around [`engine::check`].
//!
//! Parses arguments, opens the devices read-only, draws a progress spinner
//! on stderr only when stderr is a terminal, prints one fault per line
//! (`path: problem`) and a summary. Exit 0 clean, 1 faults found, 2 could not
//! run (a device could not be opened or holds no scoutfs super).

use std::io::IsTerminal;

use engine::check::{check_volume, Report};

use crate::args::{self, OptSpec};
use crate::dev::{self, BlockDevice, FileDevice};

const CMD: &str = "check";

const SPECS: &[OptSpec] = &[];

/// Opens a device for checking, printing why it could not be opened.
fn open(path: &str) -> Result<FileDevice, ()> {
    dev::open_read_only(std::path::Path::new(path)).map_err(|e| {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        eprintln!(
            "failed to open '{path}': {} ({errno})",
            crate::strerror(errno)
        );
    })
}

/// Prints the report and returns the exit code.
fn print_report(report: &Report) -> i32 {
    if report.is_clean() {
        println!("no faults found");
        return 0;
    }
    for f in &report.faults {
        println!("{f}");
    }
    println!("{} faults found", report.faults.len());
    1
}

/// Entry point: `scoutfs check META [DATA]`.
pub fn main(argv: &[String]) -> i32 {
    let p = match args::parse(
        CMD,
        "META-DEVICE [DATA-DEVICE]",
        "Check a filesystem offline",
        SPECS,
        argv,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    if p.operands.is_empty() {
        return args::usage_error(CMD, "no metadata device argument given");
    }
    if p.operands.len() > 2 {
        return args::usage_error(CMD, "more than two arguments given");
    }
    let Ok(meta) = open(&p.operands[0]) else {
        return 2;
    };
    let data = match p.operands.get(1) {
        Some(d) => match open(d) {
            Ok(d) => Some(d),
            Err(()) => return 2,
        },
        None => None,
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        pb
    });
    let mut progress = |what: &str| {
        if let Some(pb) = &bar {
            pb.set_message(what.to_string());
            pb.tick();
        }
    };
    let data_dev = data.as_ref().map(|d| d as &dyn BlockDevice);
    let r = check_volume(&meta, data_dev, &mut progress);
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    match r {
        Err(e) => {
            eprintln!("check: {e}");
            2
        }
        Ok(report) => print_report(&report),
    }
}

//! `scoutfs counters [-t] DIR`: the counters of a mount, sorted by name,
//! `%-*s %*s` (names left-aligned, values right-aligned to the widest).
//! DIR is the mount's status directory (`/run/scoutfs/<ident>`, where the
//! original read `/sys/fs/scoutfs/<ident>`) or any path in the mount. With
//! `-t` and a terminal, the counters fill as many columns as fit its
//! width, like the original's table.

use std::io::Write;
use std::path::{Path, PathBuf};

use fuse_frontend::control::sock;

use crate::args::{self, OptSpec};

const CMD: &str = "counters";

const SPECS: &[OptSpec] = &[OptSpec {
    short: 't',
    long: "table",
    takes_arg: false,
    help: "Output a table filling the terminal's width",
}];

/// The status directory for `arg`: itself when it has `counters/`, else
/// the status tree of the mount holding it.
fn status_dir(arg: &str) -> PathBuf {
    let p = Path::new(arg);
    if p.join("counters").is_dir() {
        return p.to_path_buf();
    }
    match sock::ident_of_path(p) {
        Ok(Some(id)) => sock::run_dir().join(id),
        _ => p.to_path_buf(),
    }
}

fn terminal_cols() -> Option<usize> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        // SAFETY: winsize is plain data.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ fills `ws`, a valid out pointer.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 {
            return Some(ws.ws_col as usize);
        }
    }
    None
}

/// Lays out `ctrs` (sorted) in `rows` rows; the widths of each column.
fn layout(ctrs: &[(String, String)], rows: usize) -> Vec<(usize, usize)> {
    ctrs.chunks(rows.max(1))
        .map(|col| {
            let n = col.iter().map(|c| c.0.len()).max().unwrap_or(0);
            let v = col.iter().map(|c| c.1.len()).max().unwrap_or(0);
            (n, v)
        })
        .collect()
}

/// The fewest rows whose columns fit `cols` characters.
fn table_rows(ctrs: &[(String, String)], cols: usize) -> usize {
    let width = |w: &[(usize, usize)]| {
        w.iter().map(|(n, v)| n + 1 + v).sum::<usize>() + 2 * w.len().saturating_sub(1)
    };
    let (mut lo, mut hi) = (1, ctrs.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if width(&layout(ctrs, mid)) <= cols {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    hi.max(1)
}

/// Formats the counters; `cols` is the terminal width for a table.
pub fn format(ctrs: &[(String, String)], cols: Option<usize>) -> String {
    let rows = match cols {
        Some(c) => table_rows(ctrs, c),
        None => ctrs.len(),
    };
    let widths = layout(ctrs, rows);
    let mut out = String::new();
    for r in 0..rows {
        for (c, (nw, vw)) in widths.iter().enumerate() {
            let Some((name, val)) = ctrs.get(c * rows + r) else {
                break;
            };
            if c > 0 {
                out.push_str("  ");
            }
            out.push_str(&format!("{name:<nw$} {val:>vw$}"));
        }
        out.push('\n');
    }
    out
}

fn run(dir: &str, table: bool) -> Result<(), i32> {
    let path = status_dir(dir).join("counters");
    let rd = std::fs::read_dir(&path).map_err(|e| {
        let n = crate::mnt::errno(&e);
        eprintln!(
            "failed to open sysfs counter dir '{}': {} ({n})",
            path.display(),
            crate::strerror(n)
        );
        n
    })?;
    let mut ctrs = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).map_err(|e| {
            let n = crate::mnt::errno(&e);
            eprintln!(
                "failed to open counter file '{}/{name}': {} ({n})",
                path.display(),
                crate::strerror(n)
            );
            n
        })?;
        let Some(val) = text.strip_suffix('\n').filter(|v| !v.is_empty()) else {
            eprintln!(
                "counter file {}/{name} read returned {}",
                path.display(),
                text.len()
            );
            return Err(libc::EIO);
        };
        ctrs.push((name, val.to_string()));
    }
    if ctrs.is_empty() {
        return Ok(());
    }
    ctrs.sort();
    let cols = if table { terminal_cols() } else { None };
    let _ = std::io::stdout()
        .lock()
        .write_all(format(&ctrs, cols).as_bytes());
    Ok(())
}

/// Entry point: returns the exit code.
pub fn main(argv: &[String]) -> i32 {
    let p = match args::parse(
        CMD,
        "DIR",
        "Show [tabular] counters for a given mounted volume",
        SPECS,
        argv,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    let table = p.opts.iter().any(|(c, _)| *c == 't');
    let Some(dir) = p.operands.last() else {
        println!("scoutfs counter-table: need mount sysfs dir (i.e. /run/scoutfs/$fr)");
        return crate::failed(CMD, libc::EINVAL);
    };
    match run(dir, table) {
        Ok(()) => 0,
        Err(e) => crate::failed(CMD, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_column_and_tables() {
        let c: Vec<(String, String)> = [("a", "1"), ("bbb", "22"), ("cc", "333")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(format(&c, None), "a     1\nbbb  22\ncc  333\n");
        assert_eq!(format(&c, Some(200)), "a 1  bbb 22  cc 333\n");
        assert_eq!(format(&c, Some(14)), "a    1  cc 333\nbbb 22\n");
        assert_eq!(format(&c, Some(13)), "a     1\nbbb  22\ncc  333\n");
    }
}

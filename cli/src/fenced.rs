//! `scoutfs fenced`: the fence agent of reference §6.4 (the original's
//! `scoutfs-fenced` script). Every `SCOUTFS_FENCED_DELAY` seconds it looks
//! at the fence requests in every status tree on this host
//! (`$SCOUTFS_RUN_DIR/*/fence/<rid>/`), and for each one neither fenced
//! nor failed runs `SCOUTFS_FENCED_RUN` with `SCOUTFS_FENCED_RUN_ARGS`
//! (split on white space) and the request in `SCOUTFS_FENCED_REQ_RID`
//! (16 hex digits) and `SCOUTFS_FENCED_REQ_IP`. Exit status 0 writes
//! `fenced=1`, anything else `error=1` (the server then stops and a new
//! leader asks again).
//!
//! The variables come from the environment, else from
//! `$SCOUTFS_FENCED_CONFIG_FILE` (default /etc/scoutfs/scoutfs-fenced.conf,
//! `KEY=VALUE` lines) when it exists. While it runs the agent holds an
//! exclusive flock on `$SCOUTFS_RUN_DIR/rid/fenced.lock`: that is how the
//! mounts on this host know to leave fencing to it rather than use their
//! local flock fence (docs/decisions.md). One agent per host.
//!
//! Touches the status tree's files only (docs/control-socket.md).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fuse_frontend::control::sock::run_dir;

use crate::args::{parse, stop_code};

const CMD: &str = "scoutfs fenced";
const DEFAULT_CONFIG: &str = "/etc/scoutfs/scoutfs-fenced.conf";
const DEFAULT_DELAY_SECS: f64 = 2.0;

/// The agent's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub delay: Duration,
    pub run: PathBuf,
    pub run_args: Vec<String>,
}

/// Parses `KEY=VALUE` lines (blank lines and `#` comments skipped; one
/// level of matching quotes around the value removed).
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = ['"', '\'']
                .iter()
                .find_map(|q| v.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(v);
            out.insert(k.trim().to_string(), v.to_string());
        }
    }
    out
}

/// Settings from `get` (the environment, then the config file).
pub fn settings(get: &dyn Fn(&str) -> Option<String>) -> Result<Settings, String> {
    let delay = match get("SCOUTFS_FENCED_DELAY") {
        None => DEFAULT_DELAY_SECS,
        Some(s) => match s.trim().parse::<f64>() {
            Ok(d) if d > 0.0 && d <= 3600.0 => d,
            _ => return Err(format!("invalid SCOUTFS_FENCED_DELAY '{s}'")),
        },
    };
    let run = get("SCOUTFS_FENCED_RUN")
        .filter(|s| !s.is_empty())
        .ok_or("SCOUTFS_FENCED_RUN is not set: nothing to fence with")?;
    let run = PathBuf::from(run);
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(&run) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
        _ => {
            return Err(format!(
                "SCOUTFS_FENCED_RUN '{}' is not an executable file",
                run.display()
            ))
        }
    }
    let run_args = get("SCOUTFS_FENCED_RUN_ARGS")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    Ok(Settings {
        delay: Duration::from_secs_f64(delay),
        run,
        run_args,
    })
}

/// One request found in a status tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub dir: PathBuf,
    pub ident: String,
    pub rid: String,
    pub ip: String,
    pub reason: String,
}

fn read_value(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The requests under `run` that wait for an answer, in path order.
pub fn pending_requests(run: &Path) -> Vec<Pending> {
    let mut out = Vec::new();
    let Ok(trees) = std::fs::read_dir(run) else {
        return out;
    };
    let mut trees: Vec<_> = trees.flatten().map(|e| e.path()).collect();
    trees.sort();
    for tree in trees {
        let Ok(reqs) = std::fs::read_dir(tree.join("fence")) else {
            continue;
        };
        let mut reqs: Vec<_> = reqs.flatten().map(|e| e.path()).collect();
        reqs.sort();
        for dir in reqs {
            let (Some(fenced), Some(error), Some(rid), Some(ip), Some(reason)) = (
                read_value(&dir, "fenced"),
                read_value(&dir, "error"),
                read_value(&dir, "rid"),
                read_value(&dir, "ipv4_addr"),
                read_value(&dir, "reason"),
            ) else {
                // Being created or removed: the next pass sees it whole.
                continue;
            };
            if fenced == "1" || error == "1" {
                continue;
            }
            let ident = tree
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(Pending {
                dir,
                ident,
                rid,
                ip,
                reason,
            });
        }
    }
    out
}

/// Runs the fence command for `req` and writes its answer.
pub fn fence_one(s: &Settings, req: &Pending) -> bool {
    println!(
        "{CMD}: server {} fencing rid {} at IP {} for {}",
        req.ident, req.rid, req.ip, req.reason
    );
    let status = Command::new(&s.run)
        .args(&s.run_args)
        .env("SCOUTFS_FENCED_REQ_RID", &req.rid)
        .env("SCOUTFS_FENCED_REQ_IP", &req.ip)
        .status();
    let ok = match status {
        Ok(st) if st.success() => true,
        Ok(st) => {
            eprintln!(
                "{CMD}: server {} fencing rid {} saw error status {st}",
                req.ident, req.rid
            );
            false
        }
        Err(e) => {
            eprintln!("{CMD}: running {}: {e}", s.run.display());
            false
        }
    };
    let file = if ok { "fenced" } else { "error" };
    // The request may be gone meanwhile (its server stopped): no matter.
    if let Err(e) = std::fs::write(req.dir.join(file), "1\n") {
        eprintln!("{CMD}: writing {}: {e}", req.dir.join(file).display());
    }
    ok
}

/// Takes the agent lock (see the module comment).
fn take_agent_lock(run: &Path) -> Result<File, String> {
    let dir = run.join("rid");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = engine::node::fencer::agent_lock_path(&dir);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor this File owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "{} is held: another scoutfs fenced runs on this host",
            path.display()
        ));
    }
    Ok(f)
}

pub fn main(args: &[String]) -> i32 {
    let doc = "Fence agent: runs SCOUTFS_FENCED_RUN for every fence request of the \
               mounts on this host.";
    let p = match parse(CMD, "", doc, &[], args) {
        Ok(p) => p,
        Err(stop) => return stop_code(CMD, stop),
    };
    if let Some(extra) = p.operands.first() {
        return crate::args::usage_error(CMD, &format!("unexpected argument '{extra}'"));
    }
    let conf_path =
        std::env::var("SCOUTFS_FENCED_CONFIG_FILE").unwrap_or_else(|_| DEFAULT_CONFIG.to_string());
    let conf = match std::fs::read_to_string(&conf_path) {
        Ok(text) => parse_config(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            eprintln!("{CMD}: {conf_path}: {e}");
            return 1;
        }
    };
    let get = |k: &str| std::env::var(k).ok().or_else(|| conf.get(k).cloned());
    let s = match settings(&get) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{CMD}: {e}");
            return 1;
        }
    };
    let run = run_dir();
    let _lock = match take_agent_lock(&run) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{CMD}: {e}");
            return 1;
        }
    };
    println!(
        "{CMD}: watching {} every {:?}, running {}",
        run.display(),
        s.delay,
        s.run.display()
    );
    loop {
        for req in pending_requests(&run) {
            fence_one(&s, &req);
        }
        // A command-line agent's poll interval, not engine time.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(s.delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines() {
        let c = parse_config(
            "# comment\nSCOUTFS_FENCED_DELAY=1\nexport SCOUTFS_FENCED_RUN=\"/bin/true\"\n\
             SCOUTFS_FENCED_RUN_ARGS='a b'\nnonsense\n",
        );
        assert_eq!(c["SCOUTFS_FENCED_DELAY"], "1");
        assert_eq!(c["SCOUTFS_FENCED_RUN"], "/bin/true");
        assert_eq!(c["SCOUTFS_FENCED_RUN_ARGS"], "a b");
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn settings_are_checked() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = settings(&env(&[
            ("SCOUTFS_FENCED_RUN", "/bin/true"),
            ("SCOUTFS_FENCED_RUN_ARGS", " -x  y "),
            ("SCOUTFS_FENCED_DELAY", "0.5"),
        ]))
        .unwrap();
        assert_eq!(s.delay, Duration::from_millis(500));
        assert_eq!(s.run_args, vec!["-x", "y"]);
        assert!(settings(&env(&[])).unwrap_err().contains("not set"));
        let plain = tempfile::NamedTempFile::new().unwrap();
        let plain = plain.path().to_string_lossy().into_owned();
        let get = |k: &str| (k == "SCOUTFS_FENCED_RUN").then(|| plain.clone());
        assert!(settings(&get).unwrap_err().contains("not an executable"));
        assert!(settings(&env(&[
            ("SCOUTFS_FENCED_RUN", "/bin/true"),
            ("SCOUTFS_FENCED_DELAY", "-1")
        ]))
        .unwrap_err()
        .contains("DELAY"));
    }

    #[test]
    fn requests_answered_by_exit_status() {
        let run = tempfile::tempdir().unwrap();
        let mk = |ident: &str, rid: &str, fenced: &str| {
            let d = run.path().join(ident).join("fence").join(rid);
            std::fs::create_dir_all(&d).unwrap();
            for (n, v) in [
                ("rid", rid),
                ("ipv4_addr", "10.1.2.3"),
                ("reason", "client_recovery"),
                ("fenced", fenced),
                ("error", "0"),
                ("elapsed_secs", "3"),
            ] {
                std::fs::write(d.join(n), format!("{v}\n")).unwrap();
            }
            d
        };
        let a = mk("f.000001.r.000002", "00000000000000aa", "0");
        let b = mk("f.000001.r.000002", "00000000000000bb", "1");
        let reqs = pending_requests(run.path());
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        assert_eq!(reqs[0].rid, "00000000000000aa");
        assert_eq!(reqs[0].ip, "10.1.2.3");
        // The script sees the request in its environment.
        let script = run.path().join("fence.sh");
        let seen = run.path().join("seen");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$SCOUTFS_FENCED_REQ_RID $SCOUTFS_FENCED_REQ_IP $1\" >> {}\nexit ${{FAIL:-0}}\n",
                seen.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = Settings {
            delay: Duration::from_secs(1),
            run: script.clone(),
            run_args: vec!["arg1".into()],
        };
        assert!(fence_one(&s, &reqs[0]));
        assert_eq!(std::fs::read_to_string(a.join("fenced")).unwrap(), "1\n");
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap(),
            "00000000000000aa 10.1.2.3 arg1\n"
        );
        assert!(pending_requests(run.path()).is_empty());
        // A failing command answers error=1.
        std::fs::write(b.join("fenced"), "0\n").unwrap();
        let fail = Settings {
            run_args: vec![],
            run: PathBuf::from("/bin/false"),
            ..s
        };
        let reqs = pending_requests(run.path());
        assert!(!fence_one(&fail, &reqs[0]));
        assert_eq!(std::fs::read_to_string(b.join("error")).unwrap(), "1\n");
        assert!(pending_requests(run.path()).is_empty());
    }
}

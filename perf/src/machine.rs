//! A description of the machine a run happened on, stored in the JSON
//! report so numbers are never read without their context.
//!
//! Guarantees: missing sources leave a field out, never fail the run.
//! Uses [`crate::sys`].

use std::collections::BTreeMap;
use std::path::Path;

use crate::sys;

pub fn describe(workdir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(model) = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
    {
        m.insert("cpu".into(), model.1.trim().to_string());
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    m.insert("cores".into(), cores.to_string());
    if let Some(l) = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
    {
        m.insert(
            "memory".into(),
            l.split_once(':')
                .map(|x| x.1.trim().to_string())
                .unwrap_or_default(),
        );
    }
    if let Ok(k) = sys::run("uname", &["-srm"]) {
        m.insert("kernel".into(), k.trim().to_string());
    }
    if let Ok(os) = std::fs::read_to_string("/etc/os-release") {
        if let Some(l) = os.lines().find(|l| l.starts_with("PRETTY_NAME=")) {
            m.insert("os".into(), l[12..].trim_matches('"').to_string());
        }
    }
    if let Ok(df) = sys::run(
        "df",
        &["--output=source,fstype,size", &workdir.to_string_lossy()],
    ) {
        if let Some(l) = df.lines().nth(1) {
            m.insert(
                "workdir_disk".into(),
                l.split_whitespace().collect::<Vec<_>>().join(" "),
            );
        }
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        m.insert("loadavg_at_start".into(), l.trim().to_string());
    }
    for tool in ["fio", "bindfs", "mkfs.xfs"] {
        if let Ok(v) = sys::run(tool, &["--version"]).or_else(|_| sys::run(tool, &["-V"])) {
            if let Some(l) = v.lines().next() {
                m.insert(format!("{tool}_version"), l.trim().to_string());
            }
        }
    }
    m
}

//! What a run produces: the ratios (ours / baseline, per test), the
//! terminal table, the JSON report with every number and the machine's
//! description, and one SVG bar chart per workload.
//!
//! Guarantees: a ratio is ours' operations per second over the
//! baseline's for the same workload, test and parameters, so above 1
//! means scoutfs is faster; skipped rows get no ratio. The JSON format is
//! what `compare` reads ([`Report`]). Uses [`crate::stats`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stats::Row;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ratio {
    pub workload: String,
    pub test: String,
    pub params: String,
    pub ours: String,
    pub baseline: String,
    /// ours ops/s divided by the baseline's.
    pub ratio: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub harness_version: String,
    pub profile: String,
    pub profile_settings: serde_json::Value,
    pub machine: BTreeMap<String, String>,
    pub started_unix: u64,
    pub wall_secs: f64,
    pub rows: Vec<Row>,
    pub ratios: Vec<Ratio>,
}

pub fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for o in rows.iter().filter(|r| r.ours) {
        for b in rows.iter().filter(|r| {
            !r.ours && r.workload == o.workload && r.test == o.test && r.params == o.params
        }) {
            if let (Some(x), Some(y)) = (o.rate(), b.rate()) {
                out.push(Ratio {
                    workload: o.workload.clone(),
                    test: o.test.clone(),
                    params: o.params.clone(),
                    ours: o.target.clone(),
                    baseline: b.target.clone(),
                    ratio: x / y,
                });
            }
        }
    }
    out
}

fn num(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "-".into())
}

/// The terminal table of `rows`, one block per workload.
pub fn table(rows: &[Row], ratios: &[Ratio]) -> String {
    let mut s = String::new();
    let mut workloads: Vec<&str> = Vec::new();
    for r in rows {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    for w in workloads {
        let _ = writeln!(s, "\n== {w}");
        let _ = writeln!(
            s,
            "{:<44} {:<13} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}  ratio ours/baseline",
            "test [params]",
            "target",
            "ops/s",
            "MiB/s",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "max us",
            "cpu s",
            "rss MiB"
        );
        for r in rows.iter().filter(|r| r.workload == w) {
            let test = if r.params.is_empty() {
                r.test.clone()
            } else {
                format!("{} [{}]", r.test, r.params)
            };
            if let Some(why) = &r.skipped {
                let _ = writeln!(s, "{test:<44} {:<13} skipped: {why}", r.target);
                continue;
            }
            let l = r.lat_us.clone();
            let rs: Vec<String> = ratios
                .iter()
                .filter(|x| {
                    x.workload == r.workload
                        && x.test == r.test
                        && x.params == r.params
                        && x.ours == r.target
                })
                .map(|x| format!("{} {:.2}", x.baseline, x.ratio))
                .collect();
            let _ = writeln!(
                s,
                "{test:<44} {:<13} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}  {}",
                r.target,
                num(r.ops_per_sec),
                opt(r.mib_per_sec),
                opt(l.as_ref().map(|l| l.p50)),
                opt(l.as_ref().map(|l| l.p99)),
                opt(l.as_ref().map(|l| l.p999)),
                opt(l.as_ref().map(|l| l.max)),
                opt(r.fs_cpu_secs),
                opt(r.fs_peak_rss_mib),
                rs.join(", ")
            );
            if let Some(n) = &r.note {
                if n.starts_with("WRONG") {
                    let _ = writeln!(s, "{:<44} {}", "", n);
                }
            }
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const COLORS: &[&str] = &[
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf",
];

/// A horizontal grouped bar chart of one workload: one group per test
/// (and parameters), one bar per target, bars scaled to the fastest
/// target of their group (tests have different units) and labelled with
/// their ops/s; a baseline's label adds scoutfs's ratio to it.
pub fn svg(workload: &str, rows: &[Row]) -> String {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.workload == workload).collect();
    let mut groups: Vec<(String, String)> = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    for r in &rows {
        let g = (r.test.clone(), r.params.clone());
        if !groups.contains(&g) {
            groups.push(g);
        }
        if !targets.contains(&r.target) {
            targets.push(r.target.clone());
        }
    }
    let bar_h = 14.0;
    let label_w = 300.0;
    let plot_w = 380.0;
    let group_h = bar_h * targets.len() as f64 + 16.0;
    let height = 60.0 + group_h * groups.len() as f64 + 20.0 * targets.len() as f64;
    let width = label_w + plot_w + 330.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{} — operations per second, bars scaled to the fastest of each test</text>"#,
        esc(workload)
    );
    let mut y = 40.0;
    for (test, params) in &groups {
        let g: Vec<&&Row> = rows
            .iter()
            .filter(|r| &r.test == test && &r.params == params)
            .collect();
        let best = g.iter().filter_map(|r| r.rate()).fold(0.0f64, f64::max);
        let _ = writeln!(
            s,
            r##"<text x="10" y="{:.1}" font-weight="bold">{}</text><text x="10" y="{:.1}" fill="#666">{}</text>"##,
            y + 11.0,
            esc(test),
            y + 24.0,
            esc(params)
        );
        for (i, t) in targets.iter().enumerate() {
            let by = y + i as f64 * bar_h;
            let Some(r) = g.iter().find(|r| &r.target == t) else {
                continue;
            };
            let color = COLORS[i % COLORS.len()];
            match r.rate() {
                Some(v) => {
                    let w = if best > 0.0 { plot_w * v / best } else { 0.0 };
                    // A baseline's bar says how scoutfs compares to it.
                    let ours: Vec<String> = g
                        .iter()
                        .filter(|o| o.ours && !r.ours)
                        .filter_map(|o| o.rate().map(|x| format!("{} ×{:.2}", o.target, x / v)))
                        .collect();
                    let extra = if ours.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", ours.join(", "))
                    };
                    let _ = writeln!(
                        s,
                        r#"<rect x="{label_w}" y="{by:.1}" width="{w:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}">{} {}{}</text>"#,
                        bar_h - 2.0,
                        label_w + w + 4.0,
                        by + bar_h - 4.0,
                        esc(t),
                        num(v),
                        esc(&extra)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{label_w}" y="{:.1}" fill="#999">{} skipped</text>"##,
                        by + bar_h - 4.0,
                        esc(t)
                    );
                }
            }
        }
        y += group_h;
    }
    for (i, t) in targets.iter().enumerate() {
        let ly = y + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<rect x="10" y="{:.1}" width="12" height="12" fill="{}"/><text x="28" y="{:.1}">{}</text>"#,
            ly,
            COLORS[i % COLORS.len()],
            ly + 10.0,
            esc(t)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Writes one SVG per workload into `dir`; returns the files written.
pub fn write_svgs(dir: &Path, rows: &[Row]) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for r in rows {
        if seen.contains(&r.workload.as_str()) {
            continue;
        }
        seen.push(&r.workload);
        let p = dir.join(format!("{}.svg", r.workload));
        std::fs::write(&p, svg(&r.workload, rows))?;
        out.push(p);
    }
    Ok(out)
}

/// `compare A B`: every row present in both, with the change of its
/// rate and p99 latency; rows in only one are listed as such.
pub fn compare(a: &Report, b: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "A: {} profile, {}",
        a.profile,
        a.machine.get("cpu").cloned().unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "B: {} profile, {}",
        b.profile,
        b.machine.get("cpu").cloned().unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "{:<12} {:<44} {:<13} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}",
        "workload",
        "test [params]",
        "target",
        "A ops/s",
        "B ops/s",
        "change",
        "A p99 us",
        "B p99 us",
        "change"
    );
    let key = |r: &Row| {
        (
            r.workload.clone(),
            r.test.clone(),
            r.params.clone(),
            r.target.clone(),
        )
    };
    let pct = |x: f64, y: f64| {
        if x > 0.0 {
            format!("{:+.1}%", (y / x - 1.0) * 100.0)
        } else {
            "-".into()
        }
    };
    for rb in &b.rows {
        let test = format!("{} [{}]", rb.test, rb.params);
        match a.rows.iter().find(|ra| key(ra) == key(rb)) {
            Some(ra) => {
                let (p_a, p_b) = (
                    ra.lat_us.as_ref().map(|l| l.p99),
                    rb.lat_us.as_ref().map(|l| l.p99),
                );
                let _ = writeln!(
                    s,
                    "{:<12} {:<44} {:<13} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}",
                    rb.workload,
                    test,
                    rb.target,
                    opt(ra.rate()),
                    opt(rb.rate()),
                    match (ra.rate(), rb.rate()) {
                        (Some(x), Some(y)) => pct(x, y),
                        _ => "-".into(),
                    },
                    opt(p_a),
                    opt(p_b),
                    match (p_a, p_b) {
                        (Some(x), Some(y)) => pct(x, y),
                        _ => "-".into(),
                    }
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "{:<12} {:<44} {:<13} only in B",
                    rb.workload, test, rb.target
                );
            }
        }
    }
    for ra in &a.rows {
        if !b.rows.iter().any(|rb| key(rb) == key(ra)) {
            let _ = writeln!(
                s,
                "{:<12} {:<44} {:<13} only in A",
                ra.workload,
                format!("{} [{}]", ra.test, ra.params),
                ra.target
            );
        }
    }
    s
}

/// The rows of `rep` as Markdown tables, one per workload, with every
/// ratio of each scoutfs row (docs/performance.md is made with this).
pub fn markdown(rep: &Report) -> String {
    let mut s = String::new();
    let mut workloads: Vec<&str> = Vec::new();
    for r in &rep.rows {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    for w in workloads {
        let _ = writeln!(s, "\n### {w}\n");
        let _ = writeln!(s, "| test | params | target | ops/s | MiB/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | cpu s | rss MiB | ours / baseline |");
        let _ = writeln!(s, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
        for r in rep.rows.iter().filter(|r| r.workload == w) {
            if let Some(why) = &r.skipped {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | skipped: {} | | | | | | | | | |",
                    r.test,
                    r.params,
                    r.target,
                    esc(why)
                );
                continue;
            }
            let l = r.lat_us.clone();
            let rs: Vec<String> = rep
                .ratios
                .iter()
                .filter(|x| {
                    x.workload == r.workload
                        && x.test == r.test
                        && x.params == r.params
                        && x.ours == r.target
                })
                .map(|x| format!("{} {:.2}", x.baseline, x.ratio))
                .collect();
            let target = if r.ours {
                format!("**{}**", r.target)
            } else {
                r.target.clone()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.test,
                r.params,
                target,
                num(r.ops_per_sec),
                opt(r.mib_per_sec),
                opt(l.as_ref().map(|l| l.p50)),
                opt(l.as_ref().map(|l| l.p90)),
                opt(l.as_ref().map(|l| l.p99)),
                opt(l.as_ref().map(|l| l.p999)),
                opt(l.as_ref().map(|l| l.max)),
                opt(r.fs_cpu_secs),
                opt(r.fs_peak_rss_mib),
                rs.join(", ")
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(test: &str, target: &str, ours: bool, rate: f64) -> Row {
        Row {
            workload: "meta".into(),
            test: test.into(),
            target: target.into(),
            ours,
            params: "files=10".into(),
            ops_per_sec: rate,
            ..Row::default()
        }
    }

    #[test]
    fn ratios_pair_ours_with_every_baseline_of_the_same_test_only() {
        let mut skipped = row("stat", "xfs", false, 0.0);
        skipped.skipped = Some("setup failed".into());
        let rows = vec![
            row("create", "scoutfs", true, 50.0),
            row("create", "ext4", false, 200.0),
            row("create", "bindfs", false, 25.0),
            row("stat", "scoutfs", true, 10.0),
            row("stat", "ext4", false, 5.0),
            skipped,
        ];
        let r = ratios(&rows);
        let get = |t: &str, b: &str| {
            r.iter()
                .find(|x| x.test == t && x.baseline == b)
                .map(|x| x.ratio)
        };
        assert_eq!(get("create", "ext4"), Some(0.25));
        assert_eq!(get("create", "bindfs"), Some(2.0));
        assert_eq!(get("stat", "ext4"), Some(2.0));
        assert_eq!(get("stat", "xfs"), None, "a skipped row has no ratio");
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn compare_reports_the_change_and_rows_only_in_one_run() {
        let rep = |rows: Vec<Row>| Report {
            harness_version: "0".into(),
            profile: "quick".into(),
            profile_settings: serde_json::Value::Null,
            machine: BTreeMap::new(),
            started_unix: 0,
            wall_secs: 1.0,
            ratios: ratios(&rows),
            rows,
        };
        let a = rep(vec![
            row("create", "scoutfs", true, 100.0),
            row("gone", "ext4", false, 1.0),
        ]);
        let b = rep(vec![row("create", "scoutfs", true, 150.0)]);
        let text = compare(&a, &b);
        assert!(text.contains("+50.0%"), "{text}");
        assert!(text.contains("only in A"), "{text}");
    }

    #[test]
    fn charts_are_one_svg_per_workload_with_every_target() {
        let rows = vec![
            row("create", "scoutfs", true, 50.0),
            row("create", "ext4", false, 200.0),
        ];
        let s = svg("meta", &rows);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(
            s.contains("scoutfs 50.0") && s.contains("ext4 200 (scoutfs ×0.25)"),
            "{s}"
        );
    }
}

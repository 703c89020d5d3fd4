//! `make bench`, migration part: the migration cases with no hinting, the C driver's hinting and
//! ours, side by side, for each guest size, on the kernel without debug options.

use crate::guest::{Config, Driver, Guest, Qemu};
use crate::migrate::{self, Case, Params, Variant};
use crate::{paths, plot, Context, Result};

const MIB: u64 = 1 << 20;

/// One configuration of the comparison.
#[derive(Clone, Copy)]
struct Setup {
    label: &'static str,
    driver: Driver,
    hint: bool,
    qemu: Qemu,
}

const SETUPS: &[Setup] = &[
    Setup {
        label: "no hinting",
        driver: Driver::Rs,
        hint: false,
        qemu: Qemu::Debian,
    },
    Setup {
        label: "C driver hinting",
        driver: Driver::C,
        hint: true,
        qemu: Qemu::Debian,
    },
    Setup {
        label: "our hinting",
        driver: Driver::Rs,
        hint: true,
        qemu: Qemu::Debian,
    },
    Setup {
        label: "ours, page records",
        driver: Driver::Rs,
        hint: true,
        qemu: Qemu::OursRanges,
    },
];

const VARIANTS: &[Variant] = &[
    Variant::Idle,
    Variant::AfterWorkload,
    Variant::Churn,
    Variant::Fragmented,
];

struct Row {
    gib: u64,
    variant: Variant,
    /// The downtime limit the migration ran with, in ms.
    limit_ms: u64,
    setup: Setup,
    rep: u32,
    accel: &'static str,
    result: Result<Case>,
}

fn one(gib: u64, v: Variant, limit_ms: u64, s: Setup, rep: u32, bw: u64) -> (Row, bool) {
    let mut cfg = Config::new(&format!("bench-mig-{}", s.driver.label()), gib * 1024);
    cfg.flavour = "bench";
    cfg.free_page_hint = s.hint;
    cfg.qemu = s.qemu;
    eprintln!(
        "[vbrs] migration bench: {gib} GiB, {}, downtime limit {limit_ms} ms, {}, run {}",
        v.label(),
        s.label,
        rep + 1
    );
    let p = Params {
        downtime_limit_ms: limit_ms,
        max_bandwidth: bw,
        ..Params::default()
    };
    let mut accel = "";
    let mut clean = false;
    let result = (|| {
        let mut g = Guest::boot(&cfg)?;
        accel = g.accel;
        g.load(s.driver)?;
        let c = migrate::run_case(&mut g, s.driver, v, p)?;
        clean = g.check_dmesg().is_ok();
        Ok(c)
    })();
    match &result {
        Err(e) => eprintln!("[vbrs]   failed: {e}"),
        Ok(c) => eprintln!(
            "[vbrs]   {} MiB sent; passes (sync:ms:MiB:normal pages): {}; vmstat: {}; debugfs: {}; \
             buddyinfo before: {}",
            c.stats.transferred / MIB,
            passes(&c.stats.passes),
            pairs(&c.vmstat),
            pairs(&c.rs_counters),
            c.buddyinfo.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    }
    (
        Row {
            gib,
            variant: v,
            limit_ms,
            setup: s,
            rep,
            accel,
            result,
        },
        clean,
    )
}

fn ms(ns: Option<u64>) -> String {
    ns.map(|n| format!("{:.1}", n as f64 / 1e6))
        .unwrap_or_else(|| "-".into())
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn table(rows: &[Row], reps: u32, bw: u64) -> String {
    let mut s = String::new();
    s += &format!(
        "Live migration over a unix socket, max-bandwidth {} MiB/s, {} (QEMU {}); bench kernel. \
         Live data {} MiB; 'after workload': most of memory written with random data and freed \
         just before; 'churn': {} x {} MiB files rewritten during migration; 'fragmented': a process \
         wrote {} MiB and freed every other 4 KiB page of it just before; 'scattered': one page \
         in {} of it. 'limit': QEMU's downtime-limit. Medians of {reps} runs; downtime as median \
         (min-max).\n\n",
        bw >> 20,
        rows.first().map(|r| r.accel).unwrap_or(""),
        qemu_version(),
        migrate::LIVE_MIB,
        4,
        migrate::CHURN_MIB,
        migrate::FRAGMENT_MIB,
        migrate::SCATTER_STRIDE,
    );
    s += &format!(
        "{:<5} {:<15} {:>5} {:<18} {:>9} {:>15} {:>6} {:>9} {:>8} {:>8} {:>16} {:>12}\n",
        "guest",
        "case",
        "limit",
        "configuration",
        "total ms",
        "downtime ms",
        "setup",
        "sent MiB",
        "hint ms",
        "hinted",
        "lock us max/mean",
        "min free MiB"
    );
    let mut i = 0;
    while i < rows.len() {
        let r = &rows[i];
        let group: Vec<&Row> = rows[i..]
            .iter()
            .take_while(|o| {
                o.gib == r.gib
                    && o.variant == r.variant
                    && o.limit_ms == r.limit_ms
                    && o.setup.label == r.setup.label
            })
            .collect();
        i += group.len();
        let ok: Vec<&Case> = group
            .iter()
            .filter_map(|o| o.result.as_ref().ok())
            .collect();
        let head = format!(
            "{:<5} {:<15} {:>5} {:<18}",
            format!("{}G", r.gib),
            r.variant.label(),
            r.limit_ms,
            r.setup.label
        );
        if ok.len() < group.len() {
            let e = group
                .iter()
                .find_map(|o| o.result.as_ref().err())
                .map(|e| e.lines().next().unwrap_or("").to_string())
                .unwrap_or_default();
            s += &format!(
                "{head} {} of {} runs FAILED: {e}\n",
                group.len() - ok.len(),
                group.len()
            );
            if ok.is_empty() {
                continue;
            }
        }
        let m = |f: &dyn Fn(&Case) -> u64| median(ok.iter().map(|c| f(c)).collect());
        let opt = |f: &dyn Fn(&Case) -> Option<u64>| -> Option<u64> {
            let v: Vec<u64> = ok.iter().filter_map(|c| f(c)).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let down: Vec<u64> = ok.iter().map(|c| c.stats.downtime_ms).collect();
        s += &format!(
            "{head} {:>9} {:>15} {:>6} {:>9} {:>8} {:>8} {:>16} {:>12}\n",
            m(&|c| c.stats.total_ms),
            format!(
                "{} ({}-{})",
                median(down.clone()),
                down.iter().min().unwrap_or(&0),
                down.iter().max().unwrap_or(&0)
            ),
            m(&|c| c.stats.setup_ms),
            m(&|c| c.stats.transferred) / MIB,
            ms(opt(&|c| c.hint_ns)),
            opt(&|c| c.hint_pages)
                .map(|p| (p >> 8).to_string())
                .unwrap_or_else(|| "-".into()),
            match (opt(&|c| c.hint_lock_max_ns), opt(&|c| c.hint_lock_mean_ns)) {
                (Some(max), Some(mean)) => format!("{} / {}", max / 1000, mean / 1000),
                _ => "-".into(),
            },
            format!(
                "{} / {}",
                m(&|c| c.min_free_kib) >> 10,
                m(&|c| c.free_before_kib) >> 10
            ),
        );
    }
    s += "\nhint ms: guest time in hinting rounds, from the command id to the stop id (ours only; \
          the C driver has no such counter). hinted: MiB our driver named in hints, every round \
          together. lock: longest and mean zone lock hold of the walk, \
          in microseconds, as the guest clock sees it (under TCG a hold includes any host \
          preemption of the vCPU). min free: lowest MemFree during migration / MemFree just \
          before it. Downtime: QEMU switches over once what is left to send fits the limit at \
          the bandwidth it measured; with hinting, what is left is the guest's data only, so it \
          switches over with more of it pending than without, where zero pages lower the \
          measured bandwidth (docs/free-page-hinting.md).\n";
    s
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "guest_gib,case,downtime_limit_ms,configuration,driver,free_page_hint,run,accel,ok,\
         total_ms,downtime_ms,setup_ms,transferred_bytes,normal_pages,duplicate_pages,\
         dirty_syncs,hint_rounds,hint_ns,hint_lock_max_ns,hint_lock_mean_ns,free_before_kib,\
         min_free_kib,churn_files,hint_pages,host_wait_ns,hint_skipped,hint_unsent,record_bytes,\
         passes,vmstat\n",
    );
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    for r in rows {
        let head = format!(
            "{},{},{},\"{}\",{},{},{},{}",
            r.gib,
            r.variant.label(),
            r.limit_ms,
            r.setup.label,
            r.setup.driver.name(),
            r.setup.hint,
            r.rep + 1,
            r.accel
        );
        match &r.result {
            Ok(c) => {
                let st = &c.stats;
                s += &format!(
                    "{head},true,{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\",\"{}\"\n",
                    st.total_ms,
                    st.downtime_ms,
                    st.setup_ms,
                    st.transferred,
                    st.normal_pages,
                    st.duplicate_pages,
                    st.dirty_syncs,
                    opt(c.hint_rounds),
                    opt(c.hint_ns),
                    opt(c.hint_lock_max_ns),
                    opt(c.hint_lock_mean_ns),
                    c.free_before_kib,
                    c.min_free_kib,
                    c.churn_files,
                    opt(c.hint_pages),
                    opt(c.host_wait_ns),
                    opt(c.hint_skipped),
                    opt(c.hint_unsent),
                    opt(c.record_bytes),
                    passes(&st.passes),
                    pairs(&c.vmstat)
                );
            }
            Err(_) => s += &format!("{head},false,,,,,,,,,,,,,,,,,,,,,\n"),
        }
    }
    s
}

/// The passes of a migration, `sync:ms:MiB sent:normal pages` each, separated by spaces.
fn passes(p: &[crate::migrate::Pass]) -> String {
    p.iter()
        .map(|p| {
            format!(
                "{}:{}:{}:{}",
                p.sync,
                p.ms,
                p.transferred / MIB,
                p.normal_pages
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Named counters (vmstat deltas, debugfs values), `name=value` each, separated by spaces.
fn pairs(v: &[(String, u64)]) -> String {
    v.iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The table's medians as two grouped bar charts: MiB sent and total time, one group per guest
/// size, case and limit, one bar per configuration.
fn plots(rows: &[Row]) -> (String, String) {
    let mut groups: Vec<(u64, Variant, u64)> = Vec::new();
    for r in rows {
        if !groups.contains(&(r.gib, r.variant, r.limit_ms)) {
            groups.push((r.gib, r.variant, r.limit_ms));
        }
    }
    let labels: Vec<String> = groups
        .iter()
        .map(|(g, v, l)| format!("{g}G {} {l}ms", v.label()))
        .collect();
    let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    let series = |f: &dyn Fn(&Case) -> f64| -> Vec<(&'static str, Vec<f64>)> {
        SETUPS
            .iter()
            .map(|s| {
                let values = groups
                    .iter()
                    .map(|(g, v, l)| {
                        let mut vals: Vec<u64> = rows
                            .iter()
                            .filter(|r| {
                                r.gib == *g
                                    && r.variant == *v
                                    && r.limit_ms == *l
                                    && r.setup.label == s.label
                            })
                            .filter_map(|r| r.result.as_ref().ok())
                            .map(|c| f(c) as u64)
                            .collect();
                        vals.sort_unstable();
                        vals.get(vals.len() / 2).copied().unwrap_or(0) as f64
                    })
                    .collect();
                (s.label, values)
            })
            .collect()
    };
    let accel = rows.first().map(|r| r.accel).unwrap_or("");
    (
        plot::bars(
            &format!("Live migration: data sent (medians, {accel})"),
            "MiB",
            &label_refs,
            &series(&|c| (c.stats.transferred / MIB) as f64),
        ),
        plot::bars(
            &format!("Live migration: total time (medians, {accel})"),
            "ms",
            &label_refs,
            &series(&|c| c.stats.total_ms as f64),
        ),
    )
}

fn qemu_version() -> String {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(3)
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Downtime limits the smallest guest also migrates with after the workload, besides the
/// default: how downtime follows the limit with and without hinting.
const SWEEP_LIMITS_MS: &[u64] = &[100, 50];

/// Runs every case (`cases`: all when empty) `reps` times for each guest size, at the default
/// downtime limit and, for the smallest guest after the workload, at [`SWEEP_LIMITS_MS`]; prints
/// the medians and writes them as text, and every run as CSV.
/// `bw_mib` caps the migration bandwidth (MiB/s; default: no cap, 100 GiB/s).
pub fn bench(sizes: &[u64], reps: u32, cases: &[Variant], bw_mib: Option<u64>) -> Result<bool> {
    let bw = bw_mib.map_or(Params::default().max_bandwidth, |m| m << 20);
    let mut groups = Vec::new();
    // The default cases, or those asked for, scattered included (it is not a default one).
    let variants: Vec<Variant> = if cases.is_empty() {
        VARIANTS.to_vec()
    } else {
        VARIANTS
            .iter()
            .chain(&[Variant::Scattered])
            .copied()
            .filter(|v| cases.contains(v))
            .collect()
    };
    for &gib in sizes {
        for &v in &variants {
            groups.push((gib, v, Params::default().downtime_limit_ms));
        }
    }
    if variants.contains(&Variant::AfterWorkload) {
        if let Some(&gib) = sizes.iter().min() {
            for &limit in SWEEP_LIMITS_MS {
                groups.push((gib, Variant::AfterWorkload, limit));
            }
        }
    }
    let mut rows = Vec::new();
    let mut all_clean = true;
    for (gib, v, limit) in groups {
        for &s in SETUPS {
            for rep in 0..reps {
                let (row, clean) = one(gib, v, limit, s, rep, bw);
                all_clean &= clean && row.result.is_ok();
                rows.push(row);
            }
        }
    }
    let text = table(&rows, reps, bw);
    println!("{text}");
    let dir = paths::artifacts("bench");
    std::fs::write(dir.join("bench-migration.txt"), &text).ctx("writing the report")?;
    std::fs::write(dir.join("bench-migration.csv"), csv(&rows)).ctx("writing the report")?;
    let (sent, time) = plots(&rows);
    std::fs::write(dir.join("bench-migration-sent.svg"), sent).ctx("writing the plot")?;
    std::fs::write(dir.join("bench-migration-time.svg"), time).ctx("writing the plot")?;
    println!(
        "(written to {} and bench-migration-{{sent,time}}.svg)",
        dir.join("bench-migration.{txt,csv}").display()
    );
    Ok(all_clean)
}

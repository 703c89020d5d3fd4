//! `make run` and `make bench`: the same inflate/deflate run with each configuration (driver and
//! QEMU), side by side.

use crate::guest::{Config, Driver, Guest, Qemu};
use crate::{paths, plot, Context, Opts, Result};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// One configuration of the comparison: a driver on a QEMU.
#[derive(Clone, Copy)]
struct Setup {
    label: &'static str,
    driver: Driver,
    qemu: Qemu,
}

const C_DEBIAN: Setup = Setup {
    label: "C driver",
    driver: Driver::C,
    qemu: Qemu::Debian,
};
const OURS_DEBIAN: Setup = Setup {
    label: "ours",
    driver: Driver::Rs,
    qemu: Qemu::Debian,
};
const OURS_RANGES: Setup = Setup {
    label: "ours, page records",
    driver: Driver::Rs,
    qemu: Qemu::OursRanges,
};

/// What one configuration did in one run.
struct Run {
    setup: Setup,
    driver: Driver,
    accel: &'static str,
    inflate: Duration,
    deflate: Duration,
    pages: u64,
    /// The QEMU process's resident memory before and after inflating, in bytes (`dirty`
    /// runs: the guest wrote its memory first, so all of it was resident).
    rss_before: u64,
    rss_after: u64,
    /// debugfs counters (ours only).
    counters: Vec<(String, u64)>,
    /// The statistics the host sees (QMP `guest-stats`), by name.
    stats: Vec<(String, u64)>,
    clean_log: bool,
}

fn measure(
    s: Setup,
    mem_mib: u64,
    balloon_mib: u64,
    flavour: &'static str,
    dirty: bool,
) -> Result<Run> {
    let d = s.driver;
    let mut cfg = Config::new(
        &format!(
            "report-{}{}",
            d.label(),
            s.qemu.label().replace([',', ' '], "-")
        ),
        mem_mib,
    );
    cfg.flavour = flavour;
    cfg.qemu = s.qemu;
    eprintln!(
        "[vbrs] {}: booting a {} MiB guest ({} kernel)",
        s.label, mem_mib, flavour
    );
    let mut g = Guest::boot(&cfg)?;
    g.load(d)?;
    let mem = g.ram_bytes();
    let target = mem - balloon_mib * MIB;
    if dirty {
        // All of the guest's memory resident on the host: what inflating frees is visible.
        let mib = g.meminfo("MemAvailable")? / 1024 - 256;
        eprintln!("[vbrs] {}: writing and freeing {} MiB", s.label, mib);
        crate::migrate::write_and_free(&mut g, mib)?;
    }
    let rss_before = g.qemu_rss()?;
    eprintln!("[vbrs] {}: inflating to {} MiB", s.label, target / MIB);
    g.balloon(target)?;
    let inflate = g.wait_actual(target, Duration::from_secs(900))?;
    let rss_after = g.qemu_rss()?;
    eprintln!("[vbrs] {}: deflating to {} MiB", s.label, mem / MIB);
    g.balloon(mem)?;
    let deflate = g.wait_actual(mem, Duration::from_secs(900))?;
    g.set_stats_interval(1)?;
    let seen = g.wait_guest_stats(0, Duration::from_secs(60))?;
    let mut stats: Vec<(String, u64)> = seen["stats"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(u64::MAX)))
                .collect()
        })
        .unwrap_or_default();
    stats.sort();
    let mut counters = Vec::new();
    if d == Driver::Rs {
        let out = g.sh("cd /sys/kernel/debug/virtio_balloon_rs/virtio* && for f in *; do echo \"$f $(cat $f)\"; done")?;
        for l in out.lines() {
            if let Some((k, v)) = l.split_once(' ') {
                counters.push((k.to_string(), v.trim().parse().unwrap_or(0)));
            }
        }
    }
    let clean_log = g.check_dmesg().is_ok();
    Ok(Run {
        setup: s,
        driver: d,
        accel: g.accel,
        inflate,
        deflate,
        pages: balloon_mib * MIB / 4096,
        rss_before,
        rss_after,
        counters,
        stats,
        clean_log,
    })
}

fn print(runs: &[Run], mem_mib: u64, balloon_mib: u64, dirty: bool) -> String {
    let mut s = format!(
        "\nballoon {} MiB of a {} MiB guest ({}), one run, the configurations one after the other{}:\n\n",
        balloon_mib,
        mem_mib,
        runs.first().map(|r| r.accel).unwrap_or("?"),
        if dirty {
            "; the guest wrote and freed its memory first, so all of it was resident on the host"
        } else {
            ""
        }
    );
    s += &format!(
        "{:<20} {:>10} {:>12} {:>8} {:>12} {:>8} {:>14} {:>8} {:>6}\n",
        "configuration",
        "pages",
        "inflate ms",
        "MiB/s",
        "deflate ms",
        "MiB/s",
        "host RSS freed",
        "% infl.",
        "dmesg"
    );
    for r in runs {
        let rate = |d: Duration| balloon_mib as f64 / d.as_secs_f64().max(1e-9);
        let freed = r.rss_before.saturating_sub(r.rss_after);
        s += &format!(
            "{:<20} {:>10} {:>12} {:>8.0} {:>12} {:>8.0} {:>10} MiB {:>8.1} {:>6}\n",
            r.setup.label,
            r.pages,
            r.inflate.as_millis(),
            rate(r.inflate),
            r.deflate.as_millis(),
            rate(r.deflate),
            freed / MIB,
            100.0 * freed as f64 / (balloon_mib * MIB) as f64,
            if r.clean_log { "clean" } else { "SPLAT" }
        );
    }
    if let Some(base) = runs.iter().find(|r| r.driver == Driver::C) {
        s += "\ntime ratio against the C driver (below 1 is faster):\n";
        for r in runs.iter().filter(|r| r.driver != Driver::C) {
            s += &format!(
                "  {}: inflate {:.3}x, deflate {:.3}x\n",
                r.setup.label,
                r.inflate.as_secs_f64() / base.inflate.as_secs_f64().max(1e-9),
                r.deflate.as_secs_f64() / base.deflate.as_secs_f64().max(1e-9)
            );
        }
    }
    if let Some(first) = runs.first() {
        s += "\nstatistics the host sees (QMP qom-get guest-stats; -: not reported):\n\n";
        s += &format!("{:<26}", "stat");
        for r in runs {
            s += &format!(" {:>20}", r.setup.label);
        }
        s += "\n";
        for (name, _) in &first.stats {
            s += &format!("{name:<26}");
            for r in runs {
                let v = r.stats.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
                s += &match v {
                    Some(v) if v != u64::MAX => format!(" {v:>20}"),
                    _ => format!(" {:>20}", "-"),
                };
            }
            s += "\n";
        }
    }
    for r in runs.iter().filter(|r| !r.counters.is_empty()) {
        s += &format!("\n{} debugfs: ", r.setup.label);
        s += &r
            .counters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        s += "\n";
    }
    s
}

fn csv(runs: &[Run], mem_mib: u64, balloon_mib: u64) -> String {
    let mut s = String::from(
        "configuration,driver,qemu,accel,guest_mib,balloon_mib,pages,inflate_ms,deflate_ms,\
         rss_before_bytes,rss_after_bytes,rss_freed_bytes,clean_dmesg\n",
    );
    for r in runs {
        s += &format!(
            "{},{},{},{},{},{},{},{:.1},{:.1},{},{},{},{}\n",
            r.setup.label,
            r.driver.name(),
            match r.setup.qemu {
                Qemu::Debian => "debian",
                Qemu::Ours => "ours",
                Qemu::OursRanges => "ours page-ranges=on",
            },
            r.accel,
            mem_mib,
            balloon_mib,
            r.pages,
            r.inflate.as_secs_f64() * 1e3,
            r.deflate.as_secs_f64() * 1e3,
            r.rss_before,
            r.rss_after,
            r.rss_before.saturating_sub(r.rss_after),
            r.clean_log
        );
    }
    s
}

/// Runs every configuration in `setups` once and writes `<out_name>.{txt,csv,svg}` next to the
/// artifacts of `flavour`.
fn side_by_side(
    setups: &[Setup],
    mem_mib: u64,
    balloon_mib: u64,
    flavour: &'static str,
    dirty: bool,
    out_name: &str,
) -> Result<bool> {
    let mut runs = Vec::new();
    for s in setups {
        runs.push(measure(*s, mem_mib, balloon_mib, flavour, dirty)?);
    }
    let text = print(&runs, mem_mib, balloon_mib, dirty);
    println!("{text}");
    let dir = paths::artifacts(flavour);
    std::fs::write(dir.join(format!("{out_name}.txt")), &text).ctx("writing the report")?;
    std::fs::write(
        dir.join(format!("{out_name}.csv")),
        csv(&runs, mem_mib, balloon_mib),
    )
    .ctx("writing the report")?;
    let labels: Vec<&str> = runs.iter().map(|r| r.setup.label).collect();
    let ms = |f: &dyn Fn(&Run) -> Duration| -> Vec<f64> {
        runs.iter().map(|r| f(r).as_secs_f64() * 1e3).collect()
    };
    let svg = plot::bars(
        &format!(
            "Balloon {balloon_mib} MiB of a {mem_mib} MiB guest ({})",
            runs.first().map(|r| r.accel).unwrap_or("?")
        ),
        "ms",
        &labels,
        &[
            ("inflate", ms(&|r| r.inflate)),
            ("deflate", ms(&|r| r.deflate)),
        ],
    );
    std::fs::write(dir.join(format!("{out_name}.svg")), svg).ctx("writing the plot")?;
    println!(
        "(written to {})",
        dir.join(format!("{out_name}.{{txt,csv,svg}}")).display()
    );
    Ok(runs.iter().all(|r| r.clean_log))
}

/// `vbrs run`: a 2 GiB guest, balloon inflated to leave 512 MiB and back, both drivers on
/// Debian's QEMU.
pub fn run(_opts: &Opts) -> Result<bool> {
    side_by_side(
        &[OURS_DEBIAN, C_DEBIAN],
        2048,
        1536,
        "debug",
        false,
        "run-report",
    )
}

/// `vbrs bench`: an 8 GiB guest (by default) that first writes and frees its memory, all but
/// 1 GiB inflated and back: the C driver and ours on Debian's QEMU, ours with page records on
/// ours; then the migration cases. On the kernel without debug options.
pub fn bench(opts: &Opts) -> Result<bool> {
    let gib = opts.guest_gib.unwrap_or(8).max(2);
    let inflate = if opts.only.as_deref() != Some("migration") {
        side_by_side(
            &[C_DEBIAN, OURS_DEBIAN, OURS_RANGES],
            gib * 1024,
            (gib - 1) * 1024,
            "bench",
            true,
            "bench-inflate",
        )?
    } else {
        true
    };
    let migration = if opts.only.as_deref() != Some("inflate") {
        let sizes = match opts.migration_gib.or(opts.guest_gib) {
            Some(g) => vec![g],
            None => vec![2, 8],
        };
        crate::migbench::bench(
            &sizes,
            opts.reps.unwrap_or(3),
            &opts.cases,
            opts.max_bandwidth_mib,
        )?
    } else {
        true
    };
    Ok(inflate && migration)
}

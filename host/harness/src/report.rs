//! `make run` and `make bench`: the same inflate/deflate run with both drivers, side by side.

use crate::guest::{Config, Driver, Guest};
use crate::{paths, Context, Opts, Result};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// What one driver did in one run.
struct Run {
    driver: Driver,
    accel: &'static str,
    inflate: Duration,
    deflate: Duration,
    pages: u64,
    /// debugfs counters (ours only).
    counters: Vec<(String, u64)>,
    /// The statistics the host sees (QMP `guest-stats`), by name.
    stats: Vec<(String, u64)>,
    clean_log: bool,
}

fn measure(d: Driver, mem_mib: u64, balloon_mib: u64, flavour: &'static str) -> Result<Run> {
    let mut cfg = Config::new(&format!("report-{}", d.label()), mem_mib);
    cfg.flavour = flavour;
    eprintln!(
        "[vbrs] {}: booting a {} MiB guest ({} kernel)",
        d.name(),
        mem_mib,
        flavour
    );
    let mut g = Guest::boot(&cfg)?;
    g.load(d)?;
    let mem = g.ram_bytes();
    let target = mem - balloon_mib * MIB;
    eprintln!("[vbrs] {}: inflating to {} MiB", d.name(), target / MIB);
    g.balloon(target)?;
    let inflate = g.wait_actual(target, Duration::from_secs(900))?;
    eprintln!("[vbrs] {}: deflating to {} MiB", d.name(), mem / MIB);
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
        driver: d,
        accel: g.accel,
        inflate,
        deflate,
        pages: balloon_mib * MIB / 4096,
        counters,
        stats,
        clean_log,
    })
}

fn print(runs: &[Run], mem_mib: u64, balloon_mib: u64) -> String {
    let mut s = format!(
        "\nballoon {} MiB of a {} MiB guest ({}), same run for both drivers:\n\n",
        balloon_mib,
        mem_mib,
        runs.first().map(|r| r.accel).unwrap_or("?")
    );
    s += &format!(
        "{:<20} {:>10} {:>12} {:>10} {:>12} {:>10} {:>6}\n",
        "driver", "pages", "inflate ms", "MiB/s", "deflate ms", "MiB/s", "dmesg"
    );
    for r in runs {
        let rate = |d: Duration| balloon_mib as f64 / d.as_secs_f64().max(1e-9);
        s += &format!(
            "{:<20} {:>10} {:>12} {:>10.0} {:>12} {:>10.0} {:>6}\n",
            r.driver.name(),
            r.pages,
            r.inflate.as_millis(),
            rate(r.inflate),
            r.deflate.as_millis(),
            rate(r.deflate),
            if r.clean_log { "clean" } else { "SPLAT" }
        );
    }
    if let [a, b] = runs {
        s += &format!(
            "\n{} / {}: inflate {:.2}x, deflate {:.2}x (time ratio; below 1 is faster)\n",
            a.driver.name(),
            b.driver.name(),
            a.inflate.as_secs_f64() / b.inflate.as_secs_f64().max(1e-9),
            a.deflate.as_secs_f64() / b.deflate.as_secs_f64().max(1e-9)
        );
    }
    if let Some(first) = runs.first() {
        s += "\nstatistics the host sees (QMP qom-get guest-stats; -: not reported):\n\n";
        s += &format!("{:<26}", "stat");
        for r in runs {
            s += &format!(" {:>20}", r.driver.name());
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
        s += &format!("\n{} debugfs: ", r.driver.name());
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

fn json(runs: &[Run], mem_mib: u64, balloon_mib: u64) -> String {
    let items: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            serde_json::json!({
                "driver": r.driver.name(),
                "accel": r.accel,
                "guest_mib": mem_mib,
                "balloon_mib": balloon_mib,
                "pages": r.pages,
                "inflate_ms": r.inflate.as_secs_f64() * 1e3,
                "deflate_ms": r.deflate.as_secs_f64() * 1e3,
                "clean_dmesg": r.clean_log,
            })
        })
        .collect();
    serde_json::to_string_pretty(&items).unwrap_or_default()
}

fn side_by_side(
    mem_mib: u64,
    balloon_mib: u64,
    flavour: &'static str,
    out_name: &str,
) -> Result<bool> {
    let mut runs = Vec::new();
    for d in [Driver::Rs, Driver::C] {
        runs.push(measure(d, mem_mib, balloon_mib, flavour)?);
    }
    let text = print(&runs, mem_mib, balloon_mib);
    println!("{text}");
    let dir = paths::artifacts(flavour);
    std::fs::write(dir.join(format!("{out_name}.txt")), &text).ctx("writing the report")?;
    std::fs::write(
        dir.join(format!("{out_name}.json")),
        json(&runs, mem_mib, balloon_mib),
    )
    .ctx("writing the report")?;
    println!(
        "(written to {})",
        dir.join(format!("{out_name}.{{txt,json}}")).display()
    );
    Ok(runs.iter().all(|r| r.clean_log))
}

/// `vbrs run`: a 2 GiB guest, balloon inflated to leave 512 MiB and back, both drivers.
pub fn run(_opts: &Opts) -> Result<bool> {
    side_by_side(2048, 1536, "debug", "run-report")
}

/// `vbrs bench`: an 8 GiB guest (by default), all but 1 GiB inflated and back, both drivers, on
/// the kernel without debug options.
pub fn bench(opts: &Opts) -> Result<bool> {
    let gib = opts.guest_gib.unwrap_or(8).max(2);
    let inflate = if opts.only.as_deref() != Some("migration") {
        side_by_side(gib * 1024, (gib - 1) * 1024, "bench", "bench-inflate")?
    } else {
        true
    };
    let migration = if opts.only.as_deref() != Some("inflate") {
        let sizes = match opts.guest_gib {
            Some(g) => vec![g],
            None => vec![2, 8],
        };
        crate::migbench::bench(&sizes, opts.reps.unwrap_or(3), &opts.cases)?
    } else {
        true
    };
    Ok(inflate && migration)
}

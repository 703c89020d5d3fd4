//! The scenarios `make test` runs: each boots a fresh guest, loads one driver, drives the
//! balloon from the host and checks what the guest and QEMU observe. Shared scenarios run with
//! both drivers (ours and the C driver).

use crate::guest::{Config, Driver, Guest};
use crate::migrate::{self, Params, Variant};
use crate::{ktap, Context, Opts, Result};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(180);

/// A host-orchestrated scenario.
struct Scenario {
    name: &'static str,
    /// Guest memory in MiB.
    mem_mib: u64,
    /// Runs with the C driver too.
    shared: bool,
    /// The balloon device offers free page hinting.
    hint: bool,
    /// The guest boots with `page_poison=1` (free pages hold a pattern checked on allocation).
    poison: bool,
    run: fn(&mut Guest, Driver, &mut Vec<Outcome>) -> Result<()>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "load_unload",
        mem_mib: 512,
        shared: true,
        hint: false,
        poison: true,
        run: load_unload,
    },
    Scenario {
        name: "inflate_deflate",
        mem_mib: 1024,
        shared: true,
        hint: false,
        poison: true,
        run: inflate_deflate,
    },
    Scenario {
        name: "reverse_mid_inflate",
        mem_mib: 1024,
        shared: true,
        hint: false,
        poison: true,
        run: reverse_mid_inflate,
    },
    Scenario {
        name: "unload_inflated",
        mem_mib: 1024,
        shared: true,
        hint: false,
        poison: true,
        run: unload_inflated,
    },
    // Ours only: the C driver inflates down to the min watermark, and a guest with nothing
    // killable then panics ("System is deadlocked on memory") at its next allocation.
    Scenario {
        name: "target_beyond_guest",
        mem_mib: 512,
        shared: false,
        hint: false,
        poison: true,
        run: target_beyond_guest,
    },
    Scenario {
        name: "unload_while_moving",
        mem_mib: 1024,
        shared: true,
        hint: false,
        poison: true,
        run: unload_while_moving,
    },
    Scenario {
        name: "repeated_cycles",
        mem_mib: 1024,
        shared: true,
        hint: false,
        poison: true,
        run: repeated_cycles,
    },
    Scenario {
        name: "selftests",
        mem_mib: 512,
        shared: true,
        hint: false,
        poison: true,
        run: selftests,
    },
    Scenario {
        name: "migrate_idle",
        mem_mib: 1024,
        shared: true,
        hint: false,
        poison: true,
        run: migrate_idle,
    },
    Scenario {
        name: "migrate_idle_hint",
        mem_mib: 1024,
        shared: true,
        hint: true,
        poison: false,
        run: migrate_idle,
    },
    Scenario {
        name: "migrate_after_workload",
        mem_mib: 1024,
        shared: true,
        hint: false,
        poison: true,
        run: migrate_after_workload,
    },
    Scenario {
        name: "migrate_after_workload_hint",
        mem_mib: 1024,
        shared: true,
        hint: true,
        poison: false,
        run: migrate_after_workload,
    },
    Scenario {
        name: "migrate_during_churn",
        mem_mib: 1024,
        shared: true,
        hint: false,
        poison: true,
        run: migrate_during_churn,
    },
    Scenario {
        name: "migrate_during_churn_hint",
        mem_mib: 1024,
        shared: true,
        hint: true,
        poison: false,
        run: migrate_during_churn,
    },
    Scenario {
        name: "migrate_inflate_during_hint",
        mem_mib: 1024,
        shared: true,
        hint: true,
        poison: false,
        run: migrate_inflate_during_hint,
    },
    Scenario {
        name: "migrate_cancel_unload_hint",
        mem_mib: 1024,
        shared: true,
        hint: true,
        poison: false,
        run: migrate_cancel_unload_hint,
    },
    // Ours only: with page poisoning, hinted pages would arrive unpoisoned on the destination,
    // so our driver declines hinting (the C driver allocates what it hints, so it may go on).
    Scenario {
        name: "migrate_hint_poisoned",
        mem_mib: 1024,
        shared: false,
        hint: true,
        poison: true,
        run: migrate_hint_poisoned,
    },
];

/// A result line of the run.
pub struct Outcome {
    pub name: String,
    pub ok: bool,
    pub skip: bool,
    pub detail: String,
}

fn debugfs(g: &mut Guest, file: &str) -> Result<u64> {
    g.read_u64(&format!(
        "/sys/kernel/debug/virtio_balloon_rs/virtio*/{file}"
    ))
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn bound(g: &mut Guest, d: Driver) -> Result<bool> {
    let (rc, _) = g.exec_timeout(
        &format!("ls -d /sys/bus/virtio/drivers/{}/virtio*", d.name()),
        WAIT,
    )?;
    Ok(rc == 0)
}

fn load_unload(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    check(bound(g, d)?, || {
        format!("{} not bound after insmod", d.name())
    })?;
    g.unload(d)?;
    check(!bound(g, d)?, || "still bound after rmmod".into())?;
    g.load(d)?;
    check(bound(g, d)?, || "not bound after the second insmod".into())?;
    g.unload(d)?;
    g.load(d)
}

/// Inflates `mib` MiB, checks guest and host agree, deflates, checks everything came back.
fn inflate_to(g: &mut Guest, d: Driver, mib: u64, total0: u64) -> Result<()> {
    let mem = g.ram_bytes();
    g.balloon(mem - mib * MIB)?;
    g.wait_actual(mem - mib * MIB, WAIT)?;
    let total = g.meminfo("MemTotal")?;
    check(total0 - total == mib * 1024, || {
        format!(
            "MemTotal went from {total0} kB to {total} kB, expected {} kB less",
            mib * 1024
        )
    })?;
    if d == Driver::Rs {
        let pages = debugfs(g, "pages")?;
        check(pages == mib * 256, || {
            format!("debugfs pages {pages}, expected {}", mib * 256)
        })?;
    }
    Ok(())
}

fn deflate_all(g: &mut Guest, total0: u64) -> Result<()> {
    let mem = g.ram_bytes();
    g.balloon(mem)?;
    g.wait_actual(mem, WAIT)?;
    let total = g.meminfo("MemTotal")?;
    check(total == total0, || {
        format!("MemTotal {total} kB after deflating, {total0} kB before")
    })
}

fn inflate_deflate(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let total0 = g.meminfo("MemTotal")?;
    inflate_to(g, d, 512, total0)?;
    deflate_all(g, total0)
}

fn reverse_mid_inflate(g: &mut Guest, d: Driver, out: &mut Vec<Outcome>) -> Result<()> {
    let total0 = g.meminfo("MemTotal")?;
    let mem = g.ram_bytes();
    let target = mem - 768 * MIB;
    g.balloon(target)?;
    // Reverse as soon as the balloon has started moving.
    let start = Instant::now();
    let mut seen = mem;
    while start.elapsed() < WAIT {
        seen = g.actual()?;
        if seen != mem {
            break;
        }
    }
    deflate_all(g, total0)?;
    let mid = seen > target;
    out.push(Outcome {
        name: format!(
            "reverse_mid_inflate [{}]: reversed before the target was reached",
            d.label()
        ),
        ok: true,
        skip: !mid,
        detail: format!(
            "balloon at {} MiB of {} MiB when reversed",
            (mem - seen) / MIB,
            (mem - target) / MIB
        ),
    });
    if d == Driver::Rs {
        let pages = debugfs(g, "pages")?;
        check(pages == 0, || {
            format!("debugfs pages {pages} after reversal")
        })?;
    }
    Ok(())
}

fn unload_inflated(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let total0 = g.meminfo("MemTotal")?;
    inflate_to(g, d, 512, total0)?;
    let free_inflated = g.meminfo("MemFree")?;
    g.unload(d)?;
    let total = g.meminfo("MemTotal")?;
    check(total == total0, || {
        format!("MemTotal {total} kB after unload, {total0} kB before")
    })?;
    let free = g.meminfo("MemFree")?;
    // Most of the 512 MiB shows up as free at once (some sits on per-CPU free lists).
    check(free >= free_inflated + 384 * 1024, || {
        format!(
            "MemFree {free} kB after unload, {free_inflated} kB while inflated: pages not returned"
        )
    })?;
    let actual = g.actual()?;
    check(actual == g.ram_bytes(), || {
        format!("QMP actual {} MiB after unload", actual / MIB)
    })
}

/// Unloads the driver while it inflates, with the host changing the target during the removal.
fn unload_while_moving(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let total0 = g.meminfo("MemTotal")?;
    let mem = g.ram_bytes();
    g.balloon(mem - 768 * MIB)?;
    let start = Instant::now();
    while g.actual()? == mem && start.elapsed() < WAIT {}
    g.sh(&format!("rmmod {} > /tmp/rmmod.out 2>&1 &", d.name()))?;
    for mib in [256, 640, 128, 512, 0, 384] {
        g.balloon(mem - mib * MIB)?;
        std::thread::sleep(Duration::from_millis(30));
    }
    let start = Instant::now();
    while g
        .exec_timeout(&format!("grep -q '^{} ' /proc/modules", d.name()), WAIT)?
        .0
        == 0
    {
        check(start.elapsed() < WAIT, || "rmmod did not finish".into())?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let total = g.meminfo("MemTotal")?;
    check(total == total0, || {
        format!("MemTotal {total} kB after unload, {total0} kB before")
    })?;
    let actual = g.actual()?;
    check(actual == mem, || {
        format!("QMP actual {} MiB after unload", actual / MIB)
    })?;
    // Loaded again, the driver follows the target the host left.
    g.load(d)?;
    g.wait_actual(mem - 384 * MIB, WAIT)?;
    deflate_all(g, total0)
}

fn target_beyond_guest(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let total0 = g.meminfo("MemTotal")?;
    let mem = g.ram_bytes();
    // 1 byte: the host asks for every page of guest RAM, more than the guest can give.
    g.balloon(1)?;
    let settled = g.wait_actual_settles(Duration::from_secs(3), WAIT)?;
    check(settled < mem, || "nothing was inflated".into())?;
    deflate_all(g, total0)?;
    if d == Driver::Rs {
        let log = g.dmesg()?;
        let n = log.matches("inflating what it can").count();
        check(n == 1, || {
            format!("the over-large target was logged {n} times, expected once")
        })?;
        let stops = debugfs(g, "floor_stops")?;
        check(stops > 0, || {
            "inflating never stopped at the memory floor".into()
        })?;
    }
    Ok(())
}

fn repeated_cycles(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let total0 = g.meminfo("MemTotal")?;
    for _ in 0..5 {
        inflate_to(g, d, 256, total0)?;
        deflate_all(g, total0)?;
    }
    if d == Driver::Rs {
        let (pages, inflated, deflated) = (
            debugfs(g, "pages")?,
            debugfs(g, "inflated")?,
            debugfs(g, "deflated")?,
        );
        check(
            pages == 0 && inflated == deflated && inflated == 5 * 256 * 256,
            || format!("debugfs pages {pages}, inflated {inflated}, deflated {deflated}"),
        )?;
    }
    Ok(())
}

fn selftests(g: &mut Guest, d: Driver, out: &mut Vec<Outcome>) -> Result<()> {
    let (_, text) = g.exec_timeout(
        &format!("cd /selftests && DRIVER={} sh ./run_kselftest.sh", d.name()),
        WAIT,
    )?;
    let results = ktap::parse(&text);
    check(!results.is_empty(), || format!("no KTAP results:\n{text}"))?;
    for r in results {
        out.push(Outcome {
            name: format!("selftests: {} [{}]", r.name, d.label()),
            ok: r.ok,
            skip: r.skip,
            detail: if r.ok { String::new() } else { text.clone() },
        });
    }
    Ok(())
}

/// Migration with integrity checks (in `migrate::run_case`), plus what hinting must achieve.
/// With `hint`, the guest's driver is expected to send free page hints.
fn migration(g: &mut Guest, d: Driver, v: Variant, hint: bool) -> Result<()> {
    let mem = g.ram_bytes();
    let c = migrate::run_case(g, d, v, Params::default())?;
    let s = &c.stats;
    let summary = format!(
        "{} ms, downtime {} ms, {} MiB sent, lowest free {} of {} MiB{}",
        s.total_ms,
        s.downtime_ms,
        s.transferred / MIB,
        c.min_free_kib >> 10,
        c.free_before_kib >> 10,
        c.hint_rounds
            .map(|r| format!(", {r} hint rounds"))
            .unwrap_or_default()
    );
    eprintln!("[vbrs]   {summary}");
    if hint && v == Variant::AfterWorkload {
        check(s.transferred < mem / 2, || {
            format!("hinting should skip the freed memory, but {summary}")
        })?;
    }
    if hint && d == Driver::Rs {
        check(c.hint_rounds.unwrap_or(0) > 0, || {
            format!("no hinting round ran: {summary}")
        })?;
        check(c.host_errors == Some(0), || {
            format!("the driver counted host errors: {summary}")
        })?;
        if v == Variant::AfterWorkload {
            // The walk takes no memory from the guest.
            check(c.min_free_kib * 2 > c.free_before_kib, || {
                format!("free memory dipped during hinting: {summary}")
            })?;
        }
    }
    Ok(())
}

fn migrate_idle(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let hint = g.cfg.free_page_hint;
    migration(g, d, Variant::Idle, hint)
}

fn migrate_after_workload(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let hint = g.cfg.free_page_hint;
    migration(g, d, Variant::AfterWorkload, hint)
}

fn migrate_during_churn(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let hint = g.cfg.free_page_hint;
    migration(g, d, Variant::Churn, hint)
}

/// The host inflates the balloon by 256 MiB as the migration starts: the config change ends a
/// hinting round, the balloon moves on both sides of the switch, and nothing is lost.
fn migrate_inflate_during_hint(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let target = g.ram_bytes() - 256 * MIB;
    let p = Params {
        balloon_during: Some(target),
        ..Params::default()
    };
    let total0 = g.meminfo("MemTotal")?;
    migrate::fill_and_free(g, 512)?;
    let c = migrate::run_case(g, d, Variant::Idle, p)?;
    eprintln!(
        "[vbrs]   {} ms, {} MiB sent",
        c.stats.total_ms,
        c.stats.transferred / MIB
    );
    g.wait_actual(target, WAIT)?;
    if d == Driver::Rs {
        check(debugfs(g, "pages")? == 256 * MIB / 4096, || {
            "debugfs pages disagrees with the target".into()
        })?;
    }
    deflate_all(g, total0)
}

/// Fails unless the migration from `g` is still running: the guest would be paused otherwise.
fn still_migrating(g: &mut Guest) -> Result<()> {
    let status = migrate::status(g)?;
    check(status == "setup" || status == "active", || {
        format!("migration '{status}', expected it to keep running")
    })
}

/// A hinted migration held back by a bandwidth of 1 MiB/s, so the source keeps running with
/// QEMU in hinting mode for minutes. The driver is unloaded right away (while the first round
/// may still run) and loaded again, twice, then the host cancels the migration and QEMU sends
/// DONE. The guest keeps its data, the balloon still works, the C driver gives back the memory
/// it took for hints, and dmesg stays clean.
fn migrate_cancel_unload_hint(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let total0 = g.meminfo("MemTotal")?;
    let free0 = g.meminfo("MemFree")?;
    migrate::write_live_data(g, migrate::LIVE_MIB)?;
    let mut dst_cfg = g.cfg.clone();
    dst_cfg.name = format!("{}-dst", g.cfg.name);
    let p = Params {
        max_bandwidth: MIB,
        ..Params::default()
    };
    let dst = migrate::start(g, &dst_cfg, p)?;
    for _ in 0..2 {
        still_migrating(g)?;
        g.unload(d)?;
        g.load(d)?;
        std::thread::sleep(Duration::from_secs(1));
    }
    still_migrating(g)?;
    migrate::cancel(g)?;
    drop(dst);
    if d == Driver::Rs {
        // QEMU ends hinting with DONE when a migration is cancelled.
        wait_counter(g, "hint_done", 1)?;
        check(debugfs(g, "host_errors")? == 0, || {
            "the driver counted host errors".into()
        })?;
    }
    migrate::verify_live_data(g)?;
    // Whatever a driver took for hinting is back (the live data is 64 MiB).
    let start = Instant::now();
    loop {
        let free = g.meminfo("MemFree")?;
        if free + (migrate::LIVE_MIB + 64) * 1024 >= free0 {
            break;
        }
        check(start.elapsed() < WAIT, || {
            format!("MemFree {free} kB after the cancel, {free0} kB before the migration")
        })?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let mem = g.ram_bytes();
    g.balloon(mem - 128 * MIB)?;
    g.wait_actual(mem - 128 * MIB, WAIT)?;
    deflate_all(g, total0)
}

/// Waits until our driver's debugfs counter `file` reaches `n`.
fn wait_counter(g: &mut Guest, file: &str, n: u64) -> Result<()> {
    let start = Instant::now();
    loop {
        let v = debugfs(g, file)?;
        if v >= n {
            return Ok(());
        }
        check(start.elapsed() < WAIT, || {
            format!("{file} stayed at {v}, expected {n}")
        })?;
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn migrate_hint_poisoned(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let log = g.dmesg()?;
    check(
        log.contains("free page hinting declined: page poisoning is on"),
        || "no 'free page hinting declined' line with page_poison=1".into(),
    )?;
    migration(g, d, Variant::AfterWorkload, false)?;
    check(debugfs(g, "hint_rounds")? == 0, || {
        "hinting ran although page poisoning is on".into()
    })
}

fn run_one(s: &Scenario, d: Driver) -> Vec<Outcome> {
    let name = format!("{} [{}]", s.name, d.label());
    eprintln!("[vbrs] scenario {name}: booting a {} MiB guest", s.mem_mib);
    let start = Instant::now();
    let mut extra = Vec::new();
    let res = (|| -> Result<()> {
        let mut cfg = Config::new(&format!("{}-{}", s.name, d.label()), s.mem_mib);
        if s.poison {
            cfg.append = "page_poison=1".into();
        }
        cfg.free_page_hint = s.hint;
        let mut g = Guest::boot(&cfg)?;
        g.load(d)?;
        let r = (s.run)(&mut g, d, &mut extra);
        let splat = g.check_dmesg();
        r?;
        splat
    })();
    let detail = format!("{:.1} s", start.elapsed().as_secs_f64());
    let mut all = vec![match res {
        Ok(()) => Outcome {
            name,
            ok: true,
            skip: false,
            detail,
        },
        Err(e) => Outcome {
            name,
            ok: false,
            skip: false,
            detail: format!("{detail}: {e}"),
        },
    }];
    all.extend(extra);
    all
}

/// Runs the workspace's unit tests and returns their outcome.
fn unit_tests() -> Outcome {
    eprintln!("[vbrs] unit tests: cargo test --workspace --release");
    let out = Command::new("cargo")
        .args(["test", "--workspace", "--release", "-q"])
        .current_dir(crate::paths::top())
        .output();
    let (mut passed, mut failed) = (0u64, 0u64);
    let text = match out {
        Ok(o) => {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        }
        Err(e) => format!("cannot run cargo: {e}"),
    };
    for l in text.lines() {
        if let Some(r) = l.strip_prefix("test result: ") {
            let num = |key: &str| -> u64 {
                r.split(';')
                    .find(|p| p.trim().ends_with(key))
                    .and_then(|p| p.split_whitespace().rev().nth(1))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            passed += num("passed");
            failed += num("failed");
        }
    }
    let ok = failed == 0 && passed > 0;
    Outcome {
        name: format!("unit tests ({passed} passed, {failed} failed)"),
        ok,
        skip: false,
        detail: if ok { String::new() } else { text },
    }
}

/// `vbrs test`.
pub fn test(opts: &Opts) -> Result<bool> {
    let selected: Vec<(&Scenario, Driver)> = SCENARIOS
        .iter()
        .flat_map(|s| {
            opts.drivers
                .iter()
                .filter(move |d| s.shared || **d == Driver::Rs)
                .map(move |d| (s, *d))
        })
        .filter(|(s, d)| {
            opts.filter
                .as_ref()
                .is_none_or(|f| format!("{} [{}]", s.name, d.label()).contains(f.as_str()))
        })
        .collect();
    if opts.list {
        for (s, d) in &selected {
            println!("{} [{}]", s.name, d.label());
        }
        return Ok(true);
    }
    let mut outcomes = Vec::new();
    if !opts.no_unit {
        let o = unit_tests();
        print_outcome(&o);
        outcomes.push(o);
    }
    eprintln!("[vbrs] accelerator: {}", crate::guest::accel());
    for (s, d) in selected {
        for o in run_one(s, d) {
            print_outcome(&o);
            outcomes.push(o);
        }
    }
    let passed = outcomes.iter().filter(|o| o.ok && !o.skip).count();
    let skipped = outcomes.iter().filter(|o| o.skip).count();
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    if failed > 0 {
        println!("\nfailed:");
        for o in outcomes.iter().filter(|o| !o.ok) {
            println!("  {}", o.name);
        }
    }
    println!();
    if skipped > 0 {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("{passed} passed, {failed} failed");
    }
    std::io::Write::flush(&mut std::io::stdout()).ctx("stdout")?;
    Ok(failed == 0)
}

fn print_outcome(o: &Outcome) {
    let tag = if !o.ok {
        "FAIL"
    } else if o.skip {
        "skip"
    } else {
        "ok  "
    };
    println!(
        "{tag} {} {}",
        o.name,
        if o.detail.is_empty() {
            String::new()
        } else {
            format!("({})", o.detail)
        }
    );
}

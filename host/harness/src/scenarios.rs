//! The scenarios `make test` runs: each boots a fresh guest, loads one driver, drives the
//! balloon from the host and checks what the guest and QEMU observe. Shared scenarios run with
//! both drivers (ours and the C driver).

use crate::guest::{Config, Driver, Guest, Qemu};
use crate::migrate::{self, Params, Variant};
use crate::{ktap, Context, Opts, Result};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Free memory our driver isolates for hints at one moment, at most (`src/balloon/hint.rs`).
const HINT_BOUND_MIB: u64 = 64;
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
    /// Extra kernel command line (`page_poison=1`: free pages hold a pattern checked on
    /// allocation; `init_on_free=1`: they hold zeroes).
    append: &'static str,
    /// The QEMUs it runs on (Debian's: what users run; ours: `patches/qemu/`).
    qemus: &'static [Qemu],
    /// Our QEMU's model of KVM's lazy dirty-log clear, with hints applied 200 ms late.
    kvm_model: bool,
    run: fn(&mut Guest, Driver, &mut Vec<Outcome>) -> Result<()>,
}

const DEBIAN: &[Qemu] = &[Qemu::Debian];
const OURS: &[Qemu] = &[Qemu::Ours];
const BOTH: &[Qemu] = &[Qemu::Debian, Qemu::Ours];

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "load_unload",
        mem_mib: 512,
        shared: true,
        hint: false,
        append: "page_poison=1",
        qemus: DEBIAN,
        kvm_model: false,
        run: load_unload,
    },
    Scenario {
        name: "inflate_deflate",
        mem_mib: 1024,
        shared: true,
        hint: false,
        append: "page_poison=1",
        qemus: DEBIAN,
        kvm_model: false,
        run: inflate_deflate,
    },
    Scenario {
        name: "reverse_mid_inflate",
        mem_mib: 1024,
        shared: true,
        hint: false,
        append: "page_poison=1",
        qemus: DEBIAN,
        kvm_model: false,
        run: reverse_mid_inflate,
    },
    Scenario {
        name: "unload_inflated",
        mem_mib: 1024,
        shared: true,
        hint: false,
        append: "page_poison=1",
        qemus: DEBIAN,
        kvm_model: false,
        run: unload_inflated,
    },
    // Ours only: the C driver inflates down to the min watermark, and a guest with nothing
    // killable then panics ("System is deadlocked on memory") at its next allocation.
    Scenario {
        name: "target_beyond_guest",
        mem_mib: 512,
        shared: false,
        hint: false,
        append: "page_poison=1",
        qemus: DEBIAN,
        kvm_model: false,
        run: target_beyond_guest,
    },
    Scenario {
        name: "unload_while_moving",
        mem_mib: 1024,
        shared: true,
        hint: false,
        append: "page_poison=1",
        qemus: DEBIAN,
        kvm_model: false,
        run: unload_while_moving,
    },
    Scenario {
        name: "repeated_cycles",
        mem_mib: 1024,
        shared: true,
        hint: false,
        append: "page_poison=1",
        qemus: DEBIAN,
        kvm_model: false,
        run: repeated_cycles,
    },
    Scenario {
        name: "selftests",
        mem_mib: 512,
        shared: true,
        hint: false,
        append: "page_poison=1",
        qemus: DEBIAN,
        kvm_model: false,
        run: selftests,
    },
    Scenario {
        name: "migrate_idle",
        mem_mib: 1024,
        shared: true,
        hint: false,
        append: "page_poison=1",
        qemus: BOTH,
        kvm_model: false,
        run: migrate_idle,
    },
    Scenario {
        name: "migrate_idle_hint",
        mem_mib: 1024,
        shared: true,
        hint: true,
        append: "",
        qemus: BOTH,
        kvm_model: false,
        run: migrate_idle,
    },
    Scenario {
        name: "migrate_after_workload",
        mem_mib: 1024,
        shared: true,
        hint: false,
        append: "page_poison=1",
        qemus: BOTH,
        kvm_model: false,
        run: migrate_after_workload,
    },
    Scenario {
        name: "migrate_after_workload_hint",
        mem_mib: 1024,
        shared: true,
        hint: true,
        append: "",
        qemus: BOTH,
        kvm_model: false,
        run: migrate_after_workload,
    },
    Scenario {
        name: "migrate_during_churn",
        mem_mib: 1024,
        shared: true,
        hint: false,
        append: "page_poison=1",
        qemus: BOTH,
        kvm_model: false,
        run: migrate_during_churn,
    },
    Scenario {
        name: "migrate_during_churn_hint",
        mem_mib: 1024,
        shared: true,
        hint: true,
        append: "",
        qemus: BOTH,
        kvm_model: false,
        run: migrate_during_churn,
    },
    Scenario {
        name: "migrate_inflate_during_hint",
        mem_mib: 1024,
        shared: true,
        hint: true,
        append: "",
        qemus: BOTH,
        kvm_model: false,
        run: migrate_inflate_during_hint,
    },
    Scenario {
        name: "migrate_cancel_unload_hint",
        mem_mib: 1024,
        shared: true,
        hint: true,
        append: "",
        qemus: BOTH,
        kvm_model: false,
        run: migrate_cancel_unload_hint,
    },
    // Hardened guests: free pages hold the poison pattern or zeroes, which hinted blocks get
    // again before they go back to the allocator. Our QEMU only: rewriting every hinted block
    // mid-migration exposes Debian's QEMU's TCG dirty-tracking bug (a destination kernel died
    // with "stack-protector: Kernel stack is corrupted"), which patches/qemu/0002 fixes.
    Scenario {
        name: "migrate_after_workload_hint_poisoned",
        mem_mib: 1024,
        shared: true,
        hint: true,
        append: "page_poison=1",
        qemus: OURS,
        kvm_model: false,
        run: migrate_hint_hardened,
    },
    Scenario {
        name: "migrate_after_workload_hint_init_on_free",
        mem_mib: 1024,
        shared: true,
        hint: true,
        append: "init_on_free=1",
        qemus: OURS,
        kvm_model: false,
        run: migrate_hint_hardened,
    },
    // KVM's lazy dirty-log clear, modelled by our QEMU: a hinted page written before the host
    // applies the hint is lost unless the driver owns it until then.
    Scenario {
        name: "migrate_hint_kvm_model",
        mem_mib: 1024,
        shared: true,
        hint: true,
        append: "",
        qemus: OURS,
        kvm_model: true,
        run: migrate_hint_kvm_model,
    },
];

/// What `kvm_model` adds to our QEMU's command line: the model of KVM's lazy dirty-log clear,
/// and each hint element applied 200 ms late (see `docs/kvm-lazy-clear-model.md`).
pub const KVM_MODEL_ARGS: &[&str] = &[
    "-global",
    "migration.x-model-kvm-lazy-clear=on",
    "-global",
    "virtio-balloon-device.x-hint-delay-us=200000",
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
fn migration(g: &mut Guest, d: Driver, v: Variant, hint: bool) -> Result<migrate::Case> {
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
    // With page poisoning our hinted blocks are poisoned again (written) before they go back,
    // so they are sent after all.
    let repoisoned = d == Driver::Rs && g.cfg.append.contains("page_poison=1");
    if hint && v == Variant::AfterWorkload && !repoisoned {
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
        // What the driver isolates at once is bounded: 4 buffers of 16 MiB.
        let isolated = c.hint_isolated_max.unwrap_or(0);
        check(
            isolated > 0 && isolated <= HINT_BOUND_MIB * MIB / 4096,
            || format!("{isolated} pages isolated at once, bound {HINT_BOUND_MIB} MiB: {summary}"),
        )?;
        if v == Variant::AfterWorkload {
            // So free memory dips by the bound at most (plus 32 MiB for the guest's own
            // allocations meanwhile: the sampler, the agent).
            check(
                c.min_free_kib + (HINT_BOUND_MIB + 32) * 1024 >= c.free_before_kib,
                || format!("free memory dipped by more than the hinting bound: {summary}"),
            )?;
        }
    }
    Ok(c)
}

fn migrate_idle(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let hint = g.cfg.free_page_hint;
    migration(g, d, Variant::Idle, hint).map(drop)
}

fn migrate_after_workload(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let hint = g.cfg.free_page_hint;
    migration(g, d, Variant::AfterWorkload, hint).map(drop)
}

fn migrate_during_churn(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let hint = g.cfg.free_page_hint;
    migration(g, d, Variant::Churn, hint).map(drop)
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

/// A hinted migration after the workload on a guest with `page_poison=1` or `init_on_free=1`:
/// the data arrives intact and the destination's allocator finds no corrupted free page (the
/// splat check). With poisoning, our hinted blocks are poisoned again before they go back, so
/// they are sent again: the bytes are reported, not bounded.
fn migrate_hint_hardened(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let log = g.dmesg()?;
    check(!log.contains("free page hinting declined"), || {
        "the driver declined free page hinting".into()
    })?;
    // With `hint`, `migration` also checks that our driver ran hinting rounds.
    migration(g, d, Variant::AfterWorkload, true)?;
    // The destination allocates (and checks) what was hinted: fill most of memory.
    let avail_mib = g.meminfo("MemAvailable")? >> 10;
    migrate::fill_and_free(g, avail_mib.saturating_sub(96).max(16))
}

/// Migrations, chained in one guest, runs (default 2, `VBRS_MODEL_MIGRATIONS`).
fn model_migrations() -> u32 {
    std::env::var("VBRS_MODEL_MIGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// Our QEMU models KVM's lazy dirty-log clear and applies each hint element 200 ms late.
/// Before each migration the guest dirties and frees 700 MiB; during the hinted migration
/// (32 MiB/s, so that the rounds are long) a process writes new 512 KiB files, each a copy of one random seed, which land
/// on pages that were just free. On the destination every file must match the seed. The
/// guest migrates again from there, `VBRS_MODEL_MIGRATIONS` times in all.
fn migrate_hint_kvm_model(g: &mut Guest, d: Driver, _: &mut Vec<Outcome>) -> Result<()> {
    let base = g.cfg.name.clone();
    let (mut files, mut bad, mut per_run) = (0, 0, Vec::new());
    for i in 0..model_migrations() {
        migrate::fill_and_free(g, 700)?;
        migrate::start_fresh_files(g, 400)?;
        let mut dst_cfg = g.cfg.clone();
        dst_cfg.name = format!("{base}-m{i}");
        let p = Params {
            max_bandwidth: 32 * MIB,
            ..Params::default()
        };
        let (dst, stats) = migrate::migrate(g, &dst_cfg, p)?;
        drop(std::mem::replace(g, dst));
        let (n, b) = migrate::stop_and_verify_fresh_files(g)?;
        eprintln!(
            "[vbrs]   migration {}: {n} files, {b} corrupted, {} ms, {} MiB sent",
            i + 1,
            stats.total_ms,
            stats.transferred / MIB
        );
        files += n;
        bad += b;
        per_run.push(b);
    }
    if d == Driver::Rs {
        check(debugfs(g, "hint_rounds")? > 0, || {
            "no hinting round ran".into()
        })?;
    }
    check(bad == 0, || {
        format!("{bad} of {files} files written during the migrations were corrupted (per migration: {per_run:?})")
    })
}

/// A scenario run's name, as `--filter` matches it: `name [rs]`, `name [c, our qemu]`.
fn label(s: &Scenario, d: Driver, q: Qemu) -> String {
    format!("{} [{}{}]", s.name, d.label(), q.label())
}

fn run_one(s: &Scenario, d: Driver, q: Qemu) -> Vec<Outcome> {
    let name = label(s, d, q);
    eprintln!("[vbrs] scenario {name}: booting a {} MiB guest", s.mem_mib);
    let start = Instant::now();
    let mut extra = Vec::new();
    let res = (|| -> Result<()> {
        let qname = if q == Qemu::Ours { "-ourqemu" } else { "" };
        let mut cfg = Config::new(&format!("{}-{}{qname}", s.name, d.label()), s.mem_mib);
        cfg.append = s.append.into();
        cfg.free_page_hint = s.hint;
        cfg.qemu = q;
        if s.kvm_model {
            cfg.qemu_args = KVM_MODEL_ARGS.iter().map(|a| a.to_string()).collect();
        }
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
    let selected: Vec<(&Scenario, Driver, Qemu)> = SCENARIOS
        .iter()
        .flat_map(|s| {
            s.qemus.iter().flat_map(move |q| {
                opts.drivers
                    .iter()
                    .filter(move |d| s.shared || **d == Driver::Rs)
                    .map(move |d| (s, *d, *q))
            })
        })
        .filter(|(s, d, q)| {
            opts.filter
                .as_ref()
                .is_none_or(|f| label(s, *d, *q).contains(f.as_str()))
        })
        .collect();
    if opts.list {
        for (s, d, q) in &selected {
            println!("{}", label(s, *d, *q));
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
    for (s, d, q) in selected {
        for o in run_one(s, d, q) {
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

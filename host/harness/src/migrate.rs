//! Live migration between two local QEMU processes, and the guest-side workloads the migration
//! scenarios and benchmarks run around it.

use crate::guest::{poll_until, Config, Guest};
use crate::Result;
use qapi::qmp;
use serde::{Serialize, Serializer};
use std::time::Duration;

/// Migration parameters, pinned so that runs compare.
#[derive(Clone, Copy)]
pub struct Params {
    /// Bytes per second.
    pub max_bandwidth: u64,
    /// Milliseconds.
    pub downtime_limit_ms: u64,
    /// A balloon target (guest size in bytes) the host sets right after starting the migration.
    pub balloon_during: Option<u64>,
    /// Dirty bitmap syncs after which the migration counts as not converging: the harness stops
    /// waiting and fails (dropping the guests quits both QEMUs) rather than letting it run on.
    pub max_syncs: Option<u64>,
}

impl Default for Params {
    fn default() -> Self {
        // As in the reference measurements: bandwidth is not the limit, default downtime.
        Params {
            max_bandwidth: 100 << 30,
            downtime_limit_ms: 300,
            balloon_during: None,
            max_syncs: None,
        }
    }
}

/// What QEMU reports for a completed migration.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub total_ms: u64,
    pub downtime_ms: u64,
    pub setup_ms: u64,
    pub transferred: u64,
    pub normal_pages: u64,
    pub duplicate_pages: u64,
    pub dirty_syncs: u64,
    /// Where the migration stood whenever QEMU's dirty-sync count moved on, as the harness
    /// saw it (polling every 20 ms): the count, ms since the start, bytes and normal pages sent.
    pub passes: Vec<Pass>,
}

/// The migration's progress when the harness first saw a dirty-sync count.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pass {
    pub sync: u64,
    pub ms: u64,
    pub transferred: u64,
    pub normal_pages: u64,
}

/// `query-migrate`, answered as raw JSON: QEMU 7.2 leaves out fields newer schemas require.
struct QueryMigrate;

impl Serialize for QueryMigrate {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

impl qapi::Command for QueryMigrate {
    type Ok = serde_json::Value;
    const NAME: &'static str = "query-migrate";
    const ALLOW_OOB: bool = false;
}

/// Starts migrating `src` to a new QEMU started from `dst_cfg` (listening with `-incoming`),
/// with the parameters pinned; returns the destination.
pub fn start(src: &mut Guest, dst_cfg: &Config, p: Params) -> Result<Guest> {
    let dst = Guest::incoming(dst_cfg)?;
    let params = qmp::MigrateSetParameters {
        max_bandwidth: Some(p.max_bandwidth),
        downtime_limit: Some(p.downtime_limit_ms),
        ..Default::default()
    };
    src.qmp(&qmp::migrate_set_parameters::from(params))?;
    src.qmp(&qmp::migrate {
        uri: Some(dst.incoming_uri()),
        channels: None,
        detach: None,
        resume: None,
    })?;
    Ok(dst)
}

/// The source's migration status (`active`, `completed`, `cancelled`...).
pub fn status(src: &mut Guest) -> Result<String> {
    let info = src.qmp(&QueryMigrate)?;
    Ok(info["status"].as_str().unwrap_or("").to_string())
}

/// Cancels the running migration and waits until the source reports it cancelled; the source
/// guest goes on running.
pub fn cancel(src: &mut Guest) -> Result<()> {
    src.qmp(&qmp::migrate_cancel {})?;
    let last = std::cell::RefCell::new(String::new());
    poll_until(
        Duration::from_secs(60),
        Duration::from_millis(20),
        || format!("migration still '{}' after migrate_cancel", last.borrow()),
        || match status(src)?.as_str() {
            "cancelled" => Ok(Some(())),
            "completed" => Err("the migration completed before it could be cancelled".into()),
            s => {
                *last.borrow_mut() = s.to_string();
                Ok(None)
            }
        },
    )
}

/// Migrates `src` to a new QEMU started from `dst_cfg`; returns the destination guest (its
/// agent answering) and QEMU's statistics. The source is left paused; drop it to quit it.
pub fn migrate(src: &mut Guest, dst_cfg: &Config, p: Params) -> Result<(Guest, Stats)> {
    let mut dst = start(src, dst_cfg, p)?;
    if let Some(bytes) = p.balloon_during {
        src.balloon(bytes)?;
    }
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let t0 = std::time::Instant::now();
    let mut passes: Vec<Pass> = Vec::new();
    let info = poll_until(
        Duration::from_secs(600),
        Duration::from_millis(20),
        || "migration still running".into(),
        || {
            let info = src.qmp(&QueryMigrate)?;
            let sync = n(&info["ram"]["dirty-sync-count"]);
            if sync > passes.last().map_or(0, |p| p.sync) {
                passes.push(Pass {
                    sync,
                    ms: t0.elapsed().as_millis() as u64,
                    transferred: n(&info["ram"]["transferred"]),
                    normal_pages: n(&info["ram"]["normal"]),
                });
            }
            match info["status"].as_str().unwrap_or("") {
                "completed" => Ok(Some(info)),
                "failed" | "cancelled" => Err(format!(
                    "migration {}: {}",
                    info["status"],
                    info["error-desc"].as_str().unwrap_or("no reason given")
                )),
                _ if !dst.alive() => Err("destination QEMU exited during migration".into()),
                _ => match p.max_syncs {
                    Some(max) if n(&info["ram"]["dirty-sync-count"]) > max => Err(format!(
                        "the migration did not converge: {} dirty bitmap syncs, {} MiB sent",
                        n(&info["ram"]["dirty-sync-count"]),
                        n(&info["ram"]["transferred"]) >> 20
                    )),
                    _ => Ok(None),
                },
            }
        },
    )?;
    let stats = Stats {
        total_ms: n(&info["total-time"]),
        downtime_ms: n(&info["downtime"]),
        setup_ms: n(&info["setup-time"]),
        transferred: n(&info["ram"]["transferred"]),
        normal_pages: n(&info["ram"]["normal"]),
        duplicate_pages: n(&info["ram"]["duplicate"]),
        dirty_syncs: n(&info["ram"]["dirty-sync-count"]),
        passes,
    };
    dst.wait_agent(Duration::from_secs(120))
        .map_err(|e| format!("after migration: {e}"))?;
    Ok((dst, stats))
}

/// Writes `mib` MiB of random data to a tmpfs file and checksums it: data the guest keeps.
pub fn write_live_data(g: &mut Guest, mib: u64) -> Result<()> {
    g.sh(&format!(
        "mkdir -p /tmp/live && dd if=/dev/urandom of=/tmp/live/data bs=1048576 count={mib} 2>/dev/null && \
         cd /tmp/live && sha256sum data > data.sum"
    ))
    .map(|_| ())
}

/// Checks the live data against its checksum.
pub fn verify_live_data(g: &mut Guest) -> Result<()> {
    g.sh("cd /tmp/live && sha256sum -c data.sum")
        .map(|_| ())
        .map_err(|e| format!("live data corrupted: {e}"))
}

/// The memory-consuming workload that ends just before migration: fills `mib` MiB of guest
/// memory with random data (a 16 MiB block from /dev/urandom, written over and over to a tmpfs
/// file), then frees it.
pub fn fill_and_free(g: &mut Guest, mib: u64) -> Result<()> {
    let blocks = mib.div_ceil(16);
    g.sh(&format!(
        "dd if=/dev/urandom of=/tmp/seed bs=1048576 count=16 2>/dev/null && \
         i=0; while [ $i -lt {blocks} ]; do cat /tmp/seed; i=$((i+1)); done > /tmp/fill && \
         rm -f /tmp/fill /tmp/seed"
    ))
    .map(|_| ())
}

/// Writes `mib` MiB of guest memory with random data and frees it, in a tmpfs of its own sized
/// for it (`/tmp` holds at most half of memory), failing if a write fails: afterwards all of that
/// memory has been written, so it is resident on the host.
pub fn write_and_free(g: &mut Guest, mib: u64) -> Result<()> {
    let blocks = mib.div_ceil(16);
    g.sh(&format!(
        "set -e; mkdir -p /mnt/fill; mount -t tmpfs -o size={}m fill /mnt/fill; \
         dd if=/dev/urandom of=/mnt/fill/seed bs=1048576 count=16 2>/dev/null; \
         i=1; while [ $i -lt {blocks} ]; do cat /mnt/fill/seed >> /mnt/fill/data; i=$((i+1)); done; \
         umount /mnt/fill",
        blocks * 16 + 16
    ))
    .map(|_| ())
}

const CHURN: &str = r#"i=0
while [ ! -e /tmp/churn.stop ]; do
	f=f$((i % 4))
	rm -f /tmp/churn/$f /tmp/churn/$f.sum
	dd if=/dev/urandom of=/tmp/churn/$f.new bs=1048576 count=@MIB@ 2>/dev/null && mv /tmp/churn/$f.new /tmp/churn/$f &&
		(cd /tmp/churn && sha256sum $f > $f.sum)
	i=$((i+1))
	echo $i > /tmp/churn.rounds
done
rm -f /tmp/churn/*.new
touch /tmp/churn.done
"#;

/// Starts a process that keeps allocating, writing and freeing memory: it rewrites four files
/// of `mib` MiB of random data in turn, recording each one's checksum once it is complete.
pub fn start_churn(g: &mut Guest, mib: u64) -> Result<()> {
    let script = CHURN.replace("@MIB@", &mib.to_string());
    g.sh(&format!(
        "mkdir -p /tmp/churn && cat > /tmp/churn.sh <<'VBRS'\n{script}VBRS\n\
         setsid sh /tmp/churn.sh </dev/null >/dev/null 2>&1 &\n\
         i=0; while [ ! -e /tmp/churn.rounds ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done"
    ))
    .map(|_| ())
}

/// Starts the `fragment` helper on `mib` MiB and waits until it has freed one page in `stride`.
/// Returns the pages the helper freed.
pub fn start_fragment(g: &mut Guest, mib: u64, stride: u64) -> Result<u64> {
    let out = g.sh(&format!(
        "setsid /bin/fragment {mib} {stride} </dev/null >/tmp/fragment.out 2>&1 &\n\
         i=0; while ! grep -q fragmented /tmp/fragment.out && [ $i -lt 3000 ]; do \
         sleep 0.1; i=$((i+1)); done; cat /tmp/fragment.out"
    ))?;
    out.split_whitespace()
        .skip_while(|w| *w != "fragmented")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("the fragment helper did not finish: {out}"))
}

/// Has the `fragment` helper check the pages it kept (after a migration: the data arrived);
/// returns how many it kept.
pub fn verify_fragment(g: &mut Guest) -> Result<u64> {
    let out = g.sh(
        "touch /tmp/fragment.check; i=0; while ! grep -q kept /tmp/fragment.out && \
         [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; cat /tmp/fragment.out",
    )?;
    let kept = out
        .split_whitespace()
        .skip_while(|w| *w != "kept")
        .nth(1)
        .and_then(|n| n.parse::<u64>().ok());
    match kept {
        Some(n) if n > 0 && out.contains("bad 0\n") => Ok(n),
        _ => Err(format!(
            "pages the fragment helper kept did not arrive intact: {out}"
        )),
    }
}

/// Stops the churn process and checks every file it completed against its checksum; returns
/// how many files it wrote.
pub fn stop_and_verify_churn(g: &mut Guest) -> Result<u64> {
    g.sh("touch /tmp/churn.stop; i=0; \
         while [ ! -e /tmp/churn.done ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
         [ -e /tmp/churn.done ]")
        .map_err(|e| format!("churn process did not stop: {e}"))?;
    let out = g.sh(
        "cd /tmp/churn && for s in *.sum; do [ -e \"$s\" ] && sha256sum -c \"$s\"; done 2>&1; true",
    )?;
    if out.contains("FAILED") || !out.contains("OK") {
        return Err(format!("churn data corrupted or missing: {out}"));
    }
    let rounds = g.sh("cat /tmp/churn.rounds 2>/dev/null || echo 0")?;
    Ok(rounds.trim().parse().unwrap_or(0))
}

const FRESH: &str = r#"i=0
while [ ! -e /tmp/fresh.stop ] && [ $i -lt @MAX@ ]; do
	cp /tmp/fresh.seed /tmp/fresh/f$i
	i=$((i+1))
	echo $i > /tmp/fresh.count
done
touch /tmp/fresh.done
"#;

/// Size of each file the fresh-files writer writes, in KiB.
pub const FRESH_KIB: u64 = 512;

/// Starts a process that writes new files, each a copy of one random 512 KiB seed, until told
/// to stop or `max` files exist: every file is a fresh allocation, so it lands on pages that
/// were free a moment earlier (the pages a free page hint has just named).
pub fn start_fresh_files(g: &mut Guest, max: u64) -> Result<()> {
    let script = FRESH.replace("@MAX@", &max.to_string());
    g.sh(&format!(
        "rm -rf /tmp/fresh /tmp/fresh.stop /tmp/fresh.done /tmp/fresh.count && mkdir -p /tmp/fresh && \
         dd if=/dev/urandom of=/tmp/fresh.seed bs=1024 count={FRESH_KIB} 2>/dev/null && \
         sha256sum < /tmp/fresh.seed > /tmp/fresh.sum && \
         cat > /tmp/fresh.sh <<'VBRS'\n{script}VBRS\n\
         setsid sh /tmp/fresh.sh </dev/null >/dev/null 2>&1 &\n\
         i=0; while [ ! -e /tmp/fresh.count ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done"
    ))
    .map(|_| ())
}

/// Stops the fresh-files writer, checks every file against the seed's checksum and removes
/// them; returns (files written, files corrupted).
pub fn stop_and_verify_fresh_files(g: &mut Guest) -> Result<(u64, u64)> {
    let out = g.sh("touch /tmp/fresh.stop; i=0; \
         while [ ! -e /tmp/fresh.done ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
         [ -e /tmp/fresh.done ] || { echo 'writer did not stop'; exit 1; }; \
         want=$(cat /tmp/fresh.sum); n=0; bad=0; \
         for f in /tmp/fresh/f*; do n=$((n+1)); \
           [ \"$(sha256sum < $f)\" = \"$want\" ] || bad=$((bad+1)); done; \
         rm -rf /tmp/fresh; echo \"files $n bad $bad\"")?;
    let nums: Vec<u64> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums.as_slice() {
        [n, bad] => Ok((*n, *bad)),
        _ => Err(format!("bad fresh-files output: {out}")),
    }
}

const SAMPLER: &str = r#"min=999999999
while [ ! -e /tmp/sampler.stop ]; do
	while read k v u; do [ "$k" = MemFree: ] && break; done < /proc/meminfo
	if [ "$v" -lt "$min" ]; then min=$v; echo $min > /tmp/minfree; fi
	usleep 20000
done
touch /tmp/sampler.done
"#;

/// Starts sampling the guest's free memory (MemFree) every 20 ms, keeping the lowest value.
pub fn start_free_sampler(g: &mut Guest) -> Result<()> {
    g.sh(&format!(
        "cat > /tmp/sampler.sh <<'VBRS'\n{SAMPLER}VBRS\n\
         setsid sh /tmp/sampler.sh </dev/null >/dev/null 2>&1 &\n\
         i=0; while [ ! -e /tmp/minfree ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done"
    ))
    .map(|_| ())
}

/// Stops the sampler; returns the lowest MemFree it saw, in KiB.
pub fn stop_free_sampler(g: &mut Guest) -> Result<u64> {
    let out = g.sh("touch /tmp/sampler.stop; i=0; \
         while [ ! -e /tmp/sampler.done ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         cat /tmp/minfree")?;
    out.trim()
        .parse()
        .map_err(|_| format!("bad sampler output: {out}"))
}

/// What the guest does around a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Nothing besides the live data.
    Idle,
    /// A workload filled most of memory with random data and exited just before migration.
    AfterWorkload,
    /// A process keeps allocating, writing and freeing memory during the migration.
    Churn,
    /// A process wrote [`FRAGMENT_MIB`] and gave every other 4 KiB page of it back: half of it
    /// is free in single pages that cannot merge, the other half is kept (and checked after).
    Fragmented,
    /// As [`Variant::Fragmented`], but the process gives back one page in [`SCATTER_STRIDE`]:
    /// single pages far enough apart that page records name each on its own (4 bytes a page),
    /// more of them than one record buffer holds.
    Scattered,
}

impl Variant {
    /// The variant a `--case` name stands for.
    pub fn from_name(name: &str) -> Option<Variant> {
        match name {
            "idle" => Some(Variant::Idle),
            "after-workload" => Some(Variant::AfterWorkload),
            "churn" => Some(Variant::Churn),
            "fragmented" => Some(Variant::Fragmented),
            "scattered" => Some(Variant::Scattered),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::Idle => "idle",
            Variant::AfterWorkload => "after workload",
            Variant::Churn => "churn",
            Variant::Fragmented => "fragmented",
            Variant::Scattered => "scattered",
        }
    }
}

/// Live data the guest keeps across the migration, in MiB.
pub const LIVE_MIB: u64 = 64;
/// Memory the fragmented case writes, every other page of it then freed, in MiB (at most half
/// of the guest's available memory less the live data and 96 MiB, for small guests).
pub const FRAGMENT_MIB: u64 = 1536;
/// One page in this many is freed in the scattered case: single pages 32 frames apart take as
/// many bytes in a bitmap as in a list of page records (4).
pub const SCATTER_STRIDE: u64 = 32;
/// Size of each of the four files the churn process rewrites, in MiB.
pub const CHURN_MIB: u64 = 16;

/// The outcome of one migration case, every check passed.
#[derive(Clone, Debug, Default)]
pub struct Case {
    pub stats: Stats,
    /// The guest's free memory just before migration, in KiB.
    pub free_before_kib: u64,
    /// The lowest free memory seen during migration, in KiB.
    pub min_free_kib: u64,
    /// Hinting rounds and their total time in the guest (our driver only).
    pub hint_rounds: Option<u64>,
    pub hint_ns: Option<u64>,
    /// Longest zone lock hold of our walk, and the mean hold, in ns.
    pub hint_lock_max_ns: Option<u64>,
    pub hint_lock_mean_ns: Option<u64>,
    /// Host errors our driver counted (a hint buffer the host never took back is one).
    pub host_errors: Option<u64>,
    /// Pages our driver hinted, and the time it waited for the host to use its buffers (ns).
    pub hint_pages: Option<u64>,
    /// Blocks our driver's walks passed over as hinted already in this migration.
    pub hint_skipped: Option<u64>,
    /// Pages our driver isolated for page records and gave back unsent (no room in the round's
    /// buffers), and the bytes of page records it sent on the free page queue and elsewhere.
    pub hint_unsent: Option<u64>,
    pub record_bytes: Option<u64>,
    pub host_wait_ns: Option<u64>,
    /// Most pages our driver had isolated for hints at one moment.
    pub hint_isolated_max: Option<u64>,
    /// The bound our driver states for that, in pages (its `hint_bound`).
    pub hint_bound: Option<u64>,
    /// The guest's memory as the kernel counts it (`MemTotal`), in KiB.
    pub mem_total_kib: u64,
    /// Files the churn process completed.
    pub churn_files: u64,
    /// What the guest's memory management did during the migration: the `/proc/vmstat` counters
    /// of [`VMSTAT_KEYS`] that moved, with how much (compaction and reclaim write pages the
    /// migration then sends again).
    pub vmstat: Vec<(String, u64)>,
    /// Our driver's debugfs counters after the migration, those that are not 0.
    pub rs_counters: Vec<(String, u64)>,
    /// Free blocks by order just before the migration (`/proc/buddyinfo`, one zone a line).
    pub buddyinfo: String,
    /// Single pages the fragmented case's process freed.
    pub fragment_freed: u64,
}

/// `/proc/vmstat` counters of compaction, page migration and reclaim.
pub const VMSTAT_KEYS: &[&str] = &[
    "pgmigrate_success",
    "compact_stall",
    "compact_daemon_wake",
    "compact_migrate_scanned",
    "compact_isolated",
    "kswapd_low_wmark_hit_quickly",
    "kswapd_high_wmark_hit_quickly",
    "pgscan_kswapd",
    "pgsteal_kswapd",
    "allocstall_dma32",
    "allocstall_normal",
    "drop_pagecache",
];

/// The counters of [`VMSTAT_KEYS`], as the guest reports them now.
fn vmstat(g: &mut Guest) -> Result<Vec<(String, u64)>> {
    let out = g.sh("cat /proc/vmstat")?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            VMSTAT_KEYS
                .contains(&k)
                .then(|| Some((k.to_string(), v.trim().parse().ok()?)))
                .flatten()
        })
        .collect())
}

/// A counter of a dump that leaves out those at 0 ([`Case::rs_counters`]).
pub fn counter(dump: &[(String, u64)], name: &str) -> u64 {
    dump.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v)
}

fn rs_counter(g: &mut Guest, file: &str) -> Result<u64> {
    g.read_u64(&format!(
        "/sys/kernel/debug/virtio_balloon_rs/virtio*/{file}"
    ))
}

/// Runs one migration case on `g` (a booted guest with driver `d` loaded) and leaves `g` as the
/// guest on the destination. Checks that the live data (and the churn process's files) arrive
/// intact and that the guest keeps running.
pub fn run_case(g: &mut Guest, d: crate::guest::Driver, v: Variant, p: Params) -> Result<Case> {
    write_live_data(g, LIVE_MIB)?;
    let mut fragment_freed = 0;
    let mut fragment_mib = 0;
    match v {
        Variant::Idle => {}
        Variant::AfterWorkload => {
            // Most of what is left: the guest keeps 96 MiB and its live data.
            let avail_mib = g.meminfo("MemAvailable")? >> 10;
            fill_and_free(g, avail_mib.saturating_sub(96).max(16))?;
        }
        Variant::Churn => start_churn(g, CHURN_MIB)?,
        Variant::Fragmented | Variant::Scattered => {
            let avail_mib = g.meminfo("MemAvailable")? >> 10;
            let stride = if v == Variant::Scattered {
                SCATTER_STRIDE
            } else {
                2
            };
            fragment_mib = FRAGMENT_MIB.min(avail_mib.saturating_sub(96));
            fragment_freed = start_fragment(g, fragment_mib, stride)?;
        }
    }
    let free_before_kib = g.meminfo("MemFree")?;
    start_free_sampler(g)?;
    let vm_before = vmstat(g)?;
    let buddyinfo = g.sh("cat /proc/buddyinfo")?;
    let mut dst_cfg = g.cfg.clone();
    dst_cfg.name = format!("{}-dst", g.cfg.name);
    let (dst, stats) = migrate(g, &dst_cfg, p)?;
    // The source is paused; dropping it quits it.
    drop(std::mem::replace(g, dst));
    let min_free_kib = stop_free_sampler(g)?;
    // The counters live in guest memory: the destination's go on from the source's.
    let vm_moved = vmstat(g)?
        .into_iter()
        .filter_map(|(k, v)| {
            let before = vm_before.iter().find(|(b, _)| *b == k).map_or(0, |b| b.1);
            (v > before).then(|| (k, v - before))
        })
        .collect();
    verify_live_data(g)?;
    let churn_files = match v {
        Variant::Churn => stop_and_verify_churn(g)?,
        Variant::Fragmented | Variant::Scattered => {
            // Every page the helper wrote was either freed or kept and checked.
            let kept = verify_fragment(g)?;
            if kept + fragment_freed != fragment_mib << 8 {
                return Err(format!(
                    "the fragment helper kept {kept} and freed {fragment_freed} pages of \
                     {fragment_mib} MiB"
                ));
            }
            kept
        }
        _ => 0,
    };
    // The guest goes on working on the destination.
    g.sh("dd if=/dev/urandom of=/tmp/after bs=1048576 count=32 2>/dev/null && sha256sum /tmp/after > /dev/null && rm /tmp/after")?;
    let rs = d == crate::guest::Driver::Rs && g.cfg.free_page_hint;
    let mut hint = None;
    let mut rs_counters = Vec::new();
    if rs {
        // The round the migration interrupted ends on the destination (without waiting for the
        // host's timeout, or host_errors counts it).
        poll_until(
            Duration::from_secs(60),
            Duration::from_millis(100),
            || "a hinting round is still running after migration".into(),
            || Ok((rs_counter(g, "hint_ended")? >= rs_counter(g, "hint_rounds")?).then_some(())),
        )?;
        rs_counters = g
            .sh("cd /sys/kernel/debug/virtio_balloon_rs/virtio* && grep -v '^0$' * || true")?
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect();
        let c = |name: &str| counter(&rs_counters, name);
        hint = Some((
            c("hint_rounds"),
            c("hint_round_ns_total"),
            c("hint_lock_max_ns"),
            c("hint_lock_ns_total") / c("hint_lock_holds").max(1),
            c("host_errors"),
            c("hint_isolated_max"),
            c("hint_bound"),
            c("hint_pages"),
            c("host_wait_ns"),
            c("hint_skipped"),
            c("hint_unsent"),
            c("record_bytes"),
        ));
    }
    Ok(Case {
        stats,
        free_before_kib,
        min_free_kib,
        hint_rounds: hint.map(|h| h.0),
        hint_ns: hint.map(|h| h.1),
        hint_lock_max_ns: hint.map(|h| h.2),
        hint_lock_mean_ns: hint.map(|h| h.3),
        host_errors: hint.map(|h| h.4),
        hint_isolated_max: hint.map(|h| h.5),
        hint_bound: hint.map(|h| h.6),
        hint_pages: hint.map(|h| h.7),
        hint_skipped: hint.map(|h| h.9),
        hint_unsent: hint.map(|h| h.10),
        record_bytes: hint.map(|h| h.11),
        host_wait_ns: hint.map(|h| h.8),
        mem_total_kib: g.meminfo("MemTotal")?,
        churn_files,
        vmstat: vm_moved,
        rs_counters,
        buddyinfo,
        fragment_freed,
    })
}

//! A guest: QEMU running our kernel and initramfs, with QMP and a command channel.

use crate::{cpio::Archive, paths, Context, Opts, Result};
use qapi::{qmp, Qmp, Stream};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which balloon driver a guest loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// virtio-balloon-rs.
    Rs,
    /// The kernel's drivers/virtio/virtio_balloon.c.
    C,
}

impl Driver {
    pub fn label(self) -> &'static str {
        match self {
            Driver::Rs => "rs",
            Driver::C => "c",
        }
    }
    /// The module file in the guest.
    pub fn module(self) -> &'static str {
        match self {
            Driver::Rs => "/lib/modules/virtio_balloon_rs.ko",
            Driver::C => "/lib/modules/virtio_balloon.ko",
        }
    }
    /// The module and virtio driver name.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Rs => "virtio_balloon_rs",
            Driver::C => "virtio_balloon",
        }
    }
}

/// Which QEMU runs a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qemu {
    /// Debian's `qemu-system-x86_64`: what users run, the default.
    Debian,
    /// Ours: Debian's source with `patches/qemu/` (`build/qemu/qemu-system-x86_64`, built by
    /// `scripts/qemu.sh`).
    Ours,
    /// Ours with the balloon's `page-ranges=on`: it offers `VIRTIO_BALLOON_F_PAGE_RANGES`.
    OursRanges,
}

impl Qemu {
    /// The binary to run.
    pub fn binary(self) -> PathBuf {
        match self {
            Qemu::Debian => PathBuf::from("qemu-system-x86_64"),
            Qemu::Ours | Qemu::OursRanges => paths::top().join("build/qemu/qemu-system-x86_64"),
        }
    }

    /// Whether this is our build.
    pub fn is_ours(self) -> bool {
        self != Qemu::Debian
    }

    /// How scenario names show it (empty for Debian's).
    pub fn label(self) -> &'static str {
        match self {
            Qemu::Debian => "",
            Qemu::Ours => ", our qemu",
            Qemu::OursRanges => ", our qemu, page-ranges",
        }
    }
}

/// How the guest reaches its virtio devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// virtio-pci on a q35 machine (what most hosts use).
    Pci,
    /// virtio-mmio on QEMU's `microvm` machine (the transport of Firecracker and Cloud
    /// Hypervisor), devices found through the kernel command line.
    Mmio,
}

impl Transport {
    /// How scenario names show it (empty for virtio-pci).
    pub fn label(self) -> &'static str {
        match self {
            Transport::Pci => "",
            Transport::Mmio => ", mmio",
        }
    }
}

/// Polls `f` every `every` until it returns `Some`, or fails with `what` after `timeout`.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    what: impl Fn() -> String,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(format!("{} (after {timeout:?})", what()));
        }
        std::thread::sleep(every);
    }
}

/// How to start a guest.
#[derive(Clone)]
pub struct Config {
    pub name: String,
    pub mem_mib: u64,
    pub cpus: u32,
    /// Kernel flavour: "debug" (tests) or "bench".
    pub flavour: &'static str,
    /// Extra properties of the balloon device, e.g. ",deflate-on-oom=on".
    pub balloon_props: String,
    /// Extra kernel command line.
    pub append: String,
    /// Free page hinting on the balloon device (`free-page-hint=on` with an iothread).
    pub free_page_hint: bool,
    /// Which QEMU runs the guest.
    pub qemu: Qemu,
    /// virtio-pci or virtio-mmio.
    pub transport: Transport,
    /// Extra QEMU arguments (e.g. `-global` test-only properties of our QEMU).
    pub qemu_args: Vec<String>,
}

impl Config {
    pub fn new(name: &str, mem_mib: u64) -> Self {
        Config {
            name: name.to_string(),
            mem_mib,
            cpus: 2,
            flavour: "debug",
            balloon_props: String::new(),
            append: String::new(),
            free_page_hint: false,
            qemu: Qemu::Debian,
            transport: Transport::Pci,
            qemu_args: Vec::new(),
        }
    }
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
echo 1 > /proc/sys/kernel/printk_ratelimit 2>/dev/null
port=
for p in /sys/class/virtio-ports/*; do
	[ "$(cat $p/name 2>/dev/null)" = vbrs.cmd ] && port=/dev/${p##*/}
done
[ -n "$port" ] || { echo "vbrs: no command port"; reboot -f; }
echo "vbrs: agent on $port"
exec /bin/sh /agent.sh "$port"
"#;

/// The command agent: reads `<id> <base64 command>` lines, runs each command with `sh -c`, and
/// answers with the output and a line `@@VBRS-END <id> <exit status>`.
const AGENT: &str = r#"exec 3<>"$1"
while IFS=' ' read -r id b64 <&3; do
	printf '%s' "$b64" | base64 -d > /tmp/cmd
	sh /tmp/cmd > /tmp/out 2>&1 </dev/null
	rc=$?
	cat /tmp/out >&3
	printf '\n@@VBRS-END %s %s\n' "$id" "$rc" >&3
done
"#;

/// Builds the initramfs for a flavour: busybox, the agent, both modules, the `fragment` helper,
/// the selftests.
fn initramfs(flavour: &str) -> Result<PathBuf> {
    let art = paths::artifacts(flavour);
    let mut a = Archive::new();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "lib",
        "lib/modules",
        "selftests",
    ] {
        a.dir(d);
    }
    let busybox = std::fs::read("/bin/busybox").ctx("reading /bin/busybox (busybox-static)")?;
    a.file("bin/busybox", 0o755, &busybox);
    a.symlink("bin/sh", "busybox");
    a.file("init", 0o755, INIT.as_bytes());
    a.file("agent.sh", 0o755, AGENT.as_bytes());
    for m in ["virtio_balloon_rs.ko", "virtio_balloon.ko"] {
        let data = std::fs::read(art.join(m))
            .ctx(&format!("reading {} (run make)", art.join(m).display()))?;
        a.file(&format!("lib/modules/{m}"), 0o644, &data);
    }
    let helper = art.join("fragment");
    let data = std::fs::read(&helper).ctx(&format!("reading {} (run make)", helper.display()))?;
    a.file("bin/fragment", 0o755, &data);
    add_tree(&mut a, &paths::top().join("tests/selftests"), "selftests")?;
    let out = art.join("initramfs.cpio");
    let mut f = std::fs::File::create(&out).ctx("creating initramfs")?;
    a.finish(&mut f).ctx("writing initramfs")?;
    Ok(out)
}

fn add_tree(a: &mut Archive, dir: &Path, at: &str) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .ctx(&dir.display().to_string())?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{at}/{}", e.file_name().to_string_lossy());
        let path = e.path();
        if path.is_dir() {
            a.dir(&name);
            add_tree(a, &path, &name)?;
        } else {
            let data = std::fs::read(&path).ctx(&path.display().to_string())?;
            a.file(&name, 0o755, &data);
        }
    }
    Ok(())
}

/// The accelerator to use: KVM if a probe boot works on this machine, else TCG. The answer is
/// cached for the current host boot.
pub fn accel() -> &'static str {
    static ACCEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    ACCEL.get_or_init(|| {
        if let Ok(a) = std::env::var("VBRS_ACCEL") {
            return if a == "kvm" { "kvm" } else { "tcg" };
        }
        let boot_id =
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let cache = paths::cache().join(format!("accel-{}", boot_id.trim()));
        if let Ok(a) = std::fs::read_to_string(&cache) {
            return if a.trim() == "kvm" { "kvm" } else { "tcg" };
        }
        let ok = Path::new("/dev/kvm").exists() && probe_kvm();
        let a = if ok { "kvm" } else { "tcg" };
        let _ = std::fs::create_dir_all(paths::cache());
        let _ = std::fs::write(&cache, a);
        eprintln!(
            "[vbrs] accelerator: {a} (KVM probe {})",
            if ok { "booted" } else { "failed" }
        );
        a
    })
}

fn probe_kvm() -> bool {
    let mut cfg = Config::new("kvm-probe", 256);
    cfg.cpus = 1;
    Guest::boot_with(&cfg, "kvm", Duration::from_secs(20)).is_ok()
}

/// A running guest. QEMU is killed when it is dropped.
pub struct Guest {
    pub cfg: Config,
    pub accel: &'static str,
    qemu: Child,
    qmp: Qmp<Stream<BufReader<UnixStream>, UnixStream>>,
    cmd: BufReader<UnixStream>,
    next_id: u64,
    pub dir: PathBuf,
}

impl Guest {
    /// Boots a guest and waits for its command agent.
    pub fn boot(cfg: &Config) -> Result<Guest> {
        Guest::boot_with(cfg, accel(), Duration::from_secs(180))
    }

    fn boot_with(cfg: &Config, accel: &'static str, timeout: Duration) -> Result<Guest> {
        let mut g = Guest::start(cfg, accel, None)?;
        g.wait_agent(timeout)?;
        Ok(g)
    }

    /// Starts a QEMU that waits for an incoming migration on `<run dir>/migrate.sock`, with
    /// its QMP and command channels connected. The guest runs once the migration completes.
    pub fn incoming(cfg: &Config) -> Result<Guest> {
        Guest::start(cfg, accel(), Some("migrate.sock"))
    }

    /// Waits until the guest's command agent answers.
    pub fn wait_agent(&mut self, timeout: Duration) -> Result<()> {
        self.exec_timeout("true", timeout).map(|_| ()).map_err(|e| {
            format!(
                "guest {} did not come up: {e}\n{}",
                self.cfg.name,
                self.console_tail(30)
            )
        })
    }

    /// The address a migration source sends this (incoming) guest to.
    pub fn incoming_uri(&self) -> String {
        format!("unix:{}", self.dir.join("migrate.sock").display())
    }

    fn start(cfg: &Config, accel: &'static str, incoming: Option<&str>) -> Result<Guest> {
        let art = paths::artifacts(cfg.flavour);
        let initrd = initramfs(cfg.flavour)?;
        let dir = paths::run_dir(&cfg.name);
        let qmp_sock = dir.join("qmp.sock");
        let cmd_sock = dir.join("cmd.sock");
        // Bench guests keep the TSC as their clock: under TCG the boot-time watchdog often
        // finds it skewed against jiffies (timer interrupts arrive late) and falls back to
        // jiffies, and the guest's own timings (lock holds, rounds) then read 0 or a tick.
        let clock = if cfg.flavour == "bench" {
            " tsc=reliable"
        } else {
            ""
        };
        let append = format!(
            "console=ttyS0 panic=-1 oops=panic loglevel=6{clock} {}",
            cfg.append
        );
        let mut qemu = Command::new(cfg.qemu.binary());
        if cfg.qemu.is_ours() {
            // Our build has no firmware of its own: Debian's (qemu-system-data, seabios).
            qemu.args(["-L", "/usr/share/qemu", "-L", "/usr/share/seabios"]);
        }
        qemu.args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        let (machine, dev) = match cfg.transport {
            Transport::Pci => ("q35", "pci"),
            // No ACPI: the kernel finds the virtio-mmio devices on its command line, which QEMU
            // writes (auto-kernel-cmdline).
            Transport::Mmio => ("microvm,acpi=off,rtc=on", "device"),
        };
        qemu.args([
            "-machine",
            machine,
            "-accel",
            accel,
            "-cpu",
            if accel == "kvm" { "host" } else { "qemu64" },
        ])
        .args([
            "-m",
            &format!("{}M", cfg.mem_mib),
            "-smp",
            &cfg.cpus.to_string(),
        ])
        .arg("-kernel")
        .arg(art.join("bzImage"))
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_sock.display()))
        .args([
            "-device",
            &format!(
                "virtio-balloon-{dev},id=balloon0{}{}{}",
                if cfg.free_page_hint {
                    ",free-page-hint=on,iothread=io0"
                } else {
                    ""
                },
                if cfg.qemu == Qemu::OursRanges {
                    ",page-ranges=on"
                } else {
                    ""
                },
                cfg.balloon_props
            ),
        ])
        .args(["-device", &format!("virtio-serial-{dev},id=vser0")])
        .arg("-chardev")
        .arg(format!(
            "socket,id=cmd,path={},server=on,wait=off",
            cmd_sock.display()
        ))
        .args(["-device", "virtserialport,chardev=cmd,name=vbrs.cmd"]);
        if cfg.free_page_hint {
            qemu.args(["-object", "iothread,id=io0"]);
        }
        qemu.args(&cfg.qemu_args);
        // Extra arguments for every QEMU, for investigations (e.g. `-trace migrate_pending`;
        // QEMU's stderr is kept in the run directory).
        if let Ok(extra) = std::env::var("VBRS_QEMU_ARGS") {
            qemu.args(extra.split_whitespace());
        }
        if let Some(sock) = incoming {
            qemu.arg("-incoming")
                .arg(format!("unix:{}", dir.join(sock).display()));
        }
        qemu.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.stderr")).ctx("qemu.stderr")?);
        let mut child = qemu
            .spawn()
            .ctx(&format!("starting {}", cfg.qemu.binary().display()))?;
        let connect = |p: &Path, child: &mut Child| -> Result<UnixStream> {
            let start = Instant::now();
            loop {
                if let Ok(s) = UnixStream::connect(p) {
                    return Ok(s);
                }
                if let Ok(Some(st)) = child.try_wait() {
                    let err = std::fs::read_to_string(dir.join("qemu.stderr")).unwrap_or_default();
                    return Err(format!("qemu exited ({st}): {}", err.trim()));
                }
                if start.elapsed() > Duration::from_secs(20) {
                    return Err(format!("no socket {}", p.display()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let qs = match connect(&qmp_sock, &mut child) {
            Ok(s) => s,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let cs = connect(&cmd_sock, &mut child)?;
        // The greeting comes first, except that QEMU 7.2 may write an event that is emitted
        // while the connection is being set up (an incoming QEMU's `MIGRATION` `setup`) before
        // it: skip lines up to the greeting.
        let mut reader = BufReader::new(qs.try_clone().ctx("qmp socket")?);
        qs.set_read_timeout(Some(Duration::from_secs(60)))
            .ctx("qmp socket")?;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).ctx("QMP greeting")? == 0 {
                return Err("QMP: connection closed before the greeting".into());
            }
            if line.trim_start().starts_with("{\"QMP\"") {
                break;
            }
        }
        qs.set_read_timeout(None).ctx("qmp socket")?;
        let mut qmp = Qmp::new(Stream::new(reader, qs));
        qmp.execute(&qmp::qmp_capabilities { enable: None })
            .map_err(|e| format!("QMP handshake: {e:?}"))?;
        Ok(Guest {
            cfg: cfg.clone(),
            accel,
            qemu: child,
            qmp,
            cmd: BufReader::new(cs),
            next_id: 1,
            dir,
        })
    }

    /// Runs a QMP command.
    pub fn qmp<C: qapi::Command>(&mut self, c: &C) -> Result<C::Ok> {
        self.qmp
            .execute(c)
            .map_err(|e| format!("QMP {}: {e:?}", C::NAME))
    }

    /// Whether QEMU is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.qemu.try_wait(), Ok(None))
    }

    /// The last lines of the serial console.
    pub fn console_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Runs `script` in the guest with `sh`; returns its exit status and output.
    pub fn exec_timeout(&mut self, script: &str, timeout: Duration) -> Result<(i32, String)> {
        let id = self.next_id;
        self.next_id += 1;
        let line = format!("{id} {}\n", base64(script.as_bytes()));
        self.cmd
            .get_mut()
            .write_all(line.as_bytes())
            .ctx("writing to the guest")?;
        let deadline = Instant::now() + timeout;
        let marker = format!("@@VBRS-END {id} ");
        let mut out = String::new();
        let mut line = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("timed out after {timeout:?} running: {script}"));
            }
            self.cmd
                .get_ref()
                .set_read_timeout(Some(left.min(Duration::from_millis(500))))
                .ctx("socket")?;
            match read_line(&mut self.cmd, &mut line) {
                Ok(true) => {
                    let l = String::from_utf8_lossy(&line).into_owned();
                    if let Some(rc) = l.trim_end().strip_prefix(&marker) {
                        if out.ends_with('\n') {
                            out.pop();
                        }
                        return Ok((rc.trim().parse().unwrap_or(-1), out));
                    }
                    if !l.starts_with("@@VBRS-END ") {
                        out.push_str(&l);
                    }
                    line.clear();
                }
                Ok(false) => {
                    if let Ok(Some(st)) = self.qemu.try_wait() {
                        return Err(format!(
                            "QEMU exited ({st}) while running: {script}\n{}",
                            self.console_tail(40)
                        ));
                    }
                }
                Err(e) => return Err(format!("reading from the guest: {e}")),
            }
        }
    }

    /// Runs `script`, which must succeed; returns its output.
    pub fn sh(&mut self, script: &str) -> Result<String> {
        let (rc, out) = self.exec_timeout(script, Duration::from_secs(300))?;
        if rc != 0 {
            return Err(format!("`{script}` exited {rc}: {}", out.trim()));
        }
        Ok(out)
    }

    /// Loads a balloon driver's module.
    pub fn load(&mut self, d: Driver) -> Result<()> {
        self.sh(&format!("insmod {}", d.module())).map(|_| ())
    }

    /// Unloads a balloon driver's module.
    pub fn unload(&mut self, d: Driver) -> Result<()> {
        self.sh(&format!("rmmod {}", d.name())).map(|_| ())
    }

    /// A `/proc/meminfo` field, in kB.
    pub fn meminfo(&mut self, key: &str) -> Result<u64> {
        let out = self.sh(&format!("grep '^{key}:' /proc/meminfo"))?;
        out.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("bad meminfo line {out}"))
    }

    /// Sets the balloon target: the guest's memory size the host wants, in bytes.
    pub fn balloon(&mut self, bytes: u64) -> Result<()> {
        self.qmp
            .execute(&qmp::balloon {
                value: bytes as i64,
            })
            .map_err(|e| format!("balloon: {e:?}"))?;
        Ok(())
    }

    /// The guest's memory size as the balloon makes it (QMP `actual`), in bytes.
    pub fn actual(&mut self) -> Result<u64> {
        let info = self
            .qmp
            .execute(&qmp::query_balloon {})
            .map_err(|e| format!("query-balloon: {e:?}"))?;
        Ok(info.actual as u64)
    }

    /// Waits until QMP `actual` equals `bytes`; returns the time it took.
    pub fn wait_actual(&mut self, bytes: u64, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let last = std::cell::Cell::new(0);
        poll_until(
            timeout,
            Duration::from_millis(5),
            || {
                format!(
                    "balloon actual {} MiB, expected {} MiB",
                    last.get() >> 20,
                    bytes >> 20
                )
            },
            || {
                if let Ok(Some(st)) = self.qemu.try_wait() {
                    return Err(format!("QEMU exited ({st})\n{}", self.console_tail(40)));
                }
                last.set(self.actual()?);
                Ok((last.get() == bytes).then(|| start.elapsed()))
            },
        )
    }

    /// Waits until QMP `actual` has not changed for `quiet`; returns it.
    pub fn wait_actual_settles(&mut self, quiet: Duration, timeout: Duration) -> Result<u64> {
        let mut last = self.actual()?;
        let mut since = Instant::now();
        poll_until(
            timeout,
            Duration::from_millis(100),
            || "balloon still moving".into(),
            || {
                let a = self.actual()?;
                if a != last {
                    last = a;
                    since = Instant::now();
                }
                Ok((since.elapsed() >= quiet).then_some(a))
            },
        )
    }

    /// The statistics the host has from the guest (QMP `qom-get` of the balloon's
    /// `guest-stats`: `stats` by name, `last-update` in seconds since the epoch).
    pub fn guest_stats(&mut self) -> Result<serde_json::Value> {
        self.qmp(&qmp::qom_get {
            path: "/machine/peripheral/balloon0".into(),
            property: "guest-stats".into(),
        })
    }

    /// How often the host asks the guest for statistics, in seconds (0: never).
    pub fn set_stats_interval(&mut self, secs: u64) -> Result<()> {
        self.qmp(&qmp::qom_set {
            path: "/machine/peripheral/balloon0".into(),
            property: "guest-stats-polling-interval".into(),
            value: serde_json::json!(secs),
        })
        .map(drop)
    }

    /// Waits for statistics newer than `after` (seconds since the epoch) and returns them.
    pub fn wait_guest_stats(&mut self, after: u64, timeout: Duration) -> Result<serde_json::Value> {
        poll_until(
            timeout,
            Duration::from_millis(200),
            || format!("no guest statistics newer than {after}"),
            || {
                let v = self.guest_stats()?;
                Ok((v["last-update"].as_u64().unwrap_or(0) > after).then_some(v))
            },
        )
    }

    /// The guest's RAM size in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.cfg.mem_mib << 20
    }

    /// The QEMU process's resident memory (`VmRSS`), in bytes: what the host really spends on
    /// the guest.
    pub fn qemu_rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.qemu.id()))
            .ctx("reading QEMU's /proc status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib << 10)
            .ok_or_else(|| "no VmRSS in QEMU's /proc status".to_string())
    }

    /// The kernel log.
    pub fn dmesg(&mut self) -> Result<String> {
        self.sh("dmesg")
    }

    /// Fails if the kernel log has a warning, bug, lockdep report or other splat.
    pub fn check_dmesg(&mut self) -> Result<()> {
        let log = self.dmesg()?;
        if let Some(l) = splat(&log) {
            return Err(format!(
                "kernel log has a splat: {l}\n{}",
                tail_from(&log, l)
            ));
        }
        Ok(())
    }

    /// Reads a file of the guest (e.g. a debugfs counter) as a number.
    pub fn read_u64(&mut self, path: &str) -> Result<u64> {
        let out = self.sh(&format!("cat {path}"))?;
        out.trim()
            .parse()
            .map_err(|_| format!("{path}: not a number: {out}"))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qmp.execute(&qmp::quit {});
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.qemu.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// Lines of a kernel log that mean something went wrong in the kernel.
pub fn splat(log: &str) -> Option<&str> {
    const MARKERS: &[&str] = &[
        "WARNING:",
        "BUG:",
        "BUG ",
        "Oops",
        "Kernel panic",
        "INFO: possible",
        "INFO: task",
        "inconsistent lock state",
        "circular locking",
        "recursive locking",
        "general protection fault",
        "UBSAN:",
        "list_add corruption",
        "list_del corruption",
        "Bad page",
        "bad page",
        "rust_panic",
        "page_poison",
        "pagealloc: memory corruption",
        "soft lockup",
        "hung_task",
        "self-detected stall",
        "detected stalls on CPU",
        "hogged CPU",
    ];
    log.lines()
        .find(|l| MARKERS.iter().any(|m| l.contains(m)) && !l.contains("page_poison=1"))
}

fn tail_from<'a>(log: &'a str, line: &str) -> &'a str {
    let at = log.find(line).unwrap_or(0);
    let end = log[at..]
        .char_indices()
        .nth(3000)
        .map(|(i, _)| at + i)
        .unwrap_or(log.len());
    &log[at..end]
}

fn read_line(r: &mut BufReader<UnixStream>, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "guest channel closed",
            ));
        }
        if let Some(i) = avail.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&avail[..=i]);
            r.consume(i + 1);
            return Ok(true);
        }
        let n = avail.len();
        buf.extend_from_slice(avail);
        r.consume(n);
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

/// `vbrs shell`: boots a guest with a driver loaded and runs lines from stdin in it.
pub fn shell(opts: &Opts) -> Result<bool> {
    let d = opts.drivers[0];
    let mut cfg = Config::new("shell", 2048);
    // VBRS_QEMU=ours|ranges: our QEMU, without or with page-ranges=on.
    cfg.qemu = match std::env::var("VBRS_QEMU").as_deref() {
        Ok("ours") => Qemu::Ours,
        Ok("ranges") => Qemu::OursRanges,
        _ => Qemu::Debian,
    };
    let mut g = Guest::boot(&cfg)?;
    g.load(d)?;
    eprintln!(
        "[vbrs] guest up ({}), {} loaded; type commands, 'balloon MIB' sets the target",
        g.accel,
        d.name()
    );
    let stdin = std::io::stdin();
    let mut line = String::new();
    while {
        line.clear();
        stdin.lock().read_line(&mut line).unwrap_or(0) > 0
    } {
        let l = line.trim();
        if let Some(mib) = l.strip_prefix("balloon ") {
            let mib: u64 = mib
                .trim()
                .parse()
                .map_err(|_| "balloon takes MiB".to_string())?;
            g.balloon(mib << 20)?;
            continue;
        }
        let (rc, out) = g.exec_timeout(l, Duration::from_secs(600))?;
        println!("{out}\n[exit {rc}]");
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn splats_are_found() {
        assert!(splat("ok\n[ 1.0] WARNING: CPU: 0 PID: 1 at mm/page_alloc.c").is_some());
        assert!(splat("[ 1.0] Kernel command line: console=ttyS0 page_poison=1").is_none());
        assert!(splat("all fine\n").is_none());
    }
}

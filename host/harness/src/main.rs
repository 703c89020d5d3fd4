//! `vbrs`: the host side of virtio-balloon-rs.
//!
//! Builds the guest's initramfs, boots our kernel under QEMU (KVM when a probe boot works,
//! TCG otherwise), drives the balloon over QMP, runs commands in the guest over a virtio serial
//! port, and runs the scenarios against both drivers (ours and the C driver).

mod cpio;
mod guest;
mod ktap;
mod migbench;
mod migrate;
mod paths;
mod plot;
mod report;
mod scenarios;

use std::process::ExitCode;

fn usage() -> ! {
    eprintln!(
        "usage: vbrs <command> [options]

commands:
  run                       boot a 2 GiB guest per driver, inflate to 512 MiB and back, report
  test [--driver rs|c|both] [--filter TEXT] [--list] [--no-unit]
                            run the unit tests and every scenario, ending with 'N passed, N failed'
  bench [--guest-gib N] [--only inflate|migration] [--reps N]
        [--case idle|after-workload|churn|fragmented|scattered]
        [--max-bandwidth-mib N] [--migration-gib N]
                            inflate all but 1 GiB of an 8 GiB guest (or N) and back, both drivers;
                            migrate 2 and 8 GiB guests (or N, or the --migration-gib N) with no
                            hinting, the C driver's hinting and ours, N runs each (default 3),
                            every case but scattered (or the ones named; --case repeats); the
                            smallest guest after the workload also with downtime limits of 100
                            and 50 ms
  shell [--driver rs|c]     boot a guest and run commands typed on stdin in it"
    );
    std::process::exit(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { usage() };
    let opts = Opts::parse(&args[1..]);
    let result = match cmd.as_str() {
        "run" => report::run(&opts),
        "test" => scenarios::test(&opts),
        "bench" => report::bench(&opts),
        "shell" => guest::shell(&opts),
        _ => usage(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vbrs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Command-line options shared by the commands.
#[derive(Default, Clone)]
pub struct Opts {
    pub drivers: Vec<guest::Driver>,
    pub filter: Option<String>,
    pub list: bool,
    pub no_unit: bool,
    pub guest_gib: Option<u64>,
    /// The one guest size the bench migrates, whatever size it inflates.
    pub migration_gib: Option<u64>,
    pub only: Option<String>,
    pub reps: Option<u32>,
    pub cases: Vec<migrate::Variant>,
    /// Migration bandwidth cap of the bench, in MiB/s (default: no cap).
    pub max_bandwidth_mib: Option<u64>,
}

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut o = Opts {
            drivers: vec![guest::Driver::Rs, guest::Driver::C],
            ..Default::default()
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--driver" => {
                    o.drivers = match it.next().map(String::as_str) {
                        Some("rs") => vec![guest::Driver::Rs],
                        Some("c") => vec![guest::Driver::C],
                        Some("both") => vec![guest::Driver::Rs, guest::Driver::C],
                        _ => usage(),
                    }
                }
                "--filter" => o.filter = Some(it.next().cloned().unwrap_or_else(|| usage())),
                "--list" => o.list = true,
                "--reps" => {
                    o.reps = Some(
                        it.next()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or_else(|| usage()),
                    )
                }
                "--case" => o.cases.push(
                    it.next()
                        .and_then(|v| migrate::Variant::from_name(v))
                        .unwrap_or_else(|| usage()),
                ),
                "--only" => o.only = Some(it.next().cloned().unwrap_or_else(|| usage())),
                "--no-unit" => o.no_unit = true,
                "--max-bandwidth-mib" => {
                    o.max_bandwidth_mib = Some(
                        it.next()
                            .and_then(|v| v.parse().ok())
                            .filter(|&v: &u64| v > 0)
                            .unwrap_or_else(|| usage()),
                    )
                }
                "--guest-gib" => {
                    o.guest_gib = Some(
                        it.next()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or_else(|| usage()),
                    )
                }
                "--migration-gib" => {
                    o.migration_gib = Some(
                        it.next()
                            .and_then(|v| v.parse().ok())
                            .filter(|&v: &u64| v >= 1)
                            .unwrap_or_else(|| usage()),
                    )
                }
                _ => usage(),
            }
        }
        o
    }
}

/// Errors of the harness: a message is all a caller needs.
pub type Result<T> = std::result::Result<T, String>;

/// Turns any displayable error into the harness's error, with context.
pub trait Context<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

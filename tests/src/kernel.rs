//! What the running kernel offers, judged independently of the collector, so tests can tell
//! "this rung must work here" from "this kernel lacks the hook".
//!
//! * Functions (kprobe, fentry targets): a text symbol in `/proc/kallsyms`.
//! * BTF and raw tracepoints: the `btf_trace_<name>` typedef the kernel emits into its BTF for
//!   every tracepoint (`/sys/kernel/btf/vmlinux`).
//! * Classic tracepoints: `events/<category>/<name>` in tracefs; where tracefs is not mounted
//!   the BTF typedef decides (both come from the same `TRACE_EVENT`).
//!
//! Rung *types* are a different question (kprobes compiled out, fentry refused):
//! [`rungs_that_must_work`].

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use collector::probes::{Rung, ladder::Hook};

/// Environment variable naming the rungs that must attach on this kernel (comma-separated),
/// set by `cargo xtask vm-test` for kernels known to have them all.
pub const REQUIRE_RUNGS_ENV: &str = "COLLECTOR_TEST_REQUIRE_RUNGS";

/// `uname -r`.
pub fn release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| panic!("cannot read the kernel release: {e}"))
}

/// `(major, minor)` of the running kernel.
pub fn version() -> (u32, u32) {
    let release = release();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// `tcp:tcp_send_reset` fires for resets sent without a full socket — for a segment that
/// matched no socket (`sk == NULL`) or a timewait socket — from Linux 6.10 ("trace: tcp: fully
/// support trace_tcp_send_reset"); before, only for active resets of full sockets.
pub fn passive_resets_traced() -> bool {
    version() >= (6, 10)
}

/// The kprobe PMU exists (`CONFIG_KPROBES` and perf kprobe support).
pub fn kprobes_supported() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

/// Rungs that must attach wherever their hook exists: [`REQUIRE_RUNGS_ENV`] when set; otherwise
/// the tracepoint rungs (present on every kernel the collector supports) and kprobes when the
/// kprobe PMU exists. fentry may be refused (EPERM on the build machines) unless required.
pub fn rungs_that_must_work() -> BTreeSet<Rung> {
    if let Ok(list) = std::env::var(REQUIRE_RUNGS_ENV) {
        return list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{REQUIRE_RUNGS_ENV}: {e}"))
            })
            .collect();
    }
    let mut rungs: BTreeSet<Rung> = [Rung::TpBtf, Rung::RawTp, Rung::Tracepoint].into();
    if kprobes_supported() {
        rungs.insert(Rung::Kprobe);
    }
    rungs
}

/// Whether the kernel has the function, tracepoint or event `hook` attaches to.
pub fn hook_exists(hook: &Hook) -> bool {
    match *hook {
        Hook::Kprobe { function, .. }
        | Hook::Kretprobe { function, .. }
        | Hook::Fentry { function, .. }
        | Hook::Fexit { function, .. } => function_exists(function) && !function_cloned(function),
        Hook::TpBtf { tracepoint, .. } | Hook::RawTp { tracepoint, .. } => {
            btf_tracepoint_exists(tracepoint)
        }
        Hook::Tracepoint { category, name, .. } => {
            tracefs_event_exists(category, name).unwrap_or_else(|| btf_tracepoint_exists(name))
        }
    }
}

/// A text symbol `name` in `/proc/kallsyms` (module symbols included).
pub fn function_exists(name: &str) -> bool {
    static SYMBOLS: OnceLock<BTreeSet<String>> = OnceLock::new();
    SYMBOLS
        .get_or_init(|| {
            fs::read_to_string("/proc/kallsyms")
                .unwrap_or_else(|e| panic!("cannot read /proc/kallsyms: {e}"))
                .lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let (_, kind, sym) = (f.next()?, f.next()?, f.next()?);
                    matches!(kind, "t" | "T").then(|| sym.to_owned())
                })
                .collect()
        })
        .contains(name)
}

/// The compiler split or specialised `name` (`name.part.N`, `.isra.N`, `.constprop.N`): callers
/// may run the copy, so a kprobe or fentry on `name` cannot see every call (Debian's 6.1 has
/// `__tcp_retransmit_skb.part.0`).
pub fn function_cloned(name: &str) -> bool {
    static CLONED: OnceLock<BTreeSet<String>> = OnceLock::new();
    CLONED
        .get_or_init(|| {
            fs::read_to_string("/proc/kallsyms")
                .unwrap_or_else(|e| panic!("cannot read /proc/kallsyms: {e}"))
                .lines()
                .filter_map(|l| {
                    let sym = l.split_whitespace().nth(2)?;
                    let (base, suffix) = sym.split_once('.')?;
                    ["part.", "isra.", "constprop."]
                        .iter()
                        .any(|p| suffix.starts_with(p))
                        .then(|| base.to_owned())
                })
                .collect()
        })
        .contains(name)
}

/// The kernel BTF has `btf_trace_<name>`, the typedef of tracepoint `name`'s probe prototype.
pub fn btf_tracepoint_exists(name: &str) -> bool {
    static BTF: OnceLock<Vec<u8>> = OnceLock::new();
    let btf = BTF.get_or_init(|| fs::read("/sys/kernel/btf/vmlinux").unwrap_or_default());
    let needle = format!("\0btf_trace_{name}\0");
    btf.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// `Some(exists)` from a mounted tracefs, `None` when none is mounted.
pub fn tracefs_event_exists(category: &str, name: &str) -> Option<bool> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(Path::new)
        .find(|root| root.join("events").is_dir())
        .map(|root| root.join("events").join(category).join(name).is_dir())
}

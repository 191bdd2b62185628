//! Kernel-side diagnostics through aya-log: off by default, switchable at run time.
//!
//! Every log call sits on a rare path worth explaining on a node (a drop and its reason, a map
//! insert that failed and its errno, a return that was missed, a socket in an unexpected
//! state, an offsets slot that went stale) and is gated by one check of `KERNEL_LOG`: a
//! one-element array map holding the level (0 = off, 1 = error … 5 = trace, aya-log's numbers).
//! The verifier inlines the lookup of an array map, so when off a call costs a load, a compare
//! and a branch, and aya-log's formatting and ring-buffer code is never executed. Userspace
//! writes the map at start (`--kernel-log`) and whenever `PUT /v1/debug/kernel-log` asks.
//!
//! aya-log's own `AYA_LOG_LEVEL` cannot serve as the switch: it is a load-time global in
//! `.rodata`, frozen once the object is loaded. It stays at its default (everything), so the
//! only filter is this map.

use aya_ebpf::{macros::map, maps::Array};
pub use aya_log_ebpf::macro_support::Level;

#[map]
pub static KERNEL_LOG: Array<u32> = Array::with_max_entries(1, 0);

/// Whether lines at `level` are wanted now. A missing slot (cannot happen for index 0 of a
/// one-element array) reads as off.
#[inline(always)]
pub fn enabled(level: Level) -> bool {
    KERNEL_LOG.get(0).is_some_and(|l| *l >= level as u32)
}

/// `klog!(Warn, "fmt {}", args…)`: an aya-log line at `Level::Warn` when `KERNEL_LOG` asks for
/// it, nothing else otherwise. Arguments are not evaluated when off. The target is the calling
/// module (`collector::tcp`); userspace logs it as `collector::kernel::tcp`.
macro_rules! klog {
    ($level:ident, $($arg:tt)+) => {
        if $crate::klog::enabled($crate::klog::Level::$level) {
            ::aya_log_ebpf::log!(&(), $crate::klog::Level::$level, $($arg)+);
        }
    };
}

pub(crate) use klog;

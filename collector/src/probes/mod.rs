//! Attaching kernel programs: the hook ladder.
//!
//! Every signal has rungs (kprobe → fentry → tp_btf → raw tracepoint → tracepoint by default).
//! At start-up each signal tries its rungs in the configured order: load, then attach; on any
//! failure the rung's programs are unloaded and the next rung is tried. Which rung attached is
//! logged and exported. There is no reliable "can I attach X" query (fentry fails with EPERM on
//! some kernels, `is_program_supported` returns `Err` there), so trying is the only honest test.

pub mod btf;
pub mod go_grpc;
pub mod go_http;
pub mod http_wire;
pub mod kallsyms;
pub mod ladder;
pub mod misses;
pub mod offsets;
pub mod process;
pub mod tcp;
pub mod tracefs;

pub use ladder::{AttachReport, ProbeError, ProbeSet, Rung, Signal};

/// The rungs of a signal, in default order, with the hooks each rung attaches.
pub fn rungs(signal: Signal) -> &'static [(Rung, &'static [ladder::Hook])] {
    match signal {
        Signal::ProcessExec => process::exec_rungs(),
        _ => tcp::rungs(signal),
    }
}

//! Runs of our tracing programs the kernel skipped.
//!
//! The kernel never runs a BPF program inside another on the same CPU where it could deadlock
//! on shared state: kprobe and classic tracepoint programs share one per-CPU guard
//! (`bpf_prog_active`), raw/BTF tracepoint and fentry programs have one guard each. A
//! retransmit in a softirq that interrupts `sock:sock_send_length`'s program on the same CPU is
//! therefore not seen at all on the tracepoint and kprobe rungs — an event lost in the kernel
//! before any code of ours runs. Since Linux 6.7 the kernel counts these skipped runs per
//! program (`recursion_misses`, also for tracepoints and kprobes); we export them per program
//! and signal so the loss is visible instead of silent (`collector_kernel_program_misses_total`).
//! Measured: one missed retransmit in a CI run of the tracepoint rung under 5 % loss (593 by
//! nstat, 592 counted). Older kernels skip without counting.
//!
//! Read from `/proc/self/fdinfo/<fd>` of each program (a line `recursion_misses:`): the
//! kernel's own text, no `bpf_prog_info` layout to keep in step, and aya does not expose it.

use std::os::fd::{AsFd, AsRawFd};

use aya::{Ebpf, programs::ProgramFd};

use super::{AttachReport, Signal};

/// A loaded program of an attached rung, kept open to read its counters.
pub struct Watched {
    pub prog: &'static str,
    pub signal: Signal,
    fd: ProgramFd,
}

impl Watched {
    /// The kernel's count of skipped runs; `None` when the kernel does not report it (before
    /// 5.12) or fdinfo cannot be read.
    pub fn recursion_misses(&self) -> Option<u64> {
        let path = format!("/proc/self/fdinfo/{}", self.fd.as_fd().as_raw_fd());
        parse_misses(&std::fs::read_to_string(path).ok()?)
    }
}

/// Every program of every attached rung. Programs whose descriptor cannot be duplicated are
/// left out (logged by the caller's report: they are still attached and counting).
pub fn watch(ebpf: &Ebpf, reports: &[AttachReport]) -> Vec<Watched> {
    let mut out = Vec::new();
    for report in reports {
        let Some(rung) = report.attached else {
            continue;
        };
        let hooks = super::rungs(report.signal)
            .iter()
            .find(|(r, _)| *r == rung)
            .map_or(&[][..], |(_, h)| *h);
        for hook in hooks {
            let prog = hook.prog();
            let Some(fd) = ebpf
                .program(prog)
                .and_then(|p| p.fd().ok())
                .and_then(|fd| fd.try_clone().ok())
            else {
                tracing::warn!(prog, "cannot watch the program's skipped runs");
                continue;
            };
            out.push(Watched {
                prog,
                signal: report.signal,
                fd,
            });
        }
    }
    out
}

fn parse_misses(fdinfo: &str) -> Option<u64> {
    fdinfo.lines().find_map(|l| {
        l.strip_prefix("recursion_misses:")
            .and_then(|v| v.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fdinfo text of a tracepoint program on 6.18; a kernel without the line (before
    /// 5.12) gives `None`, not 0, so "not counted" is never read as "none missed".
    #[test]
    fn reads_the_kernels_line() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2079\nprog_type:\t5\n\
                    prog_jited:\t1\nprog_tag:\t4f1e4bb58e5fbe6a\nmemlock:\t4096\nprog_id:\t921\n\
                    run_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t3\nverified_insns:\t51\n";
        assert_eq!(parse_misses(text), Some(3));
        assert_eq!(parse_misses("prog_id:\t921\nrun_cnt:\t0\n"), None);
        assert_eq!(parse_misses("recursion_misses:\tx\n"), None);
    }
}

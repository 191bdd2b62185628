//! Process lifecycle hooks. `sched:sched_process_exec` tells Go discovery about a new program
//! the moment it starts (the /proc scan alone would leave up to one scan interval of requests
//! unseen). It runs in the new process's context, so the current task is the right one.

use super::ladder::{Hook, Rung};

pub fn exec_rungs() -> &'static [(Rung, &'static [Hook])] {
    use Hook::*;
    &[
        (
            Rung::TpBtf,
            &[TpBtf {
                prog: "exec_tp_btf",
                tracepoint: "sched_process_exec",
            }],
        ),
        (
            Rung::RawTp,
            &[RawTp {
                prog: "exec_raw_tp",
                tracepoint: "sched_process_exec",
            }],
        ),
        (
            Rung::Tracepoint,
            &[Tracepoint {
                prog: "exec_tp",
                category: "sched",
                name: "sched_process_exec",
            }],
        ),
    ]
}

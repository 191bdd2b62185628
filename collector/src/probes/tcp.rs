//! The TCP signals' rungs: which program of collector-ebpf/src/tcp.rs attaches where.
//!
//! Ladder order (default, configurable): kprobes on `tcp_sendmsg` and the retransmit functions
//! first — the design's primary hooks, present on nearly every production kernel and free of
//! tracefs and tracepoint-layout drift. fentry/fexit next (BTF trampolines: cheaper than
//! kprobes, typed arguments). Then tp_btf (typed, no tracefs), raw_tp (untyped, no BTF needed),
//! and the classic tracepoint last (needs tracefs; record layouts drift and are parsed at start-up).
//! Retransmits: kprobe and fentry hook `tcp_retransmit_skb` and `tcp_send_loss_probe`, the
//! callers of `__tcp_retransmit_skb`, which compilers split (`.part.0` on Debian's 6.1: a hook
//! on it saw 0 of 402 retransmits); they count the growth of `tcp_sock.total_retrans` across
//! the call (see collector-ebpf/src/tcp.rs). The tracepoint rungs use `tcp:tcp_retransmit_skb`.
//! SYN-ACK retransmits (`tcp_rtx_synack`) never reach `__tcp_retransmit_skb` but are counted
//! in TcpRetransSegs, hence a signal of their own with the same ladder.
//! Kretprobes: `maxactive` (concurrent calls a kretprobe can follow) cannot be set through the
//! perf kprobe PMU aya attaches with, so it is the kernel's default, max(10, 2 × CPUs). Enough
//! for the retransmit and SYN-ACK functions (at most two calls per CPU: process context and
//! one softirq); `tcp_sendmsg` blocks, so more senders than that waiting at once lose returns:
//! counted (`kretprobe_return_missed`), and the fentry rung, which has no such limit, is the
//! next rung.
//! Resets, state changes and teardown only exist as tracepoints, so their ladders start at tp_btf.

use super::ladder::{Hook, Rung, Signal};

/// The rungs of one signal, in default order, with the hooks each rung attaches.
pub fn rungs(signal: Signal) -> &'static [(Rung, &'static [Hook])] {
    use Hook::*;
    match signal {
        Signal::TcpSend => &[
            (
                Rung::Kprobe,
                &[
                    Kprobe {
                        prog: "send_kprobe",
                        function: "tcp_sendmsg",
                    },
                    Kretprobe {
                        prog: "send_kretprobe",
                        function: "tcp_sendmsg",
                    },
                ],
            ),
            (
                Rung::Fentry,
                &[Fexit {
                    prog: "send_fexit",
                    function: "tcp_sendmsg",
                }],
            ),
            (
                Rung::TpBtf,
                &[TpBtf {
                    prog: "send_tp_btf",
                    tracepoint: "sock_send_length",
                }],
            ),
            (
                Rung::RawTp,
                &[RawTp {
                    prog: "send_raw_tp",
                    tracepoint: "sock_send_length",
                }],
            ),
            (
                Rung::Tracepoint,
                &[Tracepoint {
                    prog: "send_tp",
                    category: "sock",
                    name: "sock_send_length",
                }],
            ),
        ],
        Signal::TcpRetransmit => &[
            (
                Rung::Kprobe,
                &[
                    Kprobe {
                        prog: "retrans_kprobe",
                        function: "tcp_retransmit_skb",
                    },
                    Kretprobe {
                        prog: "retrans_kretprobe",
                        function: "tcp_retransmit_skb",
                    },
                    Kprobe {
                        prog: "tlp_kprobe",
                        function: "tcp_send_loss_probe",
                    },
                    Kretprobe {
                        prog: "tlp_kretprobe",
                        function: "tcp_send_loss_probe",
                    },
                ],
            ),
            (
                Rung::Fentry,
                &[
                    Fentry {
                        prog: "retrans_fentry",
                        function: "tcp_retransmit_skb",
                    },
                    Fexit {
                        prog: "retrans_fexit",
                        function: "tcp_retransmit_skb",
                    },
                    Fentry {
                        prog: "tlp_fentry",
                        function: "tcp_send_loss_probe",
                    },
                    Fexit {
                        prog: "tlp_fexit",
                        function: "tcp_send_loss_probe",
                    },
                ],
            ),
            (
                Rung::TpBtf,
                &[TpBtf {
                    prog: "retrans_tp_btf",
                    tracepoint: "tcp_retransmit_skb",
                }],
            ),
            (
                Rung::RawTp,
                &[RawTp {
                    prog: "retrans_raw_tp",
                    tracepoint: "tcp_retransmit_skb",
                }],
            ),
            (
                Rung::Tracepoint,
                &[Tracepoint {
                    prog: "retrans_tp",
                    category: "tcp",
                    name: "tcp_retransmit_skb",
                }],
            ),
        ],
        Signal::TcpRetransmitSynack => &[
            (
                Rung::Kprobe,
                &[
                    Kprobe {
                        prog: "synack_kprobe",
                        function: "tcp_rtx_synack",
                    },
                    Kretprobe {
                        prog: "synack_kretprobe",
                        function: "tcp_rtx_synack",
                    },
                ],
            ),
            (
                Rung::Fentry,
                &[Fexit {
                    prog: "synack_fexit",
                    function: "tcp_rtx_synack",
                }],
            ),
            (
                Rung::TpBtf,
                &[TpBtf {
                    prog: "synack_tp_btf",
                    tracepoint: "tcp_retransmit_synack",
                }],
            ),
            (
                Rung::RawTp,
                &[RawTp {
                    prog: "synack_raw_tp",
                    tracepoint: "tcp_retransmit_synack",
                }],
            ),
            (
                Rung::Tracepoint,
                &[Tracepoint {
                    prog: "synack_tp",
                    category: "tcp",
                    name: "tcp_retransmit_synack",
                }],
            ),
        ],
        Signal::TcpState => &[
            (
                Rung::TpBtf,
                &[TpBtf {
                    prog: "state_tp_btf",
                    tracepoint: "inet_sock_set_state",
                }],
            ),
            (
                Rung::RawTp,
                &[RawTp {
                    prog: "state_raw_tp",
                    tracepoint: "inet_sock_set_state",
                }],
            ),
            (
                Rung::Tracepoint,
                &[Tracepoint {
                    prog: "state_tp",
                    category: "sock",
                    name: "inet_sock_set_state",
                }],
            ),
        ],
        Signal::TcpResetSent => &[
            (
                Rung::TpBtf,
                &[TpBtf {
                    prog: "rst_sent_tp_btf",
                    tracepoint: "tcp_send_reset",
                }],
            ),
            (
                Rung::RawTp,
                &[RawTp {
                    prog: "rst_sent_raw_tp",
                    tracepoint: "tcp_send_reset",
                }],
            ),
            (
                Rung::Tracepoint,
                &[Tracepoint {
                    prog: "rst_sent_tp",
                    category: "tcp",
                    name: "tcp_send_reset",
                }],
            ),
        ],
        Signal::TcpResetReceived => &[
            (
                Rung::TpBtf,
                &[TpBtf {
                    prog: "rst_recv_tp_btf",
                    tracepoint: "tcp_receive_reset",
                }],
            ),
            (
                Rung::RawTp,
                &[RawTp {
                    prog: "rst_recv_raw_tp",
                    tracepoint: "tcp_receive_reset",
                }],
            ),
            (
                Rung::Tracepoint,
                &[Tracepoint {
                    prog: "rst_recv_tp",
                    category: "tcp",
                    name: "tcp_receive_reset",
                }],
            ),
        ],
        Signal::ProcessExec => super::process::exec_rungs(),
        Signal::TcpDestroy => &[
            (
                Rung::TpBtf,
                &[TpBtf {
                    prog: "destroy_tp_btf",
                    tracepoint: "tcp_destroy_sock",
                }],
            ),
            (
                Rung::RawTp,
                &[RawTp {
                    prog: "destroy_raw_tp",
                    tracepoint: "tcp_destroy_sock",
                }],
            ),
            (
                Rung::Tracepoint,
                &[Tracepoint {
                    prog: "destroy_tp",
                    category: "tcp",
                    name: "tcp_destroy_sock",
                }],
            ),
        ],
    }
}

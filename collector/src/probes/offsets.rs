//! Everything the kernel programs need to know about this kernel before they load: struct
//! offsets from BTF and classic tracepoint record offsets from tracefs, as load-time globals
//! (names in `collector_common::globals`). Also decides which rungs cannot work here, so the
//! ladder skips them with a reason instead of loading a program that would read garbage.

use std::{collections::HashMap, path::Path};

use collector_common::globals as g;
use tracing::{debug, warn};

use super::{
    btf::Btf,
    ladder::{Rung, Signal},
    tracefs,
};

/// Load-time globals plus the rungs that cannot work on this kernel, and why.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    pub globals: Vec<(&'static str, u32)>,
    unavailable: HashMap<(Signal, Rung), String>,
    /// Degradations that do not block a rung (logged and shown by the API).
    pub warnings: Vec<String>,
}

impl Prepared {
    pub fn unavailable(&self, signal: Signal, rung: Rung) -> Option<String> {
        self.unavailable.get(&(signal, rung)).cloned()
    }

    pub fn global(&self, name: &str) -> Option<u32> {
        self.globals
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// Computes every global. `btf` is the running kernel's BTF (None when absent), `tracefs`
    /// the tracefs root (None when tracefs cannot be mounted).
    pub fn compute(btf: Option<&Btf>, tracefs_root: Option<&Path>) -> Self {
        Self::compute_with(btf, tracefs_root, &super::kallsyms::running_kernel_clones())
    }

    /// `clones`: functions the compiler split or cloned (see `kallsyms`).
    pub fn compute_with(
        btf: Option<&Btf>,
        tracefs_root: Option<&Path>,
        clones: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> Self {
        let mut p = Prepared::default();
        p.cloned_functions(clones);
        p.struct_offsets(btf);
        p.tracepoint_offsets(tracefs_root);
        // The retransmit tracepoint gained an `err` argument in 6.14 and fires for failures
        // too from then on; prefer the BTF prototype, else the tracefs record.
        let has_err = match btf.map(|b| b.tracepoint_arg_count("tcp_retransmit_skb")) {
            Some(Ok(n)) => n >= 3,
            _ => p.global(g::TP_RETRANS_ERR).is_some_and(|o| o != 0),
        };
        p.globals.push((g::RETRANS_HAS_ERR, u32::from(has_err)));
        debug_assert_eq!(p.globals.len(), g::ALL.len());
        p
    }

    /// kprobe and fentry rungs whose function has compiler clones would miss most calls.
    fn cloned_functions(&mut self, clones: &std::collections::BTreeMap<String, Vec<String>>) {
        use super::ladder::Hook;
        for signal in Signal::ALL {
            for (rung, hooks) in super::rungs(signal) {
                for hook in hooks.iter() {
                    let function = match hook {
                        Hook::Kprobe { function, .. }
                        | Hook::Kretprobe { function, .. }
                        | Hook::Fentry { function, .. }
                        | Hook::Fexit { function, .. } => function,
                        _ => continue,
                    };
                    if let Some(copies) = clones.get(*function) {
                        let reason = format!(
                            "{function} has compiler clones ({}): a hook on the symbol would miss the calls that run the copy",
                            copies.join(", ")
                        );
                        warn!(signal = %signal, rung = %rung, "{reason}");
                        self.unavailable.insert((signal, *rung), reason);
                    }
                }
            }
        }
    }

    fn struct_offsets(&mut self, btf: Option<&Btf>) {
        let fields: [(&'static str, &str, &str); 11] = [
            (g::TASK_LEADER_OFF, "task_struct", "group_leader"),
            (g::TASK_COMM_OFF, "task_struct", "comm"),
            (g::SK_CGRP_OFF, "sock", "sk_cgrp_data.cgroup"),
            (g::CGRP_KN_OFF, "cgroup", "kn"),
            (g::KN_ID_OFF, "kernfs_node", "id"),
            (g::SK_ERR_OFF, "sock", "sk_err"),
            (g::SK_PROTO_OFF, "sock", "sk_protocol"),
            (g::SK_STATE_OFF, "sock", "__sk_common.skc_state"),
            (g::TCP_TOTAL_RETRANS_OFF, "tcp_sock", "total_retrans"),
            (g::SKB_CB_OFF, "sk_buff", "cb"),
            (g::CB_GSO_SEGS_OFF, "tcp_skb_cb", "tcp_gso_segs"),
        ];
        for (global, strukt, path) in fields {
            let value = match btf.map(|b| b.member_offset(strukt, path)) {
                Some(Ok(off)) => off,
                Some(Err(e)) => {
                    self.warnings.push(format!("{strukt}.{path}: {e}"));
                    0
                }
                None => {
                    self.warnings
                        .push(format!("{strukt}.{path}: no kernel BTF"));
                    0
                }
            };
            debug!(global, value, "struct offset");
            self.globals.push((global, value));
        }
        // Zero is never a valid offset for these (they are not first members), so the kernel
        // side treats 0 as "unknown". Say what each unknown costs.
        if self.global(g::SK_CGRP_OFF) == Some(0) || self.global(g::CGRP_KN_OFF) == Some(0) {
            self.warnings.push(
                "socket cgroup unreadable: softirq signals are attributed by owner process only"
                    .into(),
            );
        }
        if self.global(g::SK_PROTO_OFF) == Some(0) {
            for (s, r) in [
                (Signal::TcpSend, Rung::TpBtf),
                (Signal::TcpSend, Rung::RawTp),
                (Signal::TcpState, Rung::TpBtf),
                (Signal::TcpState, Rung::RawTp),
            ] {
                self.unavailable
                    .insert((s, r), "sock.sk_protocol offset unknown".into());
            }
        }
        // The kprobe and fentry retransmit rungs count the difference of this field.
        if self.global(g::TCP_TOTAL_RETRANS_OFF) == Some(0) {
            for r in [Rung::Kprobe, Rung::Fentry] {
                self.unavailable
                    .entry((Signal::TcpRetransmit, r))
                    .or_insert_with(|| "tcp_sock.total_retrans offset unknown".into());
            }
        }
        if self.global(g::SK_STATE_OFF) == Some(0) {
            self.warnings.push(
                "sock.skc_state offset unknown: every socket is treated as not full, TCP \
                 signals are charged as unattributed"
                    .into(),
            );
        }
        for w in &self.warnings {
            warn!("{w}");
        }
    }

    fn tracepoint_offsets(&mut self, root: Option<&Path>) {
        // (signal, category, event, [(global, field, required)])
        type Fields = &'static [(&'static str, &'static str, bool)];
        let tps: [(Signal, &str, &str, Fields); 7] = [
            (
                Signal::TcpSend,
                "sock",
                "sock_send_length",
                &[
                    (g::TP_SEND_SK, "sk", true),
                    (g::TP_SEND_PROTO, "protocol", true),
                    (g::TP_SEND_RET, "ret", true),
                ],
            ),
            (
                Signal::TcpRetransmit,
                "tcp",
                "tcp_retransmit_skb",
                &[
                    (g::TP_RETRANS_SK, "skaddr", true),
                    (g::TP_RETRANS_SKB, "skbaddr", true),
                    (g::TP_RETRANS_ERR, "err", false),
                ],
            ),
            (
                Signal::TcpRetransmitSynack,
                "tcp",
                "tcp_retransmit_synack",
                &[(g::TP_SYNACK_SK, "skaddr", true)],
            ),
            (
                Signal::TcpState,
                "sock",
                "inet_sock_set_state",
                &[
                    (g::TP_STATE_SK, "skaddr", true),
                    (g::TP_STATE_OLD, "oldstate", true),
                    (g::TP_STATE_NEW, "newstate", true),
                    (g::TP_STATE_PROTO, "protocol", true),
                ],
            ),
            (
                Signal::TcpResetSent,
                "tcp",
                "tcp_send_reset",
                &[(g::TP_RESET_SENT_SK, "skaddr", true)],
            ),
            (
                Signal::TcpResetReceived,
                "tcp",
                "tcp_receive_reset",
                &[(g::TP_RESET_RECV_SK, "skaddr", true)],
            ),
            (
                Signal::TcpDestroy,
                "tcp",
                "tcp_destroy_sock",
                &[(g::TP_DESTROY_SK, "skaddr", true)],
            ),
        ];
        for (signal, category, event, fields) in tps {
            let format = match root {
                None => Err("tracefs not available".to_string()),
                Some(root) => tracefs::read_format(root, category, event)
                    .map_err(|e| format!("tracepoint {category}:{event}: {e}")),
            };
            let mut missing = None;
            for (global, field, required) in fields {
                let value = match &format {
                    Ok(f) => match f.field(field) {
                        Ok(field) => field.offset,
                        Err(e) => {
                            if *required {
                                missing = Some(e.to_string());
                            }
                            0
                        }
                    },
                    Err(reason) => {
                        missing = Some(reason.clone());
                        0
                    }
                };
                self.globals.push((global, value));
            }
            if let Some(reason) = missing {
                self.unavailable.insert((signal, Rung::Tracepoint), reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_btf_no_tracefs_marks_rungs_unavailable_and_defines_every_global() {
        let p = Prepared::compute(None, None);
        for name in g::ALL {
            assert!(p.global(name).is_some(), "{name} not computed");
        }
        assert_eq!(p.globals.len(), g::ALL.len());
        assert!(p.unavailable(Signal::TcpSend, Rung::Tracepoint).is_some());
        assert!(p.unavailable(Signal::TcpSend, Rung::TpBtf).is_some());
        assert!(p.unavailable(Signal::TcpSend, Rung::Kprobe).is_none());
        assert_eq!(p.global(g::RETRANS_HAS_ERR), Some(0));
    }

    #[test]
    fn cloned_functions_disable_their_kprobe_and_fentry_rungs_only() {
        // The retransmit rungs hook the callers of `__tcp_retransmit_skb`, which Debian's 6.1
        // splits: its clone alone disables nothing.
        let clones = super::super::kallsyms::clones(
            "1 t __tcp_retransmit_skb.part.0\n1 t tcp_send_loss_probe.part.0\n",
        );
        let p = Prepared::compute_with(None, None, &clones);
        for rung in [Rung::Kprobe, Rung::Fentry] {
            let why = p
                .unavailable(Signal::TcpRetransmit, rung)
                .expect("unavailable");
            assert!(why.contains("tcp_send_loss_probe.part.0"), "{why}");
        }
        let only_split = super::super::kallsyms::clones("1 t __tcp_retransmit_skb.part.0\n");
        let p = Prepared::compute_with(None, None, &only_split);
        let why = p
            .unavailable(Signal::TcpRetransmit, Rung::Kprobe)
            .expect("no BTF: offset unknown");
        assert!(!why.contains("part.0"), "{why}");
        assert!(p.unavailable(Signal::TcpSend, Rung::Kprobe).is_none());
        assert!(
            p.unavailable(Signal::TcpRetransmitSynack, Rung::Kprobe)
                .is_none()
        );
    }

    #[test]
    fn running_kernel_offsets_are_plausible() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("SKIPPED: no /sys/kernel/btf/vmlinux");
            return;
        }
        let btf = Btf::from_file(path).expect("parse vmlinux BTF");
        let p = Prepared::compute(Some(&btf), tracefs::tracefs_root().as_deref());
        for name in [
            g::SK_CGRP_OFF,
            g::CGRP_KN_OFF,
            g::KN_ID_OFF,
            g::SK_ERR_OFF,
            g::SK_PROTO_OFF,
            g::SK_STATE_OFF,
            g::TCP_TOTAL_RETRANS_OFF,
            g::SKB_CB_OFF,
        ] {
            let v = p.global(name).expect("computed");
            assert!(v > 0 && v < 4096, "{name} = {v}");
        }
        assert!(p.unavailable(Signal::TcpSend, Rung::TpBtf).is_none());
    }
}

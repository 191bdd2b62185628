//! TCP counters: per-field deltas of the kernel's cumulative `TcpStats`.

use collector_common::tcp::TcpStats;

use super::harvest::Counters;
#[cfg(test)]
use {super::harvest::Harvester, collector_common::tcp::OwnerKey};

/// Per-field `cur - prev`; a field that went backwards means the key was deleted and recreated,
/// so its whole current value is new.
pub fn delta(cur: &TcpStats, prev: &TcpStats) -> TcpStats {
    let d = |c: u64, p: u64| c.checked_sub(p).unwrap_or(c);
    TcpStats {
        bytes_sent: d(cur.bytes_sent, prev.bytes_sent),
        send_calls: d(cur.send_calls, prev.send_calls),
        send_err_pipe: d(cur.send_err_pipe, prev.send_err_pipe),
        send_err_reset: d(cur.send_err_reset, prev.send_err_reset),
        send_err_other: d(cur.send_err_other, prev.send_err_other),
        send_would_block: d(cur.send_would_block, prev.send_would_block),
        retransmit_segs: d(cur.retransmit_segs, prev.retransmit_segs),
        resets_sent: d(cur.resets_sent, prev.resets_sent),
        resets_received: d(cur.resets_received, prev.resets_received),
        connects_refused: d(cur.connects_refused, prev.connects_refused),
        connects_timed_out: d(cur.connects_timed_out, prev.connects_timed_out),
        connects_failed_other: d(cur.connects_failed_other, prev.connects_failed_other),
        active_opens: d(cur.active_opens, prev.active_opens),
        passive_opens: d(cur.passive_opens, prev.passive_opens),
        closes: d(cur.closes, prev.closes),
    }
}

impl Counters for TcpStats {
    fn delta(&self, prev: &Self) -> Self {
        delta(self, prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32) -> OwnerKey {
        OwnerKey {
            cgroup_id: 42,
            tgid,
            _pad: 0,
        }
    }

    fn stats(bytes: u64, retrans: u64) -> TcpStats {
        TcpStats {
            bytes_sent: bytes,
            retransmit_segs: retrans,
            ..Default::default()
        }
    }

    #[test]
    fn deltas_are_exact_across_harvests() {
        let mut h = Harvester::<TcpStats>::default();
        let r = h.harvest(&[(key(1), stats(100, 1))], |_| true);
        assert_eq!(r.deltas, vec![(key(1), stats(100, 1))]);
        let r = h.harvest(&[(key(1), stats(250, 1))], |_| true);
        assert_eq!(r.deltas, vec![(key(1), stats(150, 0))]);
        let r = h.harvest(&[(key(1), stats(250, 1))], |_| true);
        assert!(r.deltas.is_empty());
    }

    #[test]
    fn recreated_key_counts_whole_value() {
        let mut h = Harvester::<TcpStats>::default();
        h.harvest(&[(key(1), stats(100, 5))], |_| true);
        let r = h.harvest(&[(key(1), stats(30, 1))], |_| true);
        assert_eq!(r.deltas, vec![(key(1), stats(30, 1))]);
    }

    #[test]
    fn exited_idle_keys_are_deleted_after_their_last_delta() {
        let mut h = Harvester::<TcpStats>::default();
        let cur = [
            (key(7), stats(10, 0)),
            (key(0), stats(5, 0)),
            (OwnerKey::OVERFLOW, stats(1, 0)),
        ];
        let dead = |_| false;
        let r = h.harvest(&cur, dead);
        assert_eq!(r.deltas.len(), 3);
        assert!(
            r.delete.is_empty(),
            "a key with fresh counts is exported first"
        );
        let r = h.harvest(&cur, dead);
        assert!(r.delete.is_empty());
        let r = h.harvest(&cur, dead);
        assert_eq!(
            r.delete,
            vec![key(7)],
            "only the exited owner, never tgid 0 or overflow"
        );
        // Alive processes are never deleted however idle.
        let mut h = Harvester::<TcpStats>::default();
        for _ in 0..5 {
            assert!(
                h.harvest(&[(key(8), stats(1, 0))], |_| true)
                    .delete
                    .is_empty()
            );
        }
    }
}

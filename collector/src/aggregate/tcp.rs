//! Turning the kernel's cumulative per-owner counters into exact per-workload deltas.
//!
//! The kernel map holds running totals per (cgroup, tgid). Each harvest reads them, subtracts
//! what the previous harvest saw and hands the difference on, so exported counters stay exact
//! and monotonic even when userspace deletes keys of exited processes (a key that reappears
//! starts from zero and is counted whole).

use std::collections::HashMap;

use collector_common::tcp::{OwnerKey, TcpStats};

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

/// Harvest bookkeeping per owner key.
#[derive(Clone, Debug, Default)]
struct Seen {
    last: TcpStats,
    /// Consecutive harvests without change.
    idle: u32,
}

/// A key whose process has exited and whose counters did not move for this many harvests is
/// deleted from the kernel map (its last delta was already exported).
pub const IDLE_HARVESTS_BEFORE_DELETE: u32 = 2;

#[derive(Default)]
pub struct TcpHarvester {
    seen: HashMap<OwnerKey, Seen>,
}

/// Result of one harvest.
pub struct Harvest {
    pub deltas: Vec<(OwnerKey, TcpStats)>,
    /// Keys to delete from the kernel map.
    pub delete: Vec<OwnerKey>,
}

impl TcpHarvester {
    /// `current` is the full map content (per-CPU values summed); `alive` says whether a tgid
    /// still runs. Keys with tgid 0, and the special keys, are never deleted.
    pub fn harvest(
        &mut self,
        current: &[(OwnerKey, TcpStats)],
        alive: impl Fn(u32) -> bool,
    ) -> Harvest {
        let mut deltas = Vec::new();
        let mut delete = Vec::new();
        let mut present = std::collections::HashSet::with_capacity(current.len());
        for (key, cur) in current {
            present.insert(*key);
            let seen = self.seen.entry(*key).or_default();
            let d = delta(cur, &seen.last);
            if d == TcpStats::default() {
                seen.idle += 1;
            } else {
                seen.idle = 0;
                deltas.push((*key, d));
            }
            seen.last = *cur;
            let special = *key == OwnerKey::OVERFLOW || key.tgid == 0;
            if !special && seen.idle >= IDLE_HARVESTS_BEFORE_DELETE && !alive(key.tgid) {
                delete.push(*key);
            }
        }
        for key in &delete {
            self.seen.remove(key);
        }
        // Keys that vanished from the map (deleted elsewhere) must not keep stale baselines.
        self.seen.retain(|k, _| present.contains(k));
        Harvest { deltas, delete }
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
        let mut h = TcpHarvester::default();
        let r = h.harvest(&[(key(1), stats(100, 1))], |_| true);
        assert_eq!(r.deltas, vec![(key(1), stats(100, 1))]);
        let r = h.harvest(&[(key(1), stats(250, 1))], |_| true);
        assert_eq!(r.deltas, vec![(key(1), stats(150, 0))]);
        let r = h.harvest(&[(key(1), stats(250, 1))], |_| true);
        assert!(r.deltas.is_empty());
    }

    #[test]
    fn recreated_key_counts_whole_value() {
        let mut h = TcpHarvester::default();
        h.harvest(&[(key(1), stats(100, 5))], |_| true);
        let r = h.harvest(&[(key(1), stats(30, 1))], |_| true);
        assert_eq!(r.deltas, vec![(key(1), stats(30, 1))]);
    }

    #[test]
    fn exited_idle_keys_are_deleted_after_their_last_delta() {
        let mut h = TcpHarvester::default();
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
        let mut h = TcpHarvester::default();
        for _ in 0..5 {
            assert!(
                h.harvest(&[(key(8), stats(1, 0))], |_| true)
                    .delete
                    .is_empty()
            );
        }
    }
}

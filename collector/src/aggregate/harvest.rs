//! Turning the kernel's cumulative per-owner counters into exact per-workload deltas.
//!
//! Kernel maps hold running totals per (cgroup, tgid). Each harvest reads them, subtracts what
//! the previous harvest saw and hands the difference on, so exported counters stay exact and
//! monotonic even when userspace deletes keys of exited processes (a key that reappears starts
//! from zero and is counted whole).

use std::collections::{HashMap, HashSet};

use collector_common::tcp::OwnerKey;

/// Cumulative counters read from a kernel map.
pub trait Counters: Copy + Default + PartialEq {
    /// Per-field `self - prev`; a field that went backwards means the key was deleted and
    /// recreated, so its whole current value is new.
    fn delta(&self, prev: &Self) -> Self;
}

/// Harvest bookkeeping per owner key.
#[derive(Clone, Debug, Default)]
struct Seen<V> {
    last: V,
    /// Consecutive harvests without change.
    idle: u32,
}

/// A key whose process has exited and whose counters did not move for this many harvests is
/// deleted from the kernel map (its last delta was already exported).
pub const IDLE_HARVESTS_BEFORE_DELETE: u32 = 2;

pub struct Harvester<V> {
    seen: HashMap<OwnerKey, Seen<V>>,
}

impl<V> Default for Harvester<V> {
    fn default() -> Self {
        Self {
            seen: HashMap::new(),
        }
    }
}

/// Result of one harvest.
pub struct Harvest<V> {
    pub deltas: Vec<(OwnerKey, V)>,
    /// Keys to delete from the kernel map.
    pub delete: Vec<OwnerKey>,
}

impl<V: Counters> Harvester<V> {
    /// `current` is the full map content (per-CPU values summed); `alive` says whether a tgid
    /// still runs. Keys with tgid 0, and the overflow key, are never deleted.
    pub fn harvest(
        &mut self,
        current: &[(OwnerKey, V)],
        alive: impl Fn(u32) -> bool,
    ) -> Harvest<V> {
        self.harvest_keys(current, |k| k.tgid != 0 && !alive(k.tgid))
    }

    /// [`harvest`](Self::harvest) with the caller deciding which idle keys are gone (e.g.
    /// `(cgroup, tgid 0)` keys once their cgroup is removed). The overflow key is never deleted.
    pub fn harvest_keys(
        &mut self,
        current: &[(OwnerKey, V)],
        gone: impl Fn(&OwnerKey) -> bool,
    ) -> Harvest<V> {
        let mut deltas = Vec::new();
        let mut delete = Vec::new();
        let mut present = HashSet::with_capacity(current.len());
        for (key, cur) in current {
            present.insert(*key);
            let seen = self.seen.entry(*key).or_insert_with(|| Seen {
                last: V::default(),
                idle: 0,
            });
            let d = cur.delta(&seen.last);
            if d == V::default() {
                seen.idle += 1;
            } else {
                seen.idle = 0;
                deltas.push((*key, d));
            }
            seen.last = *cur;
            if *key != OwnerKey::OVERFLOW && seen.idle >= IDLE_HARVESTS_BEFORE_DELETE && gone(key) {
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

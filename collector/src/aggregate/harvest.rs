//! Turning the kernel's cumulative per-owner counters into exact per-workload deltas.
//!
//! Kernel maps hold running totals per (cgroup, tgid). Each harvest reads them, subtracts what
//! the previous harvest saw and hands the difference on, so exported counters stay exact and
//! monotonic even when userspace deletes keys of exited processes (a key that reappears starts
//! from zero and is counted whole).
//!
//! Deleting a key races with the kernel, which keeps counting on it (a socket outlives the
//! process that owned it: its closes, resets and retransmits are still charged to the exited
//! owner). A harvest reads every key, then deletes the idle ones; whatever the kernel added to
//! a key between that read and its deletion was lost (measured: 5–12 of 3,600 closes per run
//! in `tests/tests/resilience.rs`). So a key is never deleted blind: [`take_per_cpu`] deletes
//! it and returns its value at the moment of deletion in one step
//! (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`, under the kernel's bucket lock), and
//! [`Harvester::retire`] exports what that final value adds to the last harvest's.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{IterableMap as _, MapData, PerCpuHashMap};
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
    /// Last values of the keys the last harvest asked to delete, until [`Harvester::retire`].
    retiring: HashMap<OwnerKey, V>,
}

impl<V> Default for Harvester<V> {
    fn default() -> Self {
        Self {
            seen: HashMap::new(),
            retiring: HashMap::new(),
        }
    }
}

/// Result of one harvest.
pub struct Harvest<V> {
    pub deltas: Vec<(OwnerKey, V)>,
    /// Keys to delete from the kernel map: each with [`take_per_cpu`] (or another atomic
    /// read-and-delete), its final value then handed to [`Harvester::retire`].
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
        // Keys a caller asked to delete but never retired count as gone.
        self.retiring.clear();
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
            if let Some(seen) = self.seen.remove(key) {
                self.retiring.insert(*key, seen.last);
            }
        }
        // Keys that vanished from the map (deleted elsewhere) must not keep stale baselines.
        self.seen.retain(|k, _| present.contains(k));
        Harvest { deltas, delete }
    }

    /// What a key deleted by this harvest still adds: `last` is its value at deletion (from an
    /// atomic read-and-delete; `None` when it was already gone), compared with what the
    /// harvest read. `None` when nothing was added.
    pub fn retire(&mut self, key: &OwnerKey, last: Option<V>) -> Option<V> {
        let read = self.retiring.remove(key)?;
        let d = last?.delta(&read);
        (d != V::default()).then_some(d)
    }
}

// ---------------------------------------------------------------------------------------------
// Deleting a key with its final value
// ---------------------------------------------------------------------------------------------

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (include/uapi/linux/bpf.h); hash maps since Linux 5.14.
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// The element part of `union bpf_attr` (`map_fd`, `key`, `value`, `flags`).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Deletes `key` from a per-CPU hash and returns its per-CPU values summed with `add`, read at
/// the moment of deletion in one syscall; `Ok(None)` when the key was not there. Fails with
/// `EINVAL`/`ENOTSUPP` on kernels without the command for hash maps (before 5.14).
pub fn take_per_cpu<V: aya::Pod + Default>(
    map: &PerCpuHashMap<MapData, OwnerKey, V>,
    key: &OwnerKey,
    add: impl Fn(&mut V, &V),
) -> io::Result<Option<V>> {
    // The kernel writes one value per possible CPU, each padded to 8 bytes.
    const {
        assert!(
            size_of::<V>().is_multiple_of(8),
            "per-CPU values are 8-byte strided"
        )
    };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?.get() as usize;
    let mut values = vec![V::default(); cpus];
    let attr = ElemAttr {
        map_fd: map.map().fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: values.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` names a live map fd, a key of the map's key size and a buffer of
    // `cpus` values of the map's (8-byte multiple) value size, which the kernel fills.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            std::ptr::from_ref(&attr),
            size_of::<ElemAttr>(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    let mut total = V::default();
    for v in &values {
        add(&mut total, v);
    }
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use collector_common::tcp::TcpStats;

    use super::*;

    fn key(tgid: u32) -> OwnerKey {
        OwnerKey {
            cgroup_id: 42,
            tgid,
            _pad: 0,
        }
    }

    fn closes(n: u64) -> TcpStats {
        TcpStats {
            closes: n,
            ..Default::default()
        }
    }

    /// The kernel counted 2 more closes between the harvest's read (5) and the deletion (7):
    /// they are exported, not lost; a key already gone, or unchanged, adds nothing.
    #[test]
    fn a_deleted_key_exports_what_it_counted_after_the_read() {
        let mut h = Harvester::<TcpStats>::default();
        let dead = |_| false;
        for _ in 0..2 {
            assert!(h.harvest(&[(key(7), closes(5))], dead).delete.is_empty());
        }
        let r = h.harvest(&[(key(7), closes(5))], dead);
        assert_eq!(r.delete, vec![key(7)]);
        assert_eq!(h.retire(&key(7), Some(closes(7))), Some(closes(2)));
        assert_eq!(h.retire(&key(7), Some(closes(7))), None, "retired once");

        let mut h = Harvester::<TcpStats>::default();
        for _ in 0..3 {
            h.harvest(&[(key(7), closes(5)), (key(8), closes(1))], dead);
        }
        assert_eq!(h.retire(&key(7), Some(closes(5))), None, "unchanged");
        assert_eq!(h.retire(&key(8), None), None, "already gone");
        // Recreated by the kernel after the deletion: counted whole by the next harvest.
        let r = h.harvest(&[(key(7), closes(1))], dead);
        assert_eq!(r.deltas, vec![(key(7), closes(1))]);
    }
}

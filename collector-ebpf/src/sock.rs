//! Reading `struct sock` without CO-RE: offsets come from userspace (see `globals`), reads go
//! through `bpf_probe_read_kernel`, which works in every program type.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
};
use collector_common::{
    maps::KernelDrop,
    tcp::{ANNOUNCE_CHECK_SENDS, OwnerKey, SockOwner, state},
};

use crate::{
    emit::{REANNOUNCE_NS, announce_process},
    globals::{CGRP_KN_OFF, KN_ID_OFF, SK_CGRP_OFF, SK_STATE_OFF},
    klog::klog,
    maps::{SOCK_OWNERS, count_drop},
};

#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies with fault handling; a bad address yields Err.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

/// `sk->sk_cgrp_data.cgroup->kn->id`: the cgroup v2 id the socket was created in. Accepted
/// sockets inherit the listener's. Right in softirq context, unlike the current task.
#[inline(always)]
pub fn sk_cgroup_id(sk: u64) -> u64 {
    let (cg_off, kn_off, id_off) = (SK_CGRP_OFF.load(), CGRP_KN_OFF.load(), KN_ID_OFF.load());
    if cg_off == 0 || kn_off == 0 {
        return 0;
    }
    let id = read::<u64>(sk, cg_off)
        .and_then(|cgrp| read::<u64>(cgrp, kn_off))
        .and_then(|kn| read::<u64>(kn, id_off));
    match id {
        Some(id) => id,
        None => {
            count_drop(KernelDrop::CgroupRead);
            klog!(
                Warn,
                "cgroup_read_failed: sk_cgrp_data.cgroup->kn->id unreadable (offsets {}, {}, {})",
                cg_off,
                kn_off,
                id_off
            );
            0
        }
    }
}

/// `sk->skc_state`. Hooks may be handed a timewait or request socket (`tcp:tcp_send_reset`
/// gets the timewait socket that answers a segment with a reset on ≥ 6.10), which share only
/// `sock_common` with a full `struct sock`: fields past it (`sk_cgrp_data`, `sk_err`) would be
/// read from whatever memory follows. `skc_state` is in `sock_common`, readable in all three,
/// and tells them apart (the kernel's `sk_fullsock()`). None: offset unknown or unreadable,
/// which the caller treats as not full.
#[inline(always)]
fn sk_state(sk: u64) -> Option<u8> {
    match SK_STATE_OFF.load() {
        0 => None,
        off => read::<u8>(sk, off),
    }
}

/// The owner key of a socket, in any context. A socket that is not a full socket has no
/// readable owner: charged to `OwnerKey::NO_SOCKET` (exported as unattributed) and counted.
#[inline(always)]
pub fn owner_of(sk: u64) -> OwnerKey {
    let st = sk_state(sk);
    if !st.is_some_and(|s| state::is_full(s as i32)) {
        count_drop(KernelDrop::NotFullSocket);
        match st {
            Some(s) => klog!(
                Info,
                "not_full_socket: socket in state {} has no readable owner, charged to unattributed",
                s
            ),
            None => klog!(
                Warn,
                "not_full_socket: socket state unreadable, charged to unattributed"
            ),
        }
        return OwnerKey::NO_SOCKET;
    }
    let mut cgroup_id = sk_cgroup_id(sk);
    let mut tgid = 0;
    // SAFETY: value copied out immediately; LRU entries may be recycled concurrently, which
    // at worst attributes one event to the socket's previous owner.
    if let Some(owner) = unsafe { SOCK_OWNERS.get(&sk) } {
        tgid = owner.tgid;
        // Root cgroup (1) or unreadable: the workload is not in the unified hierarchy;
        // the task's cgroup recorded in process context is the better answer.
        if cgroup_id <= 1 && owner.cgroup_id > cgroup_id {
            cgroup_id = owner.cgroup_id;
        }
    }
    OwnerKey {
        cgroup_id,
        tgid,
        _pad: 0,
    }
}

/// Records the current process as the socket's owner. Process context only. Returns the
/// owner key to charge.
///
/// Runs on every TCP send, so the common case — the process that sent on this socket before
/// sends again — is one lookup: the charged cgroup is kept in the entry (three kernel reads
/// and a helper call less per send: `sock_send_length` went from about 430 to about 235 ns per
/// hit here, see BENCHMARKS.md).
#[inline(always)]
pub fn record_owner(sk: u64) -> OwnerKey {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(p) = SOCK_OWNERS.get_ptr_mut(&sk) {
        // SAFETY: a live element; concurrent senders on one socket write the same values.
        let o = unsafe { &mut *p };
        if o.tgid == tgid && o.charged_cgroup != 0 {
            // The re-announcement is due every 30 s, so the clock (a helper call, ~25 ns with
            // this machine's return thunks) is only read every `ANNOUNCE_CHECK_SENDS` sends.
            o.sends_unchecked = o.sends_unchecked.wrapping_add(1);
            if o.sends_unchecked >= ANNOUNCE_CHECK_SENDS {
                o.sends_unchecked = 0;
                // SAFETY: plain helper.
                let now = unsafe { bpf_ktime_get_ns() };
                if now.wrapping_sub(o.announced_ns) >= REANNOUNCE_NS {
                    o.announced_ns = now;
                    announce_process(tgid, now);
                }
            }
            return OwnerKey {
                cgroup_id: o.charged_cgroup,
                tgid,
                _pad: 0,
            };
        }
    }
    // SAFETY: plain helpers.
    let (task_cgroup, now) = unsafe { (bpf_get_current_cgroup_id(), bpf_ktime_get_ns()) };
    let mut cgroup_id = sk_cgroup_id(sk);
    if cgroup_id <= 1 && task_cgroup > cgroup_id {
        cgroup_id = task_cgroup;
    }
    let owner = SockOwner {
        tgid,
        sends_unchecked: 0,
        cgroup_id: task_cgroup,
        charged_cgroup: cgroup_id,
        announced_ns: now,
    };
    if let Err(e) = SOCK_OWNERS.insert(&sk, &owner, 0) {
        count_drop(KernelDrop::OwnerInsert);
        klog!(
            Warn,
            "owner_insert_failed: SOCK_OWNERS insert for process {} failed with {}",
            tgid,
            e
        );
    }
    announce_process(tgid, now);
    OwnerKey {
        cgroup_id,
        tgid,
        _pad: 0,
    }
}

#[inline(always)]
pub fn forget(sk: u64) {
    let _ = SOCK_OWNERS.remove(&sk);
}

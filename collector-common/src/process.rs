//! A process seen by a kernel hook for the first time (or again after its entry aged out).
//!
//! Why: short-lived processes are gone from /proc before userspace can look at them; the record
//! carries what attribution needs (tgid, its cgroup, its name) at the moment it was seen.

use crate::{assert_layout, event::EventHeader, impl_pod};

pub const COMM_LEN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub _pad: u32,
    /// cgroup v2 id (inode of the cgroup2 directory) of the task, from
    /// `bpf_get_current_cgroup_id()`; process context only.
    pub cgroup_id: u64,
    /// `task->comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}
assert_layout!(ProcessEvent, 48);
impl_pod!(ProcessEvent);

const _: () = assert!(core::mem::offset_of!(ProcessEvent, header) == 0);

/// A process called execve: userspace checks whether it is a Go server to instrument, so its
/// first requests are seen (the periodic /proc scan is the safety net).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub _pad: u32,
}
assert_layout!(ExecEvent, 24);
impl_pod!(ExecEvent);

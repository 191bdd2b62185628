//! The kernel/user ABI of the collector, defined once.
//!
//! Everything that crosses the kernel/user seam lives here: ring-buffer event layouts, map keys
//! and values, map and global names. Layouts are `#[repr(C)]` with explicit padding, no `bool`,
//! enum or pointer fields, and compile-time size/offset assertions, so the eBPF object and the
//! daemon cannot disagree silently. The `user` feature implements `aya::Pod` for the daemon.
#![no_std]

pub mod event;
pub mod globals;
pub mod grpc;
pub mod http;
pub mod maps;
pub mod process;
pub mod router;
pub mod tcp;

/// The attach cookie of every Go uprobe link (net/http, gRPC, routers): the slot of the
/// link's table entry (`GoHttpOffsets`, `GrpcOffsets`, `RouterSpec`) and the generation
/// (`valid`) the slot held when the link was made.
///
/// Why the generation: links are detached on a reaper thread (a uprobe's unregistration waits
/// for RCU, milliseconds each), so a slot is filled again — for another binary, or another
/// router of the same one — while the old links still fire. A link whose generation is no
/// longer its slot's is stale and does nothing; with the slot alone it read memory at the
/// new entry's offsets, beside the live link of the same point.
pub mod cookie {
    /// A flag in the slot word (slots are far fewer than 2^31): the net/http uprobes of this
    /// link count only the requests the socket parser cannot read (TLS, HTTP/2); plaintext
    /// HTTP/1.x requests are the parser's (`--go-http-uprobes auto`). In the cookie, not in
    /// the offsets slot: a link whose slot was emptied must still not count them twice.
    pub const UNSEEN_ONLY: u32 = 1 << 31;

    pub const fn encode(slot: u32, generation: u32) -> u64 {
        ((generation as u64) << 32) | slot as u64
    }

    /// (slot, generation), without the flags.
    pub const fn decode(cookie: u64) -> (u32, u32) {
        (cookie as u32 & !UNSEEN_ONLY, (cookie >> 32) as u32)
    }

    pub const fn unseen_only(cookie: u64) -> bool {
        cookie as u32 & UNSEEN_ONLY != 0
    }

    /// A link of `generation` whose slot holds `valid` now is stale: it fires beside the live
    /// link of the same point until the reaper detaches it, and must do nothing. An emptied
    /// slot (0) is no other generation: what ends on it is still counted, without reading.
    pub const fn is_stale(generation: u32, valid: u32) -> bool {
        valid != 0 && valid != generation
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_cookie_is_its_slot_and_generation() {
            assert_eq!(decode(encode(7, u32::MAX)), (7, u32::MAX));
            assert_eq!(decode(encode(UNSEEN_ONLY - 1, 1)), (UNSEEN_ONLY - 1, 1));
            assert_eq!(decode(encode(7 | UNSEEN_ONLY, 3)), (7, 3));
            assert!(unseen_only(encode(7 | UNSEEN_ONLY, 3)));
            assert!(!unseen_only(encode(7, u32::MAX)));
            assert!(is_stale(1, 2));
            assert!(!is_stale(2, 2));
            assert!(!is_stale(2, 0));
        }
    }
}

/// Compile-time layout check used by every ABI type: size and 8-byte alignment (the ring
/// buffer's `reserve::<T>()` requires `align_of::<T>() <= 8`).
#[macro_export]
macro_rules! assert_layout {
    ($t:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        const _: () = assert!(core::mem::align_of::<$t>() <= 8);
        const _: () = assert!(core::mem::size_of::<$t>() % 8 == 0);
    };
}

/// Marks ABI types as plain old data for aya on the userspace side.
#[macro_export]
macro_rules! impl_pod {
    ($($t:ty),+ $(,)?) => {
        $(
            // SAFETY: every type passed here is #[repr(C)], Copy, has explicit padding fields
            // (checked by assert_layout!) and no invalid bit patterns.
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $t {}
        )+
    };
}

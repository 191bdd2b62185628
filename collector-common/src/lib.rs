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

//! Kernel side of the collector: every hook variant of every signal, in one object.
//!
//! `Ebpf::load` creates the maps but loads no program; userspace then walks each signal's
//! ladder (kprobe → fentry → tp_btf → raw_tp → tracepoint by default), loading and attaching
//! rungs until one works. Unused variants cost nothing.
#![no_std]
#![no_main]
// Inline asm on the BPF target: an optimisation barrier the verifier needs (see
// `http_wire::opaque`). The object is built with the pinned nightly.
#![feature(asm_experimental_arch)]

/// Each uprobe twice: a per-point uprobe (any kernel) and a `uprobe.multi` variant (≥ 6.6)
/// whose single link for all points detaches in one step instead of one RCU grace period per
/// point. Defined before the modules that use it (`http`, `grpc`).
macro_rules! uprobes {
    ($($name:ident, $multi:ident => $imp:ident;)+) => {
        $(
            #[uprobe]
            pub fn $name(ctx: ProbeContext) -> u32 {
                $imp(ctx)
            }

            #[uprobe(multi)]
            pub fn $multi(ctx: ProbeContext) -> u32 {
                $imp(ctx)
            }
        )+
    };
}

mod emit;
mod globals;
mod grpc;
mod http;
mod http_wire;
mod klog;
mod maps;
mod router;
mod sock;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

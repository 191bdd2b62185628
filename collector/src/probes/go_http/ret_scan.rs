//! Every return of a Go function, found by decoding its instructions.
//!
//! Go moves goroutine stacks, so a uretprobe (which rewrites the return address on the stack)
//! corrupts it (golang/go#22008). Instead we put an ordinary uprobe on each RET. The RETs are
//! found by decoding x86-64 from the function's entry to its end with a real decoder (iced-x86):
//! the byte 0xC3 also occurs inside other instructions' operands, so a byte scan would put a
//! breakpoint in the middle of an instruction and crash the process.
//!
//! Linear decoding is sound for Go code on amd64: the compiler puts no data in text (jump
//! tables live in rodata) and pads between functions with INT3. Anything the decoder rejects
//! makes the whole scan fail.
//!
//! The scan also reports what the caller needs to trust the entry address:
//! - tail calls: jumps that leave the function (a return through them is invisible to us);
//! - the morestack back-edge: Go's stack-growth path ends in a jump back to the function's
//!   first instruction, so a jump whose target is exactly the presumed entry proves the entry
//!   is right (a shifted entry would decode other bytes and not find it).
//!
//! And where an entry probe goes: past the stack-bound check (`body`). The morestack path
//! re-runs the function from its first instruction, and it is taken not only when the stack
//! must grow but whenever the runtime asks the goroutine to stop at its next call (preemption,
//! GC stack scans: `stackguard0 = stackPreempt`). A breakpoint on the first instruction then
//! fires twice for one call: grpc-go's status write was counted twice (in one run each: 1 extra
//! in 3,600 calls on a plain server, 9 and 4 in 3,600 with `GOGC=1 GODEBUG=asyncpreemptoff=1`,
//! grpc-go 1.85 and 1.57). The check only writes R12 and the flags, so the arguments are in
//! their registers past it too.

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic, OpKind};
use thiserror::Error;

/// Why a function's bytes could not be scanned.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScanError {
    #[error("no bytes to decode")]
    Empty,
    #[error("invalid instruction at +{offset:#x}")]
    Invalid { offset: u64 },
    #[error("instruction at +{offset:#x} runs past the function end (+{len:#x})")]
    PastEnd { offset: u64, len: u64 },
}

/// The result of scanning one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetScan {
    /// Offsets of every RET, relative to the entry, ascending.
    pub rets: Vec<u64>,
    /// Offsets of jumps whose target is outside the function (or unknown: indirect jumps).
    pub tail_calls: Vec<u64>,
    /// Some jump targets the entry (Go's morestack loop).
    pub jumps_to_entry: bool,
    /// The first instruction's length.
    pub entry_len: usize,
    /// Offset of the first instruction past Go's stack-bound check (`CMP RSP|R12, [R14+16]`
    /// and its conditional jump into the function, after the `LEA`/`MOV`/`SUB` into R12 that
    /// larger frames compute first); 0 when the function starts otherwise (`NOSPLIT`) or a
    /// jump in the function targets that instruction.
    pub body: u64,
    /// Instructions decoded, padding included.
    pub instructions: usize,
}

impl RetScan {
    /// A function without any RET: it only leaves through tail calls (or never returns).
    pub fn has_no_ret(&self) -> bool {
        self.rets.is_empty()
    }
}

/// Decodes `code`, the bytes of a function whose entry is at virtual address `entry`.
pub fn scan(code: &[u8], entry: u64) -> Result<RetScan, ScanError> {
    if code.is_empty() {
        return Err(ScanError::Empty);
    }
    let len = code.len() as u64;
    let end = entry.saturating_add(len);
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut out = RetScan {
        rets: Vec::new(),
        tail_calls: Vec::new(),
        jumps_to_entry: false,
        entry_len: 0,
        instructions: 0,
        body: 0,
    };
    let mut prologue = Prologue::Open { compared: false };
    let mut body_is_a_target = false;
    while decoder.can_decode() {
        let offset = decoder.position() as u64;
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            // A truncated final instruction also decodes as invalid.
            return Err(if decoder.last_error() == DecoderError::NoMoreBytes {
                ScanError::PastEnd { offset, len }
            } else {
                ScanError::Invalid { offset }
            });
        }
        if out.instructions == 0 {
            out.entry_len = instr.len();
        }
        out.instructions += 1;
        if let Prologue::Open { compared } = prologue {
            prologue = prologue_step(&instr, compared, entry..end);
            if prologue == Prologue::Closed {
                out.body = decoder.position() as u64;
            }
        }
        let mnemonic = instr.mnemonic();
        let direct_branch = instr.op_count() > 0
            && matches!(
                instr.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            );
        if mnemonic == Mnemonic::Ret {
            out.rets.push(offset);
        } else if direct_branch && mnemonic != Mnemonic::Call {
            // JMP, Jcc, LOOP*, JRCXZ.
            let target = instr.near_branch_target();
            if target == entry {
                out.jumps_to_entry = true;
            }
            if out.body != 0 && target == entry + out.body {
                body_is_a_target = true;
            }
            if !(entry..end).contains(&target) {
                out.tail_calls.push(offset);
            }
        } else if mnemonic == Mnemonic::Jmp {
            // Through a register or memory: the target is unknown.
            out.tail_calls.push(offset);
        }
    }
    if body_is_a_target {
        // A loop back to it would fire the probe once per iteration: the first instruction,
        // run again only by morestack (which the kernel side tolerates), is the lesser harm.
        out.body = 0;
    }
    Ok(out)
}

/// Where the decoder stands in Go's stack-bound check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prologue {
    /// Still in it; `compared` once the `CMP` against the goroutine's stack guard was seen.
    Open { compared: bool },
    /// Its final jump was just decoded: the next instruction is the body.
    Closed,
    /// The function does not start with one.
    Absent,
}

/// The stack guard's offset in the goroutine (`g.stackguard0`, R14 = g): the same on every Go
/// version with the register ABI (1.17+).
const STACKGUARD0: i64 = 16;

/// One instruction of a function's start against Go's prologue shapes (cmd/internal/obj/x86
/// `stacksplit`): small frames `CMP RSP, [R14+16]; JBE`, larger ones `LEA R12, [RSP-n]` first,
/// the largest `MOV R12, RSP; SUB R12, n; JB` first.
fn prologue_step(instr: &Instruction, compared: bool, function: std::ops::Range<u64>) -> Prologue {
    use iced_x86::Register;
    let reg = |i: u32| instr.op_kind(i) == OpKind::Register;
    let reg_is = |i: u32, r: Register| reg(i) && instr.op_register(i) == r;
    match instr.mnemonic() {
        Mnemonic::Cmp
            if !compared
                && (reg_is(0, Register::RSP) || reg_is(0, Register::R12))
                && instr.op1_kind() == OpKind::Memory
                && instr.memory_base() == Register::R14
                && instr.memory_index() == Register::None
                && instr.memory_displacement64() as i64 == STACKGUARD0 =>
        {
            Prologue::Open { compared: true }
        }
        Mnemonic::Lea
            if !compared
                && reg_is(0, Register::R12)
                && instr.memory_base() == Register::RSP
                && instr.memory_index() == Register::None =>
        {
            Prologue::Open { compared }
        }
        Mnemonic::Mov if !compared && reg_is(0, Register::R12) && reg_is(1, Register::RSP) => {
            Prologue::Open { compared }
        }
        Mnemonic::Sub
            if !compared
                && reg_is(0, Register::R12)
                && matches!(
                    instr.op1_kind(),
                    OpKind::Immediate32to64 | OpKind::Immediate8to64
                ) =>
        {
            Prologue::Open { compared }
        }
        // The jumps go to the morestack block at the function's end.
        Mnemonic::Jbe if compared && function.contains(&instr.near_branch_target()) => {
            Prologue::Closed
        }
        // The largest frames' `JB` (the subtraction wrapped) comes before the CMP.
        Mnemonic::Jb if !compared && function.contains(&instr.near_branch_target()) => {
            Prologue::Open { compared }
        }
        _ => Prologue::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c3_inside_an_operand_is_not_a_ret() {
        // mov eax, 0xc3c3c3c3 ; ret
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3];
        let s = scan(&code, 0x1000).unwrap();
        assert_eq!(s.rets, vec![5]);
        assert_eq!(s.instructions, 2);
        assert_eq!(s.entry_len, 5);
    }

    #[test]
    fn go_prologue_back_edge_and_padding() {
        // 0: cmp rsp, [r14+0x10]   49 3b 66 10
        // 4: jbe +2 (-> 8)         76 02
        // 6: ret                   c3
        // 7: int3                  cc
        // 8: call rel32 0          e8 00 00 00 00
        // d: jmp -15 (-> 0)        eb f1
        // f: int3                  cc
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x76, 0x02, 0xc3, 0xcc, 0xe8, 0, 0, 0, 0, 0xeb, 0xf1, 0xcc,
        ];
        let s = scan(&code, 0x40_0000).unwrap();
        assert_eq!(s.rets, vec![6]);
        assert_eq!(s.body, 6, "the entry probe goes past the JBE");
        assert!(s.jumps_to_entry);
        assert!(s.tail_calls.is_empty());
        // Shifted by one byte the back edge no longer hits the presumed entry.
        if let Ok(shifted) = scan(&code[1..], 0x40_0001) {
            assert!(!shifted.jumps_to_entry);
        }
    }

    /// A function of the given start, then `push rbp; ret`, the morestack block (`call 0;
    /// jmp entry`) and padding: where its body starts.
    fn body_after(start: &[u8]) -> u64 {
        let mut code = start.to_vec();
        let jumps: Vec<usize> = (0..code.len())
            .filter(|&i| {
                code[i..].starts_with(&[0x0f, 0x86]) || code[i..].starts_with(&[0x0f, 0x82])
            })
            .collect();
        code.extend([0x55, 0xc3]);
        let morestack = code.len();
        code.extend([0xe8, 0, 0, 0, 0, 0xe9]);
        let back = -(code.len() as i32 + 4);
        code.extend(back.to_le_bytes());
        code.push(0xcc);
        // Every rel32 Jcc of the start goes to the morestack block.
        for j in jumps {
            let rel = (morestack - (j + 6)) as i32;
            code[j + 2..j + 6].copy_from_slice(&rel.to_le_bytes());
        }
        let s = scan(&code, 0x40_0000).unwrap();
        assert!(s.jumps_to_entry);
        s.body
    }

    #[test]
    fn entry_probes_go_past_each_stack_check_shape() {
        const CMP_R12: [u8; 4] = [0x4d, 0x3b, 0x66, 0x10];
        const JBE: [u8; 6] = [0x0f, 0x86, 0, 0, 0, 0];
        // lea r12, [rsp-0x1d0]; cmp r12, [r14+0x10]; jbe (grpc-go's writeStatus)
        let lea = [0x4c, 0x8d, 0xa4, 0x24, 0x30, 0xfe, 0xff, 0xff];
        assert_eq!(body_after(&[&lea[..], &CMP_R12, &JBE].concat()), 18);
        // mov r12, rsp; sub r12, 0x1fa8; jb; cmp r12, [r14+0x10]; jbe (frames over 4 KiB)
        let huge = [0x49, 0x89, 0xe4, 0x49, 0x81, 0xec, 0xa8, 0x1f, 0, 0];
        let jb = [0x0f, 0x82, 0, 0, 0, 0];
        assert_eq!(body_after(&[&huge[..], &jb, &CMP_R12, &JBE].concat()), 26);
        // NOSPLIT: no check, the probe stays on the first instruction.
        assert_eq!(scan(&[0x55, 0xc3], 0x1000).unwrap().body, 0);
        // A compare against another goroutine field is not the check.
        let other = [0x4d, 0x3b, 0x66, 0x18];
        assert_eq!(body_after(&[&lea[..], &other, &JBE].concat()), 0);
        // Nor a jump before any compare but the largest frames' JB.
        assert_eq!(body_after(&[&JBE[..], &CMP_R12].concat()), 0);
        // A body that a jump re-enters (a loop) keeps the probe on the first instruction:
        // cmp rsp, [r14+0x10]; jbe +3 (-> morestack); push rbp; jmp -3 (-> the push);
        // morestack: call 0; jmp entry.
        let looped = [
            0x49, 0x3b, 0x66, 0x10, 0x76, 0x03, 0x55, 0xeb, 0xfd, 0xe8, 0, 0, 0, 0, 0xeb, 0xf0,
        ];
        let s = scan(&looped, 0x40_0000).unwrap();
        assert!(s.jumps_to_entry);
        assert_eq!(s.body, 0);
    }

    #[test]
    fn tail_call_and_no_ret() {
        // jmp rel32 far away ; int3
        let code = [0xe9, 0x00, 0x10, 0x00, 0x00, 0xcc];
        let s = scan(&code, 0x1000).unwrap();
        assert!(s.has_no_ret());
        assert_eq!(s.tail_calls, vec![0]);
        // jmp rax
        let s = scan(&[0xff, 0xe0], 0x1000).unwrap();
        assert_eq!(s.tail_calls, vec![0]);
    }

    #[test]
    fn truncated_and_invalid() {
        assert_eq!(scan(&[], 0), Err(ScanError::Empty));
        // mov eax, imm32 cut short
        assert!(matches!(
            scan(&[0xb8, 0x01], 0),
            Err(ScanError::PastEnd { .. })
        ));
        // 0x06 (push es) is invalid in 64-bit mode
        assert!(matches!(
            scan(&[0x90, 0x06, 0x90, 0x90], 0),
            Err(ScanError::Invalid { offset: 1 })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut buf = [0u8; 64];
            for b in &mut buf {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let _ = scan(&buf[..(x as usize % 65)], x);
        }
    }
}

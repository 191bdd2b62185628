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
    };
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
            if !(entry..end).contains(&target) {
                out.tail_calls.push(offset);
            }
        } else if mnemonic == Mnemonic::Jmp {
            // Through a register or memory: the target is unknown.
            out.tail_calls.push(offset);
        }
    }
    Ok(out)
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
        assert!(s.jumps_to_entry);
        assert!(s.tail_calls.is_empty());
        // Shifted by one byte the back edge no longer hits the presumed entry.
        if let Ok(shifted) = scan(&code[1..], 0x40_0001) {
            assert!(!shifted.jumps_to_entry);
        }
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

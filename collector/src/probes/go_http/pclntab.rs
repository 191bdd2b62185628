//! Function bounds from the Go runtime's own symbol table, `.gopclntab`.
//!
//! `-ldflags=-s -w` removes `.symtab` and DWARF but the runtime needs pclntab for stack traces,
//! so it is in every Go binary. Layout since Go 1.18 (runtime `pcHeader`, pointer size 8):
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic: 0xfffffff0 (1.18, 1.19) or 0xfffffff1 (1.20+) |
//! | 4, 5 | zero padding |
//! | 6 | minimum instruction size (1 on amd64) |
//! | 7 | pointer size |
//! | 8 | number of functions |
//! | 24 | text start: the address function entry offsets are relative to (`runtime.text`) |
//! | 32 | offset of the function name table |
//! | 64 | offset of the function table |
//!
//! The function table holds `nfunc + 1` pairs of u32 `(entry offset from text start, offset of
//! the _func record from the function table)`; the last entry offset is the end of the last
//! function. A `_func` record starts with its u32 entry offset (again) and the i32 offset of its
//! NUL-terminated name in the name table. A function ends where the next one starts (Go pads
//! between functions with INT3 on amd64).
//!
//! Text start is a pointer, so in a PIE it is relocated at load time: the file may hold 0
//! there, with the value in an `R_X86_64_RELATIVE` relocation. We take it from the header,
//! then from that relocation, then from the `runtime.text` symbol — never from the `.text`
//! section, which starts earlier than Go's text in externally linked binaries.
//!
//! Go 1.16 and 1.17 (magic 0xfffffffa) have no text start: the header is the same up to the
//! function count, then holds, from offset 24, the offsets of the name table, cu table, file
//! table, pc table and (at 56) the function table. Function table entries are pointer-sized
//! pairs `(entry address, offset of the _func record)`, the last entry address being the end
//! of the last function, and a `_func` starts with its entry address (again) and, at +8, the
//! i32 name offset. Those addresses are absolute, hence relocated in a PIE like the text start
//! above: a 0 in the file is read from its relocation. Only 1.17 is supported by the uprobes
//! (the first register-ABI Go); the caller tells the two apart by the build info's version.

use super::{
    GoBinaryError,
    elf::{Elf, c_str, le_u32, le_u64, malformed},
};

/// Go 1.16 and 1.17.
const MAGIC_116: u32 = 0xffff_fffa;
pub(crate) const MAGIC_118: u32 = 0xffff_fff0;
pub(crate) const MAGIC_120: u32 = 0xffff_fff1;
/// The Go 1.2–1.15 layout, recognised only to say so.
const MAGIC_12: u32 = 0xffff_fffb;

/// A function as pclntab describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PclnFunc {
    pub name: String,
    pub entry: u64,
    pub end: u64,
}

/// The parsed table.
#[derive(Debug)]
pub struct Pclntab {
    /// The virtual address of the table's header.
    pub vaddr: u64,
    /// Where the text start came from.
    pub text_start: TextStart,
    pub funcs: Vec<PclnFunc>,
}

/// The text start and how it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextStart {
    /// The header field, as stored in the file.
    Header(u64),
    /// The header field was unrelocated (0); its `R_X86_64_RELATIVE` addend.
    Relocation(u64),
    /// The header field is 0 (Go 1.26+ leaves it so); `text` of the `runtime.moduledata`
    /// that points at this table.
    Moduledata(u64),
    /// The `runtime.text` symbol of `.symtab`.
    RuntimeTextSymbol(u64),
    /// Go 1.16–1.17: the table holds absolute entry addresses, relative to nothing.
    Absolute,
}

impl TextStart {
    pub fn addr(self) -> u64 {
        match self {
            Self::Header(a)
            | Self::Relocation(a)
            | Self::Moduledata(a)
            | Self::RuntimeTextSymbol(a) => a,
            Self::Absolute => 0,
        }
    }
}

/// The sections the table may live in.
const SECTIONS: [&str; 2] = [".gopclntab", ".data.rel.ro.gopclntab"];

/// The first 4 bytes of the pclntab section, when the file has one: a cheap Go check that
/// comes before reading anything large.
pub(crate) fn section_magic(elf: &Elf) -> Result<Option<u32>, GoBinaryError> {
    let Some(s) = SECTIONS.iter().find_map(|n| elf.section(n)) else {
        return Ok(None);
    };
    if s.size < 4 {
        return Ok(Some(0));
    }
    let head = elf.read(s.offset, 4, ".gopclntab header")?;
    Ok(Some(le_u32(&head, 0)))
}

/// Any pclntab magic Go ever wrote (1.2 through 1.20+).
pub(crate) fn is_go_magic(magic: u32) -> bool {
    [MAGIC_12, MAGIC_116, MAGIC_118, MAGIC_120].contains(&magic)
}

/// The magics we parse; older ones are unsupported, anything else is not a pclntab.
pub(crate) fn check_magic(magic: u32) -> Result<(), GoBinaryError> {
    if magic == MAGIC_12 {
        return Err(GoBinaryError::UnsupportedGo {
            reason: "pclntab predates Go 1.16",
        });
    }
    if ![MAGIC_116, MAGIC_118, MAGIC_120].contains(&magic) {
        return Err(malformed("pclntab magic is not a Go 1.16+ one"));
    }
    Ok(())
}

/// Where the table is: its section (`.gopclntab`; `.data.rel.ro.gopclntab` in some PIEs), or
/// the `runtime.pclntab` symbol's address.
fn locate(
    elf: &Elf,
    runtime_pclntab: Option<u64>,
) -> Result<Option<(u64, Vec<u8>)>, GoBinaryError> {
    for name in SECTIONS {
        if let Some(s) = elf.section(name) {
            return Ok(Some((s.addr, elf.section_data(s, ".gopclntab")?)));
        }
    }
    if let Some(vaddr) = runtime_pclntab {
        // The symbol has no reliable size: take the rest of its segment.
        let seg = elf.load_segment_for(vaddr, vaddr.saturating_add(1)).ok_or(
            GoBinaryError::Unmapped {
                what: "runtime.pclntab",
                vaddr,
            },
        )?;
        let len = seg.vaddr + seg.filesz - vaddr;
        return Ok(Some((vaddr, elf.read_vaddr(vaddr, len, ".gopclntab")?)));
    }
    Ok(None)
}

/// Parses the table, or `Ok(None)` when the binary has none.
///
/// `runtime_pclntab` and `runtime_text` are those symbols' addresses from `.symtab`, if any.
pub(crate) fn read(
    elf: &Elf,
    runtime_pclntab: Option<u64>,
    runtime_text: Option<u64>,
) -> Result<Option<Pclntab>, GoBinaryError> {
    let Some((vaddr, data)) = locate(elf, runtime_pclntab)? else {
        return Ok(None);
    };
    let magic = le_u32(&data, 0);
    check_magic(magic)?;
    if data.get(4..8) != Some(&[0, 0, 1, 8][..]) {
        return Err(malformed(
            "pclntab header is not amd64 (quantum 1, pointer size 8)",
        ));
    }
    if magic == MAGIC_116 {
        let relocs = elf.relative_relocations()?;
        return read_116(&data, vaddr, &relocs).map(|funcs| {
            Some(Pclntab {
                vaddr,
                text_start: TextStart::Absolute,
                funcs,
            })
        });
    }
    if data.len() < 72 {
        return Err(malformed("pclntab header is truncated"));
    }
    let nfunc = le_u64(&data, 8);
    let header_text = le_u64(&data, 24);
    let funcname_off = le_u64(&data, 32);
    let functab_off = le_u64(&data, 64);

    let relocs = elf.relative_relocations()?;
    let text_start = if header_text != 0 {
        TextStart::Header(header_text)
    } else if let Some(addend) = relocated(&relocs, vaddr.saturating_add(24)) {
        TextStart::Relocation(addend)
    } else if let Some(text) =
        moduledata_text(elf, &relocs, vaddr, funcname_off, &data, functab_off, nfunc)?
    {
        TextStart::Moduledata(text)
    } else if let Some(text) = runtime_text {
        TextStart::RuntimeTextSymbol(text)
    } else {
        return Err(malformed(
            "pclntab text start is 0 and no moduledata or runtime.text names it",
        ));
    };
    let text = text_start.addr();

    // nfunc pairs of 4-byte offsets, then the end offset.
    let table_len = check_tables(
        &data,
        nfunc.checked_add(1).and_then(|n| n.checked_mul(8)),
        functab_off,
        funcname_off,
    )?;
    // Both checked against data.len() above.
    let functab = &data[functab_off as usize..(functab_off + table_len) as usize];
    let names = &data[funcname_off as usize..];

    let mut funcs = Vec::with_capacity(nfunc as usize);
    let mut prev_entry = 0u32;
    for i in 0..nfunc as usize {
        let entry_off = le_u32(functab, i * 8);
        let func_off = le_u32(functab, i * 8 + 4);
        let next_entry_off = le_u32(functab, (i + 1) * 8);
        if entry_off < prev_entry || next_entry_off < entry_off {
            return Err(malformed("pclntab function table is not sorted"));
        }
        prev_entry = entry_off;
        // The _func record, relative to the function table; its name offset at +4.
        let rec = (functab_off as usize).checked_add(func_off as usize);
        let Some(rec) = rec.and_then(|r| data.get(r..r.checked_add(8)?)) else {
            return Err(malformed("pclntab _func record lies outside the table"));
        };
        if le_u32(rec, 0) != entry_off {
            return Err(malformed(
                "pclntab _func entry disagrees with the function table",
            ));
        }
        let name_off = le_u32(rec, 4) as usize;
        let Some(name) = c_str(names, name_off) else {
            return Err(malformed(
                "pclntab function name lies outside the name table",
            ));
        };
        let (Some(entry), Some(end)) = (
            text.checked_add(u64::from(entry_off)),
            text.checked_add(u64::from(next_entry_off)),
        ) else {
            return Err(malformed("pclntab function address overflows"));
        };
        funcs.push(PclnFunc {
            name: name.to_owned(),
            entry,
            end,
        });
    }
    Ok(Some(Pclntab {
        vaddr,
        text_start,
        funcs,
    }))
}

/// The function table (`table_len` bytes from `functab_off`, None when its size overflowed) and
/// the start of the name table both lie inside `data`: what both table layouts check before
/// slicing. Returns the function table's length.
fn check_tables(
    data: &[u8],
    table_len: Option<u64>,
    functab_off: u64,
    funcname_off: u64,
) -> Result<u64, GoBinaryError> {
    let table_len = table_len.ok_or_else(|| malformed("pclntab function count overflows"))?;
    let len = data.len() as u64;
    if functab_off
        .checked_add(table_len)
        .is_none_or(|end| end > len)
        || funcname_off >= len
    {
        return Err(malformed("pclntab tables lie outside the table"));
    }
    Ok(table_len)
}

/// The functions of a Go 1.16/1.17 table (`data`, at `vaddr`; see the module docs).
fn read_116(
    data: &[u8],
    vaddr: u64,
    relocs: &[(u64, u64)],
) -> Result<Vec<PclnFunc>, GoBinaryError> {
    if data.len() < 64 {
        return Err(malformed("pclntab header is truncated"));
    }
    let nfunc = le_u64(data, 8);
    let funcname_off = le_u64(data, 24);
    let functab_off = le_u64(data, 56);
    // nfunc pairs of 8-byte fields, then the end address.
    check_tables(
        data,
        nfunc.checked_mul(16).and_then(|n| n.checked_add(8)),
        functab_off,
        funcname_off,
    )?;
    // Both checked against data.len() above.
    let (functab_off, funcname_off) = (functab_off as usize, funcname_off as usize);
    let names = &data[funcname_off..];
    // An address stored at `off` in the table: in place, or (0 in the file) its relocation's.
    let address = |off: usize| -> Result<u64, GoBinaryError> {
        match le_u64(data, off) {
            0 => relocated(relocs, vaddr.saturating_add(off as u64))
                .ok_or_else(|| malformed("pclntab entry address is 0 and not relocated")),
            a => Ok(a),
        }
    };

    let mut funcs = Vec::with_capacity(nfunc as usize);
    let mut next_entry = address(functab_off)?;
    for i in 0..nfunc as usize {
        let at = functab_off + i * 16;
        let entry = next_entry;
        let func_off = le_u64(data, at + 8);
        next_entry = address(at + 16)?;
        if next_entry < entry {
            return Err(malformed("pclntab function table is not sorted"));
        }
        // The _func record, relative to the function table: entry address, then name offset.
        let rec = usize::try_from(func_off)
            .ok()
            .and_then(|o| functab_off.checked_add(o))
            .filter(|&r| r.checked_add(12).is_some_and(|end| end <= data.len()));
        let Some(rec) = rec else {
            return Err(malformed("pclntab _func record lies outside the table"));
        };
        if address(rec)? != entry {
            return Err(malformed(
                "pclntab _func entry disagrees with the function table",
            ));
        }
        let name_off = le_u32(data, rec + 8) as usize;
        let Some(name) = c_str(names, name_off) else {
            return Err(malformed(
                "pclntab function name lies outside the name table",
            ));
        };
        funcs.push(PclnFunc {
            name: name.to_owned(),
            entry,
            end: next_entry,
        });
    }
    Ok(funcs)
}

/// The link-time value of the pointer slot at `vaddr`, from its relocation.
fn relocated(relocs: &[(u64, u64)], vaddr: u64) -> Option<u64> {
    relocs
        .binary_search_by_key(&vaddr, |&(at, _)| at)
        .ok()
        .and_then(|i| relocs.get(i))
        .map(|&(_, addend)| addend)
}

/// `runtime.moduledata` field offsets (amd64, unchanged from Go 1.18 through 1.27): the
/// pclntab header pointer, six slices (funcnametab first), findfunctab, then these.
const MD_FUNCNAMETAB: u64 = 8;
const MD_MINPC: u64 = 160;
const MD_MAXPC: u64 = 168;
const MD_TEXT: u64 = 176;
const MD_ETEXT: u64 = 184;
const MD_LEN: u64 = 192;
/// How much of the writable segments we search for the moduledata.
const MD_SEARCH_LIMIT: u64 = 64 << 20;

/// Finds the moduledata whose first field points at the pclntab header (a relocation target in
/// a PIE, a plain pointer otherwise) and returns its `text`, once its `funcnametab`, `minpc` and
/// `maxpc` agree with the table itself.
fn moduledata_text(
    elf: &Elf,
    relocs: &[(u64, u64)],
    pclntab_vaddr: u64,
    funcname_off: u64,
    data: &[u8],
    functab_off: u64,
    nfunc: u64,
) -> Result<Option<u64>, GoBinaryError> {
    let (Some(first), Some(last)) = (
        usize::try_from(functab_off).ok(),
        functab_off
            .checked_add(nfunc.saturating_mul(8))
            .and_then(|o| usize::try_from(o).ok()),
    ) else {
        return Ok(None);
    };
    if data.len() < last.saturating_add(4) {
        return Ok(None);
    }
    let (first_off, last_off) = (
        u64::from(le_u32(data, first)),
        u64::from(le_u32(data, last)),
    );

    let mut candidates: Vec<u64> = relocs
        .iter()
        .filter(|&&(_, addend)| addend == pclntab_vaddr)
        .map(|&(at, _)| at)
        .collect();
    for seg in elf
        .segments
        .iter()
        .filter(|p| p.p_type == super::elf::PT_LOAD && p.flags & super::elf::PF_W != 0)
    {
        let bytes = elf.read(seg.offset, seg.filesz.min(MD_SEARCH_LIMIT), "data segment")?;
        candidates.extend(
            bytes
                .as_chunks::<8>()
                .0
                .iter()
                .enumerate()
                .filter(|(_, w)| u64::from_le_bytes(**w) == pclntab_vaddr)
                .map(|(i, _)| seg.vaddr.saturating_add(i as u64 * 8)),
        );
    }
    for md in candidates {
        let Ok(fields) = elf.read_vaddr(md, MD_LEN, "runtime.moduledata") else {
            continue;
        };
        let ptr = |off: u64| {
            let v = le_u64(&fields, off as usize);
            if v != 0 {
                Some(v)
            } else {
                relocated(relocs, md.saturating_add(off))
            }
        };
        let (Some(names), Some(minpc), Some(maxpc), Some(text), Some(etext)) = (
            ptr(MD_FUNCNAMETAB),
            ptr(MD_MINPC),
            ptr(MD_MAXPC),
            ptr(MD_TEXT),
            ptr(MD_ETEXT),
        ) else {
            continue;
        };
        if Some(names) == pclntab_vaddr.checked_add(funcname_off)
            && text.checked_add(first_off) == Some(minpc)
            && text.checked_add(last_off) == Some(maxpc)
            && maxpc <= etext
        {
            return Ok(Some(text));
        }
    }
    Ok(None)
}

//! ELF64 little-endian access for the Go binary analysis: headers, program headers, section
//! headers, `.symtab` and `.rela*`, decoded with the `object` crate's ELF types over bytes read
//! from the file under a budget.
//!
//! Every exec on the node is looked at, so this reads hostile files as root. Two rules:
//!
//! - **Bounded reads, counted.** Every read is checked against the file size, against
//!   [`MAX_READ`] (one section) and against the per-binary [`READ_BUDGET`] *before* anything is
//!   allocated, and [`Elf::spent`] says what was read. A sparse file whose `.symtab` claims
//!   64 GiB is refused in microseconds with [`GoBinaryError::OverBudget`], where a check
//!   against the file size alone would have let the agent allocate and fill 64 GiB.
//! - **`pread`, not `mmap`.** Mapping would save the copies, but a mapped file that is
//!   truncated while we read it raises SIGBUS and kills the agent. The file is whatever
//!   `/proc/<pid>/exe` named: a tenant can run a binary it owns, let the process exit (the
//!   kernel's write denial ends with it) and truncate the file while we parse it. Checked on
//!   Linux 6.18: a read through a read-only `MAP_PRIVATE` mapping of a 1 MiB file after
//!   `truncate` to 0 dies with SIGBUS. The copies are bounded by the budget instead; measured on
//!   the 21 test servers (Go 1.21–1.27, 4.8–10 MiB files), the analysis reads 1.4–4.3 MiB
//!   (`.symtab`, `.strtab`, `.gopclntab`, relocations, a data segment), 25–45 % of the file,
//!   freed when the analysis ends (`collector/tests/go_binary.rs` prints it per binary).
//!
//! Why `object` is used through its low-level types (`FileHeader64`, `SectionHeader64`,
//! `Sym64`, `Rela64`) and not its `ElfFile` reader: `ElfFile::parse` wants the whole file as one
//! `ReadRef`, i.e. a mapping (SIGBUS, above) or `object::ReadCache`, which allocates whatever
//! range the file's headers ask for before reading it (a hostile section table would be
//! allocated in full). Here the only hand-written part is the bounded read; the layouts,
//! endianness and string tables are `object`'s.

use std::{cell::Cell, fs::File, os::unix::fs::FileExt as _};

use object::{
    LittleEndian as LE,
    elf::{FileHeader64, ProgramHeader64, Rela64, SectionHeader64, Sym64},
    pod,
    read::{
        StringTable,
        elf::{FileHeader as _, ProgramHeader as _, Rela as _, SectionHeader as _, Sym as _},
    },
};

use super::GoBinaryError;

/// `e_machine` values this module knows by name.
pub(crate) const EM_X86_64: u16 = object::elf::EM_X86_64.0;
pub(crate) const EM_AARCH64: u16 = object::elf::EM_AARCH64.0;
pub(crate) const ET_EXEC: u16 = object::elf::ET_EXEC.0;
pub(crate) const ET_DYN: u16 = object::elf::ET_DYN.0;
pub(crate) const PT_LOAD: u32 = object::elf::PT_LOAD.0;
pub(crate) const PT_INTERP: u32 = object::elf::PT_INTERP.0;
pub(crate) const PF_X: u32 = object::elf::PF_X.0;
pub(crate) const PF_W: u32 = object::elf::PF_W.0;
const SHT_SYMTAB: u32 = object::elf::SHT_SYMTAB.0;
const SHT_RELA: u32 = object::elf::SHT_RELA.0;
const SHT_NOBITS: u32 = object::elf::SHT_NOBITS.0;
const STT_FUNC: u8 = object::elf::STT_FUNC.0;
const R_X86_64_RELATIVE: u32 = object::elf::R_X86_64_RELATIVE.0;

/// Upper bound on the number of program or section headers we accept (the 16-bit header
/// fields' range; the extended-numbering escape through section 0 is not followed).
const MAX_HEADERS: u64 = 1 << 16;

/// The most one read may take: one section or segment window. A large Go service
/// (kubelet-sized, 100+ MiB) has a `.gopclntab` of about 30 MiB.
pub const MAX_READ: u64 = 128 << 20;

/// The most all reads of one binary may take together, DWARF included: twice a single read,
/// so a binary at the limit of one table still has room for the others. Exceeding it is
/// [`GoBinaryError::OverBudget`], and the binary is skipped (counted as `unanalyzable`).
pub const READ_BUDGET: u64 = 256 << 20;

/// One program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

impl Segment {
    /// Whether `[start, end)` lies inside the file-backed part of this segment.
    pub fn contains_file_backed(&self, start: u64, end: u64) -> bool {
        start <= end
            && start >= self.vaddr
            && self
                .vaddr
                .checked_add(self.filesz)
                .is_some_and(|seg_end| end <= seg_end)
    }

    pub fn is_executable(&self) -> bool {
        self.flags & PF_X != 0
    }
}

/// One section header, with its name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub sh_type: u32,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    pub link: u32,
    pub entsize: u64,
}

/// A symbol from `.symtab`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncSymbol {
    pub name: String,
    pub value: u64,
    pub size: u64,
    /// `STT_FUNC`.
    pub is_function: bool,
}

/// An opened ELF64 LE file with its headers parsed.
#[derive(Debug)]
pub struct Elf {
    file: File,
    file_len: u64,
    /// Bytes read so far, against [`READ_BUDGET`].
    spent: Cell<u64>,
    pub machine: u16,
    pub e_type: u16,
    pub segments: Vec<Segment>,
    pub sections: Vec<Section>,
}

/// What the first bytes say, before we commit to parsing.
pub(crate) enum Ident {
    NotElf,
    Elf { class64: bool, little_endian: bool },
}

pub(crate) fn ident(bytes: &[u8]) -> Ident {
    match bytes {
        [0x7f, b'E', b'L', b'F', class, data, ..] => Ident::Elf {
            class64: *class == object::elf::ELFCLASS64.0,
            little_endian: *data == object::elf::ELFDATA2LSB.0,
        },
        _ => Ident::NotElf,
    }
}

pub(crate) fn le_u32(b: &[u8], off: usize) -> u32 {
    b.get(off..off.saturating_add(4))
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

pub(crate) fn le_u64(b: &[u8], off: usize) -> u64 {
    b.get(off..off.saturating_add(8))
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// `count` records of `T` from `bytes` (which the caller sized as `count * entsize`, with
/// `entsize >= size_of::<T>()`): `object` checks alignment-free bounds.
fn records<T: pod::Pod>(bytes: &[u8], entsize: u64, count: u64) -> Vec<&T> {
    let step = usize::try_from(entsize).unwrap_or(usize::MAX);
    (0..count)
        .filter_map(|i| usize::try_from(i).ok()?.checked_mul(step))
        .filter_map(|at| pod::from_bytes::<T>(bytes.get(at..)?).ok())
        .map(|(t, _)| t)
        .collect()
}

impl Elf {
    /// Parses the ELF header, program headers and section headers of `file`. The caller has
    /// already checked magic, class and byte order with [`ident`].
    pub(crate) fn parse(file: File, file_len: u64) -> Result<Self, GoBinaryError> {
        let mut elf = Self {
            file,
            file_len,
            spent: Cell::new(0),
            machine: 0,
            e_type: 0,
            segments: Vec::new(),
            sections: Vec::new(),
        };
        let header_bytes = elf.read(0, 64, "ELF header")?;
        let header = FileHeader64::<LE>::parse(header_bytes.as_slice())
            .map_err(|_| malformed("ELF header is not ELF64 little-endian"))?;
        let e = LE;
        elf.e_type = header.e_type(e).0;
        elf.machine = header.e_machine(e).0;
        let phoff = header.e_phoff(e);
        let shoff = header.e_shoff(e);
        let phentsize = u64::from(header.e_phentsize(e));
        let phnum = u64::from(header.e_phnum(e));
        let shentsize = u64::from(header.e_shentsize(e));
        let shnum = u64::from(header.e_shnum(e));
        let shstrndx = usize::from(header.e_shstrndx(e).0);

        if phnum > 0 {
            let size = size_of::<ProgramHeader64<LE>>() as u64;
            if phentsize < size || phnum > MAX_HEADERS {
                return Err(malformed(
                    "program header table has a bad entry size or count",
                ));
            }
            let table = elf.read(phoff, phentsize * phnum, "program headers")?;
            elf.segments = records::<ProgramHeader64<LE>>(&table, phentsize, phnum)
                .into_iter()
                .map(|ph| Segment {
                    p_type: ph.p_type(e).0,
                    flags: ph.p_flags(e).0,
                    offset: ph.p_offset(e),
                    vaddr: ph.p_vaddr(e),
                    filesz: ph.p_filesz(e),
                    memsz: ph.p_memsz(e),
                })
                .collect();
        }

        // Section headers are optional (sstrip removes them); a bad table is ignored the same
        // way, since nothing we attach to depends on sections alone.
        let size = size_of::<SectionHeader64<LE>>() as u64;
        if shnum > 0
            && shentsize >= size
            && shnum <= MAX_HEADERS
            && let Ok(table) = elf.read(shoff, shentsize * shnum, "section headers")
        {
            let headers = records::<SectionHeader64<LE>>(&table, shentsize, shnum);
            let names = headers
                .get(shstrndx)
                .filter(|s| s.sh_type(e).0 != SHT_NOBITS)
                .and_then(|s| elf.read(s.sh_offset(e), s.sh_size(e), "section names").ok())
                .unwrap_or_default();
            let names = StringTable::new(names.as_slice(), 0, names.len() as u64);
            elf.sections = headers
                .into_iter()
                .map(|sh| Section {
                    name: sh
                        .name(e, names)
                        .ok()
                        .and_then(|n| std::str::from_utf8(n).ok())
                        .unwrap_or_default()
                        .to_owned(),
                    sh_type: sh.sh_type(e).0,
                    addr: sh.sh_addr(e),
                    offset: sh.sh_offset(e),
                    size: sh.sh_size(e),
                    link: sh.sh_link(e),
                    entsize: sh.sh_entsize(e),
                })
                .collect();
        }
        Ok(elf)
    }

    /// The open file everything is read from.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Bytes read from the file so far (what [`READ_BUDGET`] is checked against).
    pub fn spent(&self) -> u64 {
        self.spent.get()
    }

    /// Reads exactly `len` bytes at file offset `offset`, or says which part was cut off or
    /// why it was not read. Nothing is allocated before every check passed.
    pub fn read(
        &self,
        offset: u64,
        len: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, GoBinaryError> {
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > self.file_len) {
            return Err(GoBinaryError::Truncated {
                what,
                offset,
                len,
                file_len: self.file_len,
            });
        }
        let spent = self.spent.get();
        if len > MAX_READ || spent.saturating_add(len) > READ_BUDGET {
            return Err(GoBinaryError::OverBudget {
                what,
                len,
                spent,
                budget: READ_BUDGET,
            });
        }
        self.spent.set(spent + len);
        // At most MAX_READ, checked above.
        let len = usize::try_from(len).map_err(|_| malformed("length does not fit in memory"))?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(len)
            .map_err(|_| malformed("cannot allocate a read buffer"))?;
        buf.resize(len, 0);
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| GoBinaryError::Read { what, source })?;
        Ok(buf)
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| s.name == name && s.sh_type != SHT_NOBITS)
    }

    /// The file contents of a section.
    pub fn section_data(&self, s: &Section, what: &'static str) -> Result<Vec<u8>, GoBinaryError> {
        self.read(s.offset, s.size, what)
    }

    /// The PT_LOAD segment whose file-backed part holds `[start, end)`.
    pub fn load_segment_for(&self, start: u64, end: u64) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|p| p.p_type == PT_LOAD && p.contains_file_backed(start, end))
    }

    /// Virtual address → file offset through the PT_LOAD program headers (PIE included: a
    /// PIE's first segment has vaddr 0, so this is the identity there only by coincidence).
    pub fn vaddr_to_offset(&self, vaddr: u64) -> Option<u64> {
        let seg = self.load_segment_for(vaddr, vaddr.checked_add(1)?)?;
        (vaddr - seg.vaddr).checked_add(seg.offset)
    }

    /// Reads `len` bytes at virtual address `vaddr` (must be file-backed).
    pub fn read_vaddr(
        &self,
        vaddr: u64,
        len: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, GoBinaryError> {
        let end = vaddr
            .checked_add(len)
            .ok_or_else(|| malformed("address overflow"))?;
        let seg = self
            .load_segment_for(vaddr, end)
            .ok_or(GoBinaryError::Unmapped { what, vaddr })?;
        let offset = (vaddr - seg.vaddr)
            .checked_add(seg.offset)
            .ok_or_else(|| malformed("segment file offset overflows"))?;
        self.read(offset, len, what)
    }

    pub fn has_interp(&self) -> bool {
        self.segments.iter().any(|p| p.p_type == PT_INTERP)
    }

    /// The symbols of `.symtab` that `keep(is_function, name)` selects, or `None` when the
    /// file has no `.symtab`.
    pub fn symbols(
        &self,
        keep: impl Fn(bool, &str) -> bool,
    ) -> Result<Option<Vec<FuncSymbol>>, GoBinaryError> {
        let Some(symtab) = self.sections.iter().find(|s| s.sh_type == SHT_SYMTAB) else {
            return Ok(None);
        };
        if symtab.entsize != size_of::<Sym64<LE>>() as u64 {
            return Err(malformed(".symtab entry size is not 24"));
        }
        let strtab = usize::try_from(symtab.link)
            .ok()
            .and_then(|i| self.sections.get(i))
            .ok_or_else(|| malformed(".symtab links to no string table"))?;
        let syms = self.section_data(symtab, ".symtab")?;
        let strs = self.section_data(strtab, ".strtab")?;
        let strings = StringTable::new(strs.as_slice(), 0, strs.len() as u64);
        let (syms, _) = pod::slice_from_bytes::<Sym64<LE>>(&syms, syms.len() / 24)
            .map_err(|_| malformed(".symtab"))?;
        let mut out = Vec::new();
        for sym in syms {
            let is_function = sym.st_type().0 == STT_FUNC;
            let value = sym.st_value(LE);
            let Some(name) = sym
                .name(LE, strings)
                .ok()
                .and_then(|n| std::str::from_utf8(n).ok())
            else {
                continue;
            };
            if value == 0 || !keep(is_function, name) {
                continue;
            }
            out.push(FuncSymbol {
                name: name.to_owned(),
                value,
                size: sym.st_size(LE),
                is_function,
            });
        }
        Ok(Some(out))
    }

    /// Every `R_X86_64_RELATIVE` relocation of the RELA sections, as `(address, addend)`,
    /// sorted by address. PIE binaries store pointers this way: the slot in the file may hold 0
    /// and only the relocation knows the link-time value.
    pub fn relative_relocations(&self) -> Result<Vec<(u64, u64)>, GoBinaryError> {
        let mut out = Vec::new();
        for rela in self.sections.iter().filter(|s| s.sh_type == SHT_RELA) {
            if rela.entsize != size_of::<Rela64<LE>>() as u64 {
                continue;
            }
            let data = self.section_data(rela, "relocations")?;
            let (relocs, _) = pod::slice_from_bytes::<Rela64<LE>>(&data, data.len() / 24)
                .map_err(|_| malformed("relocations"))?;
            out.extend(
                relocs
                    .iter()
                    .filter(|r| r.r_type(LE, false).0 == R_X86_64_RELATIVE)
                    // The addend is an address: reinterpret the signed field.
                    .map(|r| (r.r_offset(LE), r.r_addend(LE) as u64)),
            );
        }
        out.sort_unstable();
        Ok(out)
    }
}

/// The NUL-terminated string at `off` in `table`.
pub(crate) fn c_str(table: &[u8], off: usize) -> Option<&str> {
    let rest = table.get(off..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..len]).ok()
}

pub(crate) fn malformed(reason: &'static str) -> GoBinaryError {
    GoBinaryError::Malformed { reason }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF header plus the given program headers (type, flags, offset, vaddr, filesz, memsz).
    fn elf_with_segments(e_type: u16, phdrs: &[(u32, u32, u64, u64, u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        // EI_VERSION must be EV_CURRENT: object refuses other versions, as real linkers never write them.
        b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        b[16..18].copy_from_slice(&e_type.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for &(p_type, flags, offset, vaddr, filesz, memsz) in phdrs {
            let mut ph = vec![0u8; 56];
            ph[0..4].copy_from_slice(&p_type.to_le_bytes());
            ph[4..8].copy_from_slice(&flags.to_le_bytes());
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
            ph[32..40].copy_from_slice(&filesz.to_le_bytes());
            ph[40..48].copy_from_slice(&memsz.to_le_bytes());
            b.extend(ph);
        }
        b.resize(0x3000, 0);
        b
    }

    fn parse(name: &str, bytes: &[u8]) -> Elf {
        let path = std::env::temp_dir().join(format!("go-http-elf-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        Elf::parse(file, bytes.len() as u64).unwrap()
    }

    #[test]
    fn pie_from_vaddr_zero_maps_through_program_headers() {
        // lld-style PIE: read-only data at vaddr 0, text one page further in the file but
        // mapped at 0x2000, data with a BSS tail.
        let elf = parse(
            "pie",
            &elf_with_segments(
                ET_DYN,
                &[
                    (PT_LOAD, 4, 0, 0, 0x1000, 0x1000),
                    (PT_LOAD, 5, 0x1000, 0x2000, 0x1000, 0x1000),
                    (PT_LOAD, 6, 0x2000, 0x4000, 0x100, 0x2000),
                ],
            ),
        );
        assert_eq!(elf.e_type, ET_DYN);
        assert_eq!(elf.vaddr_to_offset(0x10), Some(0x10));
        assert_eq!(elf.vaddr_to_offset(0x2010), Some(0x1010));
        assert_eq!(elf.vaddr_to_offset(0x1010), None, "between segments");
        assert_eq!(elf.vaddr_to_offset(0x4200), None, "BSS has no file offset");
        let text = elf.load_segment_for(0x2000, 0x3000).unwrap();
        assert!(text.is_executable());
        assert!(
            elf.load_segment_for(0x2f00, 0x3001).is_none(),
            "crosses the segment end"
        );
        assert!(elf.sections.is_empty());
    }

    #[test]
    fn hostile_headers_are_errors() {
        // Program header table far past the end of the file.
        let mut b = elf_with_segments(ET_EXEC, &[(PT_LOAD, 5, 0, 0x40_0000, 0x1000, 0x1000)]);
        b[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        let path = std::env::temp_dir().join(format!("go-http-elf-{}-bad", std::process::id()));
        std::fs::write(&path, &b).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            Elf::parse(file, b.len() as u64),
            Err(GoBinaryError::Truncated { .. })
        ));
        assert!(c_str(b"abc", 7).is_none());
        assert!(c_str(b"abc", 0).is_none(), "no terminator");
        assert_eq!(c_str(b"abc\0", 1), Some("bc"));
    }

    #[test]
    fn reads_are_counted_against_the_budget() {
        let mut b = elf_with_segments(ET_EXEC, &[(PT_LOAD, 5, 0, 0x40_0000, 0x1000, 0x1000)]);
        b.resize(0x10000, 0);
        let elf = parse("budget", &b);
        let after_headers = elf.spent();
        assert_eq!(after_headers, 64 + 56, "ELF header and one program header");
        elf.read(0, 0x1000, "test").unwrap();
        assert_eq!(elf.spent(), after_headers + 0x1000);
        // Refused before anything is read or allocated: the file is only 64 KiB, but the
        // budget check comes first for a read the file could hold.
        elf.spent.set(READ_BUDGET - 10);
        assert!(matches!(
            elf.read(0, 11, "test"),
            Err(GoBinaryError::OverBudget { len: 11, .. })
        ));
        assert!(elf.read(0, 10, "test").is_ok());
        assert!(matches!(
            elf.read(0, 1, "test"),
            Err(GoBinaryError::OverBudget { .. })
        ));
    }
}

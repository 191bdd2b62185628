//! A minimal, bounds-checked ELF64 little-endian reader: header, program headers, section
//! headers, the symbol table and `.rela.dyn`. Only what the Go binary analysis needs.
//!
//! The file is read with positioned reads (`pread`), never mapped: a Go binary is tens of
//! megabytes and the analysis touches a few sections of it. Every length and offset taken from
//! the file is checked against the file size before anything is allocated or read, so a
//! truncated or hostile file is an error, never a panic or a huge allocation.

use std::{fs::File, os::unix::fs::FileExt as _};

use super::GoBinaryError;

/// `e_machine` values this module knows by name.
pub(crate) const EM_X86_64: u16 = 62;
pub(crate) const EM_AARCH64: u16 = 183;
pub(crate) const ET_EXEC: u16 = 2;
pub(crate) const ET_DYN: u16 = 3;
pub(crate) const PT_LOAD: u32 = 1;
pub(crate) const PT_INTERP: u32 = 3;
pub(crate) const PF_X: u32 = 1;
pub(crate) const PF_W: u32 = 2;
const SHT_SYMTAB: u32 = 2;
const SHT_RELA: u32 = 4;
const SHT_NOBITS: u32 = 8;
const STT_FUNC: u8 = 2;
const R_X86_64_RELATIVE: u32 = 8;

/// Upper bound on the number of program or section headers we accept.
const MAX_HEADERS: u64 = 1 << 16;

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
            class64: *class == 2,
            little_endian: *data == 1,
        },
        _ => Ident::NotElf,
    }
}

fn le_u16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

pub(crate) fn le_u32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

pub(crate) fn le_u64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

impl Elf {
    /// Parses the ELF header, program headers and section headers of `file`. The caller has
    /// already checked magic, class and byte order with [`ident`].
    pub(crate) fn parse(file: File, file_len: u64) -> Result<Self, GoBinaryError> {
        let mut elf = Self {
            file,
            file_len,
            machine: 0,
            e_type: 0,
            segments: Vec::new(),
            sections: Vec::new(),
        };
        let header = elf.read(0, 64, "ELF header")?;
        elf.e_type = le_u16(&header, 16);
        elf.machine = le_u16(&header, 18);
        let phoff = le_u64(&header, 32);
        let shoff = le_u64(&header, 40);
        let phentsize = u64::from(le_u16(&header, 54));
        let phnum = u64::from(le_u16(&header, 56));
        let shentsize = u64::from(le_u16(&header, 58));
        let shnum = u64::from(le_u16(&header, 60));
        let shstrndx = usize::from(le_u16(&header, 62));

        if phnum > 0 {
            if phentsize < 56 || phnum > MAX_HEADERS {
                return Err(malformed(
                    "program header table has a bad entry size or count",
                ));
            }
            let table = elf.read(phoff, phentsize * phnum, "program headers")?;
            for i in 0..phnum {
                let base = usize::try_from(i * phentsize).map_err(|_| malformed("phoff"))?;
                let ph = &table[base..];
                elf.segments.push(Segment {
                    p_type: le_u32(ph, 0),
                    flags: le_u32(ph, 4),
                    offset: le_u64(ph, 8),
                    vaddr: le_u64(ph, 16),
                    filesz: le_u64(ph, 32),
                    memsz: le_u64(ph, 40),
                });
            }
        }

        // Section headers are optional (sstrip removes them); a bad table is ignored the same
        // way, since nothing we attach to depends on sections alone.
        if shnum > 0
            && shentsize >= 64
            && shnum <= MAX_HEADERS
            && let Ok(table) = elf.read(shoff, shentsize * shnum, "section headers")
        {
            let mut raw = Vec::new();
            for i in 0..shnum {
                let Ok(base) = usize::try_from(i * shentsize) else {
                    break;
                };
                let sh = &table[base..];
                raw.push((
                    le_u32(sh, 0),
                    Section {
                        name: String::new(),
                        sh_type: le_u32(sh, 4),
                        addr: le_u64(sh, 16),
                        offset: le_u64(sh, 24),
                        size: le_u64(sh, 32),
                        link: le_u32(sh, 40),
                        entsize: le_u64(sh, 56),
                    },
                ));
            }
            let names = raw
                .get(shstrndx)
                .filter(|(_, s)| s.sh_type != SHT_NOBITS)
                .and_then(|(_, s)| elf.read(s.offset, s.size, "section names").ok())
                .unwrap_or_default();
            elf.sections = raw
                .into_iter()
                .map(|(name_off, mut s)| {
                    s.name = c_str(&names, name_off as usize)
                        .unwrap_or_default()
                        .to_owned();
                    s
                })
                .collect();
        }
        Ok(elf)
    }

    /// Reads exactly `len` bytes at file offset `offset`, or says which part was cut off.
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
        // Bounded by the file size, checked above.
        let len = usize::try_from(len).map_err(|_| malformed("length does not fit in memory"))?;
        let mut buf = vec![0; len];
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
        if symtab.entsize != 24 {
            return Err(malformed(".symtab entry size is not 24"));
        }
        let strtab = usize::try_from(symtab.link)
            .ok()
            .and_then(|i| self.sections.get(i))
            .ok_or_else(|| malformed(".symtab links to no string table"))?;
        let syms = self.section_data(symtab, ".symtab")?;
        let strs = self.section_data(strtab, ".strtab")?;
        let mut out = Vec::new();
        for sym in syms.as_chunks::<24>().0 {
            let is_function = sym[4] & 0xf == STT_FUNC;
            let value = le_u64(sym, 8);
            let Some(name) = c_str(&strs, le_u32(sym, 0) as usize) else {
                continue;
            };
            if value == 0 || !keep(is_function, name) {
                continue;
            }
            out.push(FuncSymbol {
                name: name.to_owned(),
                value,
                size: le_u64(sym, 16),
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
            if rela.entsize != 24 {
                continue;
            }
            let data = self.section_data(rela, "relocations")?;
            for r in data.as_chunks::<24>().0 {
                if le_u64(r, 8) & 0xffff_ffff == u64::from(R_X86_64_RELATIVE) {
                    out.push((le_u64(r, 0), le_u64(r, 16)));
                }
            }
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
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
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
}

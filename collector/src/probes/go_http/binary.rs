//! Opening a Go executable and turning a function name into verified uprobe file offsets.
//!
//! [`analyze`] checks, in order: ELF magic, 64-bit class, little endian, machine (x86-64;
//! arm64 is recognised and refused for now), type (`ET_EXEC`, or `ET_DYN` for PIE and
//! static-PIE), then reads the Go build info, `.symtab` (if any) and `.gopclntab`. Function
//! bounds come from both tables; where both name a function they must agree on its entry.
//!
//! [`GoBinary::probe_points`] returns absolute file offsets, which is what a uprobe attaches
//! to, after checking that the function lies in one executable PT_LOAD segment, decodes from
//! entry to end, and that its entry is confirmed (see [`EntryCheck`]).

use std::{
    collections::{HashMap, hash_map::Entry},
    fs::File,
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use super::{
    GoBinaryError,
    buildinfo::{self, BuildInfo},
    elf::{self, EM_AARCH64, EM_X86_64, ET_DYN, ET_EXEC, Elf, Ident},
    pclntab::{self, TextStart},
    ret_scan,
};

/// The largest function we decode. Go's biggest generated functions are a few hundred KiB.
const MAX_FUNCTION_LEN: u64 = 4 << 20;

/// A half-open virtual address range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    pub start: u64,
    pub end: u64,
}

/// What the two symbol tables say about one function.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Function {
    /// From `.symtab`: `[st_value, st_value + st_size)` (`st_size` 0 is taken as unknown).
    pub symtab: Option<AddrRange>,
    /// From `.gopclntab`: `[entry, next function's entry)`, padding included.
    pub pclntab: Option<AddrRange>,
    /// `.symtab` has this name more than once, at different addresses.
    pub ambiguous: bool,
}

impl Function {
    /// The range to decode, and whether two tables confirmed the entry.
    fn resolve(&self, name: &str) -> Result<(AddrRange, bool), GoBinaryError> {
        if self.ambiguous {
            return Err(GoBinaryError::AmbiguousSymbol {
                function: name.to_owned(),
            });
        }
        match (self.symtab, self.pclntab) {
            (Some(s), Some(p)) if s.start != p.start => Err(GoBinaryError::SymbolConflict {
                function: name.to_owned(),
                symtab: s.start,
                pclntab: p.start,
            }),
            // The symbol's size is exact; pclntab's end includes the padding.
            (Some(s), Some(p)) if s.end > s.start && s.end <= p.end => Ok((s, true)),
            (Some(_), Some(p)) => Ok((p, true)),
            (Some(s), None) if s.end > s.start => Ok((s, false)),
            (None, Some(p)) => Ok((p, false)),
            _ => Err(GoBinaryError::FunctionNotFound {
                function: name.to_owned(),
            }),
        }
    }
}

/// How a probe's entry address was confirmed. One is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryCheck {
    /// `.symtab` and `.gopclntab` agree on it.
    SymbolTables,
    /// A jump in the function targets it: Go's morestack path re-runs the function from its
    /// first instruction (only stripped binaries rely on this alone).
    MorestackJump,
    /// Both of the above.
    Both,
}

/// How `.symtab` and `.gopclntab` compare over every function both name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrossCheck {
    /// Functions named once by both tables.
    pub compared: usize,
    /// Of those, the ones with the same entry address.
    pub agreed: usize,
    /// Names with several addresses (ABI wrappers), not compared and never probed.
    pub ambiguous: usize,
}

/// Where to attach for one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePoints {
    pub function: String,
    /// Virtual address of the first instruction.
    pub entry_vaddr: u64,
    /// Absolute file offset of the first instruction.
    pub entry_file_offset: u64,
    /// Absolute file offset of the entry uprobe: past Go's stack-bound check, whose morestack
    /// path re-runs the function from its first instruction (`ret_scan`: a probe there fires
    /// twice for one call whenever the runtime preempts or grows the stack at that call).
    pub entry_probe_file_offset: u64,
    /// Every RET, as an offset from the entry, ascending.
    pub ret_offsets: Vec<u64>,
    /// Every RET as an absolute file offset: the return uprobes' locations.
    pub ret_file_offsets: Vec<u64>,
    /// Jumps out of the function, as offsets from the entry: returns through them are not seen.
    pub tail_calls: Vec<u64>,
    pub entry_check: EntryCheck,
}

/// An analysed Go executable. Keeps the file open, so offsets stay valid for this inode even
/// if the path is replaced.
#[derive(Debug)]
pub struct GoBinary {
    pub path: PathBuf,
    /// `st_dev` and `st_ino` of the opened file: uprobes live on inodes.
    pub dev: u64,
    pub ino: u64,
    /// From the build info, e.g. `go1.24.3`.
    pub go_version: String,
    /// The main module's path, e.g. `github.com/acme/shop`.
    pub module_path: Option<String>,
    /// Dependency modules and versions from the build info (`BuildInfo::deps`).
    pub deps: Vec<(String, String)>,
    /// `ET_DYN`: PIE or static-PIE (the latter without PT_INTERP).
    pub pie: bool,
    /// Has PT_INTERP (dynamically linked).
    pub interp: bool,
    /// No `.symtab`: function bounds come from `.gopclntab` alone.
    pub stripped: bool,
    /// The address `.gopclntab` entries are relative to, and where it came from.
    pub text_start: TextStart,
    pub cross_check: CrossCheck,
    functions: HashMap<String, Function>,
    elf: Elf,
}

/// Opens and analyses the executable at `path` (typically `/proc/<pid>/exe`).
///
/// Non-Go files give [`GoBinaryError::NotGo`] (see [`GoBinaryError::is_not_go`]).
pub fn analyze(path: &Path) -> Result<GoBinary, GoBinaryError> {
    let file = File::open(path).map_err(|source| GoBinaryError::Open {
        path: path.to_owned(),
        source,
    })?;
    analyze_file(path, file)
}

/// Analyses an already opened executable; `path` only names it in messages. The returned
/// [`GoBinary`] keeps `file` open, so [`GoBinary::uprobe_target`] names this very file whatever
/// happens to `path` afterwards. This is the entry the daemon and the fuzz target use.
pub fn analyze_file(path: &Path, file: File) -> Result<GoBinary, GoBinaryError> {
    analyze_open(path, file).map_err(|e| GoBinaryError::InFile {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

fn analyze_open(path: &Path, file: File) -> Result<GoBinary, GoBinaryError> {
    let meta = file.metadata().map_err(|source| GoBinaryError::Read {
        what: "file metadata",
        source,
    })?;
    if !meta.is_file() {
        return Err(GoBinaryError::NotGo {
            reason: "not a regular file",
        });
    }
    let mut head = [0u8; 6];
    // A positioned read: the caller's file offset is irrelevant (and left alone).
    let got = file
        .read_at(&mut head, 0)
        .map_err(|source| GoBinaryError::Read {
            what: "ELF header",
            source,
        })?;
    match elf::ident(&head[..got]) {
        Ident::NotElf => {
            return Err(GoBinaryError::NotGo {
                reason: "not an ELF file",
            });
        }
        Ident::Elf { class64: false, .. } => {
            return Err(unsupported_elf("32-bit ELF".into()));
        }
        Ident::Elf {
            little_endian: false,
            ..
        } => return Err(unsupported_elf("big-endian ELF".into())),
        Ident::Elf { .. } => {}
    }
    let elf = Elf::parse(file, meta.len())?;
    match elf.machine {
        EM_X86_64 => {}
        EM_AARCH64 => return Err(GoBinaryError::UnsupportedArch { arch: "arm64" }),
        other => return Err(unsupported_elf(format!("machine {other}"))),
    }
    if elf.e_type != ET_EXEC && elf.e_type != ET_DYN {
        return Err(unsupported_elf(format!("ELF type {}", elf.e_type)));
    }

    // Go-ness first, from small reads (the build info blob, the 8-byte pclntab header): every
    // exec on the node comes through here, and only Go binaries may cost a symbol table read.
    let info = match buildinfo::read(&elf)? {
        buildinfo::Found::Info(info) => info,
        buildinfo::Found::Absent => {
            return Err(match pclntab::section_magic(&elf)? {
                Some(m) if pclntab::is_go_magic(m) => GoBinaryError::UnsupportedGo {
                    reason: "no Go build info, so no Go version",
                },
                _ => GoBinaryError::NotGo {
                    reason: "no Go build info and no .gopclntab",
                },
            });
        }
    };
    let minor = go_minor(&info.go_version);
    if minor.is_some_and(|m| m < 17) {
        return Err(GoBinaryError::UnsupportedGo {
            reason: "Go older than 1.17 passes arguments on the stack; the uprobes read the register ABI",
        });
    }
    if let Some(m) = pclntab::section_magic(&elf)? {
        pclntab::check_magic(m)?;
    }

    let symbols = elf.symbols(|is_function, name| {
        is_function || name == "runtime.pclntab" || name == "runtime.text"
    })?;
    let special = |name: &str| {
        symbols
            .as_deref()
            .and_then(|s| s.iter().find(|s| s.name == name))
            .map(|s| s.value)
    };
    let Some(pcln) = pclntab::read(&elf, special("runtime.pclntab"), special("runtime.text"))?
    else {
        return Err(GoBinaryError::NoPclntab {
            go_version: info.go_version,
        });
    };
    // Go 1.16 wrote the 1.17 table too: only a version naming 1.17 tells them apart.
    if pcln.text_start == TextStart::Absolute && minor != Some(17) {
        return Err(GoBinaryError::UnsupportedGo {
            reason: "a Go 1.16/1.17 pclntab without a Go 1.17 version in the build info",
        });
    }
    let BuildInfo {
        go_version,
        main_path: _,
        module_path,
        deps,
    } = info;

    let stripped = symbols.is_none();
    let mut functions: HashMap<String, Function> = HashMap::new();
    for s in symbols.into_iter().flatten().filter(|s| s.is_function) {
        let range = AddrRange {
            start: s.value,
            end: s.value.saturating_add(s.size),
        };
        match functions.entry(s.name) {
            Entry::Vacant(v) => {
                v.insert(Function {
                    symtab: Some(range),
                    ..Function::default()
                });
            }
            Entry::Occupied(mut o) => {
                let f = o.get_mut();
                if f.symtab.is_some_and(|old| old.start != range.start) {
                    f.ambiguous = true;
                }
            }
        }
    }
    for p in pcln.funcs {
        let f = functions.entry(p.name).or_default();
        if f.pclntab.is_some() {
            // Go names an ABI0 wrapper and its ABIInternal function alike in pclntab.
            f.ambiguous = true;
        }
        f.pclntab = Some(AddrRange {
            start: p.entry,
            end: p.end,
        });
    }
    let mut cross_check = CrossCheck::default();
    for f in functions.values() {
        if let (Some(s), Some(p)) = (f.symtab, f.pclntab) {
            if f.ambiguous {
                cross_check.ambiguous += 1;
            } else {
                cross_check.compared += 1;
                cross_check.agreed += usize::from(s.start == p.start);
            }
        }
    }

    Ok(GoBinary {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
        go_version,
        module_path,
        deps,
        pie: elf.e_type == ET_DYN,
        interp: elf.has_interp(),
        stripped,
        text_start: pcln.text_start,
        cross_check,
        functions,
        elf,
    })
}

/// `N` of a `go1.N…` version (`go1.17.13`, `go1.17rc1`, `go1.21.0 X:loopvar`); `None` for
/// anything else (`devel …`).
pub(crate) fn go_minor(go_version: &str) -> Option<u32> {
    let rest = go_version.strip_prefix("go1.")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

fn unsupported_elf(reason: String) -> GoBinaryError {
    GoBinaryError::UnsupportedElf { reason }
}

impl GoBinary {
    /// What the symbol tables say about `name` (e.g. `net/http.(*response).WriteHeader`).
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.get(name)
    }

    /// Every function either table names.
    pub fn functions(&self) -> impl Iterator<Item = (&str, &Function)> {
        self.functions.iter().map(|(n, f)| (n.as_str(), f))
    }

    /// Bytes the analysis has read from the file so far (see [`elf::READ_BUDGET`]).
    pub fn bytes_read(&self) -> u64 {
        self.elf.spent()
    }

    /// The path to hand the kernel for uprobes on exactly the file that was analysed:
    /// `/proc/self/fd/<n>` of the descriptor this value holds. The kernel resolves it with
    /// `LOOKUP_FOLLOW` in our own process (perf `uprobe` PMU and `uprobe_multi` links alike), so
    /// it names this inode even after `path` was replaced, the process exec'd something else
    /// or its pid was reused; aya passes a path with a `/` through unchanged.
    ///
    /// Verified before it is returned: the descriptor and the path both stat to the
    /// (`st_dev`, `st_ino`) recorded at analysis ([`GoBinaryError::Replaced`] otherwise).
    pub fn uprobe_target(&self) -> Result<PathBuf, GoBinaryError> {
        let file = self.elf.file();
        let target = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let held = file.metadata().map_err(|source| GoBinaryError::Read {
            what: "metadata of the analysed file",
            source,
        })?;
        let named = std::fs::metadata(&target).map_err(|source| GoBinaryError::Read {
            what: "metadata of the uprobe target",
            source,
        })?;
        let expected = (self.dev, self.ino);
        for found in [(held.dev(), held.ino()), (named.dev(), named.ino())] {
            if found != expected {
                return Err(GoBinaryError::Replaced { expected, found });
            }
        }
        Ok(target)
    }

    /// Virtual address → absolute file offset, through the PT_LOAD program headers.
    pub fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        self.elf.vaddr_to_offset(vaddr)
    }

    /// The entry and every RET of `function`, as absolute file offsets, verified (see the
    /// module docs). A function without any RET is [`GoBinaryError::NoReturn`].
    pub fn probe_points(&self, function: &str) -> Result<ProbePoints, GoBinaryError> {
        let named = |f: &str| f.to_owned();
        let f = self
            .functions
            .get(function)
            .ok_or_else(|| GoBinaryError::FunctionNotFound {
                function: named(function),
            })?;
        let (range, tables_agree) = f.resolve(function)?;
        let AddrRange { start, end } = range;
        let len = end.saturating_sub(start);
        let segment = self
            .elf
            .load_segment_for(start, end)
            .filter(|s| s.is_executable() && len > 0)
            .ok_or_else(|| GoBinaryError::NotExecutable {
                function: named(function),
                start,
                end,
            })?;
        if len > MAX_FUNCTION_LEN {
            return Err(GoBinaryError::TooLarge {
                function: named(function),
                len,
            });
        }
        let entry_file_offset = (start - segment.vaddr).checked_add(segment.offset).ok_or(
            GoBinaryError::Malformed {
                reason: "segment file offset overflows",
            },
        )?;
        let code = self.elf.read(entry_file_offset, len, "function code")?;
        let scan = ret_scan::scan(&code, start).map_err(|source| GoBinaryError::Decode {
            function: named(function),
            source,
        })?;
        let entry_check = match (tables_agree, scan.jumps_to_entry) {
            (true, true) => EntryCheck::Both,
            (true, false) => EntryCheck::SymbolTables,
            (false, true) => EntryCheck::MorestackJump,
            (false, false) => {
                return Err(GoBinaryError::EntryUnverified {
                    function: named(function),
                    entry: start,
                });
            }
        };
        if scan.has_no_ret() {
            return Err(GoBinaryError::NoReturn {
                function: named(function),
                tail_calls: scan.tail_calls.len(),
            });
        }
        if let Some(&bad) = scan.rets.iter().find(|&&r| r >= len) {
            return Err(GoBinaryError::RetOutside {
                function: named(function),
                vaddr: start.saturating_add(bad),
            });
        }
        Ok(ProbePoints {
            function: named(function),
            entry_vaddr: start,
            entry_file_offset,
            entry_probe_file_offset: entry_file_offset + scan.body,
            ret_file_offsets: scan.rets.iter().map(|r| entry_file_offset + r).collect(),
            ret_offsets: scan.rets,
            tail_calls: scan.tail_calls,
            entry_check,
        })
    }
}

//! Uprobes land on the file that was analysed, not on whatever its path names by attach time.
//!
//! Catches issue #10 defect 1: discovery analysed `/proc/<pid>/exe` and attached by that path
//! with system-wide scope, so a process that exec'd something else (or a reused pid) in between
//! got breakpoints at Go-derived offsets in an unrelated binary, in every process running it.
//!
//! The swap is made deterministic with a plain path: file A is mapped executable at path P, P is
//! analysed, then a byte-identical copy B (another inode, also mapped) is renamed over P. The
//! uprobe target the daemon uses (`GoBinary::uprobe_target`) is then attached the two ways the
//! collector attaches (a perf `uprobe` PMU event per point, as aya does without `uprobe.multi`,
//! and a `uprobe_multi` link), and both mappings are read at the probed instruction: the kernel
//! writes INT3 (0xcc) into every executable mapping of the probed inode. A must have it, B must
//! not. Attaching by P, as the old code did, puts it in B only.
//!
//! The files are mapped by this test process rather than run: a Go server would be found and
//! instrumented by any other collector running on the host (its breakpoints would show up here),
//! while a file mapped by a process whose executable is the test binary is nobody's business.

use std::{
    fs,
    io::Read as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use collector::probes::go_http::analyze;
use integration_tests::{go_fixtures, require_root};

const SERVE_HTTP: &str = "net/http.serverHandler.ServeHTTP";
/// `PERF_FLAG_FD_CLOEXEC` (linux/perf_event.h; not in the libc crate).
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// `path` mapped private, readable and executable, like a loaded program's text.
struct Mapped {
    addr: *const u8,
    len: usize,
}

impl Mapped {
    fn new(path: &Path) -> Mapped {
        let file = fs::File::open(path).expect("open");
        let len = usize::try_from(file.metadata().expect("stat").len()).expect("length");
        // SAFETY: a fresh private mapping of a file we opened; checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap {}", path.display());
        Mapped {
            addr: addr.cast(),
            len,
        }
    }

    /// The byte at file offset `offset` as this process sees it in memory.
    fn byte(&self, offset: u64) -> u8 {
        let offset = usize::try_from(offset).expect("offset");
        assert!(offset < self.len);
        // SAFETY: inside the mapping, which lives as long as self; volatile, since the kernel
        // changes it behind our back (uprobe breakpoints).
        unsafe { std::ptr::read_volatile(self.addr.add(offset)) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new().
        unsafe { libc::munmap(self.addr.cast_mut().cast(), self.len) };
    }
}

fn inode(path: &Path) -> (u64, u64) {
    let m = fs::metadata(path).expect("stat");
    (m.dev(), m.ino())
}

/// A perf `uprobe` PMU event on `path` at `offset`, all processes (what aya's per-point
/// attach does; the breakpoint is installed when the event is opened).
fn perf_uprobe(path: &Path, offset: u64) -> OwnedFd {
    let mut pmu = String::new();
    fs::File::open("/sys/bus/event_source/devices/uprobe/type")
        .and_then(|mut f| f.read_to_string(&mut pmu))
        .expect("uprobe PMU");
    let pmu: u32 = pmu.trim().parse().expect("PMU type");
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // struct perf_event_attr, PERF_ATTR_SIZE_VER5: type, size, ..., config1 (uprobe_path) at
    // 56, config2 (probe_offset) at 64.
    let mut attr = [0u8; 112];
    attr[0..4].copy_from_slice(&pmu.to_ne_bytes());
    attr[4..8].copy_from_slice(&112u32.to_ne_bytes());
    attr[56..64].copy_from_slice(&(cpath.as_ptr() as u64).to_ne_bytes());
    attr[64..72].copy_from_slice(&offset.to_ne_bytes());
    // SAFETY: attr is a valid perf_event_attr of the size it declares; cpath outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1i32,
            0i32,
            -1i32,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    assert!(
        fd >= 0,
        "perf_event_open uprobe {}:{offset:#x}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn bpf(cmd: i32, attr: &mut [u8; 144]) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a zero-filled bpf_attr large enough for the commands used here.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A `uprobe_multi` link on `path` at `offset`, all processes (what aya does with the
/// `uprobe.multi` programs the collector uses on kernels ≥ 6.6), for a do-nothing program.
fn uprobe_multi(path: &Path, offset: u64) -> (OwnedFd, OwnedFd) {
    const BPF_PROG_LOAD: i32 = 5;
    const BPF_LINK_CREATE: i32 = 28;
    const BPF_PROG_TYPE_KPROBE: u32 = 2;
    const BPF_TRACE_UPROBE_MULTI: u32 = 48;
    // r0 = 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut attr = [0u8; 144];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_KPROBE.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&BPF_TRACE_UPROBE_MULTI.to_ne_bytes());
    let prog = bpf(BPF_PROG_LOAD, &mut attr).expect("load a uprobe.multi program");

    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let offsets = [offset];
    let mut attr = [0u8; 144];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_TRACE_UPROBE_MULTI.to_ne_bytes());
    attr[16..24].copy_from_slice(&(cpath.as_ptr() as u64).to_ne_bytes());
    attr[24..32].copy_from_slice(&(offsets.as_ptr() as u64).to_ne_bytes());
    attr[48..52].copy_from_slice(&1u32.to_ne_bytes());
    let link = bpf(BPF_LINK_CREATE, &mut attr)
        .unwrap_or_else(|e| panic!("uprobe_multi link on {}:{offset:#x}: {e}", path.display()));
    (prog, link)
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("go-attach-race-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn uprobes_land_on_the_analysed_file_after_its_path_is_replaced() {
    require_root();
    let fixture = go_fixtures()
        .into_iter()
        .find(|(v, variant, _)| v.starts_with("1.24") && variant == "default")
        .map(|(.., p)| p)
        .expect("a Go 1.24 default fixture");
    let dir = scratch_dir();
    let path = dir.join("server");
    let other = dir.join("other");
    fs::copy(&fixture, &path).expect("copy A");
    fs::copy(&fixture, &other).expect("copy B");
    let ino_a = inode(&path).1;
    let ino_b = inode(&other).1;
    assert_ne!(ino_a, ino_b);
    let a = Mapped::new(&path);
    let b = Mapped::new(&other);

    // Analyse through the path, as discovery does through /proc/<pid>/exe ...
    let bin = analyze(&path).expect("analyse A");
    assert_eq!((bin.dev, bin.ino), inode(&path));
    let offset = bin
        .probe_points(SERVE_HTTP)
        .expect("ServeHTTP probe points")
        .entry_file_offset;
    // ... then the path changes hands before the attach: it now names B.
    fs::rename(&other, &path).expect("swap");
    assert_eq!(inode(&path).1, ino_b);
    let original = a.byte(offset);
    assert_eq!(b.byte(offset), original);
    assert_ne!(original, 0xcc, "ServeHTTP does not start with INT3");

    let target = bin
        .uprobe_target()
        .expect("uprobe target of the analysed file");

    // uprobe_multi links exist since Linux 6.6 (the collector falls back to per-point events).
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut version = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let multi = (version.next(), version.next()) >= (Some(6), Some(6));
    let ways: &[&str] = if multi {
        &["perf uprobe event", "uprobe_multi link"]
    } else {
        eprintln!(
            "kernel {}: no uprobe_multi links, per-point events only",
            release.trim()
        );
        &["perf uprobe event"]
    };
    for &how in ways {
        let attached = match how {
            "perf uprobe event" => vec![perf_uprobe(&target, offset)],
            _ => {
                let (prog, link) = uprobe_multi(&target, offset);
                vec![link, prog]
            }
        };
        let (in_a, in_b) = (a.byte(offset), b.byte(offset));
        drop(attached);
        assert_eq!(
            (in_a, in_b),
            (0xcc, original),
            "{how} on {}: breakpoint in A {in_a:#x}, in B {in_b:#x} (0xcc = breakpoint): it \
             must be in the analysed file A only",
            target.display()
        );
        // Detached: both clean again before the next way is tried.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while a.byte(offset) != original {
            assert!(std::time::Instant::now() < deadline, "{how}: not detached");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(
        inode(&target),
        (bin.dev, bin.ino),
        "{} names another file",
        target.display()
    );
    drop((a, b));
    let _ = fs::remove_dir_all(&dir);
}

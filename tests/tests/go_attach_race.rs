//! Uprobes land on the file that was analysed, not on whatever its path names by attach time.
//!
//! Catches issue #10 defect 1: discovery analysed `/proc/<pid>/exe` and attached by that path
//! with system-wide scope, so a process that exec'd something else (or a reused pid) in between
//! got breakpoints at Go-derived offsets in an unrelated binary, in every process running it.
//!
//! The swap is made deterministic with a plain path: a Go server runs file A through path P,
//! P is analysed, then a copy B (another inode, run by a second server) is renamed over P.
//! The uprobe target the daemon uses (`GoBinary::uprobe_target`) is then attached the two ways
//! the collector attaches (a perf `uprobe` PMU event per point, as aya does without
//! `uprobe.multi`, and a `uprobe_multi` link), and each server's memory is read at the probed
//! instruction: the kernel writes INT3 (0xcc) into every process mapping the probed inode. A
//! must have it, B must not. Attaching by P, as the old code did, puts it in B only.

use std::{
    fs,
    io::Read as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::{FileExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use collector::probes::go_http::analyze;
use integration_tests::{go_fixtures, require_root};

const SERVE_HTTP: &str = "net/http.serverHandler.ServeHTTP";
/// `PERF_FLAG_FD_CLOEXEC` (linux/perf_event.h; not in the libc crate).
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &Path) -> Server {
    let mut child = Command::new(bin)
        .args(["-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn Go server");
    // "listening on ADDR" once it accepts connections: its text is mapped by then. The rest of
    // stdout is drained so the server never blocks on a full pipe.
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Some(Ok(l))) if l.starts_with("listening on ") => {}
        other => panic!("{}: no listening line: {other:?}", bin.display()),
    }
    Server(child)
}

fn inode(path: &Path) -> (u64, u64) {
    let m = fs::metadata(path).expect("stat");
    (m.dev(), m.ino())
}

/// The byte at file offset `offset` of inode `ino` as process `pid` sees it in memory.
fn byte_in_memory(pid: u32, ino: u64, offset: u64) -> u8 {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let addr = maps
        .lines()
        .find_map(|l| {
            // start-end perms offset dev inode path
            let f: Vec<&str> = l.split_whitespace().collect();
            let (start, end) = f.first()?.split_once('-')?;
            let (start, end) = (
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            );
            let map_off = u64::from_str_radix(f.get(2)?, 16).ok()?;
            let map_ino: u64 = f.get(4)?.parse().ok()?;
            (map_ino == ino && offset >= map_off && offset - map_off < end - start)
                .then_some(start + (offset - map_off))
        })
        .unwrap_or_else(|| panic!("pid {pid} does not map inode {ino} at offset {offset:#x}"));
    let mem = fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
    let mut b = [0u8];
    mem.read_exact_at(&mut b, addr).expect("read mem");
    b[0]
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
    let a = start(&path);
    let b = start(&other);
    let (a_pid, b_pid) = (a.0.id(), b.0.id());
    let ino_a = inode(&path).1;
    let ino_b = inode(&other).1;
    assert_ne!(ino_a, ino_b);

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
    let original = byte_in_memory(a_pid, ino_a, offset);
    assert_eq!(byte_in_memory(b_pid, ino_b, offset), original);
    assert_ne!(original, 0xcc, "ServeHTTP does not start with INT3");

    let target = bin
        .uprobe_target()
        .expect("uprobe target of the analysed file");

    for how in ["perf uprobe event", "uprobe_multi link"] {
        let attached = match how {
            "perf uprobe event" => vec![perf_uprobe(&target, offset)],
            _ => {
                let (prog, link) = uprobe_multi(&target, offset);
                vec![link, prog]
            }
        };
        let in_a = byte_in_memory(a_pid, ino_a, offset);
        let in_b = byte_in_memory(b_pid, ino_b, offset);
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
        while byte_in_memory(a_pid, ino_a, offset) != original {
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

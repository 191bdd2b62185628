//! Self-tests of the root-only harness: pods, host cgroups, `pod-traffic`, fault injection and
//! cleanup. Run as root: `cargo test -p integration-tests --test harness -- --test-threads=1`.
//!
//! Every test uses its own run prefix and its own pod index, so they may also run in parallel.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use integration_tests::{
    HostCgroup, Pod, cgroup_id_of, cgroup_procs, cgroup2_mount, fake_container_id, fake_pod_uid,
    parse_kv, pod_traffic_bin, read_listening, require_root, unique_prefix, wait_until,
    wait_until_blocking,
};

const STEP: Duration = Duration::from_secs(20);

fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(out.status.success(), "ip netns list: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .expect("ip link show")
        .status
        .success()
}

fn stdout_kv(what: &str, out: &Output) -> HashMap<String, u64> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kv = parse_kv(&stdout);
    eprintln!(
        "{what}: {} stdout={:?} stderr={:?}",
        out.status,
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    kv
}

/// Runs pod-traffic in the root namespace (no cgroup), captures output.
fn pod_traffic(args: &[&str]) -> Output {
    Command::new(pod_traffic_bin())
        .args(args)
        .output()
        .expect("run pod-traffic")
}

/// True if `pid` is gone or a zombie.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn net_ns_of(pid: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("readlink ns/net")
}

#[test]
fn pod_traffic_bin_is_the_cargo_built_one() {
    assert_eq!(
        pod_traffic_bin(),
        PathBuf::from(env!("CARGO_BIN_EXE_pod-traffic"))
    );
}

#[test]
fn unique_prefixes_are_short_and_distinct() {
    let a = unique_prefix("conntrack");
    let b = unique_prefix("conntrack");
    assert_ne!(a, b);
    for p in [&a, &b] {
        assert!(p.starts_with("conn"), "{p}");
        // `<prefix>h<index up to 255>` must fit in IFNAMSIZ - 1.
        assert!(p.len() + 4 <= 15, "prefix {p} too long for veth names");
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()), "{p}");
    }
}

#[test]
fn pod_serves_root_namespace_client_and_counts_segments() {
    require_root();
    let bin = pod_traffic_bin();
    let prefix = unique_prefix("ct");
    let uid = fake_pod_uid(1);
    let cid = fake_container_id(1);
    let pod = Pod::create(&prefix, 11, &uid, &cid).expect("create pod");

    // Shape of the pod.
    assert!(netns_list().contains(&pod.netns().to_owned()));
    assert_eq!(pod.netns(), format!("{prefix}-p11"));
    assert_eq!(pod.addr().to_string(), "198.18.11.2");
    assert_eq!(pod.host_addr().to_string(), "198.18.11.1");
    let expected_dir = cgroup2_mount().join(format!(
        "{prefix}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/\
         cri-containerd-{cid}.scope",
        uid.replace('-', "_")
    ));
    assert_eq!(pod.cgroup_dir(), expected_dir);
    assert!(pod.cgroup_dir().is_dir());
    assert_eq!(pod.cgroup_id(), cgroup_id_of(&expected_dir).expect("stat"));
    assert_eq!(
        (pod.uid(), pod.container_id()),
        (uid.as_str(), cid.as_str())
    );

    // A server in the pod.
    let per_conn = 100_000_u64;
    let mut server = pod
        .spawn(&bin, &["serve", "0.0.0.0:8080", &per_conn.to_string()])
        .expect("spawn server");
    let listening = read_listening(&mut server, STEP).expect("server listening");
    assert_eq!(listening.port(), 8080);
    let pid = server.id();
    assert!(
        cgroup_procs(pod.cgroup_dir()).contains(&pid),
        "server pid {pid} not in {:?}",
        cgroup_procs(pod.cgroup_dir())
    );
    let own_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let rel = pod
        .cgroup_dir()
        .strip_prefix(cgroup2_mount())
        .expect("under mount");
    assert!(
        own_cgroup.contains(&format!("0::/{}\n", rel.display())),
        "{own_cgroup}"
    );
    assert_ne!(net_ns_of(&pid.to_string()), net_ns_of("self"));

    let segs_before = pod.nstat(&["TcpOutSegs"]).expect("nstat")["TcpOutSegs"];

    // A client in the root namespace, in its own cgroup.
    let host = HostCgroup::create(&prefix, "client").expect("host cgroup");
    assert_eq!(
        host.cgroup_dir(),
        cgroup2_mount().join(&prefix).join("client")
    );
    assert_eq!(
        host.cgroup_id(),
        cgroup_id_of(host.cgroup_dir()).expect("stat")
    );
    assert_ne!(host.cgroup_id(), pod.cgroup_id());
    let target = format!("{}:8080", pod.addr());
    let out = host
        .run(&bin, &["fetch", &target, "20", "4"], STEP)
        .expect("fetch");
    let kv = stdout_kv("fetch", &out);
    assert!(out.status.success());
    assert_eq!(kv.get("bytes"), Some(&(20 * per_conn)));
    assert_eq!(kv.get("conns"), Some(&20));
    assert_eq!(kv.get("failed"), Some(&0));

    let after = pod.nstat(&["TcpOutSegs", "TcpRetransSegs"]).expect("nstat");
    // 2 MB at most 64 KiB per segment (GSO) plus handshakes: clearly more than 20 segments.
    assert!(
        after["TcpOutSegs"] > segs_before + 20,
        "TcpOutSegs {segs_before} -> {after:?}"
    );
    assert!(
        pod.nstat(&["NoSuchCounterXyz"]).is_err(),
        "unknown counter must be an error"
    );
}

#[test]
fn egress_loss_causes_retransmits_but_fetch_completes() {
    require_root();
    let bin = pod_traffic_bin();
    let prefix = unique_prefix("loss");
    let pod = Pod::create(&prefix, 12, &fake_pod_uid(2), &fake_container_id(2)).expect("pod");
    let mut server = pod
        .spawn(&bin, &["serve", "0.0.0.0:8080", "1000000"])
        .expect("spawn server");
    read_listening(&mut server, STEP).expect("server listening");

    let before = pod.nstat(&["TcpRetransSegs"]).expect("nstat")["TcpRetransSegs"];
    pod.drop_egress_percent(10).expect("install loss");
    // Idempotent: a second call replaces the first.
    pod.drop_egress_percent(10).expect("reinstall loss");
    let tables = pod
        .run(Path::new("nft"), &["list", "tables"], STEP)
        .expect("nft list");
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    assert!(
        tables.contains(&format!("netdev {prefix}_loss")),
        "{tables}"
    );

    let start = Instant::now();
    let out = pod_traffic(&["fetch", &format!("{}:8080", pod.addr()), "4", "4"]);
    let kv = stdout_kv("fetch with loss", &out);
    eprintln!("4 MB with 10% loss took {:?}", start.elapsed());
    assert!(out.status.success());
    assert_eq!(kv.get("bytes"), Some(&4_000_000));
    assert_eq!(kv.get("failed"), Some(&0));
    let after = pod.nstat(&["TcpRetransSegs"]).expect("nstat")["TcpRetransSegs"];
    assert!(after > before, "TcpRetransSegs {before} -> {after}");

    pod.clear_faults().expect("clear faults");
    pod.clear_faults().expect("clear faults twice");
    let tables = pod
        .run(Path::new("nft"), &["list", "tables"], STEP)
        .expect("nft list");
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    assert!(!tables.contains(&format!("{prefix}_loss")), "{tables}");
    // Segments lost just before the loss was removed (a FIN, the tail of a window) are still
    // retransmitted after the fetch returned — seconds later on a slow (emulated) machine. Wait
    // until no pod socket has anything unacknowledged before taking the baseline.
    wait_until_blocking(
        STEP,
        Duration::from_millis(100),
        "pod sockets to go quiet",
        || pod_sockets_quiet(pod.netns()).then_some(()),
    );
    let after = pod.nstat(&["TcpRetransSegs"]).expect("nstat")["TcpRetransSegs"];
    // Without loss, a fetch adds (almost) no retransmits: a stalled emulated CPU (the 6.1 run
    // under TCG) can fire a tail-loss probe or an early RTO, as tcp.rs allows its healthy pod.
    let out = pod_traffic(&["fetch", &format!("{}:8080", pod.addr()), "2", "2"]);
    assert!(out.status.success(), "{out:?}");
    let clean = pod.nstat(&["TcpRetransSegs"]).expect("nstat")["TcpRetransSegs"];
    assert!(
        clean - after <= 2,
        "retransmits without loss: {after} -> {clean}"
    );
}

/// No TCP socket of the namespace can retransmit: none has unacknowledged data (`tx_queue` in
/// `/proc/net/tcp`) or an unacknowledged SYN, SYN-ACK or FIN (SYN_SENT, SYN_RECV, FIN_WAIT1,
/// LAST_ACK, CLOSING).
fn pod_sockets_quiet(netns: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "cat", "/proc/net/tcp"])
        .output()
        .expect("ip netns exec cat /proc/net/tcp");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .all(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (state, tx_queue) = (
                f.get(3).copied().unwrap_or(""),
                f.get(4)
                    .and_then(|q| q.split_once(':'))
                    .map_or("x", |(tx, _)| tx),
            );
            u64::from_str_radix(tx_queue, 16) == Ok(0)
                && !matches!(state, "02" | "03" | "04" | "09" | "0B")
        })
}

#[test]
fn connect_refused_counts_refusals_and_detects_listeners() {
    require_root();
    let bin = pod_traffic_bin();
    let prefix = unique_prefix("ref");
    let pod = Pod::create(&prefix, 13, &fake_pod_uid(3), &fake_container_id(3)).expect("pod");
    let closed = format!("{}:9", pod.addr());
    let out = pod_traffic(&["connect-refused", &closed, "5"]);
    let kv = stdout_kv("connect-refused", &out);
    assert!(out.status.success());
    assert_eq!(kv.get("refused"), Some(&5));
    assert_eq!(kv.get("other"), Some(&0));

    // The same tool reports failure when something does listen.
    let mut sink = pod.spawn(&bin, &["sink", "0.0.0.0:9"]).expect("sink");
    read_listening(&mut sink, STEP).expect("sink listening");
    let out = pod_traffic(&["connect-refused", &closed, "3"]);
    let kv = stdout_kv("connect-refused vs listener", &out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(kv.get("refused"), Some(&0));
    assert_eq!(kv.get("other"), Some(&3));
}

#[test]
fn pod_client_sends_to_root_namespace_sink() {
    require_root();
    let bin = pod_traffic_bin();
    let prefix = unique_prefix("snd");
    let pod = Pod::create(&prefix, 14, &fake_pod_uid(4), &fake_container_id(4)).expect("pod");
    let host = HostCgroup::create(&prefix, "sink").expect("host cgroup");
    let bind = format!("{}:0", pod.host_addr());
    let mut sink = host.spawn(&bin, &["sink", &bind]).expect("sink");
    let addr = read_listening(&mut sink, STEP).expect("sink listening");
    assert_ne!(addr.port(), 0);
    assert!(cgroup_procs(host.cgroup_dir()).contains(&sink.id()));
    let out = pod
        .run(&bin, &["send", &addr.to_string(), "300000"], STEP)
        .expect("send");
    let kv = stdout_kv("send", &out);
    assert!(out.status.success());
    assert_eq!(kv.get("sent"), Some(&300_000));
}

#[test]
fn pod_and_host_cgroup_are_removed_on_drop_and_on_panic() {
    require_root();
    let bin = pod_traffic_bin();
    let prefix = unique_prefix("drop");
    let pod = Pod::create(&prefix, 15, &fake_pod_uid(5), &fake_container_id(5)).expect("pod");
    let host = HostCgroup::create(&prefix, "clients").expect("host cgroup");
    let mut server = pod
        .spawn(&bin, &["serve", "0.0.0.0:8080", "10"])
        .expect("spawn");
    read_listening(&mut server, STEP).expect("listening");
    let mut client_sink = host.spawn(&bin, &["sink", "127.0.0.1:0"]).expect("spawn");
    read_listening(&mut client_sink, STEP).expect("listening");
    // A process in the netns that the harness did not spawn itself: found via `ip netns pids`.
    let mut stray = Command::new("ip")
        .args(["netns", "exec", pod.netns(), "sleep", "300"])
        .spawn()
        .expect("stray");
    let stray_pid = stray.id();
    wait_until_blocking(STEP, Duration::from_millis(20), "stray in netns", || {
        (net_ns_of(&stray_pid.to_string()) != net_ns_of("self")).then_some(())
    });

    let netns = pod.netns().to_owned();
    let veth = pod.host_veth().to_owned();
    let pod_dir = pod.cgroup_dir().to_owned();
    let pod_slice = pod_dir.parent().expect("parent").to_owned();
    let host_dir = host.cgroup_dir().to_owned();
    let run_dir = cgroup2_mount().join(&prefix);
    let pids = [server.id(), client_sink.id(), stray_pid];
    assert!(link_exists(&veth));

    drop(pod);
    assert!(!netns_list().contains(&netns), "netns {netns} left behind");
    assert!(!link_exists(&veth), "veth {veth} left behind");
    assert!(!pod_dir.exists() && !pod_slice.exists(), "{pod_dir:?} left");
    assert!(host_dir.exists(), "host cgroup must outlive the pod");
    assert!(dead(pids[0]) && dead(pids[2]), "pod processes survive");
    assert!(!dead(pids[1]), "host process killed with the pod");
    let stray_status = stray.wait().expect("wait for the stray process");
    assert_eq!(stray_status.signal(), Some(libc::SIGKILL), "{stray_status}");

    drop(host);
    assert!(!host_dir.exists(), "{host_dir:?} left behind");
    assert!(!run_dir.exists(), "{run_dir:?} left behind");
    assert!(dead(pids[1]), "host cgroup process survives");

    // Cleanup also runs while unwinding from a failed assertion.
    let prefix = unique_prefix("pnc");
    let ns = format!("{prefix}-p16");
    let result = std::panic::catch_unwind(|| {
        let pod = Pod::create(&prefix, 16, &fake_pod_uid(6), &fake_container_id(6)).expect("pod");
        let _host = HostCgroup::create(&prefix, "c").expect("host");
        let _child = pod.spawn(&pod_traffic_bin(), &["sink", "0.0.0.0:1"]);
        assert!(netns_list().contains(&pod.netns().to_owned()));
        panic!("deliberate test failure");
    });
    assert!(result.is_err());
    assert!(!netns_list().contains(&ns), "netns {ns} left after panic");
    assert!(
        !cgroup2_mount().join(&prefix).exists(),
        "cgroups left after panic"
    );
}

#[test]
fn bad_arguments_are_rejected() {
    // Root is not needed, but the suite is root-only anyway.
    require_root();
    // A pod with an invalid container id is refused before anything is created.
    assert!(Pod::create(&unique_prefix("bad"), 17, &fake_pod_uid(7), "nothex").is_err());
    assert!(Pod::create("bad-prefix", 17, &fake_pod_uid(7), &fake_container_id(7)).is_err());

    // A subnet in use and a cgroup that exists are refused without harming their owners.
    let prefix = unique_prefix("dup");
    let pod = Pod::create(&prefix, 17, &fake_pod_uid(7), &fake_container_id(7)).expect("pod");
    let other = unique_prefix("dup");
    let err = Pod::create(&other, 17, &fake_pod_uid(8), &fake_container_id(8))
        .expect_err("index 17 is taken");
    assert!(format!("{err:#}").contains("already in use"), "{err:#}");
    assert!(!netns_list().contains(&format!("{other}-p17")));
    let host = HostCgroup::create(&prefix, "same").expect("host cgroup");
    assert!(HostCgroup::create(&prefix, "same").is_err());
    assert!(
        host.cgroup_dir().is_dir(),
        "failed duplicate removed the original"
    );
    assert!(pod.cgroup_dir().is_dir());
    assert!(netns_list().contains(&pod.netns().to_owned()));
    drop((host, pod));
    assert!(!cgroup2_mount().join(&prefix).exists());
    assert!(!cgroup2_mount().join(&other).exists());
    for args in [
        &[][..],
        &["nope"][..],
        &["serve", "0.0.0.0:1"][..],
        &["serve", "not-an-addr", "1"][..],
        &["fetch", "127.0.0.1:1", "x", "1"][..],
        &["fetch", "127.0.0.1:1", "1", "0"][..],
        &["send", "127.0.0.1:1", "-5"][..],
    ] {
        let out = pod_traffic(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage:"),
            "{args:?}: {out:?}"
        );
    }
}

#[test]
#[should_panic(expected = "waiting for the impossible")]
fn wait_until_blocking_panics_at_deadline() {
    wait_until_blocking(
        Duration::from_millis(100),
        Duration::from_millis(10),
        "the impossible",
        || None::<()>,
    );
}

#[tokio::test]
async fn wait_until_returns_first_some() {
    let mut n = 0;
    let v = wait_until(
        Duration::from_secs(5),
        Duration::from_millis(1),
        "n to reach 3",
        || {
            n += 1;
            let n = n;
            async move { (n >= 3).then_some(n) }
        },
    )
    .await;
    assert_eq!(v, 3);
}

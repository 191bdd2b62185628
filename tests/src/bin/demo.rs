//! `./x demo`: the product working in a minute. Two "pods" (network namespaces with kubepods
//! cgroups) run the Go test server; the collector watches them; clients send real traffic.
//! Pod "checkout" stays healthy; pod "payments" gets 5xx, then packet loss, then recovers.
//! Every two seconds the verdicts are printed as `collector status` shows them.
//!
//! Options: --listen ADDR (the collector's API, default 127.0.0.1:9464), --seconds-per-phase N.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use collector::{
    app,
    config::Config,
    status,
    verdict::{VerdictConfig, window::Geometry},
};
use integration_tests::*;

const PORT: u16 = 8080;

fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:9464".to_string();
    let mut phase = 20u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().context("--listen needs ADDR:PORT")?,
            "--seconds-per-phase" => {
                phase = args
                    .next()
                    .context("--seconds-per-phase needs N")?
                    .parse()
                    .context("--seconds-per-phase")?
            }
            other => {
                bail!("unknown option {other:?} (options: --listen ADDR, --seconds-per-phase N)")
            }
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo loads eBPF and creates network namespaces: run it as root (./x demo)");
    }
    let (_, _, server) = go_fixtures()
        .into_iter()
        .filter(|(_, variant, _)| variant == "default")
        .max_by_key(|(v, ..)| {
            v.split('.')
                .nth(1)
                .and_then(|m| m.parse::<u32>().ok())
                .unwrap_or(0)
        })
        .context("no Go test server built")?;
    let prefix = unique_prefix("demo");
    let names = ["checkout", "payments"];
    let pods: Vec<Pod> = (0..2u8)
        .map(|i| {
            Pod::create(
                &prefix,
                90 + i,
                &fake_pod_uid(0xd0 + u32::from(i)),
                &fake_container_id(0xd0 + u32::from(i)),
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let mut servers = Vec::new();
    for p in &pods {
        let mut child = p.spawn(&server, &["-listen", &format!("0.0.0.0:{PORT}")])?;
        if let Some(mut out) = child.stdout.take() {
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        }
        servers.push(child);
    }
    let rt = tokio::runtime::Runtime::new()?;
    let mut verdict = VerdictConfig {
        geometry: Geometry {
            bucket: Duration::from_secs(2),
            count: 5,
        },
        ..VerdictConfig::default()
    };
    // Short windows see fewer sends than the defaults assume.
    verdict.rules.min_send_calls = 100;
    let config = Config {
        listen: listen.parse().context("--listen")?,
        harvest_interval: Duration::from_millis(500),
        kubelet_cgroup_roots: vec![integration_tests::HARNESS_KUBELET_ROOT.into()],
        verdict,
        ..Config::default()
    };
    let running = rt.block_on(app::start(config))?;
    let api = format!("http://{}", running.addr);
    println!("collector API on {api}  (try: curl {api}/v1/workloads, curl {api}/metrics)");
    for (n, p) in names.iter().zip(&pods) {
        println!("pod {n}: uid {} at {}:{PORT}", p.uid(), p.addr());
    }
    let addr = |i: usize| SocketAddr::new(pods[i].addr().into(), PORT);
    let _checkout = Load::start(addr(0), "/ok", 4, Duration::from_millis(20));
    let _checkout_probe = Load::start(addr(0), "/healthz", 1, Duration::from_millis(500));
    let payments = Load::start(addr(1), "/ok", 16, Duration::from_millis(20));
    let _payments_probe = Load::start(addr(1), "/healthz", 1, Duration::from_millis(500));

    let phases: [(&str, &dyn Fn() -> anyhow::Result<()>); 4] = [
        ("all healthy", &|| Ok(())),
        (
            "payments answers 503 on real requests (its /healthz still says 200)",
            &|| {
                payments.set("/err");
                Ok(())
            },
        ),
        ("payments is fixed, but loses 30 % of its packets", &|| {
            payments.set("/ok");
            pods[1].drop_egress_percent(30)
        }),
        ("payments recovers", &|| pods[1].clear_faults()),
    ];
    for (title, start) in phases {
        println!("\n=== {title} ===");
        start()?;
        for _ in 0..(phase / 2).max(1) {
            std::thread::sleep(Duration::from_secs(2));
            match status::fetch(&api) {
                Ok(doc) => println!("{}", status::table(&doc)),
                Err(e) => println!("status: {e:#}"),
            }
        }
    }
    rt.block_on(running.shutdown());
    println!("demo done; pods, cgroups and rules removed");
    Ok(())
}

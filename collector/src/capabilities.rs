//! The Linux capabilities the configured collector needs, checked at start-up so that a
//! least-privilege deployment missing one fails at once with its name and what it is for, rather
//! than with a bare EPERM from deep inside a map creation, or worse, with a source that silently
//! counts nothing (Go uprobes without CAP_SYS_PTRACE attach to no process).
//!
//! What each one is for was measured by running the image with every capability dropped but
//! these, then with each one removed (tests/tests/image.rs does both):
//!
//! | capability | needed for | without it |
//! |---|---|---|
//! | CAP_BPF | maps and programs (bpf(2)) | no map can be created |
//! | CAP_PERFMON | tracing programs (tp_btf, raw_tp, kprobe), perf events | no TCP signal attaches |
//! | CAP_NET_ADMIN | attaching the socket parser (cgroup_skb) to the cgroup hierarchy | no HTTP request counted |
//! | CAP_SYS_PTRACE | Go uprobes: /proc/PID/exe of processes with more capabilities than ours | no Go server found |
//! | CAP_DAC_READ_SEARCH | Go uprobes: reading a server binary not readable by others | that server not instrumented |
//!
//! CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (the kernel's bpf_capable() and
//! perfmon_capable()), and CAP_DAC_OVERRIDE for CAP_DAC_READ_SEARCH, so a privileged container
//! or a root shell passes.

use crate::config::Config;

/// A capability: its number (linux/capability.h) and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub bit: u8,
    pub name: &'static str,
}

pub const DAC_OVERRIDE: Capability = Capability {
    bit: 1,
    name: "CAP_DAC_OVERRIDE",
};
pub const DAC_READ_SEARCH: Capability = Capability {
    bit: 2,
    name: "CAP_DAC_READ_SEARCH",
};
pub const NET_ADMIN: Capability = Capability {
    bit: 12,
    name: "CAP_NET_ADMIN",
};
pub const SYS_PTRACE: Capability = Capability {
    bit: 19,
    name: "CAP_SYS_PTRACE",
};
pub const SYS_ADMIN: Capability = Capability {
    bit: 21,
    name: "CAP_SYS_ADMIN",
};
pub const PERFMON: Capability = Capability {
    bit: 38,
    name: "CAP_PERFMON",
};
pub const BPF: Capability = Capability {
    bit: 39,
    name: "CAP_BPF",
};

/// One need: the capability, what also satisfies it, and why the configuration needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub capability: Capability,
    pub or: Option<Capability>,
    pub reason: &'static str,
}

impl Need {
    fn met_by(&self, effective: u64) -> bool {
        let has = |c: Capability| effective & (1u64 << c.bit) != 0;
        has(self.capability) || self.or.is_some_and(has)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapabilityError {
    #[error("missing capabilities: {}", describe(.missing))]
    Missing { missing: Vec<Need> },
    #[error("reading the effective capabilities from /proc/self/status: {0}")]
    Status(String),
}

fn describe(missing: &[Need]) -> String {
    missing
        .iter()
        .map(|n| format!("{} ({})", n.capability.name, n.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What this configuration needs.
pub fn needs(config: &Config) -> Vec<Need> {
    let mut needs = vec![
        Need {
            capability: BPF,
            or: Some(SYS_ADMIN),
            reason: "creating eBPF maps and loading programs",
        },
        Need {
            capability: PERFMON,
            or: Some(SYS_ADMIN),
            reason: "loading and attaching tracing programs",
        },
    ];
    if config.http.socket {
        needs.push(Need {
            capability: NET_ADMIN,
            or: None,
            reason: "attaching the HTTP socket parser to the cgroup hierarchy; or --no-http-socket",
        });
    }
    if config.http.uprobes != crate::config::GoUprobes::Off {
        needs.push(Need {
            capability: SYS_PTRACE,
            or: None,
            reason: "finding Go servers through /proc/PID/exe for --go-http-uprobes (auto, all); or --go-http-uprobes off",
        });
        needs.push(Need {
            capability: DAC_READ_SEARCH,
            or: Some(DAC_OVERRIDE),
            reason: "reading Go server binaries that are not world-readable for --go-http-uprobes (auto, all); or --go-http-uprobes off",
        });
    } else if config.http.grpc_uprobes {
        // gRPC discovery finds and reads the servers' binaries the same way.
        needs.push(Need {
            capability: SYS_PTRACE,
            or: None,
            reason: "finding Go servers through /proc/PID/exe for --go-grpc-uprobes all",
        });
        needs.push(Need {
            capability: DAC_READ_SEARCH,
            or: Some(DAC_OVERRIDE),
            reason: "reading Go server binaries that are not world-readable for --go-grpc-uprobes all",
        });
    }
    needs
}

/// The effective set from the text of /proc/self/status (`CapEff:\t000001ffffffffff`).
pub fn effective_from_status(status: &str) -> Result<u64, CapabilityError> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| CapabilityError::Status("no CapEff line".into()))?
        .trim();
    u64::from_str_radix(hex, 16).map_err(|e| CapabilityError::Status(format!("{hex:?}: {e}")))
}

/// The needs this effective set does not meet, in the order of [`needs`].
pub fn missing(needs: &[Need], effective: u64) -> Vec<Need> {
    needs
        .iter()
        .filter(|n| !n.met_by(effective))
        .cloned()
        .collect()
}

/// Fails when this process lacks a capability the configuration needs.
pub fn check(config: &Config) -> Result<(), CapabilityError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| CapabilityError::Status(e.to_string()))?;
    let missing = missing(&needs(config), effective_from_status(&status)?);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CapabilityError::Missing { missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> u64 {
        caps.iter().fold(0, |s, c| s | 1u64 << c.bit)
    }

    fn names(needs: &[Need]) -> Vec<&'static str> {
        needs.iter().map(|n| n.capability.name).collect()
    }

    #[test]
    fn parses_the_effective_set_of_proc_status() {
        let status = "Name:\tcollector\nCapInh:\t0000000000000000\nCapPrm:\t000000c000081004\nCapEff:\t000000c000081004\n";
        assert_eq!(
            effective_from_status(status),
            Ok(set(&[DAC_READ_SEARCH, NET_ADMIN, SYS_PTRACE, PERFMON, BPF]))
        );
        assert!(matches!(
            effective_from_status("Name:\tx\n"),
            Err(CapabilityError::Status(_))
        ));
        assert!(matches!(
            effective_from_status("CapEff:\tzz\n"),
            Err(CapabilityError::Status(_))
        ));
    }

    #[test]
    fn the_default_configuration_needs_ptrace_and_dac_read_search_for_auto_uprobes() {
        let needs = needs(&Config::default());
        assert_eq!(
            names(&needs),
            [
                "CAP_BPF",
                "CAP_PERFMON",
                "CAP_NET_ADMIN",
                "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH"
            ]
        );
    }

    #[test]
    fn the_socket_parser_alone_needs_bpf_perfmon_and_net_admin() {
        let mut config = Config::default();
        config.http.uprobes = crate::config::GoUprobes::Off;
        let needs = needs(&config);
        assert_eq!(names(&needs), ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert_eq!(missing(&needs, set(&[BPF, PERFMON, NET_ADMIN])), []);
        assert_eq!(
            names(&missing(&needs, set(&[BPF, NET_ADMIN]))),
            ["CAP_PERFMON"]
        );
        // A privileged container: CAP_SYS_ADMIN stands in for BPF and PERFMON.
        assert_eq!(missing(&needs, set(&[SYS_ADMIN, NET_ADMIN])), []);
    }

    #[test]
    fn go_uprobes_need_ptrace_and_dac_read_search_but_not_net_admin() {
        let mut config = Config::default();
        config.http.socket = false;
        config.http.uprobes = crate::config::GoUprobes::All;
        let needs = needs(&config);
        assert_eq!(
            names(&needs),
            [
                "CAP_BPF",
                "CAP_PERFMON",
                "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH"
            ]
        );
        assert_eq!(
            missing(&needs, set(&[BPF, PERFMON, SYS_PTRACE, DAC_OVERRIDE])),
            []
        );
        assert_eq!(
            names(&missing(&needs, set(&[BPF, PERFMON, SYS_PTRACE]))),
            ["CAP_DAC_READ_SEARCH"]
        );
    }

    #[test]
    fn grpc_uprobes_alone_need_ptrace_and_dac_read_search_too() {
        let mut config = Config::default();
        config.http.uprobes = crate::config::GoUprobes::Off;
        config.http.grpc_uprobes = true;
        assert_eq!(
            names(&needs(&config)),
            [
                "CAP_BPF",
                "CAP_PERFMON",
                "CAP_NET_ADMIN",
                "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH"
            ]
        );
        // With the net/http uprobes too, each capability once.
        config.http.uprobes = crate::config::GoUprobes::All;
        assert_eq!(names(&needs(&config)).len(), 5);
    }

    #[test]
    fn the_error_names_each_missing_capability_and_why() {
        let mut config = Config::default();
        config.http.uprobes = crate::config::GoUprobes::Off;
        let needs = needs(&config);
        let error = CapabilityError::Missing {
            missing: missing(&needs, set(&[PERFMON])),
        };
        assert_eq!(
            error.to_string(),
            "missing capabilities: CAP_BPF (creating eBPF maps and loading programs); \
             CAP_NET_ADMIN (attaching the HTTP socket parser to the cgroup hierarchy; or \
             --no-http-socket)"
        );
    }
}

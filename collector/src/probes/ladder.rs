//! Signals, rungs and the attach loop.

use std::{collections::BTreeMap, fmt, str::FromStr};

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
};
use tracing::{info, warn};

use super::offsets::Prepared;

/// One health signal family; each has its own ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    TcpSend,
    TcpRetransmit,
    TcpRetransmitSynack,
    TcpState,
    TcpResetSent,
    TcpResetReceived,
    TcpDestroy,
    ProcessExec,
}

impl Signal {
    pub const ALL: [Signal; 8] = [
        Signal::TcpSend,
        Signal::TcpRetransmit,
        Signal::TcpRetransmitSynack,
        Signal::TcpState,
        Signal::TcpResetSent,
        Signal::TcpResetReceived,
        Signal::TcpDestroy,
        Signal::ProcessExec,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Signal::TcpSend => "tcp_send",
            Signal::TcpRetransmit => "tcp_retransmit",
            Signal::TcpRetransmitSynack => "tcp_retransmit_synack",
            Signal::TcpState => "tcp_state",
            Signal::TcpResetSent => "tcp_reset_sent",
            Signal::TcpResetReceived => "tcp_reset_received",
            Signal::TcpDestroy => "tcp_destroy",
            Signal::ProcessExec => "process_exec",
        }
    }

    /// The rungs this signal has, in default order.
    pub fn default_ladder(self) -> Vec<Rung> {
        super::rungs(self).iter().map(|(r, _)| *r).collect()
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Signal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Signal::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Signal::ALL.iter().map(|x| x.as_str()).collect();
                format!(
                    "unknown signal {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// A kind of kernel hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rung {
    Kprobe,
    Fentry,
    TpBtf,
    RawTp,
    Tracepoint,
}

impl Rung {
    pub const ALL: [Rung; 5] = [
        Rung::Kprobe,
        Rung::Fentry,
        Rung::TpBtf,
        Rung::RawTp,
        Rung::Tracepoint,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Rung::Kprobe => "kprobe",
            Rung::Fentry => "fentry",
            Rung::TpBtf => "tp_btf",
            Rung::RawTp => "raw_tp",
            Rung::Tracepoint => "tracepoint",
        }
    }
}

impl fmt::Display for Rung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Rung {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Rung::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown rung {s:?} (expected kprobe, fentry, tp_btf, raw_tp or tracepoint)"
                )
            })
    }
}

/// One program attachment of a rung.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    Kprobe {
        prog: &'static str,
        function: &'static str,
    },
    Kretprobe {
        prog: &'static str,
        function: &'static str,
    },
    /// Paired with a `Fexit` on the same function when the return needs what the entry saw.
    Fentry {
        prog: &'static str,
        function: &'static str,
    },
    Fexit {
        prog: &'static str,
        function: &'static str,
    },
    TpBtf {
        prog: &'static str,
        tracepoint: &'static str,
    },
    RawTp {
        prog: &'static str,
        tracepoint: &'static str,
    },
    Tracepoint {
        prog: &'static str,
        category: &'static str,
        name: &'static str,
    },
}

impl Hook {
    pub const fn prog(&self) -> &'static str {
        match self {
            Hook::Kprobe { prog, .. }
            | Hook::Kretprobe { prog, .. }
            | Hook::Fentry { prog, .. }
            | Hook::Fexit { prog, .. }
            | Hook::TpBtf { prog, .. }
            | Hook::RawTp { prog, .. }
            | Hook::Tracepoint { prog, .. } => prog,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("required signal {signal} could not attach on any rung: {attempts}")]
    RequiredUnavailable { signal: Signal, attempts: String },
    #[error("program {prog} is missing from the eBPF object")]
    MissingProgram { prog: &'static str },
    #[error("{prog}: {source}")]
    Program {
        prog: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("{0}")]
    Unavailable(String),
}

/// What happened to one rung of one signal.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attempt {
    pub rung: Rung,
    /// None when it attached.
    pub error: Option<String>,
}

/// Outcome of one signal's ladder.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttachReport {
    pub signal: Signal,
    pub attached: Option<Rung>,
    pub attempts: Vec<Attempt>,
    /// Instructions the verifier processed for each program of the attached rung, so growth
    /// toward the verifier's limits is visible per kernel. Empty before Linux 5.16 (the kernel
    /// does not report it) and when nothing attached.
    pub verified_insns: Vec<VerifiedInsns>,
}

/// The verifier's processed-instruction count of one loaded program.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VerifiedInsns {
    pub prog: &'static str,
    pub insns: u32,
}

/// The ladders to walk: order per signal, and which signals must attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LadderPlan {
    pub order: BTreeMap<Signal, Vec<Rung>>,
    pub required: Vec<Signal>,
}

impl Default for LadderPlan {
    fn default() -> Self {
        Self {
            order: Signal::ALL
                .iter()
                .map(|s| (*s, s.default_ladder()))
                .collect(),
            required: Vec::new(),
        }
    }
}

/// The attached programs, by signal. Links live as long as the `Ebpf` they came from.
pub struct ProbeSet {
    pub reports: Vec<AttachReport>,
}

impl ProbeSet {
    /// Walks every signal's ladder. Fails only when a required signal attached nowhere.
    pub fn attach(
        ebpf: &mut Ebpf,
        btf: Option<&Btf>,
        prepared: &Prepared,
        plan: &LadderPlan,
    ) -> Result<Self, ProbeError> {
        let mut reports = Vec::new();
        for signal in Signal::ALL {
            let order = plan
                .order
                .get(&signal)
                .cloned()
                .unwrap_or_else(|| signal.default_ladder());
            let mut report = AttachReport {
                signal,
                attached: None,
                attempts: Vec::new(),
                verified_insns: Vec::new(),
            };
            for rung in order {
                let result = attach_rung(ebpf, btf, prepared, signal, rung);
                match result {
                    Ok(()) => {
                        info!(signal = %signal, rung = %rung, "signal attached");
                        report.attempts.push(Attempt { rung, error: None });
                        report.attached = Some(rung);
                        report.verified_insns = verified_insns(ebpf, signal, rung);
                        break;
                    }
                    Err(e) => {
                        info!(signal = %signal, rung = %rung, error = %error_chain(&e), "rung unavailable, trying next");
                        report.attempts.push(Attempt {
                            rung,
                            error: Some(error_chain(&e)),
                        });
                    }
                }
            }
            if report.attached.is_none() {
                let attempts = describe(&report.attempts);
                if plan.required.contains(&signal) {
                    return Err(ProbeError::RequiredUnavailable { signal, attempts });
                }
                warn!(signal = %signal, %attempts, "signal unavailable on this kernel");
            }
            reports.push(report);
        }
        Ok(Self { reports })
    }

    pub fn rung_of(&self, signal: Signal) -> Option<Rung> {
        self.reports
            .iter()
            .find(|r| r.signal == signal)
            .and_then(|r| r.attached)
    }
}

/// The error and its sources, "outer: inner: innermost".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        // Many errors already print their source; do not repeat it.
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

fn describe(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return "no rungs configured".into();
    }
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.rung, a.error.as_deref().unwrap_or("attached")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Loads and attaches every hook of a rung; on failure unloads what it loaded.
fn attach_rung(
    ebpf: &mut Ebpf,
    btf: Option<&Btf>,
    prepared: &Prepared,
    signal: Signal,
    rung: Rung,
) -> Result<(), ProbeError> {
    let hooks = super::rungs(signal)
        .iter()
        .find(|(r, _)| *r == rung)
        .map(|(_, h)| *h)
        .ok_or_else(|| ProbeError::Unavailable(format!("{signal} has no {rung} rung")))?;
    if let Some(reason) = prepared.unavailable(signal, rung) {
        return Err(ProbeError::Unavailable(reason));
    }
    let mut done = Vec::new();
    for hook in hooks {
        match attach_hook(ebpf, btf, hook) {
            Ok(()) => done.push(hook.prog()),
            Err(e) => {
                for prog in done {
                    unload(ebpf, prog);
                }
                unload(ebpf, hook.prog());
                return Err(e);
            }
        }
    }
    Ok(())
}

fn attach_hook(ebpf: &mut Ebpf, btf: Option<&Btf>, hook: &Hook) -> Result<(), ProbeError> {
    let prog_name = hook.prog();
    let program = ebpf
        .program_mut(prog_name)
        .ok_or(ProbeError::MissingProgram { prog: prog_name })?;
    let err = |source| ProbeError::Program {
        prog: prog_name,
        source,
    };
    let need_btf = || btf.ok_or_else(|| ProbeError::Unavailable("kernel BTF not available".into()));
    match *hook {
        Hook::Kprobe { function, .. } | Hook::Kretprobe { function, .. } => {
            let p: &mut KProbe = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.attach(function, 0).map_err(err)?;
        }
        Hook::Fentry { function, .. } => {
            let btf = need_btf()?;
            let p: &mut FEntry = program.try_into().map_err(err)?;
            p.load(function, btf).map_err(err)?;
            p.attach().map_err(err)?;
        }
        Hook::Fexit { function, .. } => {
            let btf = need_btf()?;
            let p: &mut FExit = program.try_into().map_err(err)?;
            p.load(function, btf).map_err(err)?;
            p.attach().map_err(err)?;
        }
        Hook::TpBtf { tracepoint, .. } => {
            let btf = need_btf()?;
            let p: &mut BtfTracePoint = program.try_into().map_err(err)?;
            p.load(tracepoint, btf).map_err(err)?;
            p.attach().map_err(err)?;
        }
        Hook::RawTp { tracepoint, .. } => {
            let p: &mut RawTracePoint = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.attach(tracepoint).map_err(err)?;
        }
        Hook::Tracepoint { category, name, .. } => {
            let p: &mut TracePoint = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.attach(category, name).map_err(err)?;
        }
    }
    Ok(())
}

/// The verifier's instruction counts of a rung's (loaded) programs; programs whose count the
/// kernel does not report are left out.
fn verified_insns(ebpf: &Ebpf, signal: Signal, rung: Rung) -> Vec<VerifiedInsns> {
    let hooks = super::rungs(signal)
        .iter()
        .find(|(r, _)| *r == rung)
        .map_or(&[][..], |(_, h)| *h);
    hooks
        .iter()
        .filter_map(|hook| {
            let prog = hook.prog();
            let insns = ebpf
                .program(prog)?
                .info()
                .ok()?
                .verified_instruction_count()?;
            Some(VerifiedInsns { prog, insns })
        })
        .collect()
}

/// Best effort: a program that failed to attach must not stay loaded.
fn unload(ebpf: &mut Ebpf, prog: &str) {
    use aya::programs::Program;
    let Some(program) = ebpf.program_mut(prog) else {
        return;
    };
    let result = match program {
        Program::KProbe(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::BtfTracePoint(p) => p.unload(),
        Program::RawTracePoint(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        _ => Ok(()),
    };
    // NotLoaded is the normal case when load itself failed.
    if let Err(e) = result
        && !matches!(e, ProgramError::NotLoaded)
    {
        warn!(prog, error = %e, "unloading a failed rung");
    }
}

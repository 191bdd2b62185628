//! Signals, rungs and the attach loop.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    str::FromStr,
};

use aya::{
    Btf,
    programs::{
        BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError, RawTracePoint, TracePoint,
    },
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

/// The object's programs by name, each taken out by the part of the start that loads it
/// (`ebpf.programs_mut()` collected): disjoint `&mut`s, so independent loads run at once.
pub type Programs<'a> = HashMap<&'a str, &'a mut Program>;

impl ProbeSet {
    /// Walks every signal's ladder, each signal on its own thread with its own programs (taken
    /// out of `programs`). Fails only when a required signal attached nowhere.
    ///
    /// Why threads: the kernel verifies and attaches independent programs in parallel, and a
    /// start on busy cores gets a share of CPU per runnable thread. One after the other, the
    /// eight ladders took 160 ms of a 490 ms start on idle cores, 250–290 ms under a Go
    /// server's load (BENCHMARKS.md, "Restart").
    pub fn attach(
        programs: &mut Programs<'_>,
        btf: Option<&Btf>,
        prepared: &Prepared,
        plan: &LadderPlan,
    ) -> Result<Self, ProbeError> {
        let ladders: Vec<(Signal, Vec<Rung>, Programs<'_>)> = Signal::ALL
            .iter()
            .map(|&signal| {
                let order = plan
                    .order
                    .get(&signal)
                    .cloned()
                    .unwrap_or_else(|| signal.default_ladder());
                let own: Programs<'_> = super::rungs(signal)
                    .iter()
                    .flat_map(|(_, hooks)| hooks.iter())
                    .filter_map(|h| programs.remove_entry(h.prog()))
                    .collect();
                (signal, order, own)
            })
            .collect();
        let reports: Vec<AttachReport> = std::thread::scope(|s| {
            let threads: Vec<_> = ladders
                .into_iter()
                .map(|(signal, order, mut own)| {
                    s.spawn(move || walk(&mut own, btf, prepared, signal, order))
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for report in &reports {
            if report.attached.is_none() {
                let attempts = describe(&report.attempts);
                if plan.required.contains(&report.signal) {
                    return Err(ProbeError::RequiredUnavailable {
                        signal: report.signal,
                        attempts,
                    });
                }
                warn!(signal = %report.signal, %attempts, "signal unavailable on this kernel");
            }
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

/// One signal's ladder: its rungs in `order` until one attaches.
fn walk(
    programs: &mut Programs<'_>,
    btf: Option<&Btf>,
    prepared: &Prepared,
    signal: Signal,
    order: Vec<Rung>,
) -> AttachReport {
    let mut report = AttachReport {
        signal,
        attached: None,
        attempts: Vec::new(),
        verified_insns: Vec::new(),
    };
    for rung in order {
        match attach_rung(programs, btf, prepared, signal, rung) {
            Ok(()) => {
                info!(signal = %signal, rung = %rung, "signal attached");
                report.attempts.push(Attempt { rung, error: None });
                report.attached = Some(rung);
                report.verified_insns = verified_insns(programs, signal, rung);
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
    report
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
    programs: &mut Programs<'_>,
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
        match attach_hook(programs, btf, hook) {
            Ok(()) => done.push(hook.prog()),
            Err(e) => {
                for prog in done {
                    unload(programs, prog);
                }
                unload(programs, hook.prog());
                return Err(e);
            }
        }
    }
    Ok(())
}

fn attach_hook(
    programs: &mut Programs<'_>,
    btf: Option<&Btf>,
    hook: &Hook,
) -> Result<(), ProbeError> {
    let prog_name = hook.prog();
    let program: &mut Program = programs
        .get_mut(prog_name)
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
fn verified_insns(programs: &Programs<'_>, signal: Signal, rung: Rung) -> Vec<VerifiedInsns> {
    let hooks = super::rungs(signal)
        .iter()
        .find(|(r, _)| *r == rung)
        .map_or(&[][..], |(_, h)| *h);
    hooks
        .iter()
        .filter_map(|hook| {
            let prog = hook.prog();
            let insns = programs
                .get(prog)?
                .info()
                .ok()?
                .verified_instruction_count()?;
            Some(VerifiedInsns { prog, insns })
        })
        .collect()
}

/// Best effort: a program that failed to attach must not stay loaded.
fn unload(programs: &mut Programs<'_>, prog: &str) {
    let Some(program) = programs.get_mut(prog) else {
        return;
    };
    let result = match &mut **program {
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

//! What `/v1/go-http` lists: every Go executable discovery found running, instrumented or not,
//! and why not. A server that is silently absent looks, to an operator, like a server the
//! collector never saw; a listed one with a reason says what to change (build with DWARF, a
//! newer Go, more capabilities, ...).
//!
//! [`SkipReason`] is a fixed set of codes, the same strings as the `reason` label of
//! `collector_go_binaries_skipped_total` (README, "Go servers").

use serde::Serialize;

use super::{GoBinaryError, attach::Instrumented};

/// Why a Go executable is not instrumented. `code()` is the API's `reason` and the metric's
/// `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The collector may not open or read the executable (without `CAP_DAC_READ_SEARCH`, a
    /// binary others may not read). Whether it is Go is unknown: `go_version` is null.
    Unreadable,
    /// Not an x86-64 little-endian ELF executable we probe (arm64, 32-bit, an ELF type other
    /// than executable or PIE).
    UnsupportedBinary,
    /// A Go the analyser does not read: build info or `.gopclntab` older than Go 1.18, or no
    /// build info at all (no Go version).
    UnsupportedGo,
    /// Go build info but no `.gopclntab` section (and no `.symtab` naming `runtime.pclntab`):
    /// function addresses cannot be verified.
    NoPclntab,
    /// Anything else the analysis refused: a malformed or cut-off file, over the read budget.
    Unanalyzable,
    /// A Go program without `net/http`'s server (`serverHandler.ServeHTTP` is not linked in).
    NoNetHttpServer,
    /// The struct offsets are unknown: no DWARF, and the offsets table has no row for the Go
    /// minor (or the DWARF is not the layout we know).
    NoOffsets,
    /// A function the uprobes need is missing, or its entry or returns could not be verified.
    UnverifiedAddresses,
    /// Every offsets slot is in use (`HTTP_OFFSETS_SLOTS` distinct executables instrumented).
    SlotsExhausted,
    /// The kernel refused a uprobe, or writing the offsets slot failed.
    AttachFailed,
    /// The file changed between analysis and attaching: never listed (nothing is remembered,
    /// the next exec notice or scan looks again); counted only.
    IdentityMismatch,
    /// `--go-http-uprobes auto`: the server has only spoken plaintext HTTP/1.x so far, which the
    /// socket parser counts without a trap; uprobes attach once one of its sockets speaks TLS
    /// or h2c. Listed, not counted in `collector_go_binaries_skipped_total`: nothing is missed.
    NotNeeded,
}

impl SkipReason {
    /// Every code, in documentation order.
    pub const ALL: [SkipReason; 12] = [
        Self::Unreadable,
        Self::UnsupportedBinary,
        Self::UnsupportedGo,
        Self::NoPclntab,
        Self::Unanalyzable,
        Self::NoNetHttpServer,
        Self::NoOffsets,
        Self::UnverifiedAddresses,
        Self::SlotsExhausted,
        Self::AttachFailed,
        Self::IdentityMismatch,
        Self::NotNeeded,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::UnsupportedBinary => "unsupported_binary",
            Self::UnsupportedGo => "unsupported_go",
            Self::NoPclntab => "no_pclntab",
            Self::Unanalyzable => "unanalyzable",
            Self::NoNetHttpServer => "no_net_http_server",
            Self::NoOffsets => "no_offsets",
            Self::UnverifiedAddresses => "unverified_addresses",
            Self::SlotsExhausted => "slots_exhausted",
            Self::AttachFailed => "attach_failed",
            Self::IdentityMismatch => "identity_mismatch",
            Self::NotNeeded => "not_needed",
        }
    }

    /// The code for an analysis failure of a file that is not known to be something other
    /// than Go (`GoBinaryError::is_not_go` is false).
    pub fn of_analysis(e: &GoBinaryError) -> Self {
        match e.kind() {
            GoBinaryError::Open { .. } | GoBinaryError::Read { .. } => Self::Unreadable,
            GoBinaryError::UnsupportedElf { .. } | GoBinaryError::UnsupportedArch { .. } => {
                Self::UnsupportedBinary
            }
            GoBinaryError::UnsupportedGo { .. } => Self::UnsupportedGo,
            GoBinaryError::NoPclntab { .. } => Self::NoPclntab,
            _ => Self::Unanalyzable,
        }
    }
}

/// A Go executable discovery decided not to instrument, while a process runs it.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// Where the file lives, as `/proc/PID/exe` names it.
    pub path: String,
    /// From the build info; null when unknown (unreadable, or no build info).
    pub go_version: Option<String>,
    pub pids: Vec<u32>,
    /// Always false.
    pub instrumented: bool,
    pub reason: SkipReason,
    /// The analyser's or the kernel's words, for a person.
    pub detail: String,
    /// `not_needed` servers (`--go-http-uprobes auto`): the windows that learned their route
    /// templates so far (uprobes attached briefly, `GoHttpProbes::on_served`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_learning_windows: Option<u32>,
}

/// One entry of `/v1/go-http`: `instrumented` says which; a skipped one has `reason` and
/// `detail`.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum GoServer {
    Instrumented {
        /// Always true.
        instrumented: bool,
        #[serde(flatten)]
        server: Instrumented,
    },
    Skipped(Skipped),
}

impl GoServer {
    pub fn path(&self) -> &str {
        match self {
            Self::Instrumented { server, .. } => &server.path,
            Self::Skipped(s) => &s.path,
        }
    }

    pub fn pids(&self) -> &[u32] {
        match self {
            Self::Instrumented { server, .. } => &server.pids,
            Self::Skipped(s) => &s.pids,
        }
    }

    pub fn is_instrumented(&self) -> bool {
        matches!(self, Self::Instrumented { .. })
    }

    /// `None` for an instrumented one.
    pub fn reason(&self) -> Option<SkipReason> {
        match self {
            Self::Instrumented { .. } => None,
            Self::Skipped(s) => Some(s.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case_and_match_serde() {
        let mut seen = std::collections::HashSet::new();
        for r in SkipReason::ALL {
            let code = r.code();
            assert!(seen.insert(code), "{code} twice");
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{code}"
            );
            assert_eq!(
                serde_json::to_value(r).expect("serialize"),
                serde_json::Value::String(code.to_owned())
            );
        }
    }

    #[test]
    fn entries_say_whether_instrumented() {
        let skipped = GoServer::Skipped(Skipped {
            path: "/usr/bin/caddy".into(),
            go_version: None,
            pids: vec![7],
            instrumented: false,
            reason: SkipReason::Unreadable,
            detail: "permission denied".into(),
            route_learning_windows: None,
        });
        assert_eq!(
            serde_json::to_value(&skipped).expect("serialize"),
            serde_json::json!({
                "path": "/usr/bin/caddy", "go_version": null, "pids": [7],
                "instrumented": false, "reason": "unreadable", "detail": "permission denied"
            })
        );
    }
}

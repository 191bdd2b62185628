//! Parsing of classic tracepoint `format` files from tracefs.
//!
//! Classic (non-raw) tracepoint programs receive the event's ring-buffer record, whose
//! layout is generated from `TP_STRUCT__entry` and drifts between kernel versions
//! (fields get added, e.g. `err` in `tcp_retransmit_skb`, and later fields move). The
//! kernel publishes the authoritative layout in
//! `<tracefs>/events/<category>/<name>/format`; we parse it at start-up and hand the
//! offsets to the BPF programs as load-time constants instead of hardcoding them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where tracefs is normally mounted; older systems only expose it via debugfs.
const TRACEFS_MOUNT: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("failed to read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint format has no `name:` line")]
    MissingName,
    #[error("tracepoint format `{name}` has no `ID:` line")]
    MissingId { name: String },
    #[error("tracepoint format `{name}` has an invalid ID `{value}`")]
    BadId { name: String, value: String },
    #[error("malformed field line {line_no} ({reason}): {line}")]
    MalformedField {
        line_no: usize,
        line: String,
        reason: &'static str,
    },
    #[error("field `{field}` appears twice in tracepoint format `{event}`")]
    DuplicateField { event: String, field: String },
    #[error("tracepoint `{event}` has no field `{field}`")]
    FieldNotFound { event: String, field: String },
    #[error("invalid tracepoint name `{category}/{name}`")]
    InvalidEventName { category: String, name: String },
    #[error("failed to run `mount -t tracefs`")]
    MountSpawn {
        #[source]
        source: std::io::Error,
    },
    #[error("`mount -t tracefs tracefs {TRACEFS_MOUNT}` failed ({status}): {stderr}")]
    MountFailed { status: String, stderr: String },
    #[error("tracefs not available: {reason}")]
    NoTracefs { reason: String },
}

/// Location of one field in a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// A parsed tracepoint `format` file.
#[derive(Debug, Clone)]
pub struct Format {
    pub name: String,
    pub id: u32,
    fields: HashMap<String, Field>,
}

/// The field name is the last identifier of the C declaration, after removing any
/// trailing array dimensions: `const void * skaddr`, `__u8 saddr[4]`,
/// `__data_loc char[] name`, `enum sk_rst_reason reason`.
fn field_name(decl: &str) -> Option<&str> {
    let mut decl = decl.trim_end();
    while let Some(rest) = decl.strip_suffix(']') {
        let open = rest.rfind('[')?;
        decl = rest[..open].trim_end();
    }
    let start = decl
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let name = &decl[start..];
    // An identifier cannot start with a digit; `char[] 4` would otherwise "parse".
    match name.chars().next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => Some(name),
        _ => None,
    }
}

/// Parses one `field:...;\toffset:N;\tsize:N;\tsigned:N;` line.
fn parse_field_line(line: &str, line_no: usize) -> Result<(String, Field), TracefsError> {
    let malformed = |reason| TracefsError::MalformedField {
        line_no,
        line: line.trim().to_string(),
        reason,
    };
    let (mut name, mut offset, mut size, mut signed) = (None, None, None, false);
    for part in line.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((key, value)) = part.split_once(':') else {
            return Err(malformed("segment without `key:value`"));
        };
        let value = value.trim();
        match key.trim() {
            "field" => name = Some(field_name(value).ok_or_else(|| malformed("no field name"))?),
            "offset" => offset = Some(value.parse().map_err(|_| malformed("bad offset"))?),
            "size" => size = Some(value.parse().map_err(|_| malformed("bad size"))?),
            // Very old kernels omit `signed`; it only matters for sign extension.
            "signed" => {
                signed = match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(malformed("bad signed flag")),
                }
            }
            // Unknown attributes may be added by future kernels; ignore them.
            _ => {}
        }
    }
    let name = name.ok_or_else(|| malformed("missing field declaration"))?;
    let offset: u32 = offset.ok_or_else(|| malformed("missing offset"))?;
    let size: u32 = size.ok_or_else(|| malformed("missing size"))?;
    if offset.checked_add(size).is_none() {
        return Err(malformed("offset + size overflows"));
    }
    Ok((
        name.to_string(),
        Field {
            offset,
            size,
            signed,
        },
    ))
}

impl Format {
    /// Parses the text of a tracefs `format` file. Never panics on malformed text.
    pub fn parse(text: &str) -> Result<Self, TracefsError> {
        let mut name = None;
        let mut id = None;
        let mut fields = HashMap::new();
        for (idx, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if let Some(n) = trimmed.strip_prefix("name:") {
                name = Some(n.trim().to_string());
            } else if let Some(v) = trimmed.strip_prefix("ID:") {
                id = Some(v.trim().to_string());
            } else if trimmed.starts_with("field:") {
                let (field, f) = parse_field_line(trimmed, idx + 1)?;
                // A duplicate means our name extraction misread a declaration; better
                // to fail than to hand a BPF program the wrong offset.
                if fields.insert(field.clone(), f).is_some() {
                    return Err(TracefsError::DuplicateField {
                        event: name.clone().unwrap_or_default(),
                        field,
                    });
                }
            }
            // `format:`, blank lines and `print fmt:` carry no layout information.
        }
        let name = name.ok_or(TracefsError::MissingName)?;
        let id = id.ok_or_else(|| TracefsError::MissingId { name: name.clone() })?;
        let id = id.parse().map_err(|_| TracefsError::BadId {
            name: name.clone(),
            value: id,
        })?;
        Ok(Format { name, id, fields })
    }

    /// The field called `name`, or an error naming the event and field.
    pub fn field(&self, name: &str) -> Result<Field, TracefsError> {
        self.fields
            .get(name)
            .copied()
            .ok_or_else(|| TracefsError::FieldNotFound {
                event: self.name.clone(),
                field: name.to_string(),
            })
    }

    /// Whether the record has `name`; used to adapt to fields added in newer kernels.
    pub fn has_field(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    /// All fields (including the `common_*` header), in no particular order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, Field)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// Tracefs root: `/sys/kernel/tracing` if it has `events`, else the debugfs location.
pub fn tracefs_root() -> Option<PathBuf> {
    [TRACEFS_MOUNT, DEBUGFS_TRACING]
        .into_iter()
        .map(PathBuf::from)
        .find(|root| root.join("events").is_dir())
}

/// Returns the tracefs root, mounting tracefs at `/sys/kernel/tracing` first if no
/// tracefs is visible (common in minimal containers and VMs where nothing mounted it).
/// Uses the `mount` binary because the daemon does not link libc bindings.
pub fn ensure_tracefs() -> Result<PathBuf, TracefsError> {
    if let Some(root) = tracefs_root() {
        return Ok(root);
    }
    tracing::info!("tracefs not mounted, mounting at {TRACEFS_MOUNT}");
    let output = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", TRACEFS_MOUNT])
        .output()
        .map_err(|source| TracefsError::MountSpawn { source })?;
    if !output.status.success() {
        return Err(TracefsError::MountFailed {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    tracefs_root().ok_or_else(|| TracefsError::NoTracefs {
        reason: format!("mounted tracefs at {TRACEFS_MOUNT} but it has no `events` directory"),
    })
}

/// A path component that cannot escape `events/` (no separators, no `..`).
fn valid_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0'])
}

/// Reads and parses `<root>/events/<category>/<name>/format`.
pub fn read_format(root: &Path, category: &str, name: &str) -> Result<Format, TracefsError> {
    if !valid_component(category) || !valid_component(name) {
        return Err(TracefsError::InvalidEventName {
            category: category.to_string(),
            name: name.to_string(),
        });
    }
    let path = root.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Io {
        path: path.clone(),
        source,
    })?;
    let format = Format::parse(&text)?;
    if format.name != name {
        tracing::warn!(
            path = %path.display(),
            parsed = %format.name,
            "tracepoint format name differs from its directory"
        );
    }
    Ok(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Copied verbatim from a 6.18 kernel (print fmt lines shortened: they are ignored).
    const TCP_RETRANSMIT_SKB: &str = "name: tcp_retransmit_skb
ID: 2281
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;
\tfield:int err;\toffset:76;\tsize:4;\tsigned:1;

print fmt: \"skbaddr=%p skaddr=%p family=%s err=%d\", REC->skbaddr, REC->skaddr, __print_symbolic(REC->family, { 2, \"AF_INET\" }, { 10, \"AF_INET6\" }), REC->err
";

    const SOCK_SEND_LENGTH: &str = "name: sock_send_length
ID: 2284
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;
\tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;
\tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;

print fmt: \"sk address = %p, family = %s protocol = %s, length = %d, error = %d, flags = 0x%x\", REC->sk, REC->ret, REC->flags
";

    const INET_SOCK_SET_STATE: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s sport=%hu dport=%hu\", REC->family, REC->protocol, REC->sport, REC->dport
";

    const TCP_DESTROY_SOCK: &str = "name: tcp_destroy_sock
ID: 2278
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:20;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:22;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:26;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:30;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:46;\tsize:16;\tsigned:0;
\tfield:__u64 sock_cookie;\toffset:64;\tsize:8;\tsigned:0;

print fmt: \"family=%s sport=%hu dport=%hu sock_cookie=%llx\", REC->family, REC->sport, REC->dport, REC->sock_cookie
";

    const TCP_SEND_RESET: &str = "name: tcp_send_reset
ID: 2280
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;

print fmt: \"skbaddr=%p skaddr=%p src=%pISpc dest=%pISpc\", REC->skbaddr, REC->skaddr, REC->saddr, REC->daddr
";

    const TCP_RECEIVE_RESET: &str = "name: tcp_receive_reset
ID: 2279
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:20;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:22;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:26;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:30;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:46;\tsize:16;\tsigned:0;
\tfield:__u64 sock_cookie;\toffset:64;\tsize:8;\tsigned:0;

print fmt: \"family=%s sport=%hu dport=%hu sock_cookie=%llx\", REC->family, REC->sport, REC->dport, REC->sock_cookie
";

    /// `sched_process_exec` from 6.18: exercises `__data_loc` declarations.
    const SCHED_PROCESS_EXEC: &str = "name: sched_process_exec
ID: 365
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;

print fmt: \"filename=%s pid=%d old_pid=%d\", __get_str(filename), REC->pid, REC->old_pid
";

    fn f(offset: u32, size: u32, signed: bool) -> Field {
        Field {
            offset,
            size,
            signed,
        }
    }

    #[test]
    fn tcp_retransmit_skb() {
        let fmt = Format::parse(TCP_RETRANSMIT_SKB).unwrap();
        assert_eq!(fmt.name, "tcp_retransmit_skb");
        assert_eq!(fmt.id, 2281);
        assert_eq!(fmt.field("skaddr").unwrap(), f(16, 8, false));
        assert_eq!(fmt.field("skbaddr").unwrap(), f(8, 8, false));
        assert_eq!(fmt.field("err").unwrap(), f(76, 4, true));
        assert_eq!(fmt.field("saddr").unwrap(), f(34, 4, false));
        assert_eq!(fmt.field("daddr_v6").unwrap(), f(58, 16, false));
        assert_eq!(fmt.field("common_pid").unwrap(), f(4, 4, true));
        assert_eq!(fmt.fields().count(), 15);
    }

    #[test]
    fn tcp_retransmit_skb_6_1_without_err() {
        let old: String = TCP_RETRANSMIT_SKB
            .lines()
            .filter(|l| !l.contains(" err;"))
            .map(|l| format!("{l}\n"))
            .collect();
        let fmt = Format::parse(&old).unwrap();
        assert!(!fmt.has_field("err"));
        assert!(fmt.has_field("skaddr"));
        assert!(matches!(
            fmt.field("err"),
            Err(TracefsError::FieldNotFound { ref event, ref field })
                if event == "tcp_retransmit_skb" && field == "err"
        ));
    }

    #[test]
    fn sock_send_length() {
        let fmt = Format::parse(SOCK_SEND_LENGTH).unwrap();
        assert_eq!(fmt.field("sk").unwrap(), f(8, 8, false));
        assert_eq!(fmt.field("ret").unwrap(), f(20, 4, true));
        assert_eq!(fmt.field("flags").unwrap(), f(24, 4, true));
        assert_eq!(fmt.field("protocol").unwrap(), f(18, 2, false));
    }

    #[test]
    fn inet_sock_set_state() {
        let fmt = Format::parse(INET_SOCK_SET_STATE).unwrap();
        assert_eq!(fmt.id, 2287);
        assert_eq!(fmt.field("skaddr").unwrap(), f(8, 8, false));
        assert_eq!(fmt.field("newstate").unwrap(), f(20, 4, true));
        assert_eq!(fmt.field("saddr_v6").unwrap(), f(40, 16, false));
    }

    #[test]
    fn destroy_and_reset_events() {
        for text in [TCP_DESTROY_SOCK, TCP_RECEIVE_RESET] {
            let fmt = Format::parse(text).unwrap();
            assert_eq!(fmt.field("skaddr").unwrap(), f(8, 8, false));
            assert_eq!(fmt.field("sock_cookie").unwrap(), f(64, 8, false));
        }
        let fmt = Format::parse(TCP_SEND_RESET).unwrap();
        assert_eq!(fmt.field("reason").unwrap(), f(28, 4, false));
        assert_eq!(fmt.field("saddr").unwrap(), f(32, 28, false));
        assert_eq!(fmt.field("daddr").unwrap(), f(60, 28, false));
    }

    #[test]
    fn data_loc_field() {
        let fmt = Format::parse(SCHED_PROCESS_EXEC).unwrap();
        assert_eq!(fmt.field("filename").unwrap(), f(8, 4, false));
        assert_eq!(fmt.field("old_pid").unwrap(), f(16, 4, true));
    }

    #[test]
    fn field_names() {
        assert_eq!(field_name("const void * skaddr"), Some("skaddr"));
        assert_eq!(field_name("__u8 saddr[4]"), Some("saddr"));
        assert_eq!(field_name("__data_loc char[] name"), Some("name"));
        assert_eq!(field_name("enum sk_rst_reason reason"), Some("reason"));
        assert_eq!(field_name("char comm[TASK_COMM_LEN]"), Some("comm"));
        assert_eq!(field_name("u32 m[2][3] "), Some("m"));
        assert_eq!(field_name("int *p"), Some("p"));
        assert_eq!(field_name(""), None);
        assert_eq!(field_name("int ]"), None);
        assert_eq!(field_name("int 4"), None);
        assert_eq!(field_name("[4]"), None);
    }

    #[test]
    fn malformed_text_errors() {
        let header = "name: x\nID: 1\nformat:\n";
        let bad_lines = [
            "\tfield:int a;\toffset:x;\tsize:4;\tsigned:1;",
            "\tfield:int a;\toffset:4;\tsigned:1;",
            "\tfield:int a;\tsize:4;",
            "\tfield:;\toffset:4;\tsize:4;",
            "\tfield:int a;\toffset:4;\tsize:4;\tsigned:7;",
            "\tfield:int a;\toffset:4294967295;\tsize:4;",
            "\tfield:int a;\toffset:-1;\tsize:4;",
            "\tfield:int a;\tgarbage;\tsize:4;",
            "\tfield:int a[;\toffset:0;\tsize:4;",
        ];
        for line in bad_lines {
            let err = Format::parse(&format!("{header}{line}\n")).unwrap_err();
            assert!(
                matches!(err, TracefsError::MalformedField { line_no: 4, .. }),
                "{line}: {err}"
            );
        }
        let dup = format!(
            "{header}\tfield:int a;\toffset:0;\tsize:4;\n\tfield:long a[2];\toffset:8;\tsize:16;\n"
        );
        assert!(matches!(
            Format::parse(&dup),
            Err(TracefsError::DuplicateField { .. })
        ));
        assert!(matches!(Format::parse(""), Err(TracefsError::MissingName)));
        assert!(matches!(
            Format::parse("name: x\n"),
            Err(TracefsError::MissingId { .. })
        ));
        assert!(matches!(
            Format::parse("name: x\nID: abc\n"),
            Err(TracefsError::BadId { .. })
        ));
        // `signed` absent (very old kernels) is accepted.
        let old = Format::parse(&format!("{header}\tfield:int a;\toffset:8;\tsize:4;\n")).unwrap();
        assert_eq!(old.field("a").unwrap(), f(8, 4, false));
    }

    #[test]
    fn arbitrary_text_never_panics() {
        // Every prefix and a set of byte-level corruptions of a real format.
        let text = TCP_SEND_RESET;
        for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let _ = Format::parse(&text[..end]);
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = b"field:offset;size signed[]_ \t\n:;0123456789ID name";
        for _ in 0..2000 {
            let mut bytes = text.as_bytes().to_vec();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % bytes.len();
                bytes[i] = alphabet[(seed >> 32) as usize % alphabet.len()];
            }
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = Format::parse(s);
            }
        }
    }

    #[test]
    fn read_format_rejects_traversal() {
        let root = Path::new("/nonexistent");
        for (c, n) in [("..", "x"), ("tcp", "../x"), ("", "x"), ("tcp", "")] {
            assert!(matches!(
                read_format(root, c, n),
                Err(TracefsError::InvalidEventName { .. })
            ));
        }
        assert!(matches!(
            read_format(root, "tcp", "tcp_retransmit_skb"),
            Err(TracefsError::Io { .. })
        ));
    }

    #[test]
    fn live_kernel_format() {
        let Some(root) = tracefs_root() else {
            eprintln!("skipping: no tracefs with `events` at {TRACEFS_MOUNT} or {DEBUGFS_TRACING}");
            return;
        };
        let fmt = match read_format(&root, "tcp", "tcp_retransmit_skb") {
            Ok(fmt) => fmt,
            Err(TracefsError::Io { path, source }) => {
                eprintln!("skipping: cannot read {}: {source}", path.display());
                return;
            }
            Err(e) => panic!("live format failed to parse: {e}"),
        };
        assert_eq!(fmt.name, "tcp_retransmit_skb");
        assert!(fmt.id > 0);
        let skaddr = fmt.field("skaddr").unwrap();
        assert_eq!(skaddr.size, 8);
        // The common header is 8 bytes on every kernel; event fields follow it.
        assert!(skaddr.offset >= 8);
        assert_eq!(fmt.field("common_type").unwrap(), f(0, 2, false));
        if let Ok(err) = fmt.field("err") {
            assert_eq!(err.size, 4);
            assert!(err.signed);
        }
        // sock_send_length only exists since 6.2.
        match read_format(&root, "sock", "sock_send_length") {
            Ok(send) => assert_eq!(send.field("ret").unwrap().size, 4),
            Err(TracefsError::Io { .. }) => eprintln!("sock_send_length not on this kernel"),
            Err(e) => panic!("sock_send_length failed to parse: {e}"),
        }
    }
}

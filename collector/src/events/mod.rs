//! Ring-buffer records: read (reader), decoded at one checked boundary (decode), handed to
//! the aggregator as domain events over a bounded channel.

pub mod decode;
pub mod reader;

/// A decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A process the kernel saw using a socket (first time, or again after 30 s).
    Process {
        tgid: u32,
        cgroup_id: u64,
        comm: String,
    },
}

impl Event {
    pub const fn kind(&self) -> &'static str {
        match self {
            Event::Process { .. } => "process",
        }
    }
}

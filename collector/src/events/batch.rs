//! Raw ring-buffer records of one drain, copied into one buffer and handed to the aggregator
//! as a single `Bytes`, decoded there at the one checked boundary (`decode::decode`).
//!
//! Why (measured with callgrind, 10,000 HTTP records of 192 bytes in drains of 2,000, the
//! figures in ARCHITECTURE.md): a channel send and receive per decoded event cost 706
//! instructions per record, more than the decoding itself (689), and the event's strings were
//! allocated on the reader's thread and freed on the aggregator's. Copying the raw record into
//! a `BytesMut` and sending one batch per drain costs 154 per record; the decode then runs
//! next to its use, where the strings are freed again at once.
//!
//! Layout: per record, its length (`u32`, native endian) then its bytes. Records are not
//! aligned in the batch; `decode` reads with `read_unaligned`.

use std::sync::atomic::Ordering;

use bytes::{BufMut as _, Bytes, BytesMut};
use tracing::debug;

use super::{Event, decode::decode};
use crate::export::{
    Metrics,
    prometheus::{KindLabels, ReasonLabels},
};

/// Bytes a batch holds before it is sent and the next one started: about 330 HTTP records.
/// With `app::EVENT_CHANNEL` batches in flight, at most that many bytes wait for the
/// aggregator (a full channel drops a batch, counted per record).
pub const BATCH_BYTES: usize = 64 * 1024;

/// The records of one drain (or part of one), immutable and cheap to send.
#[derive(Clone, Debug, Default)]
pub struct RecordBatch {
    bytes: Bytes,
    records: usize,
}

impl RecordBatch {
    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Each record's bytes, in ring order.
    pub fn records(&self) -> Records<'_> {
        Records { rest: &self.bytes }
    }
}

pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let len = u32::from_ne_bytes(*len) as usize;
        // Only `BatchBuilder` writes batches, so a length past the end cannot happen; were it
        // to, the rest is handed over as one record and rejected by `decode` as short.
        let (record, rest) = rest.split_at(len.min(rest.len()));
        self.rest = rest;
        Some(record)
    }
}

/// Decodes each record of `batch` and hands the event to `on_event`; counts each record as
/// received (by kind) or rejected (by reason, and lost), as the reader did when it decoded.
pub fn decode_batch(batch: &RecordBatch, metrics: &Metrics, mut on_event: impl FnMut(Event)) {
    let m = &metrics.collector;
    // Counted per kind once per batch, not per record (a label-set lookup each).
    let mut received = [0u64; 6];
    let mut kinds = [""; 6];
    for record in batch.records() {
        match decode(record) {
            Ok(event) => {
                let i = match &event {
                    Event::Http(_) => 0,
                    Event::Grpc(_) => 1,
                    Event::Process { .. } => 2,
                    Event::Exec { .. } => 3,
                    Event::Unseen(_) => 4,
                    Event::RouteLearned(_) => 5,
                };
                received[i] += 1;
                kinds[i] = event.kind();
                on_event(event);
            }
            Err(e) => {
                m.events_rejected
                    .get_or_create(&ReasonLabels { reason: e.reason() })
                    .inc();
                m.records_lost.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "ring-buffer record rejected");
            }
        }
    }
    for (kind, n) in kinds.into_iter().zip(received) {
        if n > 0 {
            m.events_received
                .get_or_create(&KindLabels { kind })
                .inc_by(n);
        }
    }
}

/// Collects records into batches. Kept by the reader across drains: once the aggregator has
/// dropped a batch, `BytesMut` reuses its memory for the next.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    records: usize,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self {
            buf: BytesMut::with_capacity(BATCH_BYTES),
            records: 0,
        }
    }
}

impl BatchBuilder {
    /// Appends one record. Ring-buffer records are far shorter than 4 GiB.
    pub fn push(&mut self, record: &[u8]) {
        self.buf.reserve(4 + record.len());
        self.buf.put_u32_ne(record.len() as u32);
        self.buf.extend_from_slice(record);
        self.records += 1;
    }

    /// Whether the batch reached `BATCH_BYTES` and should be sent.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= BATCH_BYTES
    }

    /// The records pushed since the last call, if any.
    pub fn take(&mut self) -> Option<RecordBatch> {
        if self.records == 0 {
            return None;
        }
        let batch = RecordBatch {
            bytes: self.buf.split().freeze(),
            records: self.records,
        };
        self.records = 0;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_whole_and_in_order() {
        let mut b = BatchBuilder::default();
        assert!(b.take().is_none(), "nothing pushed, nothing sent");
        let recs: [&[u8]; 4] = [b"first", b"", &[7u8; 300], b"last"];
        for r in recs {
            b.push(r);
        }
        let batch = b.take().expect("batch");
        assert_eq!(batch.len(), 4);
        assert_eq!(batch.records().collect::<Vec<_>>(), recs.to_vec());
        assert!(b.take().is_none(), "a batch is taken once");
        b.push(b"next");
        let next = b.take().expect("batch");
        assert_eq!(next.records().collect::<Vec<_>>(), vec![&b"next"[..]]);
        // The first batch is unaffected by what was pushed after it.
        assert_eq!(batch.records().count(), 4);
    }

    #[test]
    fn a_batch_is_full_at_its_size() {
        let mut b = BatchBuilder::default();
        let rec = [0u8; 1020];
        for _ in 0..(BATCH_BYTES / 1024) - 1 {
            b.push(&rec);
        }
        assert!(!b.is_full());
        b.push(&rec);
        assert!(b.is_full());
    }
}

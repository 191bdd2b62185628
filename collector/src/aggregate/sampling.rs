//! Adaptive sampling of per-request records against an event budget.
//!
//! Request counts are exact whatever happens (kernel counters); what costs userspace time is
//! the per-request record. When records would arrive faster than `budget` per second, the
//! kernel is told to emit 1 in N (`HTTP_SAMPLING`), N a power of two so changes are rare and
//! halving/doubling is symmetric; N halves again while the halved rate would stay under half the
//! budget (hysteresis against flapping), never below the configured minimum. Records then describe a uniform random sample of requests: a share
//! estimated from them has a standard error of about sqrt(p(1-p)/n) for n records (e.g. ±2.2
//! points for p = 5 % over 100 records), which is why error counts come from the exact
//! counters, not from the records.

use std::time::{Duration, Instant};

/// Largest N the kernel is asked for.
pub const MAX_EVERY: u32 = 1024;
/// How often the rate is judged.
pub const PERIOD: Duration = Duration::from_secs(1);

/// The next 1-in-N, given `records` seen over `elapsed` at 1 in `current`.
pub fn next_every(current: u32, records: u64, elapsed: Duration, budget: u64, min: u32) -> u32 {
    if budget == 0 || elapsed.is_zero() {
        return current.max(min);
    }
    // Requests per second the records stand for.
    let rate = records as f64 * f64::from(current.max(1)) / elapsed.as_secs_f64();
    let mut every = current.max(min).max(1);
    while rate / f64::from(every) > budget as f64 && every < MAX_EVERY {
        every *= 2;
    }
    while every > min.max(1) && rate / f64::from(every / 2) <= budget as f64 / 2.0 {
        every /= 2;
    }
    every.clamp(min.max(1), MAX_EVERY.max(min))
}

/// Writes the rate into the kernel when it changes.
pub trait SamplingSink: Send {
    fn set(&mut self, every: u32);
}

impl SamplingSink for aya::maps::Array<aya::maps::MapData, u32> {
    fn set(&mut self, every: u32) {
        if let Err(e) = aya::maps::Array::set(self, 0, &every, 0) {
            tracing::warn!(error = %e, "setting HTTP record sampling");
        }
    }
}

pub struct Sampler {
    sink: Box<dyn SamplingSink>,
    budget: u64,
    min: u32,
    pub current: u32,
    since: Instant,
    records: u64,
    /// Requests counted exactly in the kernel over the period: records can fall short of
    /// what they stand for (a full ring drops them), the counts cannot.
    requests: u64,
}

impl Sampler {
    pub fn new(sink: Box<dyn SamplingSink>, budget: u64, min: u32, now: Instant) -> Self {
        Self {
            sink,
            budget,
            min: min.max(1),
            current: min.max(1),
            since: now,
            records: 0,
            requests: 0,
        }
    }

    pub fn on_record(&mut self) {
        self.records += 1;
    }

    pub fn on_requests(&mut self, n: u64) {
        self.requests += n;
    }

    /// Judges the last period; returns the new N when it changed.
    pub fn tick(&mut self, now: Instant) -> Option<u32> {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < PERIOD {
            return None;
        }
        // What the period's requests would have given as records at 1 in `current`, when more
        // than the records that arrived: with the ring full, judging by records alone kept
        // sampling at 1 while records were being dropped.
        let seen = self
            .records
            .max(self.requests.div_ceil(u64::from(self.current.max(1))));
        let next = next_every(self.current, seen, elapsed, self.budget, self.min);
        self.since = now;
        self.records = 0;
        self.requests = 0;
        if next == self.current {
            return None;
        }
        tracing::info!(
            from = self.current,
            to = next,
            budget = self.budget,
            "HTTP record sampling changed"
        );
        self.current = next;
        self.sink.set(next);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_rate_follows_the_budget() {
        // (current, records in 1 s, budget, min) -> next
        for (current, records, budget, min, want) in [
            (1, 500, 1000, 1, 1),
            (1, 1000, 1000, 1, 1),
            (1, 1001, 1000, 1, 2),
            (1, 5000, 1000, 1, 8),
            (8, 625, 1000, 1, 8), // 5000 req/s at 1 in 8: still over at 1 in 4
            (8, 100, 1000, 1, 2), // 800 req/s: halving to 1 would exceed half the budget
            (8, 20, 1000, 1, 1),  // 160 req/s
            (1, 10, 1000, 5, 5),  // never below the configured minimum
            (1, 10_000_000, 1000, 1, MAX_EVERY),
            (4, 100, 0, 1, 4), // budget 0: automatic sampling off
        ] {
            assert_eq!(
                next_every(current, records, S, budget, min),
                want,
                "{current} {records} {budget} {min}"
            );
        }
    }

    #[test]
    fn exact_counts_drive_sampling_when_records_fall_short() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let mut s = Sampler::new(Box::new(Spy(writes.clone())), 1000, 1, t0);
        // 5,000 requests counted, only 300 records through (the ring was full).
        for _ in 0..300 {
            s.on_record();
        }
        s.on_requests(5000);
        assert_eq!(s.tick(t0 + S), Some(8));
        // At 1 in 8, 625 records stand for the same 5,000 requests: no change.
        for _ in 0..625 {
            s.on_record();
        }
        s.on_requests(5000);
        assert_eq!(s.tick(t0 + 2 * S), None);
        assert_eq!(*writes.lock().expect("lock"), vec![8]);
    }

    struct Spy(Arc<Mutex<Vec<u32>>>);
    impl SamplingSink for Spy {
        fn set(&mut self, every: u32) {
            self.0.lock().expect("lock").push(every);
        }
    }

    #[test]
    fn the_kernel_is_told_only_on_change_and_once_a_period() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let mut s = Sampler::new(Box::new(Spy(writes.clone())), 100, 1, t0);
        for _ in 0..1000 {
            s.on_record();
        }
        assert_eq!(
            s.tick(t0 + Duration::from_millis(500)),
            None,
            "not a full period yet"
        );
        assert_eq!(s.tick(t0 + S), Some(16));
        for _ in 0..60 {
            s.on_record();
        }
        assert_eq!(
            s.tick(t0 + 2 * S),
            None,
            "960 req/s at 1 in 16 is within budget"
        );
        assert_eq!(
            s.tick(t0 + 3 * S),
            Some(1),
            "no records: back to every request"
        );
        assert_eq!(*writes.lock().expect("lock"), vec![16, 1]);
    }
}

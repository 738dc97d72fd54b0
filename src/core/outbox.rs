//! Retry schedule of the durable outbox (AP webhooks, GP-to-GP messages).
//!
//! ARCHITECTURE.md, Invariants 3 and 4: notifications go through a durable
//! outbox with retries and backoff (DO alarms); an acknowledged event is
//! never dropped.
//! Issue 5: "a receiver that is down for a while gets every event once it
//! is back".
//!
//! Policy: attempt at once; after the n-th failure wait
//! `min(base × 2^(n-1), max_delay)`, of which the upper half is jittered
//! ("equal jitter": at least half the delay, so retries never bunch at 0,
//! and spread so that a receiver coming back is not hit by every GP's
//! backlog in the same second). The jitter comes in as a random `u32`.
//! Once the next attempt would fall after `created + horizon`, the entry is
//! dead-lettered: kept, marked, counted and listed for the operator (who
//! can replay it) instead of being retried forever or silently dropped.
//! Pure: time and randomness are arguments.

use serde::{Deserialize, Serialize};

/// How an outbox retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Delay after the first failure (before jitter).
    pub base_ms: u64,
    /// Upper bound of any single delay.
    pub max_delay_ms: u64,
    /// How long after the event was created it is still retried.
    pub horizon_ms: u64,
}

impl Default for RetryPolicy {
    /// 5 s, doubling up to 1 h between attempts, for 24 h: about 25
    /// attempts, the last few an hour apart, so a receiver down for a day
    /// still gets everything.
    fn default() -> Self {
        RetryPolicy {
            base_ms: 5_000,
            max_delay_ms: 3_600_000,
            horizon_ms: 24 * 3_600_000,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time.
    RetryAt(u64),
    /// Give up retrying; keep the entry as a dead letter for the operator.
    DeadLetter,
}

impl RetryPolicy {
    /// Delay before the next attempt after `failures` failures (≥ 1), with
    /// `random` spreading the upper half of the delay.
    pub fn delay_ms(&self, failures: u32, random: u32) -> u64 {
        let shift = failures.saturating_sub(1).min(40);
        let raw = self.base_ms.saturating_mul(1u64 << shift);
        let d = raw.min(self.max_delay_ms).max(1);
        let half = d / 2;
        let span = d - half; // ≥ 1
        half + (u64::from(random) % span)
    }

    /// The decision after failure number `failures` at `now_ms` for an entry
    /// created at `created_ms`.
    pub fn after_failure(&self, created_ms: u64, failures: u32, now_ms: u64, random: u32) -> Next {
        let at = now_ms.saturating_add(self.delay_ms(failures, random));
        if at > created_ms.saturating_add(self.horizon_ms) {
            Next::DeadLetter
        } else {
            Next::RetryAt(at)
        }
    }
}

/// Whether an HTTP answer counts as delivered. Only 2xx does: a receiver
/// that answers 4xx (misconfigured, not yet deployed) gets the event later
/// too, because retrying is cheap and dropping is not undoable; 410 Gone
/// is no exception (the AP's webhook URL is the operator's to change).
pub fn delivered(status: u16) -> bool {
    (200..300).contains(&status)
}

/// One entry's delivery bookkeeping, stored next to its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// When the event was enqueued.
    pub created_ms: u64,
    /// Failed attempts so far.
    pub failures: u32,
    /// When to try next; `None` once dead-lettered or delivered.
    pub next_at_ms: Option<u64>,
    /// Last failure (status or transport error), for the operator.
    pub last_error: Option<String>,
    /// Given up after the horizon.
    pub dead: bool,
}

impl Delivery {
    /// A new entry, due at once.
    pub fn new(now_ms: u64) -> Delivery {
        Delivery {
            created_ms: now_ms,
            failures: 0,
            next_at_ms: Some(now_ms),
            last_error: None,
            dead: false,
        }
    }

    /// Records a failed attempt and schedules the next one or dead-letters.
    pub fn failed(&mut self, policy: &RetryPolicy, error: String, now_ms: u64, random: u32) {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error);
        match policy.after_failure(self.created_ms, self.failures, now_ms, random) {
            Next::RetryAt(t) => self.next_at_ms = Some(t),
            Next::DeadLetter => {
                self.next_at_ms = None;
                self.dead = true;
            }
        }
    }

    /// Puts a dead letter back in the queue (operator replay); the horizon
    /// restarts from `now_ms`.
    pub fn revive(&mut self, now_ms: u64) {
        self.created_ms = now_ms;
        self.failures = 0;
        self.next_at_ms = Some(now_ms);
        self.dead = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_bounds_and_cap() {
        let p = RetryPolicy::default();
        for (n, full) in [(1, 5_000), (2, 10_000), (3, 20_000), (10, 2_560_000)] {
            assert_eq!(p.delay_ms(n, 0), full / 2, "failure {n}, no jitter");
            assert!(p.delay_ms(n, u32::MAX) <= full);
            assert!(p.delay_ms(n, u32::MAX) >= full / 2);
        }
        assert_eq!(p.delay_ms(11, 0), 1_800_000, "capped at max_delay");
        assert_eq!(p.delay_ms(u32::MAX, 7), p.delay_ms(60, 7), "no overflow");
        // Jitter really spreads: different randoms, different delays.
        let set: std::collections::BTreeSet<u64> = (0..100u32)
            .map(|r| p.delay_ms(4, r.wrapping_mul(2_654_435_761)))
            .collect();
        assert!(set.len() > 50);
    }

    #[test]
    fn a_day_long_outage_is_retried_then_dead_lettered() {
        let p = RetryPolicy::default();
        let mut d = Delivery::new(0);
        let mut now = 0;
        let mut attempts = 0;
        while let Some(t) = d.next_at_ms {
            now = t;
            attempts += 1;
            d.failed(&p, "503".into(), now, 0x8000_0000);
        }
        assert!(d.dead);
        assert_eq!(d.last_error.as_deref(), Some("503"));
        assert!(now <= p.horizon_ms, "no attempt after the horizon");
        assert!(
            now > p.horizon_ms - p.max_delay_ms,
            "retried until near the horizon"
        );
        assert!((20..70).contains(&attempts), "{attempts} attempts");
        d.revive(now);
        assert_eq!((d.dead, d.failures, d.next_at_ms), (false, 0, Some(now)));
    }

    #[test]
    fn only_2xx_counts_as_delivered() {
        assert!(delivered(200) && delivered(204));
        assert!(!delivered(301) && !delivered(404) && !delivered(410) && !delivered(503));
    }
}

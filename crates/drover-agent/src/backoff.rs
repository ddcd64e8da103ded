//! Reconnect delays: exponential with full jitter (a uniformly random delay between zero and
//! the exponential bound), so that thousands of agents losing the server at the same instant
//! come back spread out instead of in waves.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay, and one more attempt counted.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = ceiling.as_millis().min(u64::MAX as u128) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_within_it() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling());
            let d = b.next_delay();
            assert!(d <= *ceilings.last().unwrap_or(&Duration::ZERO));
        }
        assert_eq!(ceilings.first(), Some(&Duration::from_millis(500)));
        assert_eq!(ceilings.last(), Some(&Duration::from_secs(30)));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }
}

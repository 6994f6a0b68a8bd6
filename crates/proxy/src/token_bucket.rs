//! A token bucket shared by every worker without a lock: Envoy's local rate
//! limiter. It starts full; each `fill_interval` adds `tokens_per_fill`, up to
//! `max_tokens`. Refills are counted from the bucket's birth and applied by
//! whichever request comes next, so no timer runs for an idle bucket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Envoy refuses refills more often than this.
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct TokenBucket {
    max: u32,
    per_fill: u32,
    interval: Duration,
    born: Instant,
    /// The refills applied so far (high half) and the tokens left (low half),
    /// changed together by one compare-and-swap.
    state: AtomicU64,
}

/// The bucket's parameters, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

impl TokenBucket {
    pub fn new(shape: Shape) -> Self {
        Self {
            max: shape.max_tokens,
            per_fill: shape.tokens_per_fill,
            interval: shape.fill_interval,
            born: Instant::now(),
            state: AtomicU64::new(pack(0, shape.max_tokens)),
        }
    }

    pub fn shape(&self) -> Shape {
        Shape {
            max_tokens: self.max,
            tokens_per_fill: self.per_fill,
            fill_interval: self.interval,
        }
    }

    /// Takes a token if one is left.
    pub fn try_take(&self) -> bool {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            // Read the clock after the state: a worker that stored a later
            // refill count than this clock reading shows is not undone.
            let (fills, tokens) = unpack(current);
            let (fills, tokens) = self.refill(fills, tokens);
            let (next, taken) = match tokens.checked_sub(1) {
                Some(left) => (pack(fills, left), true),
                None => (pack(fills, 0), false),
            };
            if next == current {
                return taken;
            }
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return taken,
                Err(actual) => current = actual,
            }
        }
    }

    /// Tokens left now (for stats and tests).
    pub fn tokens(&self) -> u32 {
        let (fills, tokens) = unpack(self.state.load(Ordering::Acquire));
        self.refill(fills, tokens).1
    }

    /// The refill count and tokens after the intervals that ended since
    /// `fills`. A stored count ahead of this thread's clock reading (another
    /// worker read the clock later) adds nothing and is kept.
    fn refill(&self, fills: u32, tokens: u32) -> (u32, u32) {
        let now = self.fills_since_birth();
        let elapsed = now.wrapping_sub(fills);
        // Past half the range the difference is a stored count ahead of us.
        if elapsed == 0 || elapsed > u32::MAX / 2 {
            return (fills, tokens);
        }
        let added = u64::from(elapsed) * u64::from(self.per_fill);
        let tokens = (u64::from(tokens) + added).min(u64::from(self.max)) as u32;
        (now, tokens)
    }

    /// Whole intervals since the bucket was made; wraps after 2^32 of them
    /// (over six years at the shortest interval), which `wrapping_sub` absorbs.
    /// The bucket keeps tokio's clock (paused in tests); read from a thread
    /// outside a runtime it is the system's monotonic clock.
    fn fills_since_birth(&self) -> u32 {
        let interval = self.interval.as_nanos().max(1);
        (self.born.elapsed().as_nanos() / interval) as u32
    }
}

fn pack(fills: u32, tokens: u32) -> u64 {
    (u64::from(fills) << 32) | u64::from(tokens)
}

fn unpack(state: u64) -> (u32, u32) {
    ((state >> 32) as u32, state as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(max: u32, per_fill: u32, secs: u64) -> TokenBucket {
        TokenBucket::new(Shape {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Duration::from_secs(secs),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn starts_full_and_empties() {
        let b = bucket(3, 1, 60);
        assert_eq!((0..5).filter(|_| b.try_take()).count(), 3);
        assert_eq!(b.tokens(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn refills_per_interval_up_to_the_maximum() {
        let b = bucket(4, 2, 10);
        assert_eq!((0..4).filter(|_| b.try_take()).count(), 4);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!b.try_take(), "no refill before the interval ends");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..4).filter(|_| b.try_take()).count(), 2);
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(b.tokens(), 4, "capped at max_tokens");
    }

    /// Threads racing across refills never get more than the bucket held
    /// plus what the intervals that passed added (a stale refill count must
    /// not refill it again).
    #[test]
    fn racing_threads_across_refills_never_overdraw() {
        let b = std::sync::Arc::new(TokenBucket::new(Shape {
            max_tokens: 5,
            tokens_per_fill: 5,
            fill_interval: MIN_FILL_INTERVAL,
        }));
        let started = std::time::Instant::now();
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut granted = 0u64;
                    let until = std::time::Instant::now() + Duration::from_millis(400);
                    while std::time::Instant::now() < until {
                        granted += u64::from(b.try_take());
                    }
                    granted
                })
            })
            .collect();
        let granted: u64 = takers.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        let intervals = started.elapsed().as_millis() as u64 / 50 + 1;
        assert!(
            granted <= 5 + intervals * 5,
            "{granted} tokens granted over {intervals} intervals of 5"
        );
        assert!(granted >= 5, "the first five at least");
    }

    #[tokio::test(start_paused = true)]
    async fn shared_by_threads_grants_exactly_the_tokens() {
        let b = std::sync::Arc::new(bucket(1000, 1, 3600));
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..500).filter(|_| b.try_take()).count())
            })
            .collect();
        let granted: usize = takers.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(granted, 1000);
    }
}

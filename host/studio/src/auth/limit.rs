//! Per-client limit on failed sign-ins: after [`MAX_FAILURES`] wrong tokens within [`WINDOW`]
//! from one IP address, that address must wait until the oldest of them leaves the window.
//! Other addresses are not affected, so one client guessing never locks the owner out. Keyed by
//! the TCP peer address only: forwarded-for headers are the client's to forge.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tokens one address may send within [`WINDOW`].
pub const MAX_FAILURES: usize = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past this, those whose failures have all expired are dropped
/// (an attacker with many addresses cannot make the table grow without bound).
const MAX_TRACKED: usize = 4096;

/// Failed sign-ins per client address (`None`: a connection without a known peer address).
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<Option<IpAddr>, VecDeque<Instant>>>,
}

impl LoginLimiter {
    /// How long `client` must wait before trying again, if it is blocked now.
    pub fn blocked_for(&self, client: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let mut failures = self.failures.lock().unwrap();
        let times = failures.get_mut(&client)?;
        expire(times, now);
        (times.len() >= MAX_FAILURES).then(|| WINDOW - now.duration_since(times[0]))
    }

    pub fn record_failure(&self, client: Option<IpAddr>, now: Instant) {
        let mut failures = self.failures.lock().unwrap();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&client) {
            failures.retain(|_, times| {
                expire(times, now);
                !times.is_empty()
            });
        }
        let times = failures.entry(client).or_default();
        expire(times, now);
        times.push_back(now);
        // Only the newest MAX_FAILURES decide whether the address is blocked.
        while times.len() > MAX_FAILURES {
            times.pop_front();
        }
    }

    /// A right token clears the address's failures.
    pub fn record_success(&self, client: Option<IpAddr>) {
        self.failures.lock().unwrap().remove(&client);
    }
}

fn expire(times: &mut VecDeque<Instant>, now: Instant) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= WINDOW)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_block_that_address_only_until_the_window_passes() {
        let limiter = LoginLimiter::default();
        let guesser = Some("10.0.0.7".parse().unwrap());
        let owner = Some("10.0.0.8".parse().unwrap());
        let start = Instant::now();
        for i in 0..MAX_FAILURES {
            assert_eq!(limiter.blocked_for(guesser, start), None, "failure {i}");
            limiter.record_failure(guesser, start + Duration::from_secs(i as u64));
        }
        let later = start + Duration::from_secs(15);
        assert_eq!(
            limiter.blocked_for(guesser, later),
            Some(WINDOW - Duration::from_secs(15))
        );
        assert_eq!(limiter.blocked_for(owner, later), None);
        // The oldest failure leaves the window: one more try is allowed.
        assert_eq!(limiter.blocked_for(guesser, start + WINDOW), None);
    }

    #[test]
    fn a_right_token_clears_the_failures() {
        let limiter = LoginLimiter::default();
        let client = Some("::1".parse().unwrap());
        let now = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            limiter.record_failure(client, now);
        }
        limiter.record_success(client);
        limiter.record_failure(client, now);
        assert_eq!(limiter.blocked_for(client, now), None);
    }

    #[test]
    fn the_table_forgets_expired_addresses_when_full() {
        let limiter = LoginLimiter::default();
        let start = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            limiter.record_failure(Some(IpAddr::from(i.to_be_bytes())), start);
        }
        limiter.record_failure(Some("192.0.2.1".parse().unwrap()), start + WINDOW);
        assert_eq!(limiter.failures.lock().unwrap().len(), 1);
    }
}

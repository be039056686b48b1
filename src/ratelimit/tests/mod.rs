//! Behaviour tests for the rate-limiting core. Keyed algorithms and `TokenBucket` run on
//! stepped (injected) time; `sliding_window` runs on real time with generous bounds.

mod fixed_window;
mod headers;
mod sliding_window;
mod table;
mod token_bucket;

use super::{Algorithm, Key, Limiter, Policy};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

fn policy(name: &str, algorithm: Algorithm, max_keys: usize) -> Policy {
    Policy {
        name: name.to_owned(),
        algorithm,
        max_keys,
        dry_run: false,
    }
}

fn limiter(algorithm: Algorithm, max_keys: usize) -> Limiter {
    match Limiter::try_new(policy("test", algorithm, max_keys)) {
        Ok(l) => l,
        Err(e) => panic!("valid test policy rejected: {e}"),
    }
}

fn token_bucket(rate_per_sec: f64, burst: u32) -> Algorithm {
    Algorithm::TokenBucket {
        rate_per_sec,
        burst,
    }
}

fn fixed_window(limit: u64, window: Duration) -> Algorithm {
    Algorithm::FixedWindow { limit, window }
}

fn sliding_window(limit: u64, window: Duration) -> Algorithm {
    Algorithm::SlidingWindow { limit, window }
}

fn ip(n: u32) -> Key<'static> {
    Key::Ip(IpAddr::V4(Ipv4Addr::from(n)))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Deterministic pseudo-random numbers (64-bit LCG), so irregular-traffic tests replay.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

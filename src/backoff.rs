//! Exponential backoff with "equal jitter": each delay is drawn from
//! [d/2, d] with d doubling from 1 s up to the cap, so many agents that lost
//! the same server do not come back in lockstep.

use std::time::Duration;

pub struct Backoff {
    attempt: u32,
    cap: Duration,
}

impl Backoff {
    pub fn new(cap: Duration) -> Backoff {
        Backoff { attempt: 0, cap }
    }

    pub fn next_delay(&mut self) -> Duration {
        let exp = Duration::from_secs(1).saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let d = exp.min(self.cap);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_secs(10));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_secs(1));
        assert!(delays[3] >= Duration::from_secs(4) && delays[3] <= Duration::from_secs(8));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
        assert!(delays[7] >= Duration::from_secs(5));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}

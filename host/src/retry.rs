//! Retrying with exponential backoff and jitter (exports, jobs).

/// Milliseconds to wait after failed attempt `attempt` (1-based): `base` seconds doubling per
/// attempt, capped at `max` seconds, with jitter (a random half of the delay) so that many
/// installations failing together do not retry together.
pub fn backoff(base: u64, max: u64, attempt: u32) -> i64 {
    let delay = base
        .saturating_mul(1 << attempt.saturating_sub(1).min(30))
        .min(max)
        * 1000;
    let half = delay / 2;
    (half + rand::random_range(0..=half)) as i64
}

#[cfg(test)]
mod tests {
    use super::backoff;

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        for _ in 0..100 {
            assert!((3_000..=6_000).contains(&backoff(6, 3600, 1)));
            assert!((6_000..=12_000).contains(&backoff(6, 3600, 2)));
            assert!((1_800_000..=3_600_000).contains(&backoff(6, 3600, 11)));
            assert!((1_800_000..=3_600_000).contains(&backoff(6, 3600, 40)));
        }
    }
}

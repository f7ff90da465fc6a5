//! How many workers run.

/// The worker count for `runtime.workers`: as configured, or one per available core for 0 (one
/// if the machine will not say).
pub fn count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_means_one_per_core() {
        assert_eq!(super::count(3), 3);
        assert!(super::count(0) >= 1);
    }
}

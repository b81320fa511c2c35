//! This process's CPU time. The benchmarks run ours and the baseline in one process, so a
//! difference of two readings is what one side cost, generator and broker included.

/// This process's CPU time so far (user + system, all threads), in seconds, from the
/// per-process CPU clock (`CLOCK_PROCESS_CPUTIME_ID`), which counts nanoseconds:
/// `/proc/self/stat`, read before, counts 10 ms ticks, too coarse for a part that takes a few
/// microseconds a few hundred times in a smoke run (it read 0).
pub fn cpu_seconds() -> f64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn cpu_time_moves() {
        let before = cpu_seconds();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(cpu_seconds() > before, "{before}");
    }
}

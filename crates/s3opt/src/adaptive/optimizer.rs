//! Part-size decisions within S3's limits and the memory budget: the window the controller
//! wants must fit in memory, so when `window x part size` would exceed the budget the part
//! size shrinks (down to S3's 5 MiB minimum) rather than the window.

use crate::config::MIN_PART_SIZE;

const MIB: u64 = 1024 * 1024;

/// Part size for `window` requests in flight: the preferred size, or less so that
/// `(window + 2)` parts fit in `budget`, never under 5 MiB.
pub fn part_size_for(window: usize, budget: u64, preferred: u64) -> u64 {
    let fit = budget / (window as u64 + 2) / MIB * MIB;
    fit.min(preferred).max(MIN_PART_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_shrink_to_fit_the_window_in_the_budget() {
        assert_eq!(part_size_for(16, 256 * MIB, 8 * MIB), 8 * MIB);
        assert_eq!(part_size_for(40, 256 * MIB, 8 * MIB), 6 * MIB);
        assert_eq!(part_size_for(200, 256 * MIB, 8 * MIB), MIN_PART_SIZE);
    }
}

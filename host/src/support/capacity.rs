//! Giving memory back after a burst.
//!
//! A `HashMap` never shrinks by itself, so one burst of tasks or jobs would
//! pin its peak for the life of the process: the slow form of the leak this
//! project was started to fix.

use std::collections::HashMap;
use std::hash::Hash;

/// Below this many slots a map is never shrunk: shrinking a small map saves
/// nothing and would just make the next burst reallocate.
pub const MIN_SLOTS: usize = 64;

/// Shrinks `map` to twice its length once it is four times too large, so
/// that steady traffic never shrinks and regrows it back and forth.
pub fn give_back_spare<K: Hash + Eq, V>(map: &mut HashMap<K, V>) {
    let wanted = (map.len() * 2).max(MIN_SLOTS);
    if map.capacity() > wanted * 2 {
        map.shrink_to(wanted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_given_back_and_steady_traffic_is_left_alone() {
        let mut map: HashMap<u32, ()> = (0..10_000).map(|i| (i, ())).collect();
        map.retain(|k, _| *k < 10);
        give_back_spare(&mut map);
        assert!(map.capacity() <= 4 * MIN_SLOTS, "kept {} slots for 10 entries", map.capacity());
        let mut steady: HashMap<u32, ()> = (0..1000).map(|i| (i, ())).collect();
        let before = steady.capacity();
        give_back_spare(&mut steady);
        assert_eq!(steady.capacity(), before);
    }
}

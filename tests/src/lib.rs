//! Shared pieces of the cross-crate integration tests: the deterministic
//! content the torture writer produces, so a checker can tell bit for bit
//! whether a set holds exactly what its writer wrote.

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// Files the torture writer puts in set number `index` under `seed`:
/// (relative path, contents). The same inputs always give the same files.
pub fn torture_files(seed: u64, index: u64) -> Vec<(String, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let count = rng.gen_range(1..=4);
    (0..count)
        .map(|i| {
            // Sizes straddle the 64 KiB chunk and 4 KiB alignment edges.
            let len = match rng.gen_range(0..4) {
                0 => rng.gen_range(0..5000),
                1 => 65_536 * rng.gen_range(1..4),
                _ => rng.gen_range(1..700_000),
            };
            let mut bytes = vec![0u8; len];
            rng.fill_bytes(&mut bytes);
            let name = if i % 2 == 0 {
                format!("rank-{i}.bin")
            } else {
                format!("sub/rank-{i}.bin")
            };
            (name, bytes)
        })
        .collect()
}

/// Set name for index `index`: zero-padded so names sort like indices.
pub fn torture_set_name(index: u64) -> String {
    format!("s{index:08}")
}

/// Index back from a set name made by [`torture_set_name`].
pub fn torture_set_index(name: &str) -> Option<u64> {
    name.strip_prefix('s')?.parse().ok()
}

//! Routing: which shard owns a routing key.
//!
//! `shard = xxh3_64_with_seed(key, seed) % shards`. The seed is fixed in the MANIFEST when the data
//! directory is created. Golden vectors below pin the function: changing it would orphan every
//! stored key, so a change here must fail the tests.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The shard index of `key` among `shards` shards.
#[inline]
pub fn shard_for(key: &[u8], seed: u64, shards: usize) -> usize {
    debug_assert!(shards > 0);
    (xxh3_64_with_seed(key, seed) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_vectors() {
        // (key, seed, shards, expected hash, expected shard). Never edit these to make a change
        // pass: a different answer means existing data directories would be misrouted.
        let vectors: [(&[u8], u64, usize, u64, usize); 5] = [
            (b"", 0, 8, 0x2d06800538d394c2, 2),
            (b"users\0alice", 0, 8, 0x77ed47d6eeed28ef, 7),
            (b"users\0alice", 0x5eed, 8, 0x52c836a562499f73, 3),
            (b"queue-a", 42, 16, 0xd7498cf6aca1198a, 10),
            (b"stream/2025", u64::MAX, 3, 0x0e2d197fc79b9ef1, 1),
        ];
        for (key, seed, shards, hash, shard) in vectors {
            assert_eq!(xxh3_64_with_seed(key, seed), hash, "hash of {key:?}");
            assert_eq!(shard_for(key, seed, shards), shard, "shard of {key:?}");
        }
    }
}

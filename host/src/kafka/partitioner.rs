//! Which partition a key goes to: Kafka's default partitioner (the Java
//! client's, and librdkafka's `murmur2_random`), so that a key's records,
//! its state and a query for it agree whoever produced them.
//!
//! librdkafka's own default (`consistent_random`, CRC32) puts keys
//! elsewhere; runnel's producers are therefore set to `murmur2_random`
//! (see [`super::PARTITIONER`]), which an external librdkafka client can
//! set too (`partitioner=murmur2_random`).

/// Kafka's murmur2 hash of `data` (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        if rest.len() >= 3 {
            h ^= u32::from(rest[2]) << 16;
        }
        if rest.len() >= 2 {
            h ^= u32::from(rest[1]) << 8;
        }
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` among `partitions` (above zero), as Kafka's
/// default partitioner chooses it for a record with a key.
pub fn partition(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) % partitions as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own vectors (`UtilsTest.testMurmur2`), as the Java client's
    /// signed ints.
    #[test]
    fn murmur2_is_kafkas() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
            (&[12, 42, 56, 24, 109, 111], 274204207),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data) as i32, *want, "{data:?}");
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for n in 1..20 {
            for k in 0..200 {
                let key = format!("k{k}");
                let p = partition(key.as_bytes(), n);
                assert!((0..n).contains(&p));
                assert_eq!(p, partition(key.as_bytes(), n));
            }
        }
        assert_eq!(partition(b"", 1), 0);
        assert_eq!(partition(b"21", 6), ((-973932308i32 & 0x7fff_ffff) % 6));
    }
}

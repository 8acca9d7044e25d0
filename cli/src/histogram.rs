//! A small log-linear latency histogram: 16 sub-buckets per power of two (about 6%
//! precision), fixed size, no allocation while recording.

/// Counts of nanosecond values.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;

fn bucket(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let msb = 63 - ns.leading_zeros();
    let sub = (ns >> (msb - SUB_BITS)) as usize & (SUB - 1);
    (msb - SUB_BITS + 1) as usize * SUB + sub
}

/// The smallest value that falls in bucket `b` (what percentiles report).
fn lower_bound(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let msb = (b / SUB) as u32 + SUB_BITS - 1;
    (1u64 << msb) | (((b % SUB) as u64) << (msb - SUB_BITS))
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; 64 * SUB],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, ns: u64) {
        if let Some(c) = self.counts.get_mut(bucket(ns)) {
            *c += 1;
            self.total += 1;
            self.max = self.max.max(ns);
        }
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The largest value recorded, exactly (p100).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1), to the bucket's lower bound.
    pub fn quantile(&self, q: f64) -> u64 {
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(b);
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_precision() {
        for ns in [0u64, 1, 15, 16, 17, 100, 1_000, 123_456, u64::MAX / 3] {
            let lb = lower_bound(bucket(ns));
            assert!(lb <= ns && ns - lb <= ns / 16, "{ns} -> {lb}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for ns in 1..=1000u64 {
            h.record(ns);
        }
        let p50 = h.quantile(0.5);
        assert!((470..=500).contains(&p50), "{p50}");
        assert!(h.quantile(0.99) >= 928);
        assert_eq!(h.quantile(0.0), 1);
        let mut m = Histogram::default();
        m.merge(&h);
        assert_eq!(m.len(), 1000);
    }
}

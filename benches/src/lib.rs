//! Shared workload for the benchmarks: the same keys, in the same order, for
//! Floodgate and for the baselines.

/// `n` string keys of 19-20 bytes (`client:000000000042`), as a server would see.
pub fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("client:{i:012}")).collect()
}

/// A fixed pseudo-random visiting order over `n` keys (every key once per lap), so
/// the table is probed at random but picking the next key costs one load.
pub fn order(n: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// Cycles through `keys` in `order`.
pub struct Cycle<'a> {
    keys: &'a [String],
    order: &'a [u32],
    at: usize,
}

impl<'a> Cycle<'a> {
    pub fn new(keys: &'a [String], order: &'a [u32]) -> Self {
        Self { keys, order, at: 0 }
    }

    #[inline]
    pub fn next_key(&mut self) -> &'a String {
        let k = &self.keys[self.order[self.at] as usize];
        self.at += 1;
        if self.at == self.order.len() {
            self.at = 0;
        }
        k
    }
}

//! A tiny deterministic pseudo-random sequence (xorshift64*): reproducible test inputs and
//! varied-but-repeatable traffic, with no dependency and the same numbers everywhere.

#[derive(Clone, Debug)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A sequence from `seed` (0 is replaced: xorshift never leaves the all-zero state).
    pub const fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in 0..n (n > 0), by multiply-shift rather than a biased modulo.
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next() >> 32) * n as u64) >> 32) as u32
    }

    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u32 + 1) as usize);
        }
    }
}

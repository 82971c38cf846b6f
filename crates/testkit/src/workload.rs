//! Key popularity for workloads (the demo, the benchmarks): a seeded pseudo-random generator
//! and a Zipf sampler over key ranks.
//!
//! Real caches see a few hot keys and a long tail. [`Zipf`] draws rank `k` (0-based) with
//! probability proportional to `1 / (k + 1)^s`, from a cumulative distribution computed once:
//! a draw is one random number and a binary search. The same seed gives the same sequence of
//! draws on every machine, so a hit ratio measured on it can be reproduced.
//!
//! ```
//! use tierkit_testkit::workload::{XorShift, Zipf};
//!
//! let zipf = Zipf::new(10_000, 1.0);
//! let mut rng = XorShift::new(42);
//! let ranks: Vec<usize> = (0..1_000).map(|_| zipf.sample(&mut rng)).collect();
//! assert!(ranks.iter().all(|&rank| rank < 10_000));
//! // Rank 0 is the hottest key: about 10% of the draws at s = 1 over 10,000 keys.
//! assert!(ranks.iter().filter(|&&rank| rank == 0).count() > 50);
//! ```

/// A small, fast, seeded pseudo-random generator (xorshift64*). Not for cryptography: workloads
/// only need reproducible, well-spread draws.
#[derive(Clone, Debug)]
pub struct XorShift {
    /// The state; never zero.
    state: u64,
}

impl XorShift {
    /// A generator seeded with `seed` (any value: a zero seed is replaced by a constant, the
    /// seed is mixed so that close seeds give unrelated sequences).
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed: spreads the bits of small seeds such as 1, 2, 3.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift {
            state: if z == 0 { 0x2545_F491_4F6C_DD1D } else { z },
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform number in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits fill an f64's mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A Zipf distribution over the ranks `0..n`: rank `k` has weight `1 / (k + 1)^exponent`.
#[derive(Clone, Debug)]
pub struct Zipf {
    /// `cdf[k]`: the probability of a rank `<= k`; the last entry is exactly 1.
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n` ranks (at least one) with the given exponent (`0` is
    /// uniform; around `1` is typical of web caches; a negative or non-finite exponent is
    /// taken as `0`).
    pub fn new(n: usize, exponent: f64) -> Self {
        let n = n.max(1);
        let exponent = if exponent.is_finite() && exponent > 0.0 {
            exponent
        } else {
            0.0
        };
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for rank in 0..n {
            sum += 1.0 / ((rank + 1) as f64).powf(exponent);
            cdf.push(sum);
        }
        for value in &mut cdf {
            *value /= sum;
        }
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Zipf { cdf }
    }

    /// How many ranks the distribution has.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Never: a distribution has at least one rank.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// The probability of rank `k` (0 outside the ranks).
    pub fn probability(&self, k: usize) -> f64 {
        match k {
            0 => self.cdf.first().copied().unwrap_or(0.0),
            k if k < self.cdf.len() => self.cdf[k] - self.cdf[k - 1],
            _ => 0.0,
        }
    }

    /// A rank drawn with `rng`.
    pub fn sample(&self, rng: &mut XorShift) -> usize {
        let u = rng.next_f64();
        // The first rank whose cumulative probability exceeds u.
        let rank = self.cdf.partition_point(|&p| p <= u);
        rank.min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::{XorShift, Zipf};

    #[test]
    fn the_generator_is_seeded_and_spread() {
        let first: Vec<u64> = {
            let mut rng = XorShift::new(7);
            (0..4).map(|_| rng.next_u64()).collect()
        };
        let again: Vec<u64> = {
            let mut rng = XorShift::new(7);
            (0..4).map(|_| rng.next_u64()).collect()
        };
        assert_eq!(first, again, "the same seed gives the same sequence");
        let mut other = XorShift::new(8);
        assert_ne!(first[0], other.next_u64());
        let mut zero = XorShift::new(0);
        let draws: Vec<f64> = (0..10_000).map(|_| zero.next_f64()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }

    #[test]
    fn the_cdf_follows_the_weights() {
        let zipf = Zipf::new(4, 1.0);
        assert_eq!(zipf.len(), 4);
        // Weights 1, 1/2, 1/3, 1/4: total 25/12.
        let expected = [12.0 / 25.0, 6.0 / 25.0, 4.0 / 25.0, 3.0 / 25.0];
        for (k, want) in expected.iter().enumerate() {
            assert!((zipf.probability(k) - want).abs() < 1e-12, "rank {k}");
        }
        assert_eq!(zipf.probability(4), 0.0);
        let uniform = Zipf::new(5, 0.0);
        for k in 0..5 {
            assert!((uniform.probability(k) - 0.2).abs() < 1e-12);
        }
        assert_eq!(Zipf::new(0, 1.0).len(), 1);
        assert!((Zipf::new(3, f64::NAN).probability(0) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn samples_match_the_distribution() {
        let zipf = Zipf::new(100, 1.0);
        let mut rng = XorShift::new(42);
        let mut counts = [0u32; 100];
        let draws = 200_000;
        for _ in 0..draws {
            let rank = zipf.sample(&mut rng);
            assert!(rank < 100);
            counts[rank] += 1;
        }
        for k in [0, 1, 2, 9, 49] {
            let observed = f64::from(counts[k]) / f64::from(draws);
            let want = zipf.probability(k);
            assert!(
                (observed - want).abs() < 0.1 * want + 0.002,
                "rank {k}: observed {observed}, expected {want}"
            );
        }
        // Rank 0 is the hottest, and the tail is still reached.
        assert!(counts[0] > counts[1] && counts[1] > counts[9]);
        assert!(counts[90..].iter().any(|&c| c > 0));
    }
}

//! The crate's one source of randomness: a portable, explicitly named PRNG keyed by a tuple.
//!
//! Every random draw in spry (perturbation directions, dropout masks, LoRA initialisation, data
//! shuffles, client sampling) comes from a [`KeyedRng`] built from `(run seed, domain, parts...)`,
//! for example `(seed, Domain::Perturbation, [round, client, step, k, tensor])`. The stream is
//! **ChaCha8** (`rand_chacha`, whose output is value-stable across versions and platforms), the
//! key derivation is SplitMix64 over the tuple, and the normal transform is Box–Muller with the
//! pure-Rust `libm` functions. Together they make every draw reproducible bit for bit on any
//! machine, so a server can regenerate a client's directions from the seed alone.
//! (`StdRng`/`SmallRng` are documented as non-portable and are not used.)

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::Float;

/// What a random stream is for; part of the key, so streams of different purposes never
/// coincide even under the same seed and indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum Domain {
    /// Forward-gradient tangent directions v.
    Perturbation = 1,
    /// Dropout masks.
    Dropout = 2,
    /// Parameter initialisation (LoRA A, task heads).
    Init = 3,
    /// Data shuffling and partitioning.
    Data = 4,
    /// Client sampling and planner reshuffles.
    Sampling = 5,
    /// Zero-order (SPSA) perturbations of the FedMeZO baseline.
    ZeroOrder = 6,
}

/// SplitMix64 finaliser: a bijective 64-bit mixer (Steele et al.).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A ChaCha8 stream keyed by `(seed, domain, parts)`.
#[derive(Clone, Debug)]
pub struct KeyedRng {
    inner: ChaCha8Rng,
    spare_normal: Option<f64>,
}

impl KeyedRng {
    /// The stream for `(seed, domain, parts)`. Different tuples give independent streams; the
    /// same tuple gives the same stream on every machine and every run.
    pub fn new(seed: u64, domain: Domain, parts: &[u64]) -> Self {
        // Absorb the tuple (with its length, so [1] and [1, 0] differ) into a 64-bit state,
        // then squeeze four words for the 256-bit ChaCha key.
        let mut state = splitmix64(seed ^ 0x5350_5259); // "SPRY"
        state = splitmix64(state ^ domain as u64);
        for &p in parts {
            state = splitmix64(state ^ p);
        }
        state = splitmix64(state ^ parts.len() as u64);
        let mut key = [0u8; 32];
        for chunk in key.chunks_exact_mut(8) {
            state = splitmix64(state);
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        KeyedRng {
            inner: ChaCha8Rng::from_seed(key),
            spare_normal: None,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `[0, n)` without modulo bias (Lemire's multiply-and-reject).
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// A standard normal draw, by the Box–Muller transform (pairs; the second value is kept for
    /// the next call). Uses `libm`, so the value is identical on every platform.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // u1 in (0, 1] so the log is finite; u2 in [0, 1).
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare_normal = Some(r * libm::sin(theta));
        r * libm::cos(theta)
    }

    /// Fills `out` with standard normal draws.
    pub fn fill_normal<F: Float>(&mut self, out: &mut [F]) {
        for v in out {
            *v = F::from_f64(self.normal());
        }
    }

    /// Fills `out` with uniform draws in `[lo, hi)`.
    pub fn fill_uniform<F: Float>(&mut self, out: &mut [F], lo: f64, hi: f64) {
        for v in out {
            *v = F::from_f64(self.uniform_in(lo, hi));
        }
    }

    /// Shuffles `items` in place (Fisher–Yates with [`KeyedRng::below`]).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_stream_different_key_different_stream() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = KeyedRng::new(7, Domain::Perturbation, &[1, 2, 3]);
                move |_| r.next_u64()
            })
            .collect();
        let mut r2 = KeyedRng::new(7, Domain::Perturbation, &[1, 2, 3]);
        assert!(a.iter().all(|&v| v == r2.next_u64()));
        for (seed, dom, parts) in [
            (8, Domain::Perturbation, vec![1, 2, 3]),
            (7, Domain::Dropout, vec![1, 2, 3]),
            (7, Domain::Perturbation, vec![1, 2, 4]),
            (7, Domain::Perturbation, vec![1, 2, 3, 0]),
        ] {
            let mut r = KeyedRng::new(seed, dom, &parts);
            assert_ne!(r.next_u64(), a[0], "{seed} {dom:?} {parts:?}");
        }
    }

    /// Replay: a fresh generator with the same key reproduces a long mixed sequence of draws
    /// (integers, uniforms, normals, shuffles) bit for bit.
    #[test]
    fn replay_is_bitwise() {
        let draw = || {
            let mut r = KeyedRng::new(42, Domain::Perturbation, &[0, 1, 2, 3, 4]);
            let mut out = Vec::new();
            for i in 0..1000 {
                out.push(r.next_u64());
                out.push(r.uniform().to_bits());
                out.push(r.normal().to_bits());
                out.push(r.below(i + 1));
            }
            let mut p: Vec<u64> = (0..50).collect();
            r.shuffle(&mut p);
            out.extend(p);
            out
        };
        assert_eq!(draw(), draw());
    }

    #[test]
    fn normal_moments_and_uniform_range() {
        let mut r = KeyedRng::new(1, Domain::Perturbation, &[]);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        // Standard errors: mean 1/sqrt(n) = 0.0022, variance sqrt(2/n) = 0.0032; allow 5 sigma.
        assert!(mean.abs() < 5.0 / (n as f64).sqrt(), "mean {mean}");
        assert!(
            (var - 1.0).abs() < 5.0 * (2.0 / n as f64).sqrt(),
            "var {var}"
        );
        let mut u = KeyedRng::new(2, Domain::Data, &[]);
        for _ in 0..10_000 {
            let v = u.uniform();
            assert!((0.0..1.0).contains(&v));
            assert!(u.below(7) < 7);
        }
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        KeyedRng::new(3, Domain::Data, &[9]).shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(v, s);
    }
}

//! `exp` over a slice, shifted by a constant: the softmax inner loop of the streaming attention.
//!
//! Element by element it is [`Float::exp_vec`] (the crate's one vectorisable `exp`: the Cephes
//! polynomial in f32, within 2 ulp; the standard `exp` in f64), written as a plain loop over the
//! slice so the compiler vectorises it.

use crate::Float;

/// `x ← exp(x − m)` for every element.
///
/// In `f32`, arguments below about `−87.3` give 0 and above about `88.7` give `+∞`; softmax
/// arguments are ≤ 0.
pub(crate) fn exp_shifted_in_place<F: Float>(xs: &mut [F], m: F) {
    for x in xs.iter_mut() {
        *x = (*x - m).exp_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_relative_error_is_within_two_ulp() {
        let mut worst = 0.0f64;
        let n = 400_000;
        let mut xs: Vec<f32> = (0..=n)
            .map(|i| -87.0 + 175.0 * i as f32 / n as f32)
            .collect();
        let want: Vec<f64> = xs.iter().map(|&x| f64::from(x).exp()).collect();
        exp_shifted_in_place(&mut xs, 0.0f32);
        for (&got, &e) in xs.iter().zip(&want) {
            worst = worst.max((f64::from(got) - e).abs() / e);
        }
        assert!(worst <= 2.0 * f64::from(f32::EPSILON), "{worst:e}");
    }

    #[test]
    fn edges_and_shift() {
        let mut xs = [0.0f32, -1e9, -87.31, 1e9, 3.0];
        exp_shifted_in_place(&mut xs, 0.0);
        assert_eq!(xs[0], 1.0);
        assert_eq!(xs[1], 0.0);
        assert!((f64::from(xs[2]) / f64::from(-87.31f32).exp() - 1.0).abs() < 1e-6);
        assert_eq!(xs[3], f32::INFINITY);
        let mut ys = [5.0f32, 2.0];
        exp_shifted_in_place(&mut ys, 5.0);
        assert_eq!(ys[0], 1.0);
        assert!((f64::from(ys[1]) - (-3.0f64).exp()).abs() < 1e-7);
        let mut zs = [0.5f64, -2.0];
        exp_shifted_in_place(&mut zs, 0.5);
        assert_eq!(zs, [1.0, (-2.5f64).exp()]);
    }
}

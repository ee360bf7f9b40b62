//! Rotary position embedding: finite differences, linearity, K stacking, primal equality,
//! symbolic zeros, the reference twin, norm preservation, the two layouts agreeing up to a
//! column permutation, the relative-position property, hand-computed angles, f32, typed errors.

mod common;

use common::*;
use ndarray::{Array3, Ix3};
use proptest::prelude::*;
use spry::kernels::{RopeLayout, RopeTable, rope, rope_reference};
use spry::{Dual, Error};

const LAYOUTS: [RopeLayout; 2] = [RopeLayout::RotateHalf, RopeLayout::Interleaved];
const THETAS: [f64; 4] = [10_000.0, 500_000.0, 10.0, 1.5];

/// Random case: x `[b, t, heads·d]` at positions `offset..offset + t`, K directions.
#[derive(Debug, Clone)]
struct Case {
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
    offset: usize,
    max_pos: usize,
    theta: f64,
    k: usize,
    x: Vec<f64>,
    dirs: Vec<f64>,
}

impl Case {
    fn shape(&self) -> [usize; 3] {
        [self.b, self.t, self.heads * self.d]
    }
    fn len(&self) -> usize {
        self.b * self.t * self.heads * self.d
    }
    fn table(&self) -> RopeTable<f64> {
        RopeTable::new(self.d, self.max_pos, self.theta).unwrap()
    }
    fn dual(&self, x: &[f64], k: usize, dirs: Option<&[f64]>) -> Dual<f64, Ix3> {
        fixed(dual(&self.shape(), x, dirs.map(|d| (k, d))))
    }
    fn run(&self, layout: RopeLayout, k: usize, dirs: &[f64]) -> Dual<f64, Ix3> {
        let x = self.dual(&self.x, k, Some(dirs));
        rope(&x, &self.table(), self.heads, self.offset, layout).unwrap()
    }
    fn f(&self, layout: RopeLayout, x: &[f64]) -> Vec<f64> {
        let x = self.dual(x, 0, None);
        flat(
            rope(&x, &self.table(), self.heads, self.offset, layout)
                .unwrap()
                .primal(),
        )
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..3,
        1usize..5,
        1usize..4,
        1usize..5,
        0usize..40,
        0usize..3,
        0..THETAS.len(),
        1usize..4,
    )
        .prop_flat_map(|(b, t, heads, half, offset, extra, ti, k)| {
            let d = 2 * half;
            let n = b * t * heads * d;
            (values(n), values(k * n)).prop_map(move |(x, dirs)| Case {
                b,
                t,
                heads,
                d,
                offset,
                max_pos: offset + t + extra,
                theta: THETAS[ti],
                k,
                x,
                dirs,
            })
        })
}

/// Column permutation taking an interleaved head to the rotate-half layout:
/// `out[i] = x[2i]`, `out[i + D/2] = x[2i + 1]`, for every head of every row.
fn interleaved_to_half(x: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for (src, dst) in x.chunks(d).zip(out.chunks_mut(d)) {
        for i in 0..d / 2 {
            dst[i] = src[2 * i];
            dst[i + d / 2] = src[2 * i + 1];
        }
    }
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn matches_finite_differences(c in case()) {
        let n = c.len();
        for layout in LAYOUTS {
            let t = tangent_or_zeros(&c.run(layout, c.k, &c.dirs), c.k);
            for kk in 0..c.k {
                let fd = fd_jvp(|x| c.f(layout, x), &c.x, direction(&c.dirs, n, kk));
                assert_close(direction(&t, n, kk), &fd, FD_TOL, "jvp vs fd")?;
            }
        }
    }

    #[test]
    fn is_linear_in_the_tangent(c in case(), a in -2.0f64..2.0, b in -2.0f64..2.0) {
        let n = c.len();
        let v1 = &c.dirs[..n];
        let v2: Vec<f64> = c.dirs.iter().rev().take(n).map(|v| 0.3 - v).collect();
        let mix = lincomb(a, v1, b, &v2);
        for layout in LAYOUTS {
            let tan = |d: &[f64]| tangent_or_zeros(&c.run(layout, 1, d), 1);
            let expect = lincomb(a, &tan(v1), b, &tan(&v2));
            assert_close(&tan(&mix), &expect, EXACT_TOL, "linearity")?;
        }
    }

    #[test]
    fn k_stacked_equals_k_single_runs(c in case()) {
        let n = c.len();
        for layout in LAYOUTS {
            let stacked = tangent_or_zeros(&c.run(layout, c.k, &c.dirs), c.k);
            for kk in 0..c.k {
                let single = tangent_or_zeros(&c.run(layout, 1, direction(&c.dirs, n, kk)), 1);
                prop_assert_eq!(direction(&stacked, n, kk), &single[..]);
            }
        }
    }

    #[test]
    fn primal_equals_plain_forward_bitwise(c in case()) {
        for layout in LAYOUTS {
            prop_assert_eq!(flat(c.run(layout, c.k, &c.dirs).primal()), c.f(layout, &c.x));
        }
    }

    #[test]
    fn matches_reference(c in case()) {
        let x = c.dual(&c.x, c.k, Some(&c.dirs));
        let table = c.table();
        for layout in LAYOUTS {
            let fast = rope(&x, &table, c.heads, c.offset, layout).unwrap();
            let slow = rope_reference(&x, &table, c.heads, c.offset, layout).unwrap();
            assert_close(&flat(fast.primal()), &flat(slow.primal()), EXACT_TOL, "primal")?;
            assert_close(&tangent_or_zeros(&fast, c.k), &tangent_or_zeros(&slow, c.k), EXACT_TOL, "tangent")?;
        }
    }

    #[test]
    fn preserves_the_norm_of_every_head(c in case()) {
        for layout in LAYOUTS {
            let y = c.run(layout, c.k, &c.dirs);
            let (yp, yt) = (flat(y.primal()), tangent_or_zeros(&y, c.k));
            for (a, b) in yp.chunks(c.d).zip(c.x.chunks(c.d)).chain(yt.chunks(c.d).zip(c.dirs.chunks(c.d))) {
                prop_assert!((dot(a, a) - dot(b, b)).abs() <= 1e-13 * (1.0 + dot(b, b)));
            }
        }
    }

    #[test]
    fn layouts_agree_after_permuting_each_head(c in case()) {
        // rope_half(P·x) = P·rope_interleaved(x), P = interleaved → rotate-half columns
        let n = c.len();
        let px = interleaved_to_half(&c.x, c.d);
        let pd = interleaved_to_half(&c.dirs, c.d);
        let inter = c.run(RopeLayout::Interleaved, c.k, &c.dirs);
        let x = c.dual(&px, c.k, Some(&pd));
        let half = rope(&x, &c.table(), c.heads, c.offset, RopeLayout::RotateHalf).unwrap();
        prop_assert_eq!(flat(half.primal()), interleaved_to_half(&flat(inter.primal()), c.d));
        let ti = tangent_or_zeros(&inter, c.k);
        prop_assert_eq!(tangent_or_zeros(&half, c.k), interleaved_to_half(&ti, c.d));
        prop_assert_eq!(ti.len(), c.k * n);
    }

    #[test]
    fn scores_depend_only_on_the_relative_position(
        half in 1usize..6, m in 0usize..60, n in 0usize..60, shift in 0usize..60,
        q in values(12), kv in values(12), ti in 0..THETAS.len(),
    ) {
        // ⟨rope(q, m), rope(k, n)⟩ = ⟨rope(q, m + c), rope(k, n + c)⟩
        let d = 2 * half;
        let table = RopeTable::<f64>::new(d, 130, THETAS[ti]).unwrap();
        let at = |v: &[f64], pos: usize, layout| {
            let x: Dual<f64, Ix3> = fixed(dual(&[1, 1, d], &v[..d], None));
            flat(rope(&x, &table, 1, pos, layout).unwrap().primal())
        };
        for layout in LAYOUTS {
            let s0 = dot(&at(&q, m, layout), &at(&kv, n, layout));
            let s1 = dot(&at(&q, m + shift, layout), &at(&kv, n + shift, layout));
            prop_assert!((s0 - s1).abs() <= 1e-12 * (1.0 + s0.abs()), "{} vs {}", s0, s1);
        }
        // at equal positions the rotations cancel: the unrotated score
        let s_same = dot(&at(&q, m, RopeLayout::RotateHalf), &at(&q, m, RopeLayout::RotateHalf));
        prop_assert!((s_same - dot(&q[..d], &q[..d])).abs() <= 1e-12 * (1.0 + s_same));
    }

    #[test]
    fn f32_agrees_with_f64(c in case()) {
        let x = c.dual(&c.x, c.k, Some(&c.dirs));
        let x32 = dual_to_f32(&x);
        let x64 = c.dual(&flat_f32(x32.primal()), c.k, Some(&flat_f32(x32.tangent().unwrap())));
        let t32 = RopeTable::<f32>::new(c.d, c.max_pos, c.theta).unwrap();
        for layout in LAYOUTS {
            let y32 = rope(&x32, &t32, c.heads, c.offset, layout).unwrap();
            let y64 = rope(&x64, &c.table(), c.heads, c.offset, layout).unwrap();
            assert_close(&flat_f32(y32.primal()), &flat(y64.primal()), 1e-5, "f32 primal")?;
            assert_close(&flat_f32(y32.tangent().unwrap()), &flat(y64.tangent().unwrap()), 1e-5, "f32 tangent")?;
        }
    }
}

#[test]
fn hand_computed_angles() {
    // D = 4, θ = 100: ω = [1, 0.1]. At position 3: angles 3 and 0.3. Position 0 is the identity.
    let table = RopeTable::<f64>::new(4, 8, 100.0).unwrap();
    assert_eq!(table.cos().dim(), (8, 2));
    let (c0, s0, c1, s1) = (3f64.cos(), 3f64.sin(), 0.3f64.cos(), 0.3f64.sin());
    let x = [1.0, 2.0, 3.0, 4.0];
    // RotateHalf pairs (0, 2) and (1, 3)
    let half = [
        1.0 * c0 - 3.0 * s0,
        2.0 * c1 - 4.0 * s1,
        3.0 * c0 + 1.0 * s0,
        4.0 * c1 + 2.0 * s1,
    ];
    // Interleaved pairs (0, 1) and (2, 3)
    let inter = [
        1.0 * c0 - 2.0 * s0,
        2.0 * c0 + 1.0 * s0,
        3.0 * c1 - 4.0 * s1,
        4.0 * c1 + 3.0 * s1,
    ];
    // tokens at positions 0 and 3 (offset 0, T = 4): rows 0 and 3
    let mut xs = vec![0.0; 16];
    xs[..4].copy_from_slice(&x);
    xs[12..].copy_from_slice(&x);
    let xd: Dual<f64, Ix3> = fixed(dual(&[1, 4, 4], &xs, Some((1, &xs))));
    for (layout, want) in [
        (RopeLayout::RotateHalf, half),
        (RopeLayout::Interleaved, inter),
    ] {
        let y = rope(&xd, &table, 1, 0, layout).unwrap();
        let (p, t) = (flat(y.primal()), tangent_or_zeros(&y, 1));
        assert_close(&p[..4], &x, 1e-15, "position 0").unwrap();
        assert_close(&p[12..], &want, 1e-15, "position 3").unwrap();
        assert_close(&t[12..], &want, 1e-15, "tangent at position 3").unwrap();
        // the same token at offset 3, T = 1
        let one: Dual<f64, Ix3> = fixed(dual(&[1, 1, 4], &x, None));
        let y = rope(&one, &table, 1, 3, layout).unwrap();
        assert_close(&flat(y.primal()), &want, 1e-15, "offset 3").unwrap();
    }
}

#[test]
fn zero_tangent_in_gives_zero_tangent_out() {
    let table = RopeTable::<f64>::new(4, 10, 10_000.0).unwrap();
    let x: Dual<f64, Ix3> = Dual::constant(Array3::from_elem((2, 3, 8), 0.5));
    for layout in LAYOUTS {
        assert!(rope(&x, &table, 2, 1, layout).unwrap().is_constant());
        assert!(
            rope_reference(&x, &table, 2, 1, layout)
                .unwrap()
                .is_constant()
        );
    }
}

#[test]
fn k_one_and_k_thirty_two() {
    let (b, t, h, d) = (2, 3, 2, 6);
    let n = b * t * h * d;
    let x: Vec<f64> = (0..n).map(|i| ((i * 7) % 13) as f64 * 0.2 - 1.2).collect();
    let table = RopeTable::<f64>::new(d, 64, 10_000.0).unwrap();
    for k in [1usize, 32] {
        let dirs: Vec<f64> = (0..k * n)
            .map(|i| ((i * 5) % 11) as f64 * 0.1 - 0.5)
            .collect();
        let xd: Dual<f64, Ix3> = fixed(dual(&[b, t, h * d], &x, Some((k, &dirs))));
        for layout in LAYOUTS {
            let fast = rope(&xd, &table, h, 40, layout).unwrap();
            let slow = rope_reference(&xd, &table, h, 40, layout).unwrap();
            assert_eq!(fast.tangent().unwrap().shape(), &[k, b, t, h * d]);
            assert_close(
                &tangent_or_zeros(&fast, k),
                &tangent_or_zeros(&slow, k),
                EXACT_TOL,
                "K",
            )
            .unwrap();
            // RoPE is linear: the tangent of direction k is the rotation of direction k
            let last: Dual<f64, Ix3> =
                fixed(dual(&[b, t, h * d], direction(&dirs, n, k - 1), None));
            let want = flat(rope(&last, &table, h, 40, layout).unwrap().primal());
            let got = tangent_or_zeros(&fast, k);
            assert_eq!(direction(&got, n, k - 1), &want[..]);
        }
    }
}

#[test]
fn errors_are_typed() {
    for d in [0usize, 3, 7] {
        assert!(matches!(
            RopeTable::<f64>::new(d, 8, 10_000.0),
            Err(Error::InvalidArgument {
                op: "RopeTable::new",
                ..
            })
        ));
    }
    for theta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            RopeTable::<f32>::new(4, 8, theta),
            Err(Error::InvalidArgument { .. })
        ));
    }
    let table = RopeTable::<f64>::new(4, 8, 10_000.0).unwrap();
    let x: Dual<f64, Ix3> = Dual::constant(Array3::zeros((2, 3, 8)));
    let rh = RopeLayout::RotateHalf;
    assert!(rope(&x, &table, 2, 5, rh).is_ok()); // positions 5, 6, 7
    // positions past the table, and an overflowing offset
    assert!(matches!(
        rope(&x, &table, 2, 6, rh),
        Err(Error::InvalidArgument { op: "rope", .. })
    ));
    assert!(matches!(
        rope(&x, &table, 2, usize::MAX, rh),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        rope_reference(&x, &table, 2, 6, rh),
        Err(Error::InvalidArgument { .. })
    ));
    // wrong last dim for the head count, zero heads
    assert!(matches!(
        rope(&x, &table, 3, 0, rh),
        Err(Error::ShapeMismatch { op: "rope", .. })
    ));
    assert!(matches!(
        rope(&x, &table, 1, 0, rh),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        rope(&x, &table, 0, 0, rh),
        Err(Error::InvalidArgument { .. })
    ));
    let odd: Dual<f64, Ix3> = Dual::constant(Array3::zeros((1, 2, 7)));
    assert!(matches!(
        rope(&odd, &table, 2, 0, RopeLayout::Interleaved),
        Err(Error::ShapeMismatch { .. })
    ));
}

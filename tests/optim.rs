//! Local optimizers against a straightforward f64 transcription of PyTorch's `SGD` (momentum,
//! no dampening, coupled weight decay) and `AdamW` (decoupled decay, bias-corrected moments),
//! over several steps; parameters without a gradient are untouched; shape errors; state reset.

use ndarray::{ArrayD, IxDyn};
use spry::federated::{LocalOptimizer, OptimizerState};
use spry::modules::Trainable;
use spry::rng::{Domain, KeyedRng};

const SHAPES: [&[usize]; 3] = [&[2, 3], &[4], &[3]];

fn registry(seed: u64) -> Trainable<f64> {
    let mut rng = KeyedRng::new(seed, Domain::Init, &[]);
    let mut t = Trainable::new();
    for (i, s) in SHAPES.iter().enumerate() {
        let mut a = ArrayD::<f64>::zeros(IxDyn(s));
        rng.fill_uniform(a.as_slice_mut().unwrap(), -1.0, 1.0);
        t.push_unit(format!("u{i}"), vec![(format!("p{i}"), a)])
            .unwrap();
    }
    t
}

/// Gradients for step `s`: p0 every step, p1 on even steps only, p2 never.
fn grads(s: u64) -> Vec<Option<ArrayD<f64>>> {
    let mut rng = KeyedRng::new(77, Domain::Data, &[s]);
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let has = match i {
                0 => true,
                1 => s.is_multiple_of(2),
                _ => false,
            };
            has.then(|| {
                let mut a = ArrayD::<f64>::zeros(IxDyn(shape));
                rng.fill_uniform(a.as_slice_mut().unwrap(), -2.0, 2.0);
                a
            })
        })
        .collect()
}

/// PyTorch's per-parameter state, transcribed.
#[derive(Clone, Default)]
struct TorchState {
    step: u64,
    buf: Option<Vec<f64>>,
    exp_avg: Vec<f64>,
    exp_avg_sq: Vec<f64>,
}

/// `torch.optim.SGD` (dampening 0, nesterov off) for one parameter:
/// d_p = g + wd·p; buf = d_p on the first step, else μ·buf + d_p; p -= lr·buf.
fn torch_sgd(p: &mut [f64], g: &[f64], st: &mut TorchState, lr: f64, mu: f64, wd: f64) {
    let d_p: Vec<f64> = p.iter().zip(g).map(|(p, g)| g + wd * p).collect();
    let step_dir = if mu != 0.0 {
        let buf = match st.buf.take() {
            None => d_p.clone(),
            Some(b) => b.iter().zip(&d_p).map(|(b, d)| mu * b + d).collect(),
        };
        st.buf = Some(buf.clone());
        buf
    } else {
        d_p
    };
    for (p, d) in p.iter_mut().zip(&step_dir) {
        *p -= lr * d;
    }
}

/// `torch.optim.AdamW` (amsgrad off) for one parameter, as `_single_tensor_adamw` writes it:
/// p *= 1 − lr·wd; m = lerp(m, g, 1 − β1); v = β2·v + (1 − β2)·g²;
/// step_size = lr / (1 − β1^t); denom = √v / √(1 − β2^t) + ε; p -= step_size·m/denom.
#[allow(clippy::too_many_arguments)]
fn torch_adamw(
    p: &mut [f64],
    g: &[f64],
    st: &mut TorchState,
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    wd: f64,
) {
    if st.exp_avg.is_empty() {
        st.exp_avg = vec![0.0; p.len()];
        st.exp_avg_sq = vec![0.0; p.len()];
    }
    st.step += 1;
    let t = st.step as f64;
    let step_size = lr / (1.0 - b1.powf(t));
    let bc2_sqrt = (1.0 - b2.powf(t)).sqrt();
    for i in 0..p.len() {
        p[i] *= 1.0 - lr * wd;
        st.exp_avg[i] += (g[i] - st.exp_avg[i]) * (1.0 - b1);
        st.exp_avg_sq[i] = st.exp_avg_sq[i] * b2 + (1.0 - b2) * g[i] * g[i];
        let denom = st.exp_avg_sq[i].sqrt() / bc2_sqrt + eps;
        p[i] -= step_size * st.exp_avg[i] / denom;
    }
}

/// One transcribed step of `opt` on one parameter.
fn torch_step(opt: &LocalOptimizer, p: &mut [f64], g: &[f64], st: &mut TorchState) {
    match *opt {
        LocalOptimizer::Sgd {
            lr,
            momentum,
            weight_decay,
        } => torch_sgd(p, g, st, lr, momentum, weight_decay),
        LocalOptimizer::AdamW {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => torch_adamw(p, g, st, lr, beta1, beta2, eps, weight_decay),
    }
}

fn flat(t: &Trainable<f64>, i: usize) -> Vec<f64> {
    t.value(i).iter().copied().collect()
}

fn bits(t: &Trainable<f64>, i: usize) -> Vec<u64> {
    t.value(i).iter().map(|v| v.to_bits()).collect()
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    for (j, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
            "{what}[{j}]: {x} vs {y}"
        );
    }
}

/// Runs `steps` crate steps and the transcription side by side, comparing after every step.
fn compare(opt: LocalOptimizer, steps: u64) {
    let mut t = registry(3);
    let untouched = bits(&t, 2);
    let mut st = OptimizerState::new(t.len());
    let mut ref_p: Vec<Vec<f64>> = (0..t.len()).map(|i| flat(&t, i)).collect();
    let mut ref_st = vec![TorchState::default(); t.len()];
    for s in 0..steps {
        let g = grads(s);
        st.step(&opt, &mut t, &g).unwrap();
        for (i, gi) in g.iter().enumerate() {
            let Some(gi) = gi else { continue };
            let gv: Vec<f64> = gi.iter().copied().collect();
            torch_step(&opt, &mut ref_p[i], &gv, &mut ref_st[i]);
        }
        for (i, want) in ref_p.iter().enumerate() {
            assert_close(&flat(&t, i), want, &format!("{opt:?} step {s} p{i}"));
        }
        // No gradient ever: not a bit changes (no weight decay either).
        assert_eq!(bits(&t, 2), untouched, "{opt:?} step {s}: p2 moved");
    }
}

#[test]
fn sgd_momentum_matches_torch() {
    compare(
        LocalOptimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.05,
        },
        7,
    );
}

#[test]
fn sgd_plain_matches_torch() {
    compare(
        LocalOptimizer::Sgd {
            lr: 0.3,
            momentum: 0.0,
            weight_decay: 0.0,
        },
        4,
    );
}

#[test]
fn adamw_matches_torch() {
    compare(LocalOptimizer::adamw(1e-2), 7);
    compare(
        LocalOptimizer::AdamW {
            lr: 0.05,
            beta1: 0.8,
            beta2: 0.95,
            eps: 1e-6,
            weight_decay: 0.1,
        },
        7,
    );
}

#[test]
fn adamw_defaults_are_torch_defaults() {
    assert_eq!(
        LocalOptimizer::adamw(1e-4),
        LocalOptimizer::AdamW {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    );
}

/// First AdamW step by hand: m̂ = g, v̂ = g², so p₁ = p₀(1 − lr·wd) − lr·g/(|g| + ε).
#[test]
fn adamw_first_step_is_a_signed_step() {
    let mut t = Trainable::new();
    t.push_unit(
        "u",
        vec![(
            "p".into(),
            ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0, -2.0, 0.5]).unwrap(),
        )],
    )
    .unwrap();
    let g = ArrayD::from_shape_vec(IxDyn(&[3]), vec![4.0, -0.01, 0.0]).unwrap();
    let mut st = OptimizerState::new(1);
    st.step(&LocalOptimizer::adamw(0.1), &mut t, &[Some(g)])
        .unwrap();
    let lr = 0.1;
    let shrink = 1.0 - lr * 0.01;
    let expect = [
        1.0 * shrink - lr * 4.0 / (4.0 + 1e-8),
        -2.0 * shrink + lr * 0.01 / (0.01 + 1e-8),
        0.5 * shrink,
    ];
    assert_close(&flat(&t, 0), &expect, "first step");
}

#[test]
fn shape_errors_change_nothing() {
    let mut t = registry(4);
    let before = t.clone();
    let mut st = OptimizerState::new(t.len());
    let st_before = st.clone();
    let opt = LocalOptimizer::adamw(0.1);
    // wrong shape on the second gradient (the first one is fine: nothing may move)
    let g = vec![
        Some(ArrayD::<f64>::ones(IxDyn(SHAPES[0]))),
        Some(ArrayD::<f64>::ones(IxDyn(&[5]))),
        None,
    ];
    let err = st.step(&opt, &mut t, &g).unwrap_err();
    assert!(matches!(err, spry::Error::ShapeMismatch { .. }), "{err:?}");
    assert_eq!(t, before);
    assert_eq!(st, st_before);
    // transposed shape
    let g = vec![Some(ArrayD::<f64>::ones(IxDyn(&[3, 2]))), None, None];
    assert!(matches!(
        st.step(&opt, &mut t, &g).unwrap_err(),
        spry::Error::ShapeMismatch { .. }
    ));
    // wrong number of gradients
    for n in [2usize, 4] {
        let g = vec![None; n];
        assert!(matches!(
            st.step(&opt, &mut t, &g).unwrap_err(),
            spry::Error::InvalidArgument { .. }
        ));
    }
    // state sized for another registry
    let mut other = OptimizerState::new(2);
    assert!(matches!(
        other.step(&opt, &mut t, &[None, None, None]).unwrap_err(),
        spry::Error::InvalidArgument { .. }
    ));
    assert_eq!(t, before);
    assert_eq!(st, st_before);
}

/// Keeping the state across two "rounds" equals one uninterrupted run; resetting it equals a
/// fresh optimizer started from the round-1 parameters (and differs from keeping it).
#[test]
fn state_reset_vs_kept() {
    for opt in [
        LocalOptimizer::adamw(0.05),
        LocalOptimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        },
    ] {
        // one uninterrupted run of 6 steps
        let mut cont = registry(5);
        let mut st = OptimizerState::new(3);
        for s in 0..6 {
            st.step(&opt, &mut cont, &grads(s)).unwrap();
        }
        // two rounds of 3 steps with the state kept (serialised in between, as a client would)
        let mut kept = registry(5);
        let mut st = OptimizerState::new(3);
        for s in 0..3 {
            st.step(&opt, &mut kept, &grads(s)).unwrap();
        }
        let json = serde_json::to_string(&st).unwrap();
        let mut st: OptimizerState = serde_json::from_str(&json).unwrap();
        for s in 3..6 {
            st.step(&opt, &mut kept, &grads(s)).unwrap();
        }
        assert_eq!(kept, cont, "{opt:?}: kept state");
        // reset between the rounds
        let mut reset = registry(5);
        let mut st = OptimizerState::new(3);
        for s in 0..3 {
            st.step(&opt, &mut reset, &grads(s)).unwrap();
        }
        let mid = reset.clone();
        let mut st = OptimizerState::new(3);
        for s in 3..6 {
            st.step(&opt, &mut reset, &grads(s)).unwrap();
        }
        // the transcription from `mid` with fresh state
        let mut ref_st = vec![TorchState::default(); 3];
        for (i, rs) in ref_st.iter_mut().enumerate() {
            let mut p = flat(&mid, i);
            for s in 3..6 {
                let Some(g) = &grads(s)[i] else { continue };
                let g: Vec<f64> = g.iter().copied().collect();
                torch_step(&opt, &mut p, &g, rs);
            }
            assert_close(&flat(&reset, i), &p, &format!("{opt:?} reset p{i}"));
        }
        assert_ne!(
            flat(&reset, 0),
            flat(&kept, 0),
            "{opt:?}: reset had no effect"
        );
    }
}

#[test]
fn f32_parameters_follow_the_f64_arithmetic() {
    let t64 = registry(6);
    let mut t32: Trainable<f32> = t64.cast();
    let mut t64 = t32.cast::<f64>(); // same starting values
    let opt = LocalOptimizer::adamw(0.01);
    let (mut s32, mut s64) = (OptimizerState::new(3), OptimizerState::new(3));
    for s in 0..3 {
        let g64 = grads(s)
            .into_iter()
            .map(|g| g.map(|g| g.mapv(|v| v as f32 as f64)))
            .collect::<Vec<_>>();
        let g32 = g64
            .iter()
            .map(|g| g.as_ref().map(|g| g.mapv(|v| v as f32)))
            .collect::<Vec<_>>();
        s32.step(&opt, &mut t32, &g32).unwrap();
        s64.step(&opt, &mut t64, &g64).unwrap();
        // f32 storage rounds after every step: agreement to f32 precision
        for i in 0..3 {
            for (a, b) in t32.value(i).iter().zip(t64.value(i).iter()) {
                assert!((f64::from(*a) - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
    }
}

#[test]
fn optimizers_by_name() {
    use spry::federated::LocalOptimizer;
    assert_eq!(
        LocalOptimizer::named("sgd", 0.5).unwrap(),
        LocalOptimizer::sgd(0.5)
    );
    assert_eq!(
        LocalOptimizer::named("adamw", 1e-3).unwrap(),
        LocalOptimizer::adamw(1e-3)
    );
    assert!(LocalOptimizer::named("adam", 1e-3).is_err());
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(LocalOptimizer::named("sgd", bad).is_err());
    }
}

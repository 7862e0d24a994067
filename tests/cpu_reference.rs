//! Checks of the CPU reference itself: finite-difference gradient checks in
//! `f64` for every backward, cross-checks between ops (direct convolution
//! against im2col + GEMM), small hand-computed values, dropout statistics and
//! pinned values of the hash the GPU copies.

use wgcnn::backend::{Backend, Shaped};
use wgcnn::cpu::*;
use wgcnn::geometry::*;
use wgcnn::rng::{SplitMix64, dropout_keep, dropout_uniform, hash_u32};
use wgcnn::tensor::HostTensor;

type T = HostTensor<f64>;

// ---------------------------------------------------------------- helpers

/// Uniform values in `[lo, hi)`.
fn uniform(rng: &mut SplitMix64, shape: &[usize], lo: f64, hi: f64) -> T {
    let len = shape.iter().product();
    let data = (0..len).map(|_| lo + (hi - lo) * rng.next_f64()).collect();
    HostTensor::new(shape, data)
}

/// Uniform magnitudes in `[lo, hi)` with a random sign: keeps values away from 0.
fn away_from_zero(rng: &mut SplitMix64, shape: &[usize], lo: f64, hi: f64) -> T {
    let mut t = uniform(rng, shape, lo, hi);
    for v in &mut t.data {
        if rng.next_u64() & 1 == 1 {
            *v = -*v;
        }
    }
    t
}

/// Distinct values `0.1·k` for `k` in a random permutation of `0..len`, centred
/// on zero: far apart enough that a finite-difference step never changes an
/// arg-max.
fn distinct(rng: &mut SplitMix64, shape: &[usize]) -> T {
    let len: usize = shape.iter().product();
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = rng.below(i as u32 + 1) as usize;
        order.swap(i, j);
    }
    let data = order
        .iter()
        .map(|&k| 0.1 * (k as f64 - len as f64 / 2.0))
        .collect();
    HostTensor::new(shape, data)
}

fn dot(a: &T, b: &T) -> f64 {
    assert_eq!(a.shape, b.shape, "dot of tensors with different shapes");
    a.data.iter().zip(&b.data).map(|(x, y)| x * y).sum()
}

/// Central-difference gradient of the scalar `f` at `x`, element by element,
/// compared with `analytic`: `|numeric − analytic| ≤ 1e-6·max(1, |analytic|)`.
fn check_grad(what: &str, x: &T, analytic: &T, f: impl Fn(&T) -> f64) {
    const H: f64 = 1e-6;
    const TOL: f64 = 1e-6;
    assert_eq!(
        x.shape, analytic.shape,
        "{what}: gradient shape differs from its input's"
    );
    let mut worst = (0.0f64, 0usize, 0.0f64, 0.0f64);
    for i in 0..x.len() {
        let mut plus = x.clone();
        plus.data[i] += H;
        let mut minus = x.clone();
        minus.data[i] -= H;
        let numeric = (f(&plus) - f(&minus)) / (2.0 * H);
        let a = analytic.data[i];
        let err = (numeric - a).abs() / a.abs().max(1.0);
        if err > worst.0 {
            worst = (err, i, numeric, a);
        }
    }
    let (err, i, numeric, a) = worst;
    assert!(
        err <= TOL,
        "{what}: gradient mismatch at flat index {i} of {:?}: numeric {numeric:.12e}, \
         analytic {a:.12e}, relative error {err:.3e}",
        x.shape
    );
}

fn assert_close(what: &str, got: &T, want: &T, tol: f64) {
    assert_eq!(got.shape, want.shape, "{what}: shapes differ");
    for (i, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}: element {i}: got {g:.12e}, want {w:.12e}"
        );
    }
}

fn tensor(shape: &[usize], data: &[f64]) -> T {
    HostTensor::new(shape, data.to_vec())
}

fn transpose(t: &T) -> T {
    let [r, c] = t.shape[..] else {
        panic!("transpose of a non-matrix")
    };
    let mut out = HostTensor::zeros(&[c, r]);
    for i in 0..r {
        for j in 0..c {
            out.data[j * r + i] = t.data[i * c + j];
        }
    }
    out
}

/// `(N, C, H, W, O, kh, kw, stride, padding)` cases: stride 1/2, padding 0/1/2,
/// non-square input, C = 1 and 3, kh ≠ kw, 1×1 kernels, batch 1.
const CONV_CASES: &[[usize; 9]] = &[
    [2, 1, 5, 5, 2, 3, 3, 1, 0],
    [1, 3, 6, 5, 2, 3, 2, 2, 1],
    [2, 3, 7, 4, 3, 3, 3, 2, 2],
    [1, 2, 4, 6, 1, 1, 1, 1, 0],
    [2, 1, 5, 7, 2, 2, 3, 1, 1],
    [1, 3, 8, 6, 2, 5, 3, 2, 2],
];

fn conv_geometry(c: &[usize; 9]) -> Conv2dGeometry {
    Conv2dGeometry::new(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]).unwrap()
}

// ---------------------------------------------------------------- gradient checks

#[test]
fn gemm_gradients_all_transpose_cases() {
    let mut rng = SplitMix64::new(1);
    let (m, n, k) = (3, 4, 5);
    for trans_a in [false, true] {
        for trans_b in [false, true] {
            let spec = GemmSpec {
                m,
                n,
                k,
                trans_a,
                trans_b,
            };
            let a = uniform(&mut rng, &spec.a_shape(), -1.0, 1.0);
            let b = uniform(&mut rng, &spec.b_shape(), -1.0, 1.0);
            let r = uniform(&mut rng, &[m, n], -1.0, 1.0);
            // d op(A) = R·op(B)ᵀ (m, k); d op(B) = op(A)ᵀ·R (k, n).
            let d_op_a = gemm(
                &r,
                &b,
                &GemmSpec {
                    m,
                    n: k,
                    k: n,
                    trans_a: false,
                    trans_b: !trans_b,
                },
            );
            let d_op_b = gemm(
                &a,
                &r,
                &GemmSpec {
                    m: k,
                    n,
                    k: m,
                    trans_a: !trans_a,
                    trans_b: false,
                },
            );
            let da = if trans_a { transpose(&d_op_a) } else { d_op_a };
            let db = if trans_b { transpose(&d_op_b) } else { d_op_b };
            let case = spec.case_name();
            check_grad(&format!("gemm {case} dA"), &a, &da, |a| {
                dot(&gemm(a, &b, &spec), &r)
            });
            check_grad(&format!("gemm {case} dB"), &b, &db, |b| {
                dot(&gemm(&a, b, &spec), &r)
            });
        }
    }
}

#[test]
fn gemm_known_values() {
    // [[1, 2, 3], [4, 5, 6]] · [[1, 0], [0, 1], [1, 1]] = [[4, 5], [10, 11]]
    let a = tensor(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = tensor(&[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let want = tensor(&[2, 2], &[4.0, 5.0, 10.0, 11.0]);
    let nn = GemmSpec {
        m: 2,
        n: 2,
        k: 3,
        trans_a: false,
        trans_b: false,
    };
    assert_eq!(gemm(&a, &b, &nn), want);
    let tt = GemmSpec {
        trans_a: true,
        trans_b: true,
        ..nn
    };
    assert_eq!(gemm(&transpose(&a), &transpose(&b), &tt), want);
}

#[test]
#[should_panic(expected = "gemm (nt): B has shape")]
fn gemm_rejects_wrong_shape() {
    let spec = GemmSpec {
        m: 2,
        n: 3,
        k: 4,
        trans_a: false,
        trans_b: true,
    };
    gemm::<f64>(
        &HostTensor::zeros(&[2, 4]),
        &HostTensor::zeros(&[4, 3]),
        &spec,
    );
}

#[test]
fn conv2d_gradients() {
    let mut rng = SplitMix64::new(2);
    for case in CONV_CASES {
        let g = conv_geometry(case);
        let x = uniform(&mut rng, &g.input_shape(), -1.0, 1.0);
        let w = uniform(&mut rng, &g.weight_shape(), -1.0, 1.0);
        let b = uniform(&mut rng, &[g.out_channels], -1.0, 1.0);
        let r = uniform(&mut rng, &g.output_shape(), -1.0, 1.0);
        let grads = conv2d_backward(&x, &w, &r, &g);
        check_grad(&format!("conv2d {case:?} dx"), &x, &grads.dx, |x| {
            dot(&conv2d_forward(x, &w, &b, &g), &r)
        });
        check_grad(&format!("conv2d {case:?} dw"), &w, &grads.dw, |w| {
            dot(&conv2d_forward(&x, w, &b, &g), &r)
        });
        check_grad(&format!("conv2d {case:?} db"), &b, &grads.db, |b| {
            dot(&conv2d_forward(&x, &w, b, &g), &r)
        });
    }
}

#[test]
fn im2col_col2im_are_adjoint() {
    let mut rng = SplitMix64::new(3);
    for case in CONV_CASES {
        let g = conv_geometry(case);
        let x = uniform(&mut rng, &g.input_shape(), -1.0, 1.0);
        let c = uniform(&mut rng, &g.cols_shape(), -1.0, 1.0);
        let lhs = dot(&im2col(&x, &g), &c);
        let rhs = dot(&x, &col2im(&c, &g));
        assert!(
            (lhs - rhs).abs() <= 1e-12 * lhs.abs().max(1.0),
            "{case:?}: <im2col(x), c> = {lhs}, <x, col2im(c)> = {rhs}"
        );
    }
}

#[test]
fn im2col_known_values() {
    // 1×1×2×3 input, 2×2 kernel, stride 1, padding 0 → 4 rows × 2 positions.
    let g = Conv2dGeometry::new(1, 1, 2, 3, 1, 2, 2, 1, 0).unwrap();
    let x = tensor(&[1, 1, 2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let cols = im2col(&x, &g);
    #[rustfmt::skip]
    let want = tensor(&[1, 4, 2], &[
        1.0, 2.0, // (i, j) = (0, 0)
        2.0, 3.0, // (0, 1)
        4.0, 5.0, // (1, 0)
        5.0, 6.0, // (1, 1)
    ]);
    assert_eq!(cols, want);
    // col2im of all ones counts how many windows read each input element.
    let counts = col2im(&HostTensor::new(&[1, 4, 2], vec![1.0; 8]), &g);
    assert_eq!(
        counts,
        tensor(&[1, 1, 2, 3], &[1.0, 2.0, 1.0, 1.0, 2.0, 1.0])
    );
}

#[test]
fn linear_gradients() {
    let mut rng = SplitMix64::new(4);
    for (n, i, o) in [(1, 3, 2), (4, 5, 3), (3, 1, 4)] {
        let x = uniform(&mut rng, &[n, i], -1.0, 1.0);
        let w = uniform(&mut rng, &[o, i], -1.0, 1.0);
        let b = uniform(&mut rng, &[o], -1.0, 1.0);
        let r = uniform(&mut rng, &[n, o], -1.0, 1.0);
        let grads = linear_backward(&x, &w, &r);
        let what = format!("linear N={n} I={i} O={o}");
        check_grad(&format!("{what} dx"), &x, &grads.dx, |x| {
            dot(&linear_forward(x, &w, &b), &r)
        });
        check_grad(&format!("{what} dw"), &w, &grads.dw, |w| {
            dot(&linear_forward(&x, w, &b), &r)
        });
        check_grad(&format!("{what} db"), &b, &grads.db, |b| {
            dot(&linear_forward(&x, &w, b), &r)
        });
    }
}

const ACTIVATIONS: [Activation; 4] = [
    Activation::Relu,
    Activation::LeakyRelu {
        negative_slope: 0.1,
    },
    Activation::Sigmoid,
    Activation::Tanh,
];

#[test]
fn activation_gradients() {
    let mut rng = SplitMix64::new(5);
    for act in ACTIVATIONS {
        let x = away_from_zero(&mut rng, &[3, 7], 0.1, 3.0);
        let r = uniform(&mut rng, &[3, 7], -1.0, 1.0);
        let y = activation_forward(act, &x);
        let dx = activation_backward(act, &x, &y, &r);
        check_grad(act.name(), &x, &dx, |x| {
            dot(&activation_forward(act, x), &r)
        });
    }
}

#[test]
fn activation_known_values() {
    let x = tensor(&[5], &[-2.0, -0.5, 0.0, 0.5, 2.0]);
    let relu = activation_forward(Activation::Relu, &x);
    assert_eq!(relu.data, [0.0, 0.0, 0.0, 0.5, 2.0]);
    let leaky = Activation::LeakyRelu {
        negative_slope: 0.25,
    };
    assert_eq!(
        activation_forward(leaky, &x).data,
        [-0.5, -0.125, 0.0, 0.5, 2.0]
    );
    // Derivative at exactly 0: relu 0, leaky relu the slope (x > 0 passes).
    let ones = tensor(&[5], &[1.0; 5]);
    assert_eq!(
        activation_backward(Activation::Relu, &x, &relu, &ones).data,
        [0.0, 0.0, 0.0, 1.0, 1.0]
    );
    assert_eq!(
        activation_backward(leaky, &x, &relu, &ones).data,
        [0.25, 0.25, 0.25, 1.0, 1.0]
    );
    let sig = activation_forward(Activation::Sigmoid, &x);
    assert_eq!(sig.data[2], 0.5);
    assert!((sig.data[4] - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-15);
    assert!((sig.data[0] + sig.data[4] - 1.0).abs() < 1e-15);
    let tanh = activation_forward(Activation::Tanh, &x);
    assert!((tanh.data[3] - 0.5f64.tanh()).abs() < 1e-15);
}

#[test]
fn sigmoid_is_stable_for_large_inputs() {
    let x = HostTensor::new(&[4], vec![-1000.0f32, -100.0, 100.0, 1000.0]);
    let y = activation_forward(Activation::Sigmoid, &x);
    assert!(y.data.iter().all(|v| v.is_finite()), "{:?}", y.data);
    assert_eq!(y.data[0], 0.0);
    assert_eq!(y.data[3], 1.0);
    let dx = activation_backward(Activation::Sigmoid, &x, &y, &x.map(|_| 1.0));
    assert!(dx.data.iter().all(|v| v.is_finite()), "{:?}", dx.data);
}

#[test]
fn dropout_gradients() {
    let mut rng = SplitMix64::new(6);
    let d = DropoutSettings::new(0.3, 1234, 5).unwrap();
    let x = uniform(&mut rng, &[4, 9], -1.0, 1.0);
    let r = uniform(&mut rng, &[4, 9], -1.0, 1.0);
    let dx = dropout_backward(&r, &d);
    check_grad("dropout", &x, &dx, |x| dot(&dropout_forward(x, &d), &r));
}

fn batchnorm_train_gradients(shape: &[usize], seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let c = shape[1];
    let s = BatchNormSettings::default();
    let x = uniform(&mut rng, shape, -1.0, 2.0);
    let gamma = uniform(&mut rng, &[c], 0.5, 1.5);
    let beta = uniform(&mut rng, &[c], -0.5, 0.5);
    let rm = uniform(&mut rng, &[c], -0.5, 0.5);
    let rv = uniform(&mut rng, &[c], 0.5, 1.5);
    let r = uniform(&mut rng, shape, -1.0, 1.0);
    let out = batchnorm_forward_train(&x, &gamma, &beta, &rm, &rv, &s);
    let grads = batchnorm_backward(&x, &gamma, &out.saved, &r, true);
    let loss = |x: &T, gamma: &T, beta: &T| {
        dot(&batchnorm_forward_train(x, gamma, beta, &rm, &rv, &s).y, &r)
    };
    let what = format!("batchnorm train {shape:?}");
    check_grad(&format!("{what} dx"), &x, &grads.dx, |x| {
        loss(x, &gamma, &beta)
    });
    check_grad(&format!("{what} dgamma"), &gamma, &grads.dgamma, |g| {
        loss(&x, g, &beta)
    });
    check_grad(&format!("{what} dbeta"), &beta, &grads.dbeta, |b| {
        loss(&x, &gamma, b)
    });
}

#[test]
fn batchnorm_train_gradients_1d() {
    batchnorm_train_gradients(&[5, 3], 7);
    batchnorm_train_gradients(&[2, 4], 8);
}

#[test]
fn batchnorm_train_gradients_2d() {
    batchnorm_train_gradients(&[2, 3, 3, 2], 9);
    batchnorm_train_gradients(&[1, 2, 2, 5], 10);
}

#[test]
fn batchnorm_eval_gradients() {
    let mut rng = SplitMix64::new(11);
    let s = BatchNormSettings::default();
    for shape in [&[4, 3][..], &[2, 3, 2, 3][..]] {
        let c = shape[1];
        let x = uniform(&mut rng, shape, -1.0, 2.0);
        let gamma = uniform(&mut rng, &[c], 0.5, 1.5);
        let beta = uniform(&mut rng, &[c], -0.5, 0.5);
        let rm = uniform(&mut rng, &[c], -0.5, 0.5);
        let rv = uniform(&mut rng, &[c], 0.5, 1.5);
        let r = uniform(&mut rng, shape, -1.0, 1.0);
        let (_, saved) = batchnorm_forward_eval(&x, &gamma, &beta, &rm, &rv, &s);
        let grads = batchnorm_backward(&x, &gamma, &saved, &r, false);
        let loss = |x: &T, gamma: &T, beta: &T| {
            dot(&batchnorm_forward_eval(x, gamma, beta, &rm, &rv, &s).0, &r)
        };
        let what = format!("batchnorm eval {shape:?}");
        check_grad(&format!("{what} dx"), &x, &grads.dx, |x| {
            loss(x, &gamma, &beta)
        });
        check_grad(&format!("{what} dgamma"), &gamma, &grads.dgamma, |g| {
            loss(&x, g, &beta)
        });
        check_grad(&format!("{what} dbeta"), &beta, &grads.dbeta, |b| {
            loss(&x, &gamma, b)
        });
    }
}

/// `(N, C, H, W, kernel, stride, padding)`: non-square, padding 0/1, overlapping
/// and disjoint windows, windows that do not tile the input exactly.
const POOL_CASES: &[[usize; 7]] = &[
    [1, 2, 5, 7, 3, 2, 1],
    [2, 1, 6, 4, 2, 2, 0],
    [1, 1, 4, 5, 3, 1, 1],
    [2, 2, 7, 3, 2, 1, 1],
    [1, 3, 3, 8, 3, 3, 0],
];

fn pool_geometry(c: &[usize; 7]) -> Pool2dGeometry {
    Pool2dGeometry::new(c[0], c[1], c[2], c[3], c[4], c[5], c[6]).unwrap()
}

#[test]
fn maxpool_gradients() {
    let mut rng = SplitMix64::new(12);
    for case in POOL_CASES {
        let g = pool_geometry(case);
        let x = distinct(&mut rng, &g.input_shape());
        let r = uniform(&mut rng, &g.output_shape(), -1.0, 1.0);
        let (_, argmax) = maxpool_forward(&x, &g);
        let dx = maxpool_backward(&r, &argmax, &g);
        check_grad(&format!("maxpool {case:?}"), &x, &dx, |x| {
            dot(&maxpool_forward(x, &g).0, &r)
        });
    }
}

#[test]
fn avgpool_gradients() {
    let mut rng = SplitMix64::new(13);
    for case in POOL_CASES {
        let g = pool_geometry(case);
        let x = uniform(&mut rng, &g.input_shape(), -1.0, 1.0);
        let r = uniform(&mut rng, &g.output_shape(), -1.0, 1.0);
        let dx = avgpool_backward(&r, &g);
        check_grad(&format!("avgpool {case:?}"), &x, &dx, |x| {
            dot(&avgpool_forward(x, &g), &r)
        });
    }
}

#[test]
fn softmax_cross_entropy_gradient() {
    let mut rng = SplitMix64::new(14);
    for (n, k) in [(1, 3), (4, 5), (3, 10)] {
        let logits = uniform(&mut rng, &[n, k], -3.0, 3.0);
        let labels: Vec<u32> = (0..n).map(|_| rng.below(k as u32)).collect();
        let out = softmax_cross_entropy(&logits, &labels);
        check_grad(
            &format!("softmax xent N={n} K={k}"),
            &logits,
            &out.grad,
            |l| softmax_cross_entropy(l, &labels).loss.data[0],
        );
    }
}

// ---------------------------------------------------------------- cross-checks

#[test]
fn conv2d_matches_im2col_gemm() {
    let mut rng = SplitMix64::new(15);
    for case in CONV_CASES {
        let g = conv_geometry(case);
        let (o_n, rows, pos) = (g.out_channels, g.col_rows(), g.out_positions());
        let x = uniform(&mut rng, &g.input_shape(), -1.0, 1.0);
        let w = uniform(&mut rng, &g.weight_shape(), -1.0, 1.0);
        let b = uniform(&mut rng, &[o_n], -1.0, 1.0);
        let dy = uniform(&mut rng, &g.output_shape(), -1.0, 1.0);
        let w_col = w.reshaped(&[o_n, rows]);
        let cols = im2col(&x, &g);

        let mut y = Vec::new();
        let mut dw = HostTensor::zeros(&[o_n, rows]);
        let mut dcols = Vec::new();
        for n in 0..g.batch {
            let x_col = HostTensor::new(
                &[rows, pos],
                cols.data[n * rows * pos..][..rows * pos].to_vec(),
            );
            let dy_n = HostTensor::new(&[o_n, pos], dy.data[n * o_n * pos..][..o_n * pos].to_vec());
            // Y_n = W_col · X_col,n + b
            let mut y_n = gemm(
                &w_col,
                &x_col,
                &GemmSpec {
                    m: o_n,
                    n: pos,
                    k: rows,
                    trans_a: false,
                    trans_b: false,
                },
            );
            for o in 0..o_n {
                for p in 0..pos {
                    y_n.data[o * pos + p] += b.data[o];
                }
            }
            y.extend(y_n.data);
            // dW += dY_n · X_col,nᵀ
            let dw_n = gemm(
                &dy_n,
                &x_col,
                &GemmSpec {
                    m: o_n,
                    n: rows,
                    k: pos,
                    trans_a: false,
                    trans_b: true,
                },
            );
            for (acc, v) in dw.data.iter_mut().zip(dw_n.data) {
                *acc += v;
            }
            // dX_col,n = W_colᵀ · dY_n
            let dcol_n = gemm(
                &w_col,
                &dy_n,
                &GemmSpec {
                    m: rows,
                    n: pos,
                    k: o_n,
                    trans_a: true,
                    trans_b: false,
                },
            );
            dcols.extend(dcol_n.data);
        }
        let want_y = HostTensor::new(&g.output_shape(), y);
        assert_close(
            &format!("conv2d forward {case:?}"),
            &conv2d_forward(&x, &w, &b, &g),
            &want_y,
            1e-12,
        );

        let grads = conv2d_backward(&x, &w, &dy, &g);
        let want_dw = dw.reshaped(&g.weight_shape());
        assert_close(&format!("conv2d dw {case:?}"), &grads.dw, &want_dw, 1e-12);
        let want_dx = col2im(&HostTensor::new(&g.cols_shape(), dcols), &g);
        assert_close(&format!("conv2d dx {case:?}"), &grads.dx, &want_dx, 1e-12);
        let mut want_db = HostTensor::zeros(&[o_n]);
        for n in 0..g.batch {
            for o in 0..o_n {
                for p in 0..pos {
                    want_db.data[o] += dy.data[(n * o_n + o) * pos + p];
                }
            }
        }
        assert_close(&format!("conv2d db {case:?}"), &grads.db, &want_db, 1e-12);
    }
}

#[test]
fn linear_matches_gemm() {
    let mut rng = SplitMix64::new(16);
    let (n, i, o) = (3, 5, 4);
    let x = uniform(&mut rng, &[n, i], -1.0, 1.0);
    let w = uniform(&mut rng, &[o, i], -1.0, 1.0);
    let b = uniform(&mut rng, &[o], -1.0, 1.0);
    let mut want = gemm(
        &x,
        &w,
        &GemmSpec {
            m: n,
            n: o,
            k: i,
            trans_a: false,
            trans_b: true,
        },
    );
    for row in want.data.chunks_mut(o) {
        for (v, bias) in row.iter_mut().zip(&b.data) {
            *v += bias;
        }
    }
    assert_close("linear forward", &linear_forward(&x, &w, &b), &want, 1e-12);
}

#[test]
fn softmax_cross_entropy_known_values() {
    let out = softmax_cross_entropy(&tensor(&[1, 3], &[1.0, 2.0, 3.0]), &[2]);
    // loss = ln(e + e² + e³) − 3 = ln(1 + e⁻¹ + e⁻²)
    let want = (1.0 + (-1.0f64).exp() + (-2.0f64).exp()).ln();
    assert!(
        (out.loss.data[0] - want).abs() < 1e-14,
        "{}",
        out.loss.data[0]
    );
    assert!((want - 0.407_605_964_444_380_1).abs() < 1e-14);
    assert_eq!(out.loss.shape, [1]);
    assert_eq!(out.correct.shape, [1]);
    assert_eq!(out.correct.data[0], 1.0);
    let z = 1.0 + 1.0f64.exp() + 2.0f64.exp();
    let softmax = [1.0 / z, 1.0f64.exp() / z, 2.0f64.exp() / z];
    let want_grad = tensor(&[1, 3], &[softmax[0], softmax[1], softmax[2] - 1.0]);
    assert_close("softmax grad", &out.grad, &want_grad, 1e-14);

    // Two rows: mean over the batch, grad divided by N; ties go to the first
    // arg-max, so row 0 (label 1) is wrong and row 1 (label 0) is right.
    let logits = tensor(&[2, 3], &[5.0, 5.0, 1.0, 0.0, 0.0, 0.0]);
    let out = softmax_cross_entropy(&logits, &[1, 0]);
    assert_eq!(out.correct.data[0], 1.0);
    let row0 = (2.0 + (-4.0f64).exp()).ln();
    let row1 = 3.0f64.ln();
    assert!((out.loss.data[0] - (row0 + row1) / 2.0).abs() < 1e-14);
    assert!((out.grad.data[3] - (1.0 / 3.0 - 1.0) / 2.0).abs() < 1e-15);
}

#[test]
fn softmax_cross_entropy_is_stable_for_large_logits() {
    let logits = HostTensor::new(&[2, 3], vec![1000.0f32, 0.0, -1000.0, -1e4, -1e4, -1e4]);
    let out = softmax_cross_entropy(&logits, &[2, 1]);
    let want = (2000.0 + 3.0f64.ln()) / 2.0;
    assert!(
        (out.loss.data[0] as f64 - want).abs() < 1e-3,
        "{}",
        out.loss.data[0]
    );
    assert!(out.grad.data.iter().all(|v| v.is_finite()));
}

#[test]
#[should_panic(expected = "label 3 of row 1 is not below the number of classes 3")]
fn softmax_cross_entropy_rejects_bad_label() {
    softmax_cross_entropy(&HostTensor::<f64>::zeros(&[2, 3]), &[0, 3]);
}

#[test]
fn maxpool_ties_go_to_first_element() {
    // All-equal 4×4 input, 2×2 windows, stride 2: each arg-max is the window's
    // top-left element.
    let g = Pool2dGeometry::new(1, 1, 4, 4, 2, 2, 0).unwrap();
    let x = HostTensor::new(&[1, 1, 4, 4], vec![7.0f64; 16]);
    let (y, argmax) = maxpool_forward(&x, &g);
    assert_eq!(y.data, [7.0; 4]);
    assert_eq!(argmax, [0, 2, 8, 10]);

    // With padding (−∞): the first in-bounds element; an all-negative input
    // must not pick up a 0 from the padding. 3×5 input, k 3, s 2, p 1 → 2×3.
    let g = Pool2dGeometry::new(1, 1, 3, 5, 3, 2, 1).unwrap();
    let x = HostTensor::new(&[1, 1, 3, 5], vec![-5.0f64; 15]);
    let (y, argmax) = maxpool_forward(&x, &g);
    assert_eq!(y.shape, [1, 1, 2, 3]);
    assert_eq!(y.data, [-5.0; 6]);
    assert_eq!(argmax, [0, 1, 3, 5, 6, 8]);
}

#[test]
fn maxpool_known_values_non_square() {
    // 1×1×2×4, 2×2 windows, stride 2: two windows side by side.
    let g = Pool2dGeometry::new(1, 1, 2, 4, 2, 2, 0).unwrap();
    let x = tensor(&[1, 1, 2, 4], &[1.0, 9.0, 3.0, 4.0, 5.0, 6.0, 8.0, 7.0]);
    let (y, argmax) = maxpool_forward(&x, &g);
    assert_eq!(y.data, [9.0, 8.0]);
    assert_eq!(argmax, [1, 6]);
    let dx = maxpool_backward(&tensor(&[1, 1, 1, 2], &[10.0, 20.0]), &argmax, &g);
    assert_eq!(dx.data, [0.0, 10.0, 0.0, 0.0, 0.0, 0.0, 20.0, 0.0]);
    // Overlapping windows sharing a maximum accumulate.
    let g = Pool2dGeometry::new(1, 1, 1, 3, 1, 1, 0).unwrap();
    let (_, argmax) = maxpool_forward(&tensor(&[1, 1, 1, 3], &[1.0, 2.0, 3.0]), &g);
    assert_eq!(argmax, [0, 1, 2]);
    let g = Pool2dGeometry::new(1, 1, 2, 3, 2, 1, 0).unwrap();
    let (y, argmax) = maxpool_forward(&tensor(&[1, 1, 2, 3], &[0.0, 0.0, 0.0, 0.0, 5.0, 0.0]), &g);
    assert_eq!(y.data, [5.0, 5.0]);
    assert_eq!(argmax, [4, 4]);
    let dx = maxpool_backward(&tensor(&[1, 1, 1, 2], &[1.0, 2.0]), &argmax, &g);
    assert_eq!(dx.data, [0.0, 0.0, 0.0, 0.0, 3.0, 0.0]);
}

#[test]
fn avgpool_counts_padding() {
    // 2×2 input [[1, 2], [3, 4]], k 2, s 1, p 1 → 3×3, every window divided by 4.
    let g = Pool2dGeometry::new(1, 1, 2, 2, 2, 1, 1).unwrap();
    let y = avgpool_forward(&tensor(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]), &g);
    assert_eq!(y.shape, [1, 1, 3, 3]);
    assert_eq!(y.data, [0.25, 0.75, 0.5, 1.0, 2.5, 1.5, 0.75, 1.75, 1.0]);
    // Each input element is in 4 windows: dx = 4·(1/4) = 1.
    let dx = avgpool_backward(&HostTensor::new(&[1, 1, 3, 3], vec![1.0; 9]), &g);
    assert_eq!(dx.data, [1.0; 4]);
}

#[test]
fn batchnorm_running_stats_and_output() {
    let s = BatchNormSettings {
        eps: 1e-5,
        momentum: 0.1,
    };
    // One feature, values 1..4: μ = 2.5, biased σ² = 1.25, unbiased 5/3.
    let x = tensor(&[4, 1], &[1.0, 2.0, 3.0, 4.0]);
    let one = tensor(&[1], &[1.0]);
    let zero = tensor(&[1], &[0.0]);
    let out = batchnorm_forward_train(&x, &one, &zero, &zero, &one, &s);
    let eps = 1e-5f32 as f64;
    assert!((out.saved.mean.data[0] - 2.5).abs() < 1e-15);
    assert!((out.saved.invstd.data[0] - 1.0 / (1.25 + eps).sqrt()).abs() < 1e-15);
    let m = 0.1f32 as f64;
    assert!((out.running_mean.data[0] - m * 2.5).abs() < 1e-15);
    assert!((out.running_var.data[0] - ((1.0 - m) + m * 5.0 / 3.0)).abs() < 1e-15);
    let invstd = out.saved.invstd.data[0];
    let want_y = x.map(|v| (v - 2.5) * invstd);
    assert_close("batchnorm y", &out.y, &want_y, 1e-15);

    // Per channel over N·H·W: (2, 2, 1, 2), channel 0 holds 0, 2, 4, 6 and
    // channel 1 holds 1, 1, 1, 1 (zero variance: y = β).
    let x = tensor(&[2, 2, 1, 2], &[0.0, 2.0, 1.0, 1.0, 4.0, 6.0, 1.0, 1.0]);
    let gamma = tensor(&[2], &[2.0, 3.0]);
    let beta = tensor(&[2], &[0.5, -0.5]);
    let rm = tensor(&[2], &[1.0, 1.0]);
    let rv = tensor(&[2], &[2.0, 2.0]);
    let out = batchnorm_forward_train(&x, &gamma, &beta, &rm, &rv, &s);
    assert_close(
        "2d mean",
        &out.saved.mean,
        &tensor(&[2], &[3.0, 1.0]),
        1e-15,
    );
    assert_close(
        "2d running mean",
        &out.running_mean,
        &tensor(&[2], &[0.9 + 0.3, 1.0]),
        1e-7,
    );
    // Channel 0: σ² = 5, unbiased 20/3.
    assert_close(
        "2d running var",
        &out.running_var,
        &tensor(&[2], &[(1.0 - m) * 2.0 + m * 20.0 / 3.0, (1.0 - m) * 2.0]),
        1e-15,
    );
    for i in [2, 3, 6, 7] {
        assert_eq!(out.y.data[i], -0.5);
    }

    // Evaluation uses the running statistics.
    let (y, saved) = batchnorm_forward_eval(&x, &gamma, &beta, &rm, &rv, &s);
    assert_eq!(saved.mean, rm);
    assert!((saved.invstd.data[0] - 1.0 / (2.0 + eps).sqrt()).abs() < 1e-15);
    assert!((y.data[0] - (2.0 * (0.0 - 1.0) * saved.invstd.data[0] + 0.5)).abs() < 1e-15);
}

#[test]
fn output_size_floors() {
    assert_eq!(window_output_len("t", 7, 3, 2, 0).unwrap(), 3);
    assert_eq!(window_output_len("t", 8, 3, 2, 0).unwrap(), 3);
    assert_eq!(window_output_len("t", 8, 3, 2, 1).unwrap(), 4);
    assert!(window_output_len("t", 2, 5, 1, 1).is_err());
    let g = Conv2dGeometry::new(1, 1, 7, 8, 1, 3, 3, 2, 0).unwrap();
    assert_eq!((g.out_h, g.out_w), (3, 3));
    let p = Pool2dGeometry::new(1, 1, 7, 8, 3, 2, 0).unwrap();
    assert_eq!((p.out_h, p.out_w), (3, 3));
    // The floor drops the last row/column: conv over 7×8 only reads up to index 6.
    let x = HostTensor::new(&[1, 1, 7, 8], (0..56).map(|v| v as f64).collect());
    let w = HostTensor::new(&[1, 1, 3, 3], vec![1.0; 9]);
    let y = conv2d_forward(&x, &w, &tensor(&[1], &[0.0]), &g);
    assert_eq!(y.shape, [1, 1, 3, 3]);
    // Window (0, 0) covers rows 0..3 and columns 0..3 of x[h, w] = 8h + w.
    assert_eq!(y.data[0], 81.0);
    // The last window starts at row 4, column 4: rows 4..7, columns 4..7.
    assert_eq!(y.data[8], (8.0 * 5.0 + 5.0) * 9.0);
}

// ---------------------------------------------------------------- dropout

#[test]
fn dropout_keeps_about_one_minus_p() {
    let d = DropoutSettings::new(0.3, 42, 1).unwrap();
    let x = HostTensor::new(&[100_000], vec![1.0f32; 100_000]);
    let y = dropout_forward(&x, &d);
    let scale = 1.0f32 / (1.0f32 - 0.3f32);
    let kept = y.data.iter().filter(|&&v| v != 0.0).count();
    assert!(y.data.iter().all(|&v| v == 0.0 || v == scale));
    let frac = kept as f64 / 100_000.0;
    // Standard deviation √(0.21/1e5) ≈ 0.0014.
    assert!((frac - 0.7).abs() < 0.01, "kept fraction {frac}");
    // The backward applies the same mask.
    assert_eq!(dropout_backward(&x, &d), y);
    // The mask is exactly dropout_keep at each flat index.
    for (i, &v) in y.data.iter().enumerate().take(1000) {
        assert_eq!(v != 0.0, dropout_keep(42, 1, i as u32, 0.3));
    }
}

#[test]
fn dropout_p0_is_identity() {
    let mut rng = SplitMix64::new(17);
    let x = HostTensor::new(&[3, 5], rng.uniform_vec(15, -1.0, 1.0));
    let d = DropoutSettings::new(0.0, 9, 9).unwrap();
    assert_eq!(dropout_forward(&x, &d), x);
    assert_eq!(dropout_backward(&x, &d), x);
}

#[test]
fn dropout_mask_depends_on_seed_and_step_only() {
    let x = HostTensor::new(&[4096], vec![1.0f64; 4096]);
    let d = DropoutSettings::new(0.5, 7, 3).unwrap();
    let a = dropout_forward(&x, &d);
    assert_eq!(a, dropout_forward(&x, &d));
    let differing = |b: &T| a.data.iter().zip(&b.data).filter(|(u, v)| u != v).count();
    let other_step = dropout_forward(&x, &DropoutSettings { step: 4, ..d });
    let other_seed = dropout_forward(&x, &DropoutSettings { seed: 8, ..d });
    // Independent masks at p = 0.5 differ in about half the positions.
    assert!(differing(&other_step) > 1500, "{}", differing(&other_step));
    assert!(differing(&other_seed) > 1500, "{}", differing(&other_seed));
}

// ---------------------------------------------------------------- rng

#[test]
fn hash_values_are_pinned() {
    // The WGSL copy in shaders/ must produce exactly these values.
    assert_eq!(hash_u32(0), 0);
    assert_eq!(hash_u32(1), 0x6889_90c0);
    assert_eq!(hash_u32(2), 0xd113_2181);
    assert_eq!(hash_u32(3), 0x53f1_e9dd);
    assert_eq!(hash_u32(12345), 0x912e_fcf7);
    assert_eq!(hash_u32(0xdead_beef), 0xe628_c683);
    assert_eq!(hash_u32(u32::MAX), 0x6768_824a);
    assert_eq!(dropout_uniform(42, 7, 0), 2_142_908.0 / 16_777_216.0);
    assert_eq!(dropout_uniform(42, 7, 1), 12_172_643.0 / 16_777_216.0);
    assert_eq!(dropout_uniform(42, 8, 1), 14_584_818.0 / 16_777_216.0);
    assert_eq!(dropout_uniform(1, 2, 3), 11_337_086.0 / 16_777_216.0);
}

// ---------------------------------------------------------------- backend

#[test]
fn cpu_backend_delegates() {
    let f32_backend = CpuBackend::<f32>::new();
    let f64_backend: CpuBackend<f64> = CpuBackend::default();
    assert_eq!(f32_backend.name(), "cpu (f32 reference)");
    assert_eq!(f64_backend.name(), "cpu (f64 reference)");

    let mut rng = SplitMix64::new(18);
    let host = HostTensor::new(&[2, 3], rng.uniform_vec(6, -1.0, 1.0));
    let up = f64_backend.upload(&host);
    assert_eq!(up.shape(), [2, 3]);
    assert_eq!(f64_backend.download(&up), host);
    assert_eq!(f64_backend.upload_indices(&[1, 2]), vec![1, 2]);

    let w = f64_backend.upload(&HostTensor::new(&[4, 3], rng.uniform_vec(12, -1.0, 1.0)));
    let b = f64_backend.upload(&HostTensor::new(&[4], rng.uniform_vec(4, -1.0, 1.0)));
    assert_eq!(
        f64_backend.linear_forward(&up, &w, &b),
        linear_forward(&up, &w, &b)
    );
    let labels = f64_backend.upload_indices(&[0, 3]);
    let logits = f64_backend.linear_forward(&up, &w, &b);
    let out = f64_backend.softmax_cross_entropy(&logits, &labels);
    assert_eq!(out.grad, softmax_cross_entropy(&logits, &labels).grad);
}

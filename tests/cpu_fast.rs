//! The CPU training path (direct or im2col convolutions, optimised GEMM,
//! ops over a thread pool) against the direct-loop reference: in f64 so
//! any difference is a bug, not rounding, and in f32 where the SIMD kernels
//! (f32 only) run, within rounding.

use wgcnn::backend::Backend;
use wgcnn::cpu::CpuBackend;
use wgcnn::geometry::{Activation, Conv2dGeometry, GemmSpec};
use wgcnn::rng::SplitMix64;
use wgcnn::tensor::HostTensor;

/// Every activation, leaky relu with a slope of 0.1.
const EVERY_ACTIVATION: [Activation; 4] = [
    Activation::Relu,
    Activation::LeakyRelu {
        negative_slope: 0.1,
    },
    Activation::Sigmoid,
    Activation::Tanh,
];

fn random(rng: &mut SplitMix64, shape: &[usize]) -> HostTensor<f64> {
    HostTensor::new(
        shape,
        (0..shape.iter().product())
            .map(|_| rng.uniform(-1.0, 1.0) as f64)
            .collect(),
    )
}

fn assert_close(what: &str, fast: &HostTensor<f64>, reference: &HostTensor<f64>) {
    assert_eq!(fast.shape, reference.shape, "{what} shape");
    for (i, (a, b)) in fast.data.iter().zip(&reference.data).enumerate() {
        assert!(
            (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
            "{what}[{i}]: fast {a} vs reference {b}"
        );
    }
}

/// f32 convolutions, which on CPUs with AVX2 or AVX-512 take the unpacked
/// kernels (fused multiply-adds, `src/cpu/fast/unpacked.rs`): the direct
/// way for stride 1 (`direct_conv.rs`), else im2col with the few-rows
/// products. Against the f64 reference: equal within f32 rounding of the
/// terms.
#[test]
fn convolution_in_f32_matches_the_reference_within_rounding() {
    let fast = CpuBackend::<f32>::fast();
    let reference = CpuBackend::<f64>::new();
    let mut rng = SplitMix64::new(5);
    let to_f32 =
        |t: &HostTensor<f64>| HostTensor::new(&t.shape, t.data.iter().map(|&v| v as f32).collect());
    let abs =
        |t: &HostTensor<f64>| HostTensor::new(&t.shape, t.data.iter().map(|v| v.abs()).collect());
    for (n, c, h, w, o, kh, kw, s, p) in [
        // LeNet-5's two convolutions (6 and 16 output channels).
        (3, 1, 28, 28, 6, 5, 5, 1, 2),
        (2, 6, 14, 14, 16, 5, 5, 1, 0),
        // Rows in blocks of 8 and a ragged rest, columns past the last
        // whole vector pair; 17 output channels.
        (2, 3, 9, 13, 11, 3, 3, 1, 1),
        (1, 2, 6, 6, 1, 3, 3, 1, 0),
        (2, 2, 7, 7, 17, 3, 3, 1, 1),
        // The direct way (stride 1, outputs nearly as wide as the padded
        // input, `src/cpu/fast/direct_conv.rs`): fashion-cnn's and
        // cifar-cnn's convolutions, no padding, padding of k − 1, a 1×1
        // kernel, and kernels and inputs that are not square.
        (2, 32, 28, 28, 32, 3, 3, 1, 1),
        (3, 32, 14, 14, 64, 3, 3, 1, 1),
        (2, 3, 32, 32, 32, 3, 3, 1, 1),
        (2, 4, 30, 30, 9, 3, 3, 1, 0),
        (2, 3, 20, 20, 5, 3, 3, 1, 2),
        (2, 7, 28, 28, 3, 1, 1, 1, 0),
        (2, 3, 24, 40, 7, 3, 5, 1, 1),
        (1, 2, 40, 24, 10, 5, 3, 1, 2),
        // im2col: stride 2, and a grid too wide for its outputs.
        (2, 3, 28, 28, 8, 3, 3, 2, 1),
        (2, 3, 6, 6, 4, 5, 5, 1, 0),
        (2, 3, 6, 6, 20, 5, 5, 1, 0),
    ] {
        let g = Conv2dGeometry::new(n, c, h, w, o, kh, kw, s, p).unwrap();
        let x = random(&mut rng, &g.input_shape());
        let wt = random(&mut rng, &g.weight_shape());
        let b = random(&mut rng, &[o]);
        let dy = random(&mut rng, &g.output_shape());
        let close =
            |what: &str, got: &HostTensor<f32>, want: &HostTensor<f64>, mag: &HostTensor<f64>| {
                for (i, ((&got, want), mag)) in
                    got.data.iter().zip(&want.data).zip(&mag.data).enumerate()
                {
                    assert!(
                        (got as f64 - want).abs() <= 1e-6 * (1.0 + mag),
                        "conv {what}[{i}] of {g:?}: fast {got} vs reference {want}"
                    );
                }
            };
        let y = fast.conv2d_forward(&to_f32(&x), &to_f32(&wt), &to_f32(&b), &g);
        let expected = reference.conv2d_forward(&x, &wt, &b, &g);
        let magnitude = reference.conv2d_forward(&abs(&x), &abs(&wt), &abs(&b), &g);
        close("y", &y, &expected, &magnitude);
        let f = fast.conv2d_backward(&to_f32(&x), &to_f32(&wt), &to_f32(&dy), &g);
        let r = reference.conv2d_backward(&x, &wt, &dy, &g);
        let mags = reference.conv2d_backward(&abs(&x), &abs(&wt), &abs(&dy), &g);
        close("dx", &f.dx, &r.dx, &mags.dx);
        close("dw", &f.dw, &r.dw, &mags.dw);
        close("db", &f.db, &r.db, &mags.db);
    }
}

#[test]
fn convolution_matches_the_reference() {
    let fast = CpuBackend::<f64>::fast();
    let reference = CpuBackend::<f64>::new();
    let mut rng = SplitMix64::new(3);
    for (n, c, h, w, o, kh, kw, s, p) in [
        (1, 1, 5, 5, 1, 3, 3, 1, 0),
        (3, 2, 8, 6, 5, 3, 3, 2, 1),
        (5, 3, 11, 7, 6, 5, 5, 2, 2),
        (2, 3, 9, 5, 2, 2, 3, 2, 0),
        (7, 4, 6, 6, 3, 1, 1, 1, 0),
        // A window wider than the input; a stride of 3 that skips columns.
        (1, 2, 3, 3, 2, 5, 5, 1, 2),
        // Padding wider than the input: some taps never land inside.
        (2, 1, 3, 3, 2, 9, 9, 1, 3),
        (2, 1, 4, 5, 2, 3, 3, 3, 1),
        // Stride 1 and "same" padding (im2col's shifted-copy path): a
        // non-square image, a 5x5 window, and 1x1 images whose padding
        // exceeds the plane.
        (2, 3, 7, 5, 4, 3, 3, 1, 1),
        (2, 2, 6, 9, 3, 5, 5, 1, 2),
        // As wide as the input but shorter (a 5x3 window, padding 1).
        (2, 2, 7, 6, 3, 5, 3, 1, 1),
        (1, 2, 1, 1, 2, 3, 3, 1, 1),
        (1, 1, 1, 1, 2, 5, 5, 1, 2),
        // 16x16 outputs: 2 KiB column rows in f64, stored with a padded stride.
        (2, 2, 16, 16, 3, 3, 3, 1, 1),
        (1, 2, 18, 20, 2, 3, 3, 1, 0),
        (1, 1, 2, 3, 2, 5, 5, 1, 2),
    ] {
        let g = Conv2dGeometry::new(n, c, h, w, o, kh, kw, s, p).unwrap();
        let x = random(&mut rng, &g.input_shape());
        let wt = random(&mut rng, &g.weight_shape());
        let b = random(&mut rng, &[o]);
        let dy = random(&mut rng, &g.output_shape());
        assert_close(
            "conv y",
            &fast.conv2d_forward(&x, &wt, &b, &g),
            &reference.conv2d_forward(&x, &wt, &b, &g),
        );
        let f = fast.conv2d_backward(&x, &wt, &dy, &g);
        let r = reference.conv2d_backward(&x, &wt, &dy, &g);
        assert_close("conv dx", &f.dx, &r.dx);
        assert_close("conv dw", &f.dw, &r.dw);
        assert_close("conv db", &f.db, &r.db);
    }
}

#[test]
fn linear_and_gemm_match_the_reference() {
    let fast = CpuBackend::<f64>::fast();
    let reference = CpuBackend::<f64>::new();
    let mut rng = SplitMix64::new(4);
    for (n, i, o) in [(1, 1, 1), (3, 7, 5), (16, 33, 10)] {
        let x = random(&mut rng, &[n, i]);
        let w = random(&mut rng, &[o, i]);
        let b = random(&mut rng, &[o]);
        let dy = random(&mut rng, &[n, o]);
        assert_close(
            "linear y",
            &fast.linear_forward(&x, &w, &b),
            &reference.linear_forward(&x, &w, &b),
        );
        let f = fast.linear_backward(&x, &w, &dy);
        let r = reference.linear_backward(&x, &w, &dy);
        assert_close("linear dx", &f.dx, &r.dx);
        assert_close("linear dw", &f.dw, &r.dw);
        assert_close("linear db", &f.db, &r.db);
    }
    for (m, n, k) in [(1, 1, 1), (7, 5, 3), (33, 17, 65)] {
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let spec = GemmSpec {
                m,
                n,
                k,
                trans_a,
                trans_b,
            };
            let a = random(&mut rng, &spec.a_shape());
            let b = random(&mut rng, &spec.b_shape());
            assert_close(
                &format!("gemm {}", spec.case_name()),
                &fast.gemm(&a, &b, &spec),
                &reference.gemm(&a, &b, &spec),
            );
        }
    }
}

#[test]
fn max_pooling_and_its_gradient_match_the_reference_including_ties() {
    use wgcnn::geometry::Pool2dGeometry;
    let fast = CpuBackend::<f64>::fast();
    let reference = CpuBackend::<f64>::new();
    let mut rng = SplitMix64::new(5);
    for (n, c, h, w, k, s, p) in [
        (2, 3, 8, 8, 2, 2, 0),
        (3, 2, 7, 9, 3, 2, 1),
        (1, 5, 5, 6, 3, 1, 1),
        (4, 1, 11, 5, 2, 3, 1),
        // 2x2 windows at stride 2 (the direct path), odd sizes leaving a
        // row and a column out.
        (2, 3, 6, 4, 2, 2, 0),
        (1, 2, 7, 5, 2, 2, 0),
    ] {
        let g = Pool2dGeometry::new(n, c, h, w, k, s, p).unwrap();
        // Values from a handful of levels, so windows hold ties.
        let mut x = random(&mut rng, &g.input_shape());
        x.data.iter_mut().for_each(|v| *v = (*v * 3.0).round());
        // NaNs first in a window and later in one.
        x.data[0] = f64::NAN;
        x.data[5] = f64::NAN;
        let (fy, fa) = fast.maxpool_forward(&x, &g);
        let (ry, ra) = reference.maxpool_forward(&x, &g);
        let bits = |t: &HostTensor<f64>| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fy), bits(&ry), "pooled values of {g:?}");
        assert_eq!(fa, ra, "arg-max of {g:?}");
        // Overlapping windows (stride below the kernel) add several outputs'
        // gradients into one input, in the reference's order.
        let dy = random(&mut rng, &g.output_shape());
        assert_eq!(
            bits(&fast.maxpool_backward(&dy, &fa, &g)),
            bits(&reference.maxpool_backward(&dy, &ra, &g)),
            "input gradient of {g:?}"
        );
    }
}

/// Activations over the pool, in runs of elements: each element's value is
/// the reference's, across several runs and a ragged last one.
#[test]
fn activations_match_the_reference_exactly() {
    let fast = CpuBackend::<f64>::fast();
    let reference = CpuBackend::<f64>::new();
    let mut rng = SplitMix64::new(11);
    let shape = [3, 5, 101, 67];
    let x = random(&mut rng, &shape);
    let dy = random(&mut rng, &shape);
    for act in EVERY_ACTIVATION {
        let y = fast.activation_forward(act, &x);
        assert_eq!(y, reference.activation_forward(act, &x), "{act:?} forward");
        let dx = fast.activation_backward(act, &x, &y, &dy);
        let expected = reference.activation_backward(act, &x, &y, &dy);
        assert_eq!(dx, expected, "{act:?} backward");
    }
}

#[test]
fn batch_normalisation_matches_the_reference() {
    use wgcnn::geometry::BatchNormSettings;
    let fast = CpuBackend::<f64>::fast();
    let reference = CpuBackend::<f64>::new();
    let mut rng = SplitMix64::new(11);
    let s = BatchNormSettings::default();
    // Planes shorter than, equal to and longer than the eight partial sums,
    // with and without a remainder, and the 2-D (per-feature) layout.
    for shape in [
        vec![5, 3, 7, 5],
        vec![2, 4, 2, 4],
        vec![3, 2, 1, 3],
        vec![4, 6, 6, 6],
        vec![9, 13],
    ] {
        let x = random(&mut rng, &shape);
        let dy = random(&mut rng, &shape);
        let channels = [shape[1]];
        let gamma = random(&mut rng, &channels);
        let beta = random(&mut rng, &channels);
        let mean = random(&mut rng, &channels);
        let var = random(&mut rng, &channels).map(|v| v.abs() + 0.5);
        let what = format!("{shape:?}");
        let f = fast.batchnorm_forward_train(&x, &gamma, &beta, &mean, &var, &s);
        let r = reference.batchnorm_forward_train(&x, &gamma, &beta, &mean, &var, &s);
        assert_close(&format!("y of {what}"), &f.y, &r.y);
        assert_close(&format!("mean of {what}"), &f.saved.mean, &r.saved.mean);
        assert_close(
            &format!("invstd of {what}"),
            &f.saved.invstd,
            &r.saved.invstd,
        );
        assert_close(
            &format!("running mean of {what}"),
            &f.running_mean,
            &r.running_mean,
        );
        assert_close(
            &format!("running var of {what}"),
            &f.running_var,
            &r.running_var,
        );
        for training in [true, false] {
            let fg = fast.batchnorm_backward(&x, &gamma, &r.saved, &dy, training);
            let rg = reference.batchnorm_backward(&x, &gamma, &r.saved, &dy, training);
            let what = format!("{what} (training {training})");
            assert_close(&format!("dx of {what}"), &fg.dx, &rg.dx);
            assert_close(&format!("dgamma of {what}"), &fg.dgamma, &rg.dgamma);
            assert_close(&format!("dbeta of {what}"), &fg.dbeta, &rg.dbeta);
        }
        let (fy, fsaved) = fast.batchnorm_forward_eval(&x, &gamma, &beta, &mean, &var, &s);
        let (ry, rsaved) = reference.batchnorm_forward_eval(&x, &gamma, &beta, &mean, &var, &s);
        assert_close(&format!("eval y of {what}"), &fy, &ry);
        assert_close(
            &format!("eval invstd of {what}"),
            &fsaved.invstd,
            &rsaved.invstd,
        );
    }
}

/// Batchnorm with an activation applied as it writes `y` gives, bit for
/// bit, what batchnorm then the activation's own pass give, in training
/// and evaluation, on the training path and the reference alike; the
/// statistics it returns are the unfused ones.
#[test]
fn batch_normalisation_through_an_activation_equals_the_two_passes() {
    use wgcnn::geometry::BatchNormSettings;
    let s = BatchNormSettings::default();
    let mut rng = SplitMix64::new(12);
    for backend in [CpuBackend::<f64>::fast(), CpuBackend::<f64>::new()] {
        for shape in [vec![5, 3, 7, 5], vec![9, 13]] {
            let x = random(&mut rng, &shape);
            let channels = [shape[1]];
            let [gamma, beta, mean] = [(); 3].map(|_| random(&mut rng, &channels));
            let var = random(&mut rng, &channels).map(|v| v.abs() + 0.5);
            let tensors = [&gamma, &beta, &mean, &var];
            for act in EVERY_ACTIVATION {
                let what = format!("{shape:?} {act:?}");
                let two = backend.batchnorm_forward_train(&x, &gamma, &beta, &mean, &var, &s);
                let fused = backend.batchnorm_forward_train_then(&x, tensors, &s, Some(act));
                assert_eq!(fused.y, backend.activation_forward(act, &two.y), "{what}");
                assert_eq!(fused.saved.mean, two.saved.mean, "{what}");
                assert_eq!(fused.saved.invstd, two.saved.invstd, "{what}");
                assert_eq!(fused.running_mean, two.running_mean, "{what}");
                assert_eq!(fused.running_var, two.running_var, "{what}");

                let (y, saved) = backend.batchnorm_forward_eval(&x, &gamma, &beta, &mean, &var, &s);
                let (fused_y, fused_saved) =
                    backend.batchnorm_forward_eval_then(&x, tensors, &s, Some(act));
                assert_eq!(fused_y, backend.activation_forward(act, &y), "eval {what}");
                assert_eq!(fused_saved.invstd, saved.invstd, "eval {what}");
            }
        }
    }
}

//! Every GPU kernel against the CPU reference over the `wgcnn check` grid of
//! shapes (odd sizes, sizes not multiples of the GEMM tile, batch 1, stride 2,
//! padding 0/1/2, non-square images, 1 and 3+ channels), one test per op.

mod common;

use wgcnn::check;

fn assert_op_passes(op: &str) {
    let Some(gpu) = common::gpu() else { return };
    let cases = check::run_op(gpu, op);
    assert!(!cases.is_empty(), "{op} has no cases");
    let failures: Vec<String> = cases
        .iter()
        .filter(|c| !c.passed)
        .map(|c| {
            format!(
                "{} {}: max abs {:.3e}, max rel {:.3e}; worst {}",
                c.op, c.shape, c.max_abs, c.max_rel, c.worst
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} {op} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    gpu.ctx
        .take_error()
        .expect("no wgpu error during the checks");
}

macro_rules! op_tests {
    ($($name:ident => $op:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                assert_op_passes($op);
            }
        )*

        #[test]
        fn every_check_op_has_a_test() {
            let tested = [$($op),*];
            assert_eq!(tested.as_slice(), check::OPS.as_slice());
        }
    };
}

op_tests! {
    gemm => "gemm",
    im2col => "im2col",
    col2im => "col2im",
    conv2d => "conv2d",
    linear => "linear",
    relu => "relu",
    leaky_relu => "leaky_relu",
    sigmoid => "sigmoid",
    tanh => "tanh",
    dropout => "dropout",
    batchnorm1d => "batchnorm1d",
    batchnorm2d => "batchnorm2d",
    maxpool2d => "maxpool2d",
    avgpool2d => "avgpool2d",
    softmax_cross_entropy => "softmax_cross_entropy",
    sgd => "sgd",
    momentum => "momentum",
    nesterov => "nesterov",
    adagrad => "adagrad",
    rmsprop => "rmsprop",
    adam => "adam",
    adamw => "adamw",
}

/// Dispatch grids past 65,535 workgroups fold into y; an elementwise op over
/// more than 65,535 × 256 elements exercises the fold.
#[test]
fn dispatch_folds_past_the_workgroup_limit() {
    use wgcnn::backend::Backend;
    use wgcnn::geometry::Activation;
    use wgcnn::tensor::HostTensor;
    let Some(gpu) = common::gpu() else { return };
    let len = 65_536 * 256 + 77;
    let x = HostTensor::new(&[len], (0..len).map(|i| (i % 7) as f32 - 3.0).collect());
    let y = gpu.download(&gpu.activation_forward(Activation::Relu, &gpu.upload(&x)));
    let expected: Vec<f32> = x.data.iter().map(|v| v.max(0.0)).collect();
    let first_wrong = y.data.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(first_wrong, None, "relu over {len} elements");
}

/// A wrong shape is a clear error before any kernel runs.
#[test]
fn impossible_geometry_is_an_error() {
    use wgcnn::geometry::{Conv2dGeometry, Pool2dGeometry};
    let err = Conv2dGeometry::new(1, 1, 3, 3, 1, 5, 5, 1, 0).unwrap_err();
    assert!(err.to_string().contains("kernel 5 is larger"), "{err}");
    let err = Pool2dGeometry::new(1, 1, 4, 4, 2, 2, 2).unwrap_err();
    assert!(err.to_string().contains("padding 2"), "{err}");
}

/// Every GEMM kernel adds the same terms in the same order, so the device's
/// tuning choice never changes a result: a convolution's forward and
/// backward (batched, batch-summed and split-K products) are bit-identical
/// whichever kernel runs them.
#[test]
fn every_gemm_kernel_gives_bit_identical_results() {
    use wgcnn::geometry::Conv2dGeometry;
    use wgcnn::gpu::gemm::block_runs_on;
    use wgcnn::gpu::gemm_source::{BLOCKS, CONV_BLOCKS};
    use wgcnn::rng::SplitMix64;
    // A context of its own: forcing a kernel must not reach other tests.
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    let blocks: Vec<_> = BLOCKS
        .iter()
        .chain(&CONV_BLOCKS)
        .copied()
        .filter(|&b| block_runs_on(&gpu.ctx, b))
        .collect();
    let mut rng = SplitMix64::new(11);
    // Padded; then strided and unpadded, with positions (4·5) that fill no
    // block of columns.
    for g in [
        Conv2dGeometry::new(5, 8, 12, 12, 64, 3, 3, 1, 1).unwrap(),
        Conv2dGeometry::new(3, 5, 9, 11, 37, 3, 2, 2, 0).unwrap(),
    ] {
        same_results_from_every_kernel(&gpu, &blocks, &g, &mut rng);
    }
}

fn same_results_from_every_kernel(
    gpu: &wgcnn::gpu::GpuBackend,
    blocks: &[wgcnn::gpu::gemm_source::Block],
    g: &wgcnn::geometry::Conv2dGeometry,
    rng: &mut wgcnn::rng::SplitMix64,
) {
    use wgcnn::backend::Backend;
    let [x, w, b, dy] = common::random_conv_tensors(gpu, g, rng);
    let results: Vec<Vec<Vec<f32>>> = blocks
        .iter()
        .map(|&block| {
            gpu.ctx.gemm_tuner.force(Some(block));
            let y = gpu.conv2d_forward(&x, &w, &b, g);
            let grads = gpu.conv2d_backward(&x, &w, &dy, g);
            [y, grads.dx, grads.dw, grads.db]
                .iter()
                .map(|t| gpu.download(t).data.into_vec())
                .collect()
        })
        .collect();
    gpu.ctx.gemm_tuner.force(None);
    for (block, result) in blocks.iter().zip(&results).skip(1) {
        for (i, name) in ["y", "dx", "dw", "db"].iter().enumerate() {
            let same = result[i]
                .iter()
                .zip(&results[0][i])
                .all(|(a, b)| a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0));
            assert!(
                same,
                "{name} from {} differs from {}",
                block.entry(),
                blocks[0].entry()
            );
        }
    }
}

/// Every GEMM kernel adds a linear layer's terms in the same order too:
/// forward and backward (each product's depth a multiple of 4, as in the
/// built-in models, or not) are bit-identical whichever kernel runs them.
#[test]
fn linear_layers_give_bit_identical_results_through_every_gemm_kernel() {
    use wgcnn::backend::Backend;
    use wgcnn::gpu::gemm::block_runs_on;
    use wgcnn::gpu::gemm_source::BLOCKS;
    use wgcnn::rng::SplitMix64;
    use wgcnn::tensor::HostTensor;
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    let mut rng = SplitMix64::new(5);
    // (batch, inputs, outputs): every product's depth a multiple of 4
    // (inputs for the forward, outputs for dX, batch for dW) with ragged
    // rows and columns; then depths that are not.
    for (n, i, o) in [(36, 68, 12), (9, 30, 7)] {
        let mut tensor = |shape: &[usize]| {
            let len = shape.iter().product();
            gpu.upload(&HostTensor::new(shape, rng.uniform_vec(len, -1.0, 1.0)))
        };
        let (x, w, b, dy) = (
            tensor(&[n, i]),
            tensor(&[o, i]),
            tensor(&[o]),
            tensor(&[n, o]),
        );
        let mut results = Vec::new();
        for block in BLOCKS.into_iter().filter(|&b| block_runs_on(&gpu.ctx, b)) {
            gpu.ctx.gemm_tuner.force(Some(block));
            let y = gpu.linear_forward(&x, &w, &b);
            let grads = gpu.linear_backward(&x, &w, &dy);
            let bits: Vec<Vec<u32>> = [y, grads.dx, grads.dw, grads.db]
                .iter()
                .map(|t| gpu.download(t).data.iter().map(|v| v.to_bits()).collect())
                .collect();
            results.push((block.name(), bits));
        }
        gpu.ctx.gemm_tuner.force(None);
        let (first, expected) = &results[0];
        for (name, bits) in &results[1..] {
            for (k, what) in ["y", "dx", "dw", "db"].iter().enumerate() {
                assert!(
                    bits[k] == expected[k],
                    "{n}x{i}→{o}: {what} from {name} differs from {first}"
                );
            }
        }
    }
}

/// A linear layer's backward takes its bias gradient from the pack of dY
/// for the dX product; it is bit-identical with the per-channel sum the
/// weight gradients alone run (`slice_sum`, as without dX).
#[test]
fn the_bias_gradient_from_dys_pack_equals_the_channel_sum() {
    use wgcnn::backend::Backend;
    use wgcnn::rng::SplitMix64;
    use wgcnn::tensor::HostTensor;
    let Some(gpu) = common::gpu() else { return };
    let mut rng = SplitMix64::new(8);
    for (n, i, o) in [(64, 400, 120), (7, 9, 10), (1, 3, 1)] {
        let mut tensor = |shape: &[usize]| {
            let len = shape.iter().product();
            gpu.upload(&HostTensor::new(shape, rng.uniform_vec(len, -1.0, 1.0)))
        };
        let (x, w, dy) = (tensor(&[n, i]), tensor(&[o, i]), tensor(&[n, o]));
        let with_dx = gpu.linear_backward(&x, &w, &dy);
        let (_, summed) = gpu.linear_weight_grads(&x, &w, &dy);
        let bits = |t| {
            gpu.download(t)
                .data
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&with_dx.db), bits(&summed), "{n}x{i}→{o}");
    }
}

/// The direct convolution kernel reads weights of up to 64 KiB from a
/// uniform buffer and larger ones from a storage buffer (the `conv2d` check
/// compares both with the CPU reference).
#[test]
fn direct_convolution_reads_small_weights_as_uniforms_and_large_ones_from_storage() {
    use wgcnn::backend::Backend;
    use wgcnn::geometry::Conv2dGeometry;
    use wgcnn::rng::SplitMix64;
    // A context of its own, for a profile of these kernels alone.
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    gpu.ctx.gemm_tuner.force_direct(Some(true));
    let mut rng = SplitMix64::new(5);
    // 16·6·5·5 weights (9.6 KB), then 64·32·3·3 (74 KB).
    for (g, uniform) in [
        (
            Conv2dGeometry::new(2, 6, 10, 10, 16, 5, 5, 1, 0).unwrap(),
            true,
        ),
        (
            Conv2dGeometry::new(2, 32, 5, 6, 64, 3, 3, 1, 1).unwrap(),
            false,
        ),
    ] {
        let [x, w, b, dy] = common::random_conv_tensors(&gpu, &g, &mut rng);
        gpu.ctx.set_profiling(true);
        gpu.conv2d_forward(&x, &w, &b, &g);
        gpu.conv2d_backward(&x, &w, &dy, &g);
        let kernels: Vec<String> = gpu.ctx.profile().into_iter().map(|(k, _)| k).collect();
        gpu.ctx.set_profiling(false);
        let direct: Vec<&String> = kernels
            .iter()
            .filter(|k| k.starts_with("direct_conv_") && !k.starts_with("direct_conv_dw"))
            .collect();
        assert_eq!(direct.len(), 2, "the forward and dX: {kernels:?}");
        assert!(
            kernels.iter().any(|k| k.starts_with("direct_conv_dw")),
            "dW by the direct kernel: {kernels:?}"
        );
        assert!(
            direct.iter().all(|k| k.contains("_uniform") == uniform),
            "uniform weights {uniform}: {kernels:?}"
        );
        assert!(
            !kernels.iter().any(|k| k.contains("col2im")),
            "dX by the direct kernel: {kernels:?}"
        );
    }
    gpu.take_error().unwrap();
}

/// The direct weight gradient reads dY where the direct input gradient
/// padded it (LeNet-5's conv2: dY rows of 10 padded by 4 at the sides),
/// rather than padding dY again: a backward pads X for the forward and dY
/// once, and its gradients match the reference.
#[test]
fn the_weight_gradient_reads_dy_where_the_input_gradient_padded_it() {
    use wgcnn::backend::Backend;
    use wgcnn::geometry::Conv2dGeometry;
    use wgcnn::rng::SplitMix64;
    // A context of its own, for a profile of these kernels alone.
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    gpu.ctx.gemm_tuner.force_direct(Some(true));
    let mut rng = SplitMix64::new(55);
    let g = Conv2dGeometry::new(3, 6, 14, 14, 16, 5, 5, 1, 0).unwrap();
    let [x, w, b, dy] = common::random_conv_tensors(&gpu, &g, &mut rng);
    let (pads, grads) = common::dispatches_of(&gpu, "im2col::pad", || {
        gpu.conv2d_forward(&x, &w, &b, &g);
        gpu.conv2d_backward(&x, &w, &dy, &g)
    });
    assert_eq!(pads, 2, "X once (forward and dW), dY once (dX and dW)");
    common::assert_conv_grads_match(&gpu, [&x, &w, &dy], &grads, &g);
    gpu.take_error().unwrap();
}

/// A convolution's forward keeps its padded input for the weight gradient,
/// which then pads nothing; once the input is written in between (here by a
/// copy), the weight gradient pads it anew and gets the new input's values.
#[test]
fn the_weight_gradient_reuses_the_forward_padding_until_the_input_changes() {
    use wgcnn::backend::Backend;
    use wgcnn::geometry::Conv2dGeometry;
    use wgcnn::rng::SplitMix64;
    // A context of its own, for a profile of these kernels alone.
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    gpu.ctx.gemm_tuner.force_direct(Some(true));
    let mut rng = SplitMix64::new(34);
    // Output rows of 8 (whole vec4s): dW pads X and nothing else.
    let g = Conv2dGeometry::new(2, 3, 8, 8, 4, 3, 3, 1, 1).unwrap();
    let [mut x, w, b, dy] = common::random_conv_tensors(&gpu, &g, &mut rng);
    let [other, ..] = common::random_conv_tensors(&gpu, &g, &mut rng);
    let (calls, _) = common::dispatches_of(&gpu, "im2col::pad", || {
        gpu.conv2d_forward(&x, &w, &b, &g);
        gpu.conv2d_weight_grads(&x, &w, &dy, &g)
    });
    assert_eq!(calls, 1, "X padded once for the forward and dW");
    gpu.conv2d_forward(&x, &w, &b, &g);
    gpu.copy_into(&mut x, 0, &other);
    let (calls, (dw, _)) = common::dispatches_of(&gpu, "im2col::pad", || {
        gpu.conv2d_weight_grads(&x, &w, &dy, &g)
    });
    assert_eq!(calls, 1, "the changed X padded anew");
    let reference = wgcnn::cpu::conv2d_backward(
        &gpu.download(&other),
        &gpu.download(&w),
        &gpu.download(&dy),
        &g,
    )
    .dw;
    common::assert_close(&gpu.download(&dw).data, &reference.data, "dw");
    gpu.take_error().unwrap();
}

/// A batch whose im2col-sized matrices are over the buffer limit runs a run
/// of images at a time: the forward and dX are the same values, dW the same
/// sum in another order.
#[test]
fn convolution_splits_a_batch_over_the_buffer_limit() {
    use wgcnn::backend::Backend;
    use wgcnn::geometry::Conv2dGeometry;
    use wgcnn::rng::SplitMix64;
    use wgcnn::tensor::HostTensor;
    // A context of its own: the lowered limit must not reach other tests.
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    // The GEMM paths, which split; the direct kernel has no im2col-sized
    // matrix, and never splits.
    gpu.ctx.gemm_tuner.force_direct(Some(false));
    let mut rng = SplitMix64::new(21);
    for g in [
        Conv2dGeometry::new(7, 3, 9, 8, 5, 3, 3, 1, 1).unwrap(),
        Conv2dGeometry::new(5, 2, 11, 7, 4, 3, 2, 2, 0).unwrap(),
    ] {
        let mut random = |shape: &[usize]| {
            let len = shape.iter().product();
            HostTensor::new(shape, rng.uniform_vec(len, -1.0, 1.0))
        };
        let (x, w, b, dy) = (
            random(&g.input_shape()),
            random(&g.weight_shape()),
            random(&[g.out_channels]),
            random(&g.output_shape()),
        );
        let run = |limit: Option<u64>| {
            gpu.ctx.limit_buffer_bytes(limit);
            let (gx, gw) = (gpu.upload(&x), gpu.upload(&w));
            let y = gpu.conv2d_forward(&gx, &gw, &gpu.upload(&b), &g);
            let grads = gpu.conv2d_backward(&gx, &gw, &gpu.upload(&dy), &g);
            let out = [y, grads.dx, grads.dw, grads.db].map(|t| gpu.download(&t));
            gpu.ctx.limit_buffer_bytes(None);
            out
        };
        let whole = run(None);
        // Two images per run, the last one alone.
        let per_image = 4 * (g.col_rows().next_multiple_of(4) * g.out_positions()) as u64;
        let split = run(Some(2 * per_image + 4));
        for (i, name) in ["y", "dx", "db"].iter().enumerate() {
            let i = [0, 1, 3][i];
            assert_eq!(split[i].data, whole[i].data, "{name} of {g:?}");
        }
        let reference = wgcnn::cpu::conv2d_backward(&x, &w, &dy, &g).dw;
        common::assert_close(&split[2].data, &reference.data, "dw");
        assert_ne!(
            split[2].data, whole[2].data,
            "dW was not split (its sum order would change)"
        );
    }
    gpu.take_error().unwrap();
}

/// Slice sums add each column's partial results in slice order from 0, as
/// a sequential f32 sum does, 4 columns at a time where there are whole
/// vec4s of them (`slice_sum4`) and one at a time otherwise: the same bits.
#[test]
fn slice_sums_add_in_slice_order_four_columns_at_a_time_or_one() {
    use wgcnn::backend::Backend;
    use wgcnn::rng::SplitMix64;
    use wgcnn::tensor::HostTensor;
    // A context of its own, for a profile of these kernels alone.
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    let mut rng = SplitMix64::new(21);
    let slices = 37;
    for (len, entry) in [(12, "reduce::slice_sum4"), (10, "reduce::slice_sum ")] {
        let values = rng.uniform_vec(slices * len, -1.0, 1.0);
        let x = gpu.upload(&HostTensor::new(&[slices, len], values.clone()));
        let out = gpu.ctx.tensor(&[len], "sums");
        gpu.ctx.set_profiling(true);
        wgcnn::gpu::reduce::slice_sum_into(&gpu.ctx, &x.buffer, &out.buffer, slices, len);
        let kernels: Vec<String> = gpu.ctx.profile().into_iter().map(|(k, _)| k).collect();
        gpu.ctx.set_profiling(false);
        assert!(
            kernels.iter().any(|k| k.starts_with(entry)),
            "{len} columns: {kernels:?}"
        );
        let want: Vec<u32> = (0..len)
            .map(|c| {
                (0..slices)
                    .fold(0.0f32, |sum, o| sum + values[o * len + c])
                    .to_bits()
            })
            .collect();
        let got: Vec<u32> = gpu
            .download(&out)
            .data
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(got, want, "{len} columns");
    }
    gpu.take_error().unwrap();
}

/// Max pooling's ties go to the first element of a window in row-major
/// order on the GPU as in the reference, for every kernel (2×2 tiles read as
/// pairs, or as quads for an even output width, other tiles, overlapping
/// windows): inputs of 0s and 1s tie often,
/// and dx shows where each window's gradient went.
#[test]
fn max_pooling_ties_go_to_the_first_element_on_the_gpu() {
    use wgcnn::backend::Backend;
    use wgcnn::geometry::Pool2dGeometry;
    use wgcnn::rng::SplitMix64;
    use wgcnn::tensor::HostTensor;
    let Some(gpu) = common::gpu() else { return };
    let mut rng = SplitMix64::new(8);
    for (h, w, k, s, p) in [
        (8, 6, 2, 2, 0),
        (6, 8, 2, 2, 0),
        (9, 9, 3, 3, 0),
        (7, 9, 3, 2, 1),
    ] {
        let g = Pool2dGeometry::new(2, 3, h, w, k, s, p).unwrap();
        let len = g.input_shape().iter().product();
        let x = HostTensor::new(
            &g.input_shape(),
            (0..len).map(|_| (rng.next_u64() % 2) as f32).collect(),
        );
        let dy_len = g.output_shape().iter().product();
        let dy = HostTensor::new(
            &g.output_shape(),
            (0..dy_len).map(|i| 1.0 + i as f32).collect(),
        );
        let (y, argmax) = wgcnn::cpu::maxpool_forward(&x, &g);
        let dx = wgcnn::cpu::maxpool_backward(&dy, &argmax, &g);
        let (gy, gargmax) = gpu.maxpool_forward(&gpu.upload(&x), &g);
        let gdx = gpu.maxpool_backward(&gpu.upload(&dy), &gargmax, &g);
        assert_eq!(gpu.download(&gy).data, y.data, "y of {g:?}");
        assert_eq!(gpu.download(&gdx).data, dx.data, "dx of {g:?}");
    }
    gpu.take_error().unwrap();
}

/// Planes whose rows are whole vec4s are padded 4 values at a time
/// (`im2col.wgsl`'s `pad4`), shifted by the left padding modulo 4: for each
/// shift (X padded by 1, 2 and 3; dY by 1, 2, 3 and, for the input
/// gradient of an unpadded 5×5 window, 4), a direct convolution's forward
/// and backward match the reference.
#[test]
fn rows_of_whole_vec4s_are_padded_four_values_at_a_time() {
    use wgcnn::backend::Backend;
    use wgcnn::geometry::Conv2dGeometry;
    use wgcnn::rng::SplitMix64;
    // A context of its own, for a profile of these kernels alone.
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    gpu.ctx.gemm_tuner.force_direct(Some(true));
    let mut rng = SplitMix64::new(56);
    for g in [
        Conv2dGeometry::new(2, 3, 5, 8, 4, 3, 3, 1, 1).unwrap(),
        Conv2dGeometry::new(2, 2, 6, 12, 3, 5, 5, 1, 2).unwrap(),
        Conv2dGeometry::new(1, 2, 7, 8, 2, 7, 7, 1, 3).unwrap(),
        Conv2dGeometry::new(2, 3, 9, 12, 4, 5, 5, 1, 0).unwrap(),
    ] {
        let [x, w, b, dy] = common::random_conv_tensors(&gpu, &g, &mut rng);
        let (pads, (y, grads)) = common::dispatches_of(&gpu, "im2col::pad4", || {
            let y = gpu.conv2d_forward(&x, &w, &b, &g);
            (y, gpu.conv2d_backward(&x, &w, &dy, &g))
        });
        assert!(pads > 0, "{g:?}: no pad4");
        let [hx, hw, hb] = [&x, &w, &b].map(|t| gpu.download(t));
        let y_ref = wgcnn::cpu::conv2d_forward(&hx, &hw, &hb, &g);
        common::assert_close(&gpu.download(&y).data, &y_ref.data, "y");
        common::assert_conv_grads_match(&gpu, [&x, &w, &dy], &grads, &g);
    }
    gpu.take_error().unwrap();
}

/// A GPU splits a summed batch of small products (a convolution's weight
/// gradient) into more partial sums than a CPU-like adapter: on lavapipe
/// told to split as a GPU does, a weight gradient of one small block at
/// batch 128 runs as 128 partial sums instead of 64, and both ways its
/// gradients match the reference.
#[test]
fn a_gpu_splits_a_small_weight_gradient_into_more_partial_sums() {
    use wgcnn::backend::Backend;
    use wgcnn::geometry::Conv2dGeometry;
    use wgcnn::gpu::gemm_source::SMALL;
    use wgcnn::rng::SplitMix64;
    // A context of its own: the tuner's switches and the profile are its.
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    // The GEMM path (a summed batch), with one block shape's grid.
    gpu.ctx.gemm_tuner.force_direct(Some(false));
    gpu.ctx.gemm_tuner.force(Some(SMALL));
    let mut rng = SplitMix64::new(57);
    let g = Conv2dGeometry::new(128, 2, 6, 6, 4, 3, 3, 1, 1).unwrap();
    let [x, w, _, dy] = common::random_conv_tensors(&gpu, &g, &mut rng);
    let software = gpu.ctx.is_software();
    for like_a_gpu in [false, true] {
        gpu.ctx.gemm_tuner.split_like_a_gpu(like_a_gpu);
        gpu.ctx.set_profiling(true);
        let grads = gpu.conv2d_backward(&x, &w, &dy, &g);
        // A GEMM grid's third extent counts its products: 128 for dX (one
        // per image), dW's partial sums for dW, the smaller.
        let slices = common::profiled_grid_extents(&gpu, "gemm::", 2)
            .into_iter()
            .min();
        gpu.ctx.set_profiling(false);
        let expected = if like_a_gpu || !software { 128 } else { 64 };
        assert_eq!(slices, Some(expected), "split like a GPU: {like_a_gpu}");
        common::assert_conv_grads_match(&gpu, [&x, &w, &dy], &grads, &g);
    }
    gpu.take_error().unwrap();
}

/// The direct weight gradient sums rows of the batch in slices sized by
/// the device class: LeNet-5's conv1 at batch 64 runs as 128 slices (two
/// workgroups) on a CPU-like adapter and as 448 (seven) on a GPU, or on
/// lavapipe told to split like one; both ways its gradients match the
/// reference.
#[test]
fn a_gpu_slices_a_direct_weight_gradient_finer() {
    use wgcnn::backend::Backend;
    use wgcnn::geometry::Conv2dGeometry;
    use wgcnn::rng::SplitMix64;
    // A context of its own: the tuner's switches and the profile are its.
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    gpu.ctx.gemm_tuner.force_direct(Some(true));
    let mut rng = SplitMix64::new(58);
    let g = Conv2dGeometry::new(64, 1, 28, 28, 6, 5, 5, 1, 2).unwrap();
    let [x, w, _, dy] = common::random_conv_tensors(&gpu, &g, &mut rng);
    let software = gpu.ctx.is_software();
    for like_a_gpu in [false, true] {
        gpu.ctx.gemm_tuner.split_like_a_gpu(like_a_gpu);
        gpu.ctx.set_profiling(true);
        let (dw, db) = gpu.conv2d_weight_grads(&x, &w, &dy, &g);
        let workgroups = common::profiled_grid_extents(&gpu, "direct_conv_dw", 0);
        gpu.ctx.set_profiling(false);
        let expected = if like_a_gpu || !software { 7 } else { 2 };
        assert_eq!(workgroups, [expected], "split like a GPU: {like_a_gpu}");
        // Within rounding of the reference's sums over 50,176 terms.
        let [hx, hw, hdy] = [&x, &w, &dy].map(|t| gpu.download(t));
        let reference = wgcnn::cpu::conv2d_backward(&hx, &hw, &hdy, &g);
        let abs = |t: &wgcnn::tensor::HostTensor<f32>| t.map(|v| v.abs());
        let mags = wgcnn::cpu::conv2d_backward(&abs(&hx), &abs(&hw), &abs(&hdy), &g);
        for (got, want, mag, name) in [
            (&dw, &reference.dw, &mags.dw, "dw"),
            (&db, &reference.db, &mags.db, "db"),
        ] {
            for ((d, r), m) in gpu.download(got).data.iter().zip(&want.data).zip(&mag.data) {
                assert!(
                    (d - r).abs() <= 1e-5 * m,
                    "{name} {d} vs {r} (magnitude {m})"
                );
            }
        }
    }
    gpu.take_error().unwrap();
}

/// A single product with few blocks of C and a long K runs on a GPU (or on
/// lavapipe told to split like one) as partial products over K slices,
/// added by `split_sum`, which applies the epilogue: a fully connected
/// layer's forward with its bias and relu or leaky relu (K = 1,024 in 8
/// slices), and its backward with dX taken through the activation before
/// it (K = 516 in 4; the bias gradient comes from the sliced operand's
/// pack). All within rounding of the CPU reference, and bit for bit alike
/// under every GEMM block.
#[test]
fn a_gpu_splits_a_long_single_product_over_k() {
    use wgcnn::backend::Backend;
    use wgcnn::cpu::CpuBackend;
    use wgcnn::geometry::Activation;
    use wgcnn::gpu::gemm_source::{SMALL, TALL, TILED, TILED_64};
    use wgcnn::rng::SplitMix64;
    use wgcnn::tensor::HostTensor;
    // A context of its own: the tuner's switches and the profile are its.
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    let cpu = CpuBackend::<f32>::new();
    let mut rng = SplitMix64::new(91);
    // 34 rows: the packed operands round them up to 36.
    let (n, i, o) = (34, 1024, 516);
    let random = |rng: &mut SplitMix64, shape: &[usize], scale: f32| {
        let len = shape.iter().product();
        HostTensor::new(shape, rng.uniform_vec(len, -scale, scale))
    };
    let hx = random(&mut rng, &[n, i], 1.0);
    let hw = random(&mut rng, &[o, i], 0.05);
    let hb = random(&mut rng, &[o], 1.0);
    let hdy = random(&mut rng, &[n, o], 1.0);
    let [x, w, b, dy] = [&hx, &hw, &hb, &hdy].map(|t| gpu.upload(t));
    let software = gpu.ctx.is_software();
    for act in [
        Activation::Relu,
        Activation::LeakyRelu {
            negative_slope: 0.1,
        },
    ] {
        let hy = cpu.linear_forward_activated(&hx, &hw, &hb, act);
        // The backward's input, as the activation before the layer made it.
        let slope = match act {
            Activation::LeakyRelu { negative_slope } => negative_slope,
            _ => 0.0,
        };
        let h_in = hx.map(|&v| if v > 0.0 { v } else { slope * v });
        let want = cpu.linear_backward_through(&h_in, &hw, &hdy, act);
        let x_in = gpu.upload(&h_in);
        for like_a_gpu in [false, true] {
            gpu.ctx.gemm_tuner.split_like_a_gpu(like_a_gpu);
            let mut first: Option<Vec<Vec<f32>>> = None;
            for block in [SMALL, TALL, TILED, TILED_64] {
                gpu.ctx.gemm_tuner.force(Some(block));
                gpu.ctx.set_profiling(true);
                let y = gpu.linear_forward_activated(&x, &w, &b, act);
                let grads = gpu.linear_backward_through(&x_in, &w, &dy, act);
                let sums = common::profiled_grid_extents(&gpu, "gemm::split_sum", 0);
                let slices = common::profiled_grid_extents(&gpu, "gemm::", 2);
                gpu.ctx.set_profiling(false);
                let split = like_a_gpu || !software;
                let name = block.name();
                assert_eq!(sums.len(), if split { 2 } else { 0 }, "{name} sums");
                if split {
                    // The forward's 8 slices and dX's 4.
                    for count in [8, 4] {
                        assert!(slices.contains(&count), "{name} slices {slices:?}");
                    }
                }
                let got =
                    [&y, &grads.dx, &grads.dw, &grads.db].map(|t| gpu.download(t).data.to_vec());
                for (got, want, what) in [
                    (&got[0], &hy.data, "y"),
                    (&got[1], &want.dx.data, "dx"),
                    (&got[2], &want.dw.data, "dw"),
                    (&got[3], &want.db.data, "db"),
                ] {
                    common::assert_close(got, want, &format!("{name} {what}"));
                }
                match &first {
                    None => first = Some(got.to_vec()),
                    Some(first) => assert!(
                        first.iter().zip(&got).all(|(a, b)| a == b),
                        "{name} differs from {} under the same split",
                        SMALL.name()
                    ),
                }
            }
            gpu.ctx.gemm_tuner.force(None);
        }
    }
    gpu.take_error().unwrap();
}

/// A convolution, its relu (or leaky relu) and a 2×2 max pool run as one
/// pooled direct kernel on a CPU-like adapter, with no pool pass: its
/// pooled output and arg-maxes are bit for bit those of the convolution
/// and the pool run apart, and match the CPU reference. Shapes: LeNet-5's
/// two (6 channels and rows of two segments; 16 channels in two blocks),
/// odd output sizes (the last row and column in no window), more than 8
/// channels not a multiple of 8, a 1×1 and a 7×7 window.
#[test]
fn a_convolution_its_activation_and_a_max_pool_run_as_one_pass() {
    use wgcnn::backend::Backend;
    use wgcnn::geometry::{Activation, Conv2dGeometry, Pool2dGeometry};
    use wgcnn::rng::SplitMix64;
    // A context of its own, for a profile of these kernels alone.
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    let mut rng = SplitMix64::new(77);
    let leaky = Activation::LeakyRelu {
        negative_slope: 0.1,
    };
    for (g, act) in [
        (
            Conv2dGeometry::new(3, 1, 28, 28, 6, 5, 5, 1, 2).unwrap(),
            Activation::Relu,
        ),
        (
            Conv2dGeometry::new(3, 6, 14, 14, 16, 5, 5, 1, 0).unwrap(),
            Activation::Relu,
        ),
        (
            Conv2dGeometry::new(2, 3, 9, 11, 10, 3, 3, 1, 1).unwrap(),
            leaky,
        ),
        (
            Conv2dGeometry::new(2, 2, 7, 6, 9, 1, 1, 1, 0).unwrap(),
            Activation::Relu,
        ),
        (
            Conv2dGeometry::new(1, 2, 12, 21, 4, 7, 7, 1, 3).unwrap(),
            leaky,
        ),
    ] {
        let [x, w, b, _] = common::random_conv_tensors(&gpu, &g, &mut rng);
        let [n, c, h, wd] = g.output_shape();
        let pool = Pool2dGeometry::new(n, c, h, wd, 2, 2, 0).unwrap();
        let (pool_passes, (fused_y, fused_argmax)) = common::dispatches_of(&gpu, "pool::", || {
            gpu.conv2d_activated_maxpool(&x, &w, &b, &g, act, &pool)
        });
        assert_eq!(pool_passes, 0, "{g:?}: the pool ran a pass of its own");
        let (pool_passes, (y, argmax)) = common::dispatches_of(&gpu, "pool::", || {
            gpu.maxpool_forward(&gpu.conv2d_forward_activated(&x, &w, &b, &g, act), &pool)
        });
        assert_eq!(pool_passes, 1, "{g:?}: the convolution and the pool apart");
        let bits = |t| -> Vec<u32> { gpu.download(t).data.iter().map(|v| v.to_bits()).collect() };
        assert_eq!(bits(&fused_y), bits(&y), "pooled y of {g:?}");
        let indices = |t: &wgcnn::gpu::GpuIndices| gpu.ctx.read_back(&t.buffer, 4 * t.len as u64);
        assert_eq!(indices(&fused_argmax), indices(&argmax), "arg-max of {g:?}");
        let [hx, hw, hb] = [&x, &w, &b].map(|t| gpu.download(t));
        let conv = wgcnn::cpu::conv2d_forward(&hx, &hw, &hb, &g);
        let activated = wgcnn::cpu::activation_forward(act, &conv);
        let (y_ref, _) = wgcnn::cpu::maxpool_forward(&activated, &pool);
        common::assert_close(&gpu.download(&fused_y).data, &y_ref.data, "pooled y");
    }
    gpu.take_error().unwrap();
}

//! Model files (TOML) and the built-in architectures: round trips, a handwritten
//! file, errors that name the problem, and the shapes the built-ins infer.

use std::path::{Path, PathBuf};

use wgcnn::Error;
use wgcnn::geometry::Activation;
use wgcnn::nn::{BUILTIN_MODELS, LayerSpec, ModelSpec, builtin, default_model_name};

const RELU: LayerSpec = LayerSpec::Activation(Activation::Relu);

/// The message of a `from_toml` failure on `text`.
fn error(text: &str) -> String {
    match ModelSpec::from_toml(text) {
        Ok(spec) => panic!("expected an error, parsed {spec:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "error message does not mention {part:?}:\n{message}"
        );
    }
}

/// A valid model with `layer` (a `[[layers]]` table body) spliced in before a
/// final flatten and linear layer.
fn with_layer(layer: &str) -> String {
    format!(
        "input = [1, 28, 28]\n\n[[layers]]\n{layer}\n\n[[layers]]\ntype = \"flatten\"\n\n\
         [[layers]]\ntype = \"linear\"\nout_features = 10\n"
    )
}

#[test]
fn every_builtin_round_trips_through_toml() {
    for input in [[1, 28, 28], [3, 32, 32]] {
        for name in BUILTIN_MODELS {
            let spec = builtin(name, input, 10).unwrap();
            let text = spec.to_toml();
            let back = ModelSpec::from_toml(&text)
                .unwrap_or_else(|e| panic!("{name} on {input:?}: {e}\n{text}"));
            assert_eq!(back, spec, "{name} on {input:?}:\n{text}");
            assert_eq!(back.to_toml(), text, "{name}: writing is stable");
        }
    }
}

#[test]
fn every_layer_kind_and_awkward_floats_round_trip() {
    let spec = ModelSpec {
        input: vec![3, 17, 13],
        layers: vec![
            LayerSpec::Conv2d {
                out_channels: 5,
                kernel: 3,
                stride: 2,
                padding: 1,
            },
            LayerSpec::BatchNorm,
            LayerSpec::Activation(Activation::LeakyRelu {
                negative_slope: 0.01,
            }),
            LayerSpec::AvgPool2d {
                kernel: 3,
                stride: 1,
                padding: 1,
            },
            LayerSpec::Activation(Activation::Sigmoid),
            LayerSpec::MaxPool2d {
                kernel: 2,
                stride: 1,
                padding: 0,
            },
            LayerSpec::Activation(Activation::Tanh),
            LayerSpec::Dropout { p: 0.1 },
            LayerSpec::Flatten,
            LayerSpec::Linear { out_features: 7 },
            LayerSpec::Activation(Activation::LeakyRelu {
                negative_slope: -0.3,
            }),
            LayerSpec::Dropout { p: 1.0 / 3.0 },
            LayerSpec::Linear { out_features: 4 },
        ],
    };
    let text = spec.to_toml();
    assert_eq!(ModelSpec::from_toml(&text).unwrap(), spec, "\n{text}");
    // Floats are written in their shortest form, not as widened f32 noise.
    assert_mentions(&text, &["negative_slope = 0.01\n", "p = 0.1\n", "= -0.3\n"]);

    // Every f32 dropout probability survives exactly, not just the short ones.
    for bits in (0.0f32.to_bits()..1.0f32.to_bits()).step_by(999_983) {
        let p = f32::from_bits(bits);
        let spec = ModelSpec {
            input: vec![4],
            layers: vec![
                LayerSpec::Dropout { p },
                LayerSpec::Linear { out_features: 2 },
            ],
        };
        assert_eq!(ModelSpec::from_toml(&spec.to_toml()).unwrap(), spec);
    }
}

#[test]
fn handwritten_file_parses_with_defaults() {
    let text = r#"
# A small CNN for 28x28 grey images.
input = [1, 28, 28]

[[layers]]
type = "conv2d"
out_channels = 32
kernel = 3
padding = 1            # stride defaults to 1

[[layers]]
type = "batchnorm"

[[layers]]
type = "leaky_relu"    # negative_slope defaults to 0.01

[[layers]]
type = "maxpool2d"
kernel = 2             # stride defaults to the kernel

[[layers]]
type = "avgpool2d"
kernel = 3
stride = 1
padding = 1

[[layers]]
type = "flatten"

[[layers]]
type = "dropout"
p = 0                  # an integer is a number too

[[layers]]
type = "linear"
out_features = 64

[[layers]]
type = "leaky_relu"
negative_slope = 0.2

[[layers]]
type = "sigmoid"

[[layers]]
type = "tanh"

[[layers]]
type = "relu"

[[layers]]
type = "dropout"
p = 0.5

[[layers]]
type = "linear"
out_features = 10
"#;
    let spec = ModelSpec::from_toml(text).unwrap();
    let expected = ModelSpec {
        input: vec![1, 28, 28],
        layers: vec![
            LayerSpec::Conv2d {
                out_channels: 32,
                kernel: 3,
                stride: 1,
                padding: 1,
            },
            LayerSpec::BatchNorm,
            LayerSpec::Activation(Activation::LeakyRelu {
                negative_slope: 0.01,
            }),
            LayerSpec::MaxPool2d {
                kernel: 2,
                stride: 2,
                padding: 0,
            },
            LayerSpec::AvgPool2d {
                kernel: 3,
                stride: 1,
                padding: 1,
            },
            LayerSpec::Flatten,
            LayerSpec::Dropout { p: 0.0 },
            LayerSpec::Linear { out_features: 64 },
            LayerSpec::Activation(Activation::LeakyRelu {
                negative_slope: 0.2,
            }),
            LayerSpec::Activation(Activation::Sigmoid),
            LayerSpec::Activation(Activation::Tanh),
            RELU,
            LayerSpec::Dropout { p: 0.5 },
            LayerSpec::Linear { out_features: 10 },
        ],
    };
    assert_eq!(spec, expected);
    assert_eq!(spec.classes().unwrap(), 10);
}

#[test]
fn flat_input_file() {
    let spec = ModelSpec::from_toml(
        "input = [784]\n[[layers]]\ntype = \"linear\"\nout_features = 32\n\
         [[layers]]\ntype = \"batchnorm\"\n[[layers]]\ntype = \"relu\"\n\
         [[layers]]\ntype = \"linear\"\nout_features = 10\n",
    )
    .unwrap();
    assert_eq!(spec.input, vec![784]);
    assert_eq!(spec.shapes(8).unwrap().last().unwrap(), &vec![8, 10]);
}

#[test]
fn unknown_layer_type_is_named() {
    let message = error(&with_layer(
        "type = \"conv3d\"\nout_channels = 4\nkernel = 3",
    ));
    assert_mentions(
        &message,
        &["layer 0 (conv3d)", "line 3", "unknown variant `conv3d`"],
    );
    assert_mentions(&message, &["conv2d", "maxpool2d", "leaky_relu"]);
}

#[test]
fn unknown_key_is_named() {
    let message = error(&with_layer(
        "type = \"conv2d\"\nout_channels = 4\nkernal = 3",
    ));
    assert_mentions(
        &message,
        &["layer 0 (conv2d)", "unknown field `kernal`", "`kernel`"],
    );
    // A settingless layer rejects stray keys too.
    let message = error(&with_layer("type = \"relu\"\nnegative_slope = 0.1"));
    assert_mentions(
        &message,
        &["layer 0 (relu)", "unknown field `negative_slope`"],
    );
    // And so does the top level.
    let message = error(&format!(
        "inputs = [1, 2, 3]\n{}",
        with_layer("type = \"relu\"")
    ));
    assert_mentions(&message, &["unknown field `inputs`", "line 1"]);
}

#[test]
fn error_names_the_failing_layer_not_the_first() {
    let text = "input = [1, 28, 28]\n\n[[layers]]\ntype = \"flatten\"\n\n\
                [[layers]]\ntype = \"linear\"\nout_featurs = 10\n";
    let message = error(text);
    assert_mentions(&message, &["layer 1 (linear)", "line 6", "out_featurs"]);
}

#[test]
fn missing_required_setting_is_named() {
    let message = error(&with_layer("type = \"conv2d\"\nkernel = 3"));
    assert_mentions(
        &message,
        &["layer 0 (conv2d)", "missing field `out_channels`"],
    );
    let message = error(&with_layer("out_channels = 4"));
    assert_mentions(&message, &["layer 0", "missing field `type`"]);
    let message = error("input = [1, 28, 28]\n");
    assert_mentions(&message, &["missing field `layers`"]);
}

#[test]
fn negative_and_mistyped_numbers_are_named() {
    let message = error(&with_layer(
        "type = \"conv2d\"\nout_channels = 4\nkernel = -3",
    ));
    assert_mentions(
        &message,
        &[
            "layer 0 (conv2d)",
            "line 6",
            "kernel = -3",
            "non-negative integer",
        ],
    );
    let message = error(&with_layer(
        "type = \"maxpool2d\"\nkernel = 2\nstride = 1.5",
    ));
    assert_mentions(
        &message,
        &[
            "layer 0 (maxpool2d)",
            "stride = 1.5",
            "non-negative integer",
        ],
    );
    let message = error(&with_layer("type = \"dropout\"\np = \"half\""));
    assert_mentions(&message, &["layer 0 (dropout)", "p = \"half\"", "a number"]);
    let message = error(&with_layer("type = \"relu\"").replace("[1, 28, 28]", "[1, -28, 28]"));
    assert_mentions(&message, &["line 1", "-28", "non-negative integer"]);
}

#[test]
fn dropout_out_of_range_is_named() {
    let message = error(&with_layer("type = \"dropout\"\np = 1.5"));
    assert_mentions(&message, &["layer 0 (dropout)", "p = 1.5", "[0, 1)"]);
}

#[test]
fn kernel_larger_than_input_names_the_layer() {
    let text = "input = [1, 8, 8]\n[[layers]]\ntype = \"conv2d\"\nout_channels = 4\nkernel = 3\n\
                [[layers]]\ntype = \"maxpool2d\"\nkernel = 2\n\
                [[layers]]\ntype = \"conv2d\"\nout_channels = 4\nkernel = 5\n\
                [[layers]]\ntype = \"flatten\"\n\
                [[layers]]\ntype = \"linear\"\nout_features = 10\n";
    let err = ModelSpec::from_toml(text).unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err:?}");
    assert_mentions(
        &err.to_string(),
        &["layer 2 (conv2d)", "kernel 5", "larger"],
    );
}

#[test]
fn model_must_end_in_logits() {
    let err = ModelSpec::from_toml(
        "input = [1, 28, 28]\n[[layers]]\ntype = \"conv2d\"\nout_channels = 4\nkernel = 3\n",
    )
    .unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err:?}");
    assert_mentions(
        &err.to_string(),
        &["must end in (N, classes)", "[4, 26, 26]"],
    );
    assert!(!err.to_string().contains("Some("), "{err}");
}

#[test]
fn empty_layers_and_bad_input_are_errors() {
    let message = error("input = [1, 28, 28]\nlayers = []\n");
    assert_mentions(&message, &["no layers"]);
    let message = error(&with_layer("type = \"relu\"").replace("[1, 28, 28]", "[28, 28]"));
    assert_mentions(&message, &["[28, 28]", "[C, H, W]", "[D]"]);
    let message = error(&with_layer("type = \"relu\"").replace("[1, 28, 28]", "[0, 28, 28]"));
    assert_mentions(&message, &["no zero dimension"]);
}

#[test]
fn malformed_toml_gives_the_line() {
    let text = "input = [1, 28, 28]\n\n[[layers]]\ntype = \"relu\n\n[[layers]]\n\
                type = \"linear\"\nout_features = 10\n";
    let message = error(text);
    assert_mentions(&message, &["line 4"]);
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgcnn-model-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn load_errors_name_the_file() {
    let missing = Path::new("/nonexistent/wgcnn/model.toml");
    let err = ModelSpec::load(missing).unwrap_err();
    assert!(matches!(err, Error::File { .. }), "{err:?}");
    assert_mentions(
        &err.to_string(),
        &["/nonexistent/wgcnn/model.toml", "cannot read"],
    );

    let path = temp_file("bad.toml", "input = [1, 28, 28]\n[[layers]\n");
    let err = ModelSpec::load(&path).unwrap_err();
    assert!(matches!(err, Error::File { .. }), "{err:?}");
    assert_mentions(&err.to_string(), &[&path.display().to_string(), "line 2"]);

    let path = temp_file("typo.toml", &with_layer("type = \"relu\"\nslope = 1"));
    let err = ModelSpec::load(&path).unwrap_err();
    assert_mentions(&err.to_string(), &["typo.toml", "layer 0 (relu)", "slope"]);

    let spec = builtin("convnet", [1, 28, 28], 10).unwrap();
    let path = temp_file("good.toml", &spec.to_toml());
    assert_eq!(ModelSpec::load(&path).unwrap(), spec);
}

#[test]
fn example_files_are_the_builtins() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models");
    for name in ["lenet5", "fashion-cnn"] {
        let expected = builtin(name, [1, 28, 28], 10).unwrap();
        let path = dir.join(format!("{name}.toml"));
        if std::env::var("WGCNN_WRITE_MODEL_EXAMPLES").is_ok_and(|v| v == "1") {
            let header = format!(
                "# The built-in `{name}` model for 1x28x28 input and 10 classes,\n\
                 # written by ModelSpec::to_toml. Format: see src/nn/file.rs.\n\n"
            );
            std::fs::write(&path, header + &expected.to_toml()).unwrap();
        }
        let spec = ModelSpec::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            spec,
            expected,
            "{} differs from builtin({name:?})",
            path.display()
        );
    }
}

#[test]
fn unknown_builtin_lists_the_names() {
    let message = builtin("resnet50", [1, 28, 28], 10)
        .unwrap_err()
        .to_string();
    assert_mentions(&message, &["resnet50"]);
    assert_mentions(&message, &BUILTIN_MODELS);
}

#[test]
fn builtin_too_small_input_names_the_layer() {
    let message = builtin("lenet5", [1, 8, 8], 10).unwrap_err().to_string();
    assert_mentions(&message, &["lenet5", "1x8x8", "layer 3 (conv2d)"]);
}

#[test]
fn default_models() {
    assert_eq!(default_model_name([1, 28, 28]), "fashion-cnn");
    assert_eq!(default_model_name([3, 32, 32]), "cifar-cnn");
    for input in [[1, 28, 28], [3, 32, 32]] {
        assert!(BUILTIN_MODELS.contains(&default_model_name(input)));
    }
}

/// The shape the flatten layer produces (per example).
fn flatten_size(spec: &ModelSpec) -> usize {
    let shapes = spec.shapes(1).unwrap();
    let i = spec
        .layers
        .iter()
        .position(|l| *l == LayerSpec::Flatten)
        .expect("a flatten layer");
    shapes[i + 1][1]
}

#[test]
fn builtin_shapes() {
    let lenet = builtin("lenet5", [1, 28, 28], 10).unwrap();
    let shapes = lenet.shapes(32).unwrap();
    assert_eq!(shapes.last().unwrap(), &vec![32, 10]);
    assert_eq!(flatten_size(&lenet), 400);
    assert_eq!(lenet.classes().unwrap(), 10);

    let lenet = builtin("lenet5", [3, 32, 32], 10).unwrap();
    assert_eq!(flatten_size(&lenet), 576);
    assert_eq!(lenet.shapes(4).unwrap().last().unwrap(), &vec![4, 10]);

    for (name, input, flat) in [
        ("mlp", [1, 28, 28], 784),
        ("convnet", [1, 28, 28], 32 * 14 * 14),
        ("fashion-cnn", [1, 28, 28], 64 * 7 * 7),
        ("cifar-cnn", [3, 32, 32], 64 * 8 * 8),
    ] {
        let spec = builtin(name, input, 7).unwrap();
        assert_eq!(flatten_size(&spec), flat, "{name}");
        assert_eq!(spec.classes().unwrap(), 7, "{name}");
        spec.check_trainable(2).unwrap();
    }
}

#[test]
fn cifar_cnn_is_the_pytorch_comparison_net() {
    let conv = |c| LayerSpec::Conv2d {
        out_channels: c,
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let pool = LayerSpec::MaxPool2d {
        kernel: 2,
        stride: 2,
        padding: 0,
    };
    let bn = LayerSpec::BatchNorm;
    let expected = vec![
        conv(32),
        bn.clone(),
        RELU,
        conv(32),
        bn.clone(),
        RELU,
        pool.clone(),
        conv(64),
        bn.clone(),
        RELU,
        conv(64),
        bn,
        RELU,
        pool,
        LayerSpec::Flatten,
        LayerSpec::Linear { out_features: 256 },
        RELU,
        LayerSpec::Dropout { p: 0.5 },
        LayerSpec::Linear { out_features: 10 },
    ];
    assert_eq!(
        builtin("cifar-cnn", [3, 32, 32], 10).unwrap().layers,
        expected
    );
}

/// Trainable parameters (weights and biases, not batchnorm running statistics).
fn parameter_count(spec: &ModelSpec) -> usize {
    wgcnn::nn::init_parameters(spec, 0)
        .unwrap()
        .iter()
        .filter(|(name, _)| !name.contains("running_"))
        .map(|(_, t)| t.shape.iter().product::<usize>())
        .sum()
}

#[test]
fn builtin_parameter_counts() {
    for (name, input, count) in [
        ("mlp", [1, 28, 28], 204_042),
        ("lenet5", [1, 28, 28], 61_706),
        ("lenet5", [3, 32, 32], 83_126),
        ("convnet", [1, 28, 28], 804_554),
        ("fashion-cnn", [1, 28, 28], 871_530),
        ("cifar-cnn", [3, 32, 32], 1_117_354),
    ] {
        let spec = builtin(name, input, 10).unwrap();
        assert_eq!(parameter_count(&spec), count, "{name} on {input:?}");
    }
}

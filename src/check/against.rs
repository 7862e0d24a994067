//! `wgcnn check --against DIR`: test cases computed by another implementation
//! (PyTorch, through `tests/pytorch/make_fixtures.py`), run on the GPU and on
//! the CPU paths and compared with the expected tensors they carry.
//!
//! # Fixture format
//!
//! One case per safetensors file. The header's `__metadata__` holds `op` and
//! the op's settings as strings (other keys are ignored); the tensors hold the
//! inputs and the expected outputs, floats as `F32`, labels as `I64` or `I32`:
//!
//! | `op` | settings | inputs | expected |
//! |---|---|---|---|
//! | `conv2d` | `stride`, `padding` | `x` (N,C,H,W), `weight` (O,C,kh,kw), `bias` (O), `grad_y` | `y`, `grad_x`, `grad_weight`, `grad_bias` |
//! | `linear` | | `x` (N,I), `weight` (O,I), `bias` (O), `grad_y` | `y`, `grad_x`, `grad_weight`, `grad_bias` |
//! | `relu`, `sigmoid`, `tanh` | | `x`, `grad_y` | `y`, `grad_x` |
//! | `leaky_relu` | `negative_slope` | `x`, `grad_y` | `y`, `grad_x` |
//! | `maxpool2d`, `avgpool2d` | `kernel`, `stride`, `padding` | `x` (N,C,H,W), `grad_y` | `y`, `grad_x` |
//! | `batchnorm1d`, `batchnorm2d` | `eps`, `momentum`, `training` (`1`/`0`) | `x` (N,D) or (N,C,H,W), `weight`, `bias`, `running_mean`, `running_var`, `grad_y` | `y`, `grad_x`; in training also `grad_weight`, `grad_bias`, `running_mean_out`, `running_var_out` (in evaluation these four are optional) |
//! | `softmax_cross_entropy` | | `logits` (N,K), `labels` (N) | `loss` (scalar or (1)), `grad_logits` (of the mean loss) |
//!
//! Reading is strict: an unknown op, a missing or unexpected tensor, a float
//! tensor that is not `F32`, a shape that does not fit the op, a setting that
//! is missing or does not parse, or a label outside `0..K` is an error naming
//! the file.
//!
//! # Tolerance
//!
//! The same rule as `wgcnn check`: an element passes when
//! `|got − expected| ≤ ATOL + RTOL · mag` ([`super::ATOL`], [`super::RTOL`]),
//! with `mag` the sum of the magnitudes of the terms that produce it, computed
//! by the CPU reference on absolute values (conv, linear, pooling), or from
//! the op's formula (batchnorm, activations, softmax). The PyTorch fixtures
//! hold float64 results rounded to float32, so the error measured is wgcnn's
//! own float32 rounding (PyTorch's summation order does not enter). The slack
//! is about a thousand roundings of the summed magnitudes: on the committed
//! fixtures honest results use at most 1% of it on every path, while a wrong
//! formula, a wrong setting or one value moved by 1% of its tensor's scale
//! fails (tests/against.rs alters fixtures to check that).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use safetensors::{Dtype, SafeTensors};

use super::{Compared, compare_elements};
use crate::backend::{Backend, BatchNormSaved};
use crate::cpu;
use crate::error::{Error, Result};
use crate::geometry::{
    Activation, BatchNormLayout, BatchNormSettings, Conv2dGeometry, Pool2dGeometry,
};
use crate::tensor::{HostTensor, shape_string};

/// The ops a fixture may name in its `op` metadata.
pub const FIXTURE_OPS: [&str; 11] = [
    "conv2d",
    "linear",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "maxpool2d",
    "avgpool2d",
    "batchnorm1d",
    "batchnorm2d",
    "softmax_cross_entropy",
];

/// An op with its validated settings and inputs.
#[derive(Clone, Debug)]
enum Case {
    Conv2d {
        g: Conv2dGeometry,
        x: HostTensor<f32>,
        weight: HostTensor<f32>,
        bias: HostTensor<f32>,
        grad_y: HostTensor<f32>,
    },
    Linear {
        x: HostTensor<f32>,
        weight: HostTensor<f32>,
        bias: HostTensor<f32>,
        grad_y: HostTensor<f32>,
    },
    Activation {
        act: Activation,
        x: HostTensor<f32>,
        grad_y: HostTensor<f32>,
    },
    MaxPool2d {
        g: Pool2dGeometry,
        x: HostTensor<f32>,
        grad_y: HostTensor<f32>,
    },
    AvgPool2d {
        g: Pool2dGeometry,
        x: HostTensor<f32>,
        grad_y: HostTensor<f32>,
    },
    BatchNorm {
        settings: BatchNormSettings,
        training: bool,
        layout: BatchNormLayout,
        x: HostTensor<f32>,
        weight: HostTensor<f32>,
        bias: HostTensor<f32>,
        running_mean: HostTensor<f32>,
        running_var: HostTensor<f32>,
        grad_y: HostTensor<f32>,
    },
    SoftmaxCrossEntropy {
        logits: HostTensor<f32>,
        labels: Vec<u32>,
    },
}

/// One test case read from a fixture file: the op, its inputs and the
/// expected outputs, all validated against each other.
#[derive(Clone, Debug)]
pub struct Fixture {
    /// The file it was read from.
    pub path: PathBuf,
    /// The file's name without its directory, as the report prints it.
    pub name: String,
    /// The op, one of [`FIXTURE_OPS`].
    pub op: &'static str,
    /// Shapes and settings, e.g. `x=2x3x7x9 w=4x3x3x3 s=1 p=1`.
    pub shape: String,
    case: Case,
    /// Expected outputs by name (`y`, `grad_x`, …), shapes checked.
    expected: BTreeMap<String, HostTensor<f32>>,
}

/// How one path (GPU, CPU reference, CPU fast path) did on one fixture.
#[derive(Clone, Debug)]
pub struct PathOutcome {
    /// Largest `|got − expected|` over every expected tensor.
    pub max_abs: f64,
    /// Largest `|got − expected| / mag` over every expected tensor.
    pub max_rel: f64,
    /// Whether every element of every expected tensor is within tolerance.
    pub passed: bool,
    /// The element furthest out of tolerance: tensor, index, both values.
    pub worst: String,
}

/// A fixture file opened for reading, with the names of the tensors used so
/// far (anything left over is an unexpected tensor).
struct Reader<'a> {
    path: &'a Path,
    tensors: SafeTensors<'a>,
    metadata: HashMap<String, String>,
    used: BTreeSet<String>,
}

impl<'a> Reader<'a> {
    fn open(path: &'a Path, bytes: &'a [u8]) -> Result<Self> {
        let bad = |e: safetensors::SafeTensorError| {
            Error::file(path, format!("not a readable safetensors file: {e}"))
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(bad)?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let tensors = SafeTensors::deserialize(bytes).map_err(bad)?;
        Ok(Self {
            path,
            tensors,
            metadata,
            used: BTreeSet::new(),
        })
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::file(self.path, message)
    }

    /// A setting from the metadata, parsed.
    fn setting<T: FromStr>(&self, op: &str, key: &str) -> Result<T>
    where
        T::Err: Display,
    {
        let text = self.metadata.get(key).ok_or_else(|| {
            self.error(format!(
                "op {op} needs the setting {key:?} in the metadata, which has none"
            ))
        })?;
        text.trim().parse().map_err(|e| {
            self.error(format!(
                "setting {key} = {text:?} does not parse as a {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.names().contains(&name)
    }

    /// A float tensor, which must be present and `F32`.
    fn float(&mut self, op: &str, name: &str) -> Result<HostTensor<f32>> {
        let view = self.tensors.tensor(name).map_err(|_| {
            self.error(format!(
                "op {op} needs the tensor {name:?}, which is missing (the file has: {})",
                self.tensors.names().join(", ")
            ))
        })?;
        if view.dtype() != Dtype::F32 {
            return Err(self.error(format!(
                "tensor {name} is {:?}; float tensors must be F32",
                view.dtype()
            )));
        }
        self.used.insert(name.to_string());
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(HostTensor::new(view.shape(), data))
    }

    /// Integer labels (`I64` or `I32`), each checked to lie in `0..classes`.
    fn labels(&mut self, op: &str, name: &str, classes: usize) -> Result<(Vec<usize>, Vec<u32>)> {
        let view = self.tensors.tensor(name).map_err(|_| {
            self.error(format!(
                "op {op} needs the tensor {name:?}, which is missing (the file has: {})",
                self.tensors.names().join(", ")
            ))
        })?;
        let values: Vec<i64> = match view.dtype() {
            Dtype::I64 => view
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
            Dtype::I32 => view
                .data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64)
                .collect(),
            other => {
                return Err(self.error(format!(
                    "tensor {name} is {other:?}; labels must be I64 or I32"
                )));
            }
        };
        self.used.insert(name.to_string());
        let labels = values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                u32::try_from(v)
                    .ok()
                    .filter(|&l| (l as usize) < classes)
                    .ok_or_else(|| {
                        self.error(format!(
                            "{name}[{i}] = {v} is not a class index in 0..{classes}"
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        Ok((view.shape().to_vec(), labels))
    }

    /// Fails unless `t` has `shape`.
    fn expect_shape(&self, name: &str, t: &HostTensor<f32>, shape: &[usize]) -> Result<()> {
        if t.shape == shape {
            Ok(())
        } else {
            Err(self.error(format!(
                "tensor {name} has shape [{}], expected [{}]",
                join(&t.shape),
                join(shape)
            )))
        }
    }

    /// Reads the expected outputs `names` (which must be present) and
    /// `optional` ones (if present), checking each one's shape.
    fn expected(
        &mut self,
        op: &str,
        names: &[(&str, &[usize])],
        optional: &[(&str, &[usize])],
    ) -> Result<BTreeMap<String, HostTensor<f32>>> {
        let mut out = BTreeMap::new();
        let present: Vec<_> = optional.iter().filter(|(n, _)| self.has(n)).collect();
        for &(name, shape) in names.iter().chain(present) {
            let t = self.float(op, name)?;
            self.expect_shape(name, &t, shape)?;
            out.insert(name.to_string(), t);
        }
        Ok(out)
    }

    /// Fails when the file holds tensors the op does not use.
    fn finish(&self) -> Result<()> {
        let extra: Vec<&str> = self
            .tensors
            .names()
            .into_iter()
            .filter(|n| !self.used.contains(*n))
            .collect();
        if extra.is_empty() {
            Ok(())
        } else {
            let mut extra = extra;
            extra.sort_unstable();
            Err(self.error(format!(
                "unexpected tensor(s) {} for this op",
                extra.join(", ")
            )))
        }
    }
}

fn join(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn rank4(r: &Reader, name: &str, t: &HostTensor<f32>) -> Result<[usize; 4]> {
    match t.shape[..] {
        [a, b, c, d] => Ok([a, b, c, d]),
        _ => Err(r.error(format!(
            "tensor {name} has shape [{}], expected 4 dimensions (N, C, H, W)",
            join(&t.shape)
        ))),
    }
}

fn rank2(r: &Reader, name: &str, t: &HostTensor<f32>) -> Result<[usize; 2]> {
    match t.shape[..] {
        [a, b] => Ok([a, b]),
        _ => Err(r.error(format!(
            "tensor {name} has shape [{}], expected 2 dimensions",
            join(&t.shape)
        ))),
    }
}

impl Fixture {
    /// Reads and validates one fixture file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::file(path, format!("cannot read fixture: {e}")))?;
        let mut r = Reader::open(path, &bytes)?;
        let op_name = r
            .metadata
            .get("op")
            .ok_or_else(|| r.error("no \"op\" in the safetensors metadata"))?
            .clone();
        let op = FIXTURE_OPS
            .iter()
            .copied()
            .find(|o| *o == op_name)
            .ok_or_else(|| {
                r.error(format!(
                    "unknown op {op_name:?}; fixture ops are {}",
                    FIXTURE_OPS.join(", ")
                ))
            })?;
        let at_file = |e: Error| match e {
            Error::File { .. } => e,
            other => Error::file(path, other.to_string()),
        };
        let (case, shape, expected) = read_case(&mut r, op).map_err(at_file)?;
        r.finish()?;
        Ok(Self {
            path: path.to_path_buf(),
            name: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
            op,
            shape,
            case,
            expected,
        })
    }

    /// Names of the expected tensors this fixture checks, in order.
    pub fn expected_names(&self) -> Vec<&str> {
        self.expected.keys().map(String::as_str).collect()
    }

    /// Runs the case on `backend` and compares every expected tensor.
    pub fn check<B: Backend>(&self, backend: &B) -> PathOutcome {
        let outputs = run_case(backend, &self.case);
        if let Err(e) = backend.take_error() {
            return PathOutcome {
                max_abs: f64::INFINITY,
                max_rel: f64::INFINITY,
                passed: false,
                worst: format!("the device reported an error: {e}"),
            };
        }
        let mags = magnitudes(&self.case);
        let mut outcome = PathOutcome {
            max_abs: 0.0,
            max_rel: 0.0,
            passed: true,
            worst: String::new(),
        };
        let mut worst_ratio = -1.0;
        for (name, expected) in &self.expected {
            let got = outputs.get(name.as_str());
            let mag = mags.get(name.as_str());
            let c = match (got, mag) {
                (Some(got), Some(mag)) => compare(name, got, expected, mag),
                _ => Compared {
                    max_abs: f64::INFINITY,
                    max_rel: f64::INFINITY,
                    max_ratio: f64::INFINITY,
                    worst: format!("{name}: the op produced no such output"),
                },
            };
            outcome.max_abs = outcome.max_abs.max(c.max_abs);
            outcome.max_rel = outcome.max_rel.max(c.max_rel);
            outcome.passed &= c.max_ratio <= 1.0;
            if c.max_ratio > worst_ratio {
                worst_ratio = c.max_ratio;
                outcome.worst = c.worst;
            }
        }
        outcome
    }
}

type Read = (Case, String, BTreeMap<String, HostTensor<f32>>);

fn read_case(r: &mut Reader, op: &'static str) -> Result<Read> {
    match op {
        "conv2d" => {
            let stride: usize = r.setting(op, "stride")?;
            let padding: usize = r.setting(op, "padding")?;
            let x = r.float(op, "x")?;
            let weight = r.float(op, "weight")?;
            let bias = r.float(op, "bias")?;
            let [n, c, h, w] = rank4(r, "x", &x)?;
            let [o, wc, kh, kw] = rank4(r, "weight", &weight)?;
            if wc != c {
                return Err(r.error(format!(
                    "weight has {wc} input channels but x has {c} (weight must be (O, C, kh, kw))"
                )));
            }
            r.expect_shape("bias", &bias, &[o])?;
            let g = Conv2dGeometry::new(n, c, h, w, o, kh, kw, stride, padding)?;
            let grad_y = r.float(op, "grad_y")?;
            r.expect_shape("grad_y", &grad_y, &g.output_shape())?;
            let expected = r.expected(
                op,
                &[
                    ("y", &g.output_shape()),
                    ("grad_x", &g.input_shape()),
                    ("grad_weight", &g.weight_shape()),
                    ("grad_bias", &[o]),
                ],
                &[],
            )?;
            let shape = format!(
                "x={} w={} s={stride} p={padding}",
                shape_string(&x.shape),
                shape_string(&weight.shape)
            );
            let case = Case::Conv2d {
                g,
                x,
                weight,
                bias,
                grad_y,
            };
            Ok((case, shape, expected))
        }
        "linear" => {
            let x = r.float(op, "x")?;
            let weight = r.float(op, "weight")?;
            let bias = r.float(op, "bias")?;
            let [n, i] = rank2(r, "x", &x)?;
            let [o, wi] = rank2(r, "weight", &weight)?;
            if wi != i || n == 0 || i == 0 || o == 0 {
                return Err(r.error(format!(
                    "x [{n}, {i}] and weight [{o}, {wi}] do not fit: weight must be \
                     (out_features, in_features) with in_features = x's columns, none empty"
                )));
            }
            r.expect_shape("bias", &bias, &[o])?;
            let grad_y = r.float(op, "grad_y")?;
            r.expect_shape("grad_y", &grad_y, &[n, o])?;
            let expected = r.expected(
                op,
                &[
                    ("y", &[n, o]),
                    ("grad_x", &[n, i]),
                    ("grad_weight", &[o, i]),
                    ("grad_bias", &[o]),
                ],
                &[],
            )?;
            let shape = format!("x={n}x{i} w={o}x{i}");
            let case = Case::Linear {
                x,
                weight,
                bias,
                grad_y,
            };
            Ok((case, shape, expected))
        }
        "relu" | "leaky_relu" | "sigmoid" | "tanh" => {
            let act = match op {
                "relu" => Activation::Relu,
                "sigmoid" => Activation::Sigmoid,
                "tanh" => Activation::Tanh,
                _ => {
                    let negative_slope: f32 = r.setting(op, "negative_slope")?;
                    if !negative_slope.is_finite() {
                        return Err(r.error(format!(
                            "setting negative_slope = {negative_slope} is not finite"
                        )));
                    }
                    Activation::LeakyRelu { negative_slope }
                }
            };
            let x = r.float(op, "x")?;
            if x.is_empty() {
                return Err(r.error("tensor x is empty"));
            }
            let grad_y = r.float(op, "grad_y")?;
            r.expect_shape("grad_y", &grad_y, &x.shape)?;
            let expected = r.expected(op, &[("y", &x.shape), ("grad_x", &x.shape)], &[])?;
            let shape = match act {
                Activation::LeakyRelu { negative_slope } => {
                    format!("x={} slope={negative_slope}", shape_string(&x.shape))
                }
                _ => format!("x={}", shape_string(&x.shape)),
            };
            Ok((Case::Activation { act, x, grad_y }, shape, expected))
        }
        "maxpool2d" | "avgpool2d" => {
            let kernel: usize = r.setting(op, "kernel")?;
            let stride: usize = r.setting(op, "stride")?;
            let padding: usize = r.setting(op, "padding")?;
            let x = r.float(op, "x")?;
            let [n, c, h, w] = rank4(r, "x", &x)?;
            let g = Pool2dGeometry::new(n, c, h, w, kernel, stride, padding)?;
            let grad_y = r.float(op, "grad_y")?;
            r.expect_shape("grad_y", &grad_y, &g.output_shape())?;
            let expected = r.expected(
                op,
                &[("y", &g.output_shape()), ("grad_x", &g.input_shape())],
                &[],
            )?;
            let shape = format!(
                "x={} k={kernel} s={stride} p={padding}",
                shape_string(&x.shape)
            );
            let case = if op == "maxpool2d" {
                Case::MaxPool2d { g, x, grad_y }
            } else {
                Case::AvgPool2d { g, x, grad_y }
            };
            Ok((case, shape, expected))
        }
        "batchnorm1d" | "batchnorm2d" => {
            let eps: f32 = r.setting(op, "eps")?;
            let momentum: f32 = r.setting(op, "momentum")?;
            let training = match r.setting::<String>(op, "training")?.as_str() {
                "1" => true,
                "0" => false,
                other => {
                    return Err(r.error(format!(
                        "setting training = {other:?} must be \"1\" or \"0\""
                    )));
                }
            };
            if !(eps.is_finite() && eps > 0.0 && momentum.is_finite()) {
                return Err(r.error(format!(
                    "settings eps = {eps} (must be positive) and momentum = {momentum} \
                     (must be finite) are out of range"
                )));
            }
            let x = r.float(op, "x")?;
            let rank = if op == "batchnorm1d" { 2 } else { 4 };
            if x.shape.len() != rank {
                return Err(r.error(format!(
                    "{op} takes x of {rank} dimensions ({}), got [{}]",
                    if rank == 2 { "N, D" } else { "N, C, H, W" },
                    join(&x.shape)
                )));
            }
            let layout = BatchNormLayout::of_shape(&x.shape)?;
            if training {
                layout.check_trainable()?;
            }
            let c = [layout.channels];
            let mut vector = |name: &str| -> Result<HostTensor<f32>> {
                let t = r.float(op, name)?;
                r.expect_shape(name, &t, &c)?;
                Ok(t)
            };
            let weight = vector("weight")?;
            let bias = vector("bias")?;
            let running_mean = vector("running_mean")?;
            let running_var = vector("running_var")?;
            let grad_y = r.float(op, "grad_y")?;
            r.expect_shape("grad_y", &grad_y, &x.shape)?;
            let statistics: [(&str, &[usize]); 4] = [
                ("grad_weight", &c),
                ("grad_bias", &c),
                ("running_mean_out", &c),
                ("running_var_out", &c),
            ];
            let required: [(&str, &[usize]); 2] = [("y", &x.shape), ("grad_x", &x.shape)];
            let expected = if training {
                let all: Vec<_> = required.iter().chain(&statistics).copied().collect();
                r.expected(op, &all, &[])?
            } else {
                r.expected(op, &required, &statistics)?
            };
            let shape = format!(
                "x={} {} eps={eps} m={momentum}",
                shape_string(&x.shape),
                if training { "train" } else { "eval" }
            );
            let case = Case::BatchNorm {
                settings: BatchNormSettings { eps, momentum },
                training,
                layout,
                x,
                weight,
                bias,
                running_mean,
                running_var,
                grad_y,
            };
            Ok((case, shape, expected))
        }
        "softmax_cross_entropy" => {
            let logits = r.float(op, "logits")?;
            let [n, k] = rank2(r, "logits", &logits)?;
            if n == 0 || k == 0 {
                return Err(r.error(format!("logits [{n}, {k}] is empty")));
            }
            let (label_shape, labels) = r.labels(op, "labels", k)?;
            if label_shape != [n] {
                return Err(r.error(format!(
                    "tensor labels has shape [{}], expected [{n}]",
                    join(&label_shape)
                )));
            }
            let mut loss = r.float(op, "loss")?;
            if loss.shape.is_empty() || loss.shape == [1] {
                loss.shape = vec![1];
            } else {
                return Err(r.error(format!(
                    "tensor loss has shape [{}], expected a scalar or [1]",
                    join(&loss.shape)
                )));
            }
            let mut expected = r.expected(op, &[("grad_logits", &[n, k])], &[])?;
            expected.insert("loss".into(), loss);
            let shape = format!("logits={n}x{k}");
            Ok((
                Case::SoftmaxCrossEntropy { logits, labels },
                shape,
                expected,
            ))
        }
        other => unreachable!("op {other} is in FIXTURE_OPS but has no reader"),
    }
}

/// Every output of the case on `b`, under the fixtures' names.
fn run_case<B: Backend>(b: &B, case: &Case) -> HashMap<&'static str, HostTensor<f32>> {
    let mut out = HashMap::new();
    match case {
        Case::Conv2d {
            g,
            x,
            weight,
            bias,
            grad_y,
        } => {
            let [x, w, bias, dy] = [x, weight, bias, grad_y].map(|t| b.upload(t));
            out.insert("y", b.download(&b.conv2d_forward(&x, &w, &bias, g)));
            let grads = b.conv2d_backward(&x, &w, &dy, g);
            out.insert("grad_x", b.download(&grads.dx));
            out.insert("grad_weight", b.download(&grads.dw));
            out.insert("grad_bias", b.download(&grads.db));
        }
        Case::Linear {
            x,
            weight,
            bias,
            grad_y,
        } => {
            let [x, w, bias, dy] = [x, weight, bias, grad_y].map(|t| b.upload(t));
            out.insert("y", b.download(&b.linear_forward(&x, &w, &bias)));
            let grads = b.linear_backward(&x, &w, &dy);
            out.insert("grad_x", b.download(&grads.dx));
            out.insert("grad_weight", b.download(&grads.dw));
            out.insert("grad_bias", b.download(&grads.db));
        }
        Case::Activation { act, x, grad_y } => {
            let (x, dy) = (b.upload(x), b.upload(grad_y));
            let y = b.activation_forward(*act, &x);
            let dx = b.activation_backward(*act, &x, &y, &dy);
            out.insert("y", b.download(&y));
            out.insert("grad_x", b.download(&dx));
        }
        Case::MaxPool2d { g, x, grad_y } => {
            let (y, argmax) = b.maxpool_forward(&b.upload(x), g);
            let dx = b.maxpool_backward(&b.upload(grad_y), &argmax, g);
            out.insert("y", b.download(&y));
            out.insert("grad_x", b.download(&dx));
        }
        Case::AvgPool2d { g, x, grad_y } => {
            out.insert("y", b.download(&b.avgpool_forward(&b.upload(x), g)));
            out.insert(
                "grad_x",
                b.download(&b.avgpool_backward(&b.upload(grad_y), g)),
            );
        }
        Case::BatchNorm {
            settings,
            training,
            x,
            weight,
            bias,
            running_mean,
            running_var,
            grad_y,
            ..
        } => {
            let [x, gamma, beta, rm, rv, dy] =
                [x, weight, bias, running_mean, running_var, grad_y].map(|t| b.upload(t));
            let (y, saved, rm_out, rv_out) = if *training {
                let t = b.batchnorm_forward_train(&x, &gamma, &beta, &rm, &rv, settings);
                (t.y, t.saved, t.running_mean, t.running_var)
            } else {
                let (y, saved) = b.batchnorm_forward_eval(&x, &gamma, &beta, &rm, &rv, settings);
                (y, saved, rm, rv)
            };
            let grads = b.batchnorm_backward(&x, &gamma, &saved, &dy, *training);
            out.insert("y", b.download(&y));
            out.insert("grad_x", b.download(&grads.dx));
            out.insert("grad_weight", b.download(&grads.dgamma));
            out.insert("grad_bias", b.download(&grads.dbeta));
            out.insert("running_mean_out", b.download(&rm_out));
            out.insert("running_var_out", b.download(&rv_out));
        }
        Case::SoftmaxCrossEntropy { logits, labels } => {
            let r = b.softmax_cross_entropy(&b.upload(logits), &b.upload_indices(labels));
            out.insert("loss", b.download(&r.loss));
            out.insert("grad_logits", b.download(&r.grad));
        }
    }
    out
}

fn abs(t: &HostTensor<f32>) -> HostTensor<f32> {
    t.map(|v| v.abs())
}

fn zip_map(
    a: &HostTensor<f32>,
    b: &HostTensor<f32>,
    f: impl Fn(f32, f32) -> f32,
) -> HostTensor<f32> {
    HostTensor::new(
        &a.shape,
        a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect(),
    )
}

/// `Σ|terms|` behind every output, from the CPU reference (f32) on absolute
/// values or from the op's formula; the same bounds as `wgcnn check`.
fn magnitudes(case: &Case) -> HashMap<&'static str, HostTensor<f32>> {
    let mut m = HashMap::new();
    match case {
        Case::Conv2d {
            g,
            x,
            weight,
            bias,
            grad_y,
        } => {
            let (x, w, dy) = (abs(x), abs(weight), abs(grad_y));
            m.insert("y", cpu::conv2d_forward(&x, &w, &abs(bias), g));
            let grads = cpu::conv2d_backward(&x, &w, &dy, g);
            m.insert("grad_x", grads.dx);
            m.insert("grad_weight", grads.dw);
            m.insert("grad_bias", grads.db);
        }
        Case::Linear {
            x,
            weight,
            bias,
            grad_y,
        } => {
            let (x, w, dy) = (abs(x), abs(weight), abs(grad_y));
            m.insert("y", cpu::linear_forward(&x, &w, &abs(bias)));
            let grads = cpu::linear_backward(&x, &w, &dy);
            m.insert("grad_x", grads.dx);
            m.insert("grad_weight", grads.dw);
            m.insert("grad_bias", grads.db);
        }
        Case::Activation { act, x, grad_y } => {
            // Transcendental results are judged relative to the input's size.
            let y = cpu::activation_forward(*act, x);
            m.insert("y", zip_map(x, &y, |a, b| a.abs() + b.abs()));
            m.insert("grad_x", abs(grad_y));
        }
        Case::MaxPool2d { g, x, grad_y } => {
            let (y, argmax) = cpu::maxpool_forward(x, g);
            m.insert("y", abs(&y));
            m.insert("grad_x", cpu::maxpool_backward(&abs(grad_y), &argmax, g));
        }
        Case::AvgPool2d { g, x, grad_y } => {
            m.insert("y", cpu::avgpool_forward(&abs(x), g));
            m.insert("grad_x", cpu::avgpool_backward(&abs(grad_y), g));
        }
        Case::BatchNorm {
            settings,
            training,
            layout,
            x,
            weight,
            bias,
            running_mean,
            running_var,
            grad_y,
        } => {
            let (saved, rm_out, rv_out) = if *training {
                let t = cpu::batchnorm_forward_train(
                    x,
                    weight,
                    bias,
                    running_mean,
                    running_var,
                    settings,
                );
                (t.saved, t.running_mean, t.running_var)
            } else {
                let (_, saved) = cpu::batchnorm_forward_eval(
                    x,
                    weight,
                    bias,
                    running_mean,
                    running_var,
                    settings,
                );
                (saved, running_mean.clone(), running_var.clone())
            };
            batchnorm_magnitudes(&mut m, *training, layout, x, weight, bias, grad_y, &saved);
            m.insert(
                "running_mean_out",
                zip_map(running_mean, &rm_out, |a, b| a.abs() + b.abs()),
            );
            m.insert(
                "running_var_out",
                zip_map(running_var, &rv_out, |a, b| a.abs() + b.abs()),
            );
        }
        Case::SoftmaxCrossEntropy { logits, labels } => {
            let [n, k] = [logits.shape[0], logits.shape[1]];
            // loss_n = lse − x[label]: both terms are at most max|x| + ln K.
            let max = logits.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            m.insert(
                "loss",
                HostTensor::new(&[1], vec![2.0 * max + (k as f32).ln()]),
            );
            // grad = (p − onehot)/N: magnitude (p + onehot)/N.
            let grad = cpu::softmax_cross_entropy(logits, labels).grad;
            let data = grad
                .data
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let onehot = if labels[i / k] as usize == i % k {
                        1.0
                    } else {
                        0.0
                    };
                    ((g * n as f32 + onehot).abs() + onehot) / n as f32
                })
                .collect();
            m.insert("grad_logits", HostTensor::new(&[n, k], data));
        }
    }
    m
}

/// Batchnorm's bounds: `y`: `|γ|·(|x| + |μ|)·invstd + |β|`; `dβ`: `Σ|dy|`;
/// `dγ`: `Σ|dy·x̂|`; `dx` in training
/// `|γ|·invstd/M · (M·|dy| + Σ|dy| + |x̂|·Σ|dy·x̂|)`, in evaluation `|γ|·invstd·|dy|`.
#[allow(clippy::too_many_arguments)]
fn batchnorm_magnitudes(
    m: &mut HashMap<&'static str, HostTensor<f32>>,
    training: bool,
    layout: &BatchNormLayout,
    x: &HostTensor<f32>,
    gamma: &HostTensor<f32>,
    beta: &HostTensor<f32>,
    dy: &HostTensor<f32>,
    saved: &BatchNormSaved<HostTensor<f32>>,
) {
    let channel = |i: usize| (i / layout.spatial) % layout.channels;
    let xhat_abs = |i: usize| {
        let c = channel(i);
        ((x.data[i] - saved.mean.data[c]) * saved.invstd.data[c]).abs()
    };
    let mut sum_dy = vec![0.0f32; layout.channels];
    let mut sum_dy_xhat = vec![0.0f32; layout.channels];
    for (i, d) in dy.data.iter().enumerate() {
        let c = channel(i);
        sum_dy[c] += d.abs();
        sum_dy_xhat[c] += d.abs() * xhat_abs(i);
    }
    let count = layout.count() as f32;
    let y = x
        .data
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = channel(i);
            gamma.data[c].abs() * (v.abs() + saved.mean.data[c].abs()) * saved.invstd.data[c]
                + beta.data[c].abs()
        })
        .collect();
    let dx = dy
        .data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let c = channel(i);
            let scale = gamma.data[c].abs() * saved.invstd.data[c];
            if training {
                scale / count * (count * d.abs() + sum_dy[c] + xhat_abs(i) * sum_dy_xhat[c])
            } else {
                scale * d.abs()
            }
        })
        .collect();
    let c = [layout.channels];
    m.insert("y", HostTensor::new(&x.shape, y));
    m.insert("grad_x", HostTensor::new(&x.shape, dx));
    m.insert("grad_weight", HostTensor::new(&c, sum_dy_xhat));
    m.insert("grad_bias", HostTensor::new(&c, sum_dy));
}

fn compare(
    name: &str,
    got: &HostTensor<f32>,
    expected: &HostTensor<f32>,
    mag: &HostTensor<f32>,
) -> Compared {
    if got.shape != expected.shape || mag.shape != expected.shape {
        return Compared {
            max_abs: f64::INFINITY,
            max_rel: f64::INFINITY,
            max_ratio: f64::INFINITY,
            worst: format!(
                "{name}: got shape [{}], expected [{}]",
                join(&got.shape),
                join(&expected.shape)
            ),
        };
    }
    // The tolerance scales with the larger of our bound and the expected
    // value itself (a fixture's value can only be as large as its terms).
    compare_elements(
        name,
        got,
        expected,
        |i| {
            (mag.data[i] as f64)
                .abs()
                .max((expected.data[i] as f64).abs())
        },
        ("got", "expected"),
    )
}

/// Reads every `*.safetensors` file in `dir`, in file-name order. Each entry
/// is the file and its fixture or the error that names what is wrong with
/// it; the directory itself being unreadable or holding no fixture is an
/// error.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, Result<Fixture>)>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, format!("cannot read the fixture directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(Error::file(
            dir,
            "no *.safetensors fixtures in this directory",
        ));
    }
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|p| {
            let fixture = Fixture::load(&p);
            (p, fixture)
        })
        .collect())
}

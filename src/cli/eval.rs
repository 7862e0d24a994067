//! `wgcnn eval` and `wgcnn predict`: a checkpoint applied to a data set or to
//! image files.

use std::path::PathBuf;

use clap::Args;
use wgcnn::backend::Backend;
use wgcnn::checkpoint::Checkpoint;
use wgcnn::cpu::CpuBackend;
use wgcnn::data::{Dataset, DatasetKind, Normalization, make_batch};
use wgcnn::nn::memory::{Workload, check_memory};
use wgcnn::nn::{Mode, Sequential};
use wgcnn::train::{check_data_fits, evaluate};
use wgcnn::{Error, Result};

use super::data::resolve;
use super::device::{Device, choose};

/// Where the data comes from, for `eval` and `predict --index`.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// Data set (default: the one the checkpoint was trained on).
    #[arg(long, value_parser = |s: &str| DatasetKind::from_name(s).map_err(|e| e.to_string()))]
    pub dataset: Option<DatasetKind>,
    /// Directory holding the data set's files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use the training split instead of the test split.
    #[arg(long)]
    pub train_split: bool,
}

/// Settings of `wgcnn eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The checkpoint to evaluate.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// GPU adapter index from `wgcnn devices`.
    #[arg(long)]
    pub device: Option<usize>,
    /// Run on the CPU path.
    #[arg(long)]
    pub cpu: bool,
    /// Also draw the confusion matrix to this PNG or SVG file.
    #[arg(long, value_name = "PATH")]
    pub confusion: Option<PathBuf>,
}

/// Settings of `wgcnn predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The checkpoint to apply.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// PNG or JPEG images (resized and converted to the model's input).
    pub images: Vec<PathBuf>,
    /// Indices into the data set instead of image files (repeatable).
    #[arg(long = "index")]
    pub indices: Vec<usize>,
    #[command(flatten)]
    pub data: DataArgs,
    /// GPU adapter index from `wgcnn devices`.
    #[arg(long)]
    pub device: Option<usize>,
    /// Run on the CPU path.
    #[arg(long)]
    pub cpu: bool,
}

/// The data set a checkpoint was trained on, from its recorded name.
fn trained_on(c: &Checkpoint) -> Option<DatasetKind> {
    let name = c.state.dataset.split_whitespace().next()?;
    DatasetKind::from_name(name).ok()
}

fn load_split(c: &Checkpoint, data: &DataArgs) -> Result<Dataset> {
    let kind = data.dataset.or_else(|| trained_on(c));
    let splits = resolve(kind, data.data_dir.as_deref(), c.state.seed)?;
    Ok(if data.train_split {
        splits.train
    } else {
        splits.test
    })
}

fn model<B: Backend>(backend: &B, c: &Checkpoint) -> Result<Sequential<B>> {
    Sequential::new(backend, &c.spec, &c.model, c.state.seed as u32)
}

fn normalization(c: &Checkpoint) -> Normalization {
    Normalization {
        mean: c.state.norm_mean.clone(),
        std: c.state.norm_std.clone(),
    }
}

/// Runs `wgcnn eval`.
pub fn eval(args: &EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        return Err(Error::Setting("--batch-size must be at least 1".into()));
    }
    if let Some(path) = &args.confusion {
        wgcnn::plot::check_picture_path(path)?;
    }
    let c = Checkpoint::load(&args.checkpoint)?;
    let data = load_split(&c, &args.data)?;
    check_data_fits(&c.spec, &data)?;
    let batch = args.batch_size;
    let result = match choose(args.device, args.cpu)? {
        Device::Gpu(gpu) => run_eval(&gpu, &c, &data, batch)?,
        Device::Cpu => run_eval(&CpuBackend::<f32>::fast(), &c, &data, batch)?,
    };
    println!("{}: {} images", data.name, result.count);
    println!(
        "accuracy: {:.2}%  loss: {:.4}",
        100.0 * result.accuracy,
        result.loss
    );
    println!("confusion matrix (rows: true class, columns: predicted):");
    let width = 6;
    print!("{:>14}", "");
    for k in 0..data.classes {
        print!("{k:>width$}");
    }
    println!();
    for (k, row) in result.confusion.iter().enumerate() {
        let name = data.class_names.get(k).map_or("", String::as_str);
        print!("{:>2} {:<11.11}", k, name);
        for count in row {
            print!("{count:>width$}");
        }
        println!();
    }
    if let Some(path) = &args.confusion {
        wgcnn::plot::plot_confusion(&result.confusion, &data.class_names, path)?;
        println!("confusion matrix image: {}", path.display());
    }
    Ok(())
}

/// Runs `wgcnn predict`.
pub fn predict(args: &PredictArgs) -> Result<()> {
    let c = Checkpoint::load(&args.checkpoint)?;
    let [channels, height, width] = match c.spec.input[..] {
        [ch, h, w] => [ch, h, w],
        _ => {
            return Err(Error::Setting(
                "predict needs a model with image input (C, H, W)".into(),
            ));
        }
    };
    let shape = [channels, height, width];
    let mut names = Vec::new();
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in &args.images {
        images.extend(wgcnn::data::load_image_file(path, shape)?);
        names.push(path.display().to_string());
        labels.push(0);
    }
    if !args.indices.is_empty() {
        let data = load_split(&c, &args.data)?;
        check_data_fits(&c.spec, &data)?;
        for &i in &args.indices {
            if i >= data.len() {
                return Err(Error::Setting(format!(
                    "--index {i} is past the end of {} ({} images)",
                    data.name,
                    data.len()
                )));
            }
            images.extend_from_slice(data.image(i));
            names.push(format!("{} #{i} (label {})", data.name, data.labels[i]));
            labels.push(data.labels[i]);
        }
    }
    if names.is_empty() {
        return Err(Error::Setting(
            "give image files or --index N to predict".into(),
        ));
    }
    let classes = c.spec.classes()?;
    let set = Dataset {
        name: "inputs".into(),
        images,
        labels,
        shape,
        classes,
        class_names: c.state.class_names.clone(),
    };
    let indices: Vec<usize> = (0..set.len()).collect();
    let batch = make_batch(&set, &indices, &normalization(&c), None);
    let logits = match choose(args.device, args.cpu)? {
        Device::Gpu(gpu) => forward(&gpu, &c, &batch.images)?,
        Device::Cpu => forward(&CpuBackend::<f32>::fast(), &c, &batch.images)?,
    };
    for (name, row) in names.iter().zip(logits.data.chunks(classes)) {
        let probabilities = softmax(row);
        let best = (0..classes)
            .max_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]))
            .unwrap_or(0);
        let class_name = |k: usize| {
            c.state
                .class_names
                .get(k)
                .cloned()
                .unwrap_or_else(|| k.to_string())
        };
        println!(
            "{name}: {} ({:.2}%)",
            class_name(best),
            100.0 * probabilities[best]
        );
        let listed: Vec<String> = probabilities
            .iter()
            .enumerate()
            .map(|(k, p)| format!("{}={p:.6}", class_name(k)))
            .collect();
        println!("  {}", listed.join(" "));
    }
    Ok(())
}

fn run_eval<B: Backend>(
    backend: &B,
    c: &Checkpoint,
    data: &Dataset,
    batch: usize,
) -> Result<wgcnn::train::Evaluation> {
    // Batches are never larger than the data set.
    check_memory(backend, &c.spec, batch.min(data.len()), Workload::Infer)?;
    let result = evaluate(
        &mut model(backend, c)?,
        backend,
        data,
        &normalization(c),
        batch,
    );
    backend.take_error()?;
    Ok(result)
}

fn forward<B: Backend>(
    backend: &B,
    c: &Checkpoint,
    x: &wgcnn::tensor::HostTensor<f32>,
) -> Result<wgcnn::tensor::HostTensor<f32>> {
    check_memory(backend, &c.spec, x.shape[0], Workload::Infer)?;
    let mut m = model(backend, c)?;
    let logits = m.forward(backend, &backend.upload(x), Mode::Eval, 0);
    let logits = backend.download(&logits);
    backend.take_error()?;
    Ok(logits)
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

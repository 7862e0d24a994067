//! `wgcnn plot`: training curves from a `--metrics` file.

use std::path::PathBuf;

use clap::Args;
use wgcnn::Result;
use wgcnn::plot::{check_picture_path, plot_metrics, read_metrics};

/// Settings of `wgcnn plot`.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// The JSON-lines file `wgcnn train --metrics` wrote.
    pub metrics: PathBuf,
    /// The picture to write, PNG or SVG by its extension [default: METRICS
    /// with the extension .png].
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Runs `wgcnn plot`.
pub fn run(args: &PlotArgs) -> Result<()> {
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| args.metrics.with_extension("png"));
    check_picture_path(&output)?;
    let rows = read_metrics(&args.metrics)?;
    plot_metrics(&rows, &output)?;
    println!(
        "{}: {} epoch{} drawn",
        output.display(),
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

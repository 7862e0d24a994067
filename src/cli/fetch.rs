//! `wgcnn fetch`: download a data set where `wgcnn train` looks for it.

use std::path::PathBuf;

use clap::Args;
use wgcnn::data::DatasetKind;
use wgcnn::fetch::{default_dir, fetch_from, official_mirrors, standard_files};
use wgcnn::{Error, Result};

/// Settings of `wgcnn fetch`.
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The data set: mnist, fashion-mnist or cifar10.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(["mnist", "fashion-mnist", "cifar10"]))]
    pub dataset: String,
    /// Put the files here instead of `$WGCNN_DATA/<name>` or
    /// `~/.cache/wgcnn/<name>` (then pass it to `train --data-dir`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs `wgcnn fetch`.
pub fn run(args: &FetchArgs) -> Result<()> {
    let kind = DatasetKind::from_name(&args.dataset)?;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => default_dir(kind).ok_or_else(|| {
            Error::Setting(
                "no place to put the files: set $WGCNN_DATA, $XDG_CACHE_HOME or $HOME, or give \
                 --dir"
                    .into(),
            )
        })?,
    };
    fetch_from(
        kind,
        &standard_files(kind),
        &official_mirrors(kind),
        &dir,
        &mut |line| println!("{line}"),
    )?;
    let hint = match &args.dir {
        Some(dir) => format!(" --data-dir {}", dir.display()),
        None => String::new(),
    };
    println!(
        "{} is ready in {}; train on it with: wgcnn train --dataset {}{hint}",
        kind.name(),
        dir.display(),
        kind.name()
    );
    Ok(())
}

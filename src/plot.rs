//! Pictures: training curves from a `--metrics` file and confusion matrices,
//! drawn with `plotters` to PNG or SVG (chosen by the output's extension).
//!
//! Text is rendered with DejaVu Sans embedded in the binary (the `dejavu`
//! crate through plotters' `ab_glyph` renderer), so drawing needs no system
//! fonts. Every picture is rendered in memory and written with
//! [`write_atomically`], so a reader never sees a half-written file.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor;
use serde::Deserialize;

use crate::checkpoint::write_atomically;
use crate::train::EvaluatedOn;
use crate::{Error, Result};

/// One epoch's record of a `--metrics` file (the fields of
/// [`crate::train::EpochMetrics`] a plot needs; other keys are ignored).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct MetricsRow {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Fraction of training examples classified correctly.
    pub train_accuracy: f64,
    /// Mean test (or validation) loss.
    pub test_loss: f64,
    /// Fraction of test (or validation) examples classified correctly.
    pub test_accuracy: f64,
    /// Which of the two the record's test figures are (files written before
    /// this field existed hold test figures).
    #[serde(default)]
    pub evaluated_on: EvaluatedOn,
}

impl From<&crate::train::EpochMetrics> for MetricsRow {
    fn from(m: &crate::train::EpochMetrics) -> Self {
        MetricsRow {
            epoch: m.epoch,
            train_loss: m.train_loss,
            train_accuracy: m.train_accuracy,
            test_loss: m.test_loss,
            test_accuracy: m.test_accuracy,
            evaluated_on: m.evaluated_on,
        }
    }
}

/// Parses metrics JSON lines (`source` names them in errors). Blank lines are
/// skipped; a malformed line is an error naming `source` and the line number.
///
/// A file that several runs appended to is read as one history: a record whose
/// epoch is not after the one before it starts over from that epoch (a resumed
/// or restarted run supersedes the records it repeats).
pub fn parse_metrics(text: &str, source: &Path) -> Result<Vec<MetricsRow>> {
    let mut rows: Vec<MetricsRow> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row: MetricsRow = serde_json::from_str(line).map_err(|e| {
            Error::file(
                source,
                format!(
                    "line {}: not a metrics record ({e}); expected a JSON object with epoch, \
                     train_loss, train_accuracy, test_loss and test_accuracy",
                    i + 1
                ),
            )
        })?;
        rows.retain(|r| r.epoch < row.epoch);
        rows.push(row);
    }
    Ok(rows)
}

/// Reads a `--metrics` file; see [`parse_metrics`].
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(path, format!("cannot read metrics: {e}")))?;
    parse_metrics(&text, path)
}

/// Picture formats, from the output path's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Png,
    Svg,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        _ => Err(Error::file(
            path,
            "unsupported picture format: the name must end in .png or .svg",
        )),
    }
}

/// Checks that `path` names a picture format this module writes (`.png` or
/// `.svg`), so a command can refuse a bad output name before any work.
pub fn check_picture_path(path: &Path) -> Result<()> {
    format_of(path).map(|_| ())
}

/// Registers the embedded font with plotters (once per process).
fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// What to draw: the arguments of one of the drawing functions.
enum Picture<'a> {
    Metrics {
        rows: &'a [MetricsRow],
        title: &'a str,
    },
    Confusion {
        matrix: &'a [Vec<u64>],
        names: &'a [String],
        title: &'a str,
        cell: u32,
        label_space: u32,
    },
}

impl Picture<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        match *self {
            Picture::Metrics { rows, title } => draw_metrics(root, rows, title),
            Picture::Confusion {
                matrix,
                names,
                title,
                cell,
                label_space,
            } => draw_confusion(root, matrix, names, title, cell, label_space),
        }
    }
}

/// Renders `picture` onto a `width`×`height` canvas and writes it to `path`
/// atomically, as PNG or SVG by the extension.
fn render(path: &Path, (width, height): (u32, u32), picture: Picture) -> Result<()> {
    register_fonts();
    let fail = |e: String| Error::file(path, format!("cannot draw the picture: {e}"));
    let bytes = match format_of(path)? {
        Format::Png => {
            let mut pixels = vec![0u8; width as usize * height as usize * 3];
            {
                let root =
                    BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
                picture.draw(&root).map_err(fail)?;
                root.present().map_err(|e| fail(e.to_string()))?;
            }
            let mut png = Vec::new();
            image::ImageEncoder::write_image(
                image::codecs::png::PngEncoder::new(&mut png),
                &pixels,
                width,
                height,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| fail(e.to_string()))?;
            png
        }
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
                picture.draw(&root).map_err(fail)?;
                root.present().map_err(|e| fail(e.to_string()))?;
            }
            svg.into_bytes()
        }
    };
    write_atomically(path, &bytes)
        .map_err(|e| Error::file(path, format!("cannot write the picture: {e}")))
}

/// Colours of the train and test curves (matplotlib's first two).
const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const TEST_COLOR: RGBColor = RGBColor(255, 127, 14);
const GRID_COLOR: RGBColor = RGBColor(225, 225, 225);
const AXIS_COLOR: RGBColor = RGBColor(90, 90, 90);

/// Draws loss per epoch (train and test) and accuracy per epoch (train and
/// test, in %) side by side, to `path` (PNG or SVG by its extension).
pub fn plot_metrics(rows: &[MetricsRow], path: &Path) -> Result<()> {
    if rows.is_empty() {
        return Err(Error::file(
            path,
            "no epochs to plot: the metrics are empty",
        ));
    }
    let title = match rows
        .iter()
        .max_by(|a, b| a.test_accuracy.total_cmp(&b.test_accuracy))
    {
        Some(best) => format!(
            "Training: {} epoch{} \u{2014} best {} accuracy {:.2}% (epoch {})",
            rows.len(),
            if rows.len() == 1 { "" } else { "s" },
            evaluated_name(rows),
            100.0 * best.test_accuracy,
            best.epoch
        ),
        None => "Training".to_string(),
    };
    render(
        path,
        (1400, 560),
        Picture::Metrics {
            rows,
            title: &title,
        },
    )
}

/// What the rows' test figures are: `test` or `validation`, or
/// `evaluation` where a file's runs differ.
fn evaluated_name(rows: &[MetricsRow]) -> &'static str {
    match rows.first() {
        Some(first) if rows.iter().all(|r| r.evaluated_on == first.evaluated_on) => {
            first.evaluated_on.name()
        }
        _ => "evaluation",
    }
}

fn draw_metrics<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rows: &[MetricsRow],
    title: &str,
) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(title, ("sans-serif", 26, FontStyle::Bold).into_font())
        .map_err(err)?;
    let panels = root.margin(6, 10, 10, 10).split_evenly((1, 2));
    let epochs: Vec<f64> = rows.iter().map(|r| r.epoch as f64).collect();
    let first = epochs.iter().copied().fold(f64::INFINITY, f64::min);
    let last = epochs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // A margin so the first and last markers are not cut by the axes.
    let margin = ((last - first) * 0.03).max(0.25);
    let x_range = first - margin..last + margin;
    let loss: [Vec<f64>; 2] = [
        rows.iter().map(|r| r.train_loss).collect(),
        rows.iter().map(|r| r.test_loss).collect(),
    ];
    let accuracy: [Vec<f64>; 2] = [
        rows.iter().map(|r| 100.0 * r.train_accuracy).collect(),
        rows.iter().map(|r| 100.0 * r.test_accuracy).collect(),
    ];
    let names = ["train", evaluated_name(rows)];
    draw_panel(
        &panels[0],
        "Loss",
        "loss (cross-entropy)",
        x_range.clone(),
        &epochs,
        &loss,
        names,
        (Some(0.0), None),
        SeriesLabelPosition::UpperRight,
    )?;
    draw_panel(
        &panels[1],
        "Accuracy",
        "accuracy (%)",
        x_range,
        &epochs,
        &accuracy,
        names,
        (Some(0.0), Some(100.0)),
        SeriesLabelPosition::LowerRight,
    )
}

/// One panel: the train and test series over epochs, named `names` in the
/// legend, with a grid.
/// `clamp` bounds the y range (e.g. accuracy stays within 0–100 %).
#[allow(clippy::too_many_arguments)]
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    y_desc: &str,
    x_range: std::ops::Range<f64>,
    epochs: &[f64],
    series: &[Vec<f64>; 2],
    names: [&str; 2],
    clamp: (Option<f64>, Option<f64>),
    legend_at: SeriesLabelPosition,
) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let finite: Vec<f64> = series
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.08).max(hi.abs().max(1e-3) * 0.01);
    let mut y_lo = lo - pad;
    let mut y_hi = hi + pad;
    if let Some(min) = clamp.0 {
        y_lo = y_lo.max(min);
    }
    if let Some(max) = clamp.1 {
        y_hi = y_hi.min(max);
    }
    if y_hi <= y_lo {
        y_hi = y_lo + 1.0;
    }
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 21).into_font())
        .margin(12)
        .x_label_area_size(46)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_lo..y_hi)
        .map_err(err)?;
    let x_labels = epochs.len().clamp(2, 12);
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(x_labels)
        .y_labels(8)
        .x_label_formatter(&|v| {
            // Epochs are whole numbers: label only the whole ticks.
            if (v - v.round()).abs() < 1e-9 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .max_light_lines(1)
        .light_line_style(GRID_COLOR)
        .bold_line_style(GRID_COLOR)
        .axis_style(AXIS_COLOR)
        .label_style(("sans-serif", 15).into_font())
        .axis_desc_style(("sans-serif", 17).into_font())
        .y_label_formatter(&|v| {
            if y_hi - y_lo >= 10.0 {
                format!("{v:.0}")
            } else if y_hi - y_lo >= 1.0 {
                format!("{v:.1}")
            } else if y_hi - y_lo >= 0.1 {
                format!("{v:.2}")
            } else {
                format!("{v:.3}")
            }
        })
        .draw()
        .map_err(err)?;
    for (values, (name, color)) in series
        .iter()
        .zip(names.into_iter().zip([TRAIN_COLOR, TEST_COLOR]))
    {
        let points: Vec<(f64, f64)> = epochs
            .iter()
            .copied()
            .zip(values.iter().copied())
            .filter(|(_, v)| v.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(3),
            ))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(legend_at)
        .margin(12)
        .label_font(("sans-serif", 16).into_font())
        .background_style(WHITE.mix(0.9))
        .border_style(AXIS_COLOR)
        .draw()
        .map_err(err)
}

/// Draws a confusion matrix (rows: true class, columns: predicted) as a heat
/// map with the count in every cell and the class names on both axes, to
/// `path` (PNG or SVG by its extension). A cell's shade is its share of its
/// row (the recall of the true class on the diagonal).
pub fn plot_confusion(matrix: &[Vec<u64>], class_names: &[String], path: &Path) -> Result<()> {
    let k = matrix.len();
    if k == 0 {
        return Err(Error::file(path, "the confusion matrix is empty"));
    }
    if let Some((i, row)) = matrix.iter().enumerate().find(|(_, r)| r.len() != k) {
        return Err(Error::Setting(format!(
            "confusion matrix row {i} has {} entries; a {k}-class matrix needs {k}",
            row.len()
        )));
    }
    let names: Vec<String> = (0..k)
        .map(|i| {
            class_names
                .get(i)
                .filter(|n| !n.is_empty())
                .cloned()
                .unwrap_or_else(|| i.to_string())
        })
        .collect();
    let total: u64 = matrix.iter().flatten().sum();
    let correct: u64 = (0..k).map(|i| matrix[i][i]).sum();
    let title = format!(
        "Confusion matrix \u{2014} {} images, accuracy {:.2}%",
        total,
        100.0 * correct as f64 / total.max(1) as f64
    );
    let cell: u32 = if k <= 12 {
        72
    } else if k <= 30 {
        36
    } else {
        (1400 / k as u32).max(4)
    };
    register_fonts();
    let name_size = (cell as f64 * 0.24).clamp(8.0, 15.0);
    let font = FontDesc::new(FontFamily::SansSerif, name_size, FontStyle::Normal);
    let widest = names
        .iter()
        .filter_map(|n| font.box_size(n).ok())
        .map(|(w, _)| w)
        .max()
        .unwrap_or(0);
    let label_space = widest.max(20) + 60;
    let below = if widest + 4 > cell { widest } else { 20 };
    let side = cell * k as u32;
    let size = (side + label_space + 40, side + below + 120);
    let picture = Picture::Confusion {
        matrix,
        names: &names,
        title: &title,
        cell,
        label_space,
    };
    render(path, size, picture)
}

fn draw_confusion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    matrix: &[Vec<u64>],
    names: &[String],
    title: &str,
    cell: u32,
    label_space: u32,
) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let k = matrix.len();
    let cell = cell as i32;
    let x0 = label_space as i32;
    let y0 = 60;
    let side = cell * k as i32;
    root.draw(&Text::new(
        title.to_string(),
        (20, 16),
        ("sans-serif", 22, FontStyle::Bold).into_font(),
    ))
    .map_err(err)?;
    let count_size = (cell as f64 * 0.3).clamp(7.0, 17.0);
    let name_size = (cell as f64 * 0.24).clamp(8.0, 15.0);
    let show_counts = cell >= 24;
    for (i, row) in matrix.iter().enumerate() {
        let row_total: u64 = row.iter().sum();
        for (j, &count) in row.iter().enumerate() {
            let share = if row_total == 0 {
                0.0
            } else {
                count as f64 / row_total as f64
            };
            // White to dark blue (matplotlib's "Blues" ends).
            let lerp = |a: f64, b: f64| (a + (b - a) * share.sqrt()).round() as u8;
            let fill = RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0));
            let (cx, cy) = (x0 + j as i32 * cell, y0 + i as i32 * cell);
            root.draw(&Rectangle::new(
                [(cx, cy), (cx + cell, cy + cell)],
                fill.filled(),
            ))
            .map_err(err)?;
            if show_counts {
                let color = if share.sqrt() > 0.55 { WHITE } else { BLACK };
                let style = TextStyle::from(("sans-serif", count_size).into_font())
                    .color(&color)
                    .pos(text_anchor::Pos::new(
                        text_anchor::HPos::Center,
                        text_anchor::VPos::Center,
                    ));
                root.draw(&Text::new(
                    count.to_string(),
                    (cx + cell / 2, cy + cell / 2),
                    style,
                ))
                .map_err(err)?;
            }
        }
    }
    root.draw(&Rectangle::new(
        [(x0, y0), (x0 + side, y0 + side)],
        AXIS_COLOR.stroke_width(1),
    ))
    .map_err(err)?;
    // Class names: true classes left of the rows, predicted ones below the
    // columns (rotated when they do not fit across a column).
    let name_font = ("sans-serif", name_size).into_font();
    let widest = names
        .iter()
        .filter_map(|n| {
            root.estimate_text_size(n, &TextStyle::from(name_font.clone()))
                .ok()
        })
        .map(|(w, _)| w as i32)
        .max()
        .unwrap_or(0);
    let rotate = widest > cell - 4;
    for (i, name) in names.iter().enumerate() {
        let left = TextStyle::from(name_font.clone())
            .color(&BLACK)
            .pos(text_anchor::Pos::new(
                text_anchor::HPos::Right,
                text_anchor::VPos::Center,
            ));
        root.draw(&Text::new(
            name.clone(),
            (x0 - 8, y0 + i as i32 * cell + cell / 2),
            left,
        ))
        .map_err(err)?;
        let x = x0 + i as i32 * cell + cell / 2;
        let below = if rotate {
            TextStyle::from(name_font.clone().transform(FontTransform::Rotate270))
                .color(&BLACK)
                .pos(text_anchor::Pos::new(
                    text_anchor::HPos::Right,
                    text_anchor::VPos::Center,
                ))
        } else {
            TextStyle::from(name_font.clone())
                .color(&BLACK)
                .pos(text_anchor::Pos::new(
                    text_anchor::HPos::Center,
                    text_anchor::VPos::Top,
                ))
        };
        root.draw(&Text::new(name.clone(), (x, y0 + side + 8), below))
            .map_err(err)?;
    }
    let desc = ("sans-serif", 18).into_font();
    let below_names = if rotate { widest + 16 } else { 34 };
    root.draw(&Text::new(
        "predicted class".to_string(),
        (x0 + side / 2, y0 + side + below_names),
        TextStyle::from(desc.clone()).pos(text_anchor::Pos::new(
            text_anchor::HPos::Center,
            text_anchor::VPos::Top,
        )),
    ))
    .map_err(err)?;
    root.draw(&Text::new(
        "true class".to_string(),
        (16, y0 + side / 2),
        TextStyle::from(desc.transform(FontTransform::Rotate270)).pos(text_anchor::Pos::new(
            text_anchor::HPos::Center,
            text_anchor::VPos::Top,
        )),
    ))
    .map_err(err)?;
    Ok(())
}

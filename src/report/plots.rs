//! The report's figures, drawn with plotters as PNG and SVG alike.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::Run;
use crate::bench::Record;
use crate::files;

/// Line colours, cycled: matplotlib's tab20, its ten strong colours first, then their light pairs.
const COLORS: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Something drawn onto one canvas of a fixed size, as PNG and SVG alike.
pub(super) trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>;
}

/// Text is drawn with DejaVu Sans embedded in the binary: no system font lookup.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let ok = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok();
        assert!(ok, "the embedded DejaVu Sans is a valid font");
    });
}

/// Writes `<stem>.svg` and `<stem>.png` into `out`, each atomically.
pub(super) fn save(fig: &impl Figure, out: &Path, stem: &str) -> Result<()> {
    register_font();
    let (w, h) = fig.size();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        fig.draw(&root).map_err(|e| anyhow!("failed to draw {stem}.svg: {e}"))?;
        root.present().map_err(|e| anyhow!("failed to draw {stem}.svg: {e}"))?;
    }
    files::write_bytes(&out.join(format!("{stem}.svg")), svg.as_bytes())?;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        fig.draw(&root).map_err(|e| anyhow!("failed to draw {stem}.png: {e}"))?;
        root.present().map_err(|e| anyhow!("failed to draw {stem}.png: {e}"))?;
    }
    let image = image::RgbImage::from_raw(w, h, rgb).expect("the buffer holds w × h RGB pixels");
    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .with_context(|| format!("failed to encode {stem}.png"))?;
    files::write_bytes(&out.join(format!("{stem}.png")), &png)
}

/// `lo..hi` widened by `pad` of its span on each side, never empty.
fn padded(lo: f64, hi: f64, pad: f64) -> std::ops::Range<f64> {
    let span = (hi - lo).max(1e-9);
    (lo - pad * span)..(hi + pad * span)
}

/// The range of accuracies in percent, padded and kept inside 0..100.
fn accuracy_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.0..100.0;
    }
    let r = padded(lo, hi.max(lo + 1.0), 0.08);
    r.start.max(0.0)..r.end.min(100.0)
}

/// The range of positive values on a log axis: a factor 1.5 of room on both sides.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 1.0..10.0;
    }
    (lo / 1.5)..(hi * 1.5)
}

/// Ticks of a log axis over `range`: 1, 2 and 5 times powers of ten (every integer multiple
/// where that gives fewer than three).
pub(super) fn log_ticks(range: &std::ops::Range<f64>) -> Vec<f64> {
    let decades = range.start.log10().floor() as i32..=range.end.log10().ceil() as i32;
    let ticks = |multiples: &[f64]| -> Vec<f64> {
        decades
            .clone()
            .flat_map(|e| multiples.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| range.contains(v))
            .collect()
    };
    let coarse = ticks(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 3 {
        coarse
    } else {
        ticks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    }
}

/// 250 → "250", 2500 → "2.5k", 40000 → "40k", 1.2e6 → "1.2M".
pub(super) fn compact(v: f64) -> String {
    let (scaled, suffix) = match v.abs() {
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let text = format!("{scaled:.1}");
    format!("{}{suffix}", text.strip_suffix(".0").unwrap_or(&text))
}

/// Formats accuracy ticks with as many decimals as the span of the axis needs.
fn percent_label(range: &std::ops::Range<f64>) -> impl Fn(&f64) -> String {
    let span = range.end - range.start;
    let decimals = if span >= 8.0 {
        0
    } else if span >= 0.8 {
        1
    } else {
        2
    };
    move |v| format!("{v:.decimals$}")
}

/// Validation accuracy by epoch (left) and by wall time (right), a line per run.
pub(super) struct Curves<'a>(pub(super) &'a [Run]);

impl Figure for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        (1400, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let runs = self.0;
        let points = || runs.iter().flat_map(|r| r.metrics.iter());
        let y = accuracy_range(points().map(|m| 100.0 * m.val_acc));
        let max_wall = points().map(|m| m.wall_s).fold(0.0, f64::max);
        let (unit, scale) = if max_wall >= 7200.0 { ("hours", 3600.0) } else { ("minutes", 60.0) };
        let max_epoch = points().map(|m| m.epoch).fold(0.0, f64::max);
        let y_label = percent_label(&y);
        let (left, right) = root.split_horizontally(self.size().0 / 2);
        let panels = [
            (&left, "Validation accuracy by epoch", "epoch".to_string(), max_epoch, 1.0, true),
            (
                &right,
                "Validation accuracy by wall time",
                format!("wall time ({unit})"),
                max_wall / scale,
                scale,
                false,
            ),
        ];
        for (area, caption, x_desc, x_max, x_scale, by_epoch) in panels {
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(0.0..padded(0.0, x_max.max(1e-3), 0.03).end, y.clone())?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc("validation accuracy (%)")
                .x_label_formatter(&|v| compact(*v))
                .y_label_formatter(&y_label)
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 15))
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            for (i, r) in runs.iter().enumerate() {
                let c = color(i);
                let series = r
                    .metrics
                    .iter()
                    .map(|m| (if by_epoch { m.epoch } else { m.wall_s / x_scale }, 100.0 * m.val_acc));
                let marker = if r.metrics.len() <= 60 { 3 } else { 0 };
                chart
                    .draw_series(LineSeries::new(series, c.stroke_width(2)).point_size(marker))?
                    .label(r.label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            }
            if by_epoch && !runs.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .label_font(("sans-serif", 13))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.4))
                    .draw()?;
            }
        }
        Ok(())
    }
}

/// Test accuracy against training throughput (log scale), a labelled point per run.
pub(super) struct AccuracyVsThroughput<'a>(pub(super) &'a [Run]);

impl Figure for AccuracyVsThroughput<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let runs: Vec<&Run> = self.0.iter().filter(|r| r.record.img_per_s > 0.0).collect();
        let x = log_range(runs.iter().map(|r| r.record.img_per_s));
        let y = accuracy_range(runs.iter().map(|r| 100.0 * r.record.test_acc));
        let mut chart = ChartBuilder::on(root)
            .caption("Test accuracy against training throughput", ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x.clone().log_scale().with_key_points(log_ticks(&x)), y.clone())?;
        chart
            .configure_mesh()
            .x_desc("training throughput (images/s, log scale)")
            .y_desc("test accuracy (%)")
            .x_label_formatter(&|v| compact(*v))
            .y_label_formatter(&percent_label(&y))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, r) in self.0.iter().enumerate() {
            if r.record.img_per_s <= 0.0 {
                continue;
            }
            let c = color(i);
            let point = (r.record.img_per_s, 100.0 * r.record.test_acc);
            chart.draw_series(std::iter::once(
                EmptyElement::at(point)
                    + Circle::new((0, 0), 6, c.filled())
                    + Text::new(r.label.clone(), (9, -16), ("sans-serif", 13).into_font()),
            ))?;
        }
        Ok(())
    }
}

/// The measurements of devices benchmarked at two or more sequence lengths: the others make
/// points, not curves.
pub(super) fn lengths_curves(entries: &[Record]) -> Vec<Record> {
    let mut lengths = BTreeMap::<&str, BTreeSet<i64>>::new();
    for e in entries {
        lengths.entry(&e.device).or_default().insert(e.seq_len);
    }
    entries.iter().filter(|e| lengths[e.device.as_str()].len() >= 2).cloned().collect()
}

/// Training (left) and inference (right) throughput against sequence length, log-log, a line per
/// preset × implementation: one colour per preset, solid for pixelseq, dashed for PyTorch.
pub(super) struct ThroughputVsLength<'a>(pub(super) &'a [Record]);

impl Figure for ThroughputVsLength<'_> {
    fn size(&self) -> (u32, u32) {
        (1400, 600)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let entries = self.0;
        let models: Vec<&str> = {
            let mut m: Vec<&str> = entries.iter().map(Record::label).collect();
            m.sort();
            m.dedup();
            m
        };
        let mut lines = BTreeMap::<(&str, &str), Vec<&Record>>::new();
        for e in entries {
            lines.entry((e.label(), e.implementation.as_str())).or_default().push(e);
        }
        for line in lines.values_mut() {
            line.sort_by_key(|e| e.seq_len);
        }
        let mut devices: Vec<&str> = entries.iter().map(|e| e.device.as_str()).collect();
        devices.sort();
        devices.dedup();
        let x = log_range(entries.iter().map(|e| e.seq_len as f64));
        let mut seq_lens: Vec<f64> = entries.iter().map(|e| e.seq_len as f64).collect();
        seq_lens.sort_by(f64::total_cmp);
        seq_lens.dedup();
        let (left, right) = root.split_horizontally(self.size().0 / 2);
        type Pick = fn(&Record) -> Option<f64>;
        let panels: [(&DrawingArea<DB, Shift>, &str, Pick); 2] = [
            (&left, "Training", |e| e.train_img_per_s),
            (&right, "Inference", |e| e.infer_img_per_s),
        ];
        for (area, what, pick) in panels {
            let y = log_range(entries.iter().filter_map(pick));
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{what} throughput ({})", devices.join(", ")), ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(
                    x.clone().log_scale().with_key_points(seq_lens.clone()),
                    y.clone().log_scale().with_key_points(log_ticks(&y)),
                )?;
            chart
                .configure_mesh()
                .x_desc("sequence length (log scale)")
                .y_desc("images/s (log scale)")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| compact(*v))
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 15))
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            for ((model, implementation), line) in &lines {
                let c = color(models.iter().position(|m| m == model).unwrap_or(0));
                let points: Vec<(f64, f64)> = line.iter().filter_map(|e| pick(e).map(|v| (e.seq_len as f64, v))).collect();
                if points.is_empty() {
                    continue;
                }
                let style = c.stroke_width(2);
                let dashed = *implementation == "pytorch";
                let drawn = if dashed {
                    chart.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))?
                } else {
                    chart.draw_series(LineSeries::new(points.clone(), style))?
                };
                drawn.label(format!("{model} ({implementation})")).legend(move |(x, y)| {
                    let (gap_start, gap_end) = if dashed { (8, 13) } else { (10, 10) };
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (gap_start, 0)], style)
                        + PathElement::new(vec![(gap_end, 0), (21, 0)], style)
                });
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .draw()?;
        }
        Ok(())
    }
}

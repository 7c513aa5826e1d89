//! PNG charts for `acspeed linearity --plot`: linearity against workers (or hosts) per
//! algorithm, bus bandwidth against message size per algorithm, and the step breakdown
//! (compute, communication hidden under it, exposed communication).

use acspeed::linearity::Step;
use acspeed_core::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// Everything the charts show.
#[derive(Clone, Debug, Default)]
pub struct ChartData {
    pub title: String,
    /// "workers" or "hosts".
    pub lin_x: String,
    /// Per algorithm: (workers or hosts, linearity).
    pub linearity: Vec<(String, Vec<(f64, f64)>)>,
    /// Per algorithm: (bytes, busbw GB/s).
    pub busbw: Vec<(String, Vec<(f64, f64)>)>,
    /// Per algorithm: one step.
    pub steps: Vec<(String, Step)>,
}

/// Fonts tried for the chart text, in order (Debian/Ubuntu, Fedora/Arch, macOS).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = FONTS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                format!(
                    "no TrueType font for the chart text (looked for {}); install fonts-dejavu-core",
                    FONTS.join(", ")
                )
            })?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the chart font could not be parsed".to_string())
    })
    .clone()
    .map_err(Error::invalid)
}

fn err<E: std::fmt::Display>(e: E) -> Error {
    Error::invalid(format!("drawing the chart: {e}"))
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Writes the three charts into one PNG at `path`.
pub fn render(path: &Path, d: &ChartData) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1500, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(&d.title, ("sans-serif", 18)).map_err(err)?;
    let panels = root.split_evenly((1, 3));
    lines(
        &panels[0],
        "Linearity",
        &d.lin_x,
        "linearity",
        &d.linearity,
        false,
        Some((0.0, 1.05)),
    )?;
    lines(
        &panels[1],
        "Bus bandwidth",
        "message size (bytes)",
        "busbw GB/s",
        &d.busbw,
        true,
        None,
    )?;
    breakdown(&panels[2], &d.steps)?;
    root.present().map_err(err)?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn lines(
    area: &Area<'_>,
    caption: &str,
    xd: &str,
    yd: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
    y_range: Option<(f64, f64)>,
) -> Result<()> {
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1) = (1.0, 2.0);
    }
    if x1 <= x0 {
        x1 = x0 * 2.0 + 1.0;
    }
    let (ylo, yhi) = y_range.unwrap_or((0.0, (y1 * 1.15).max(1e-3)));
    let mut b = ChartBuilder::on(area);
    b.caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55);
    let sizes = |x: &f64| {
        let x = *x;
        match x {
            x if x >= (1u64 << 30) as f64 => format!("{:.0}G", x / (1u64 << 30) as f64),
            x if x >= (1u64 << 20) as f64 => format!("{:.0}M", x / (1u64 << 20) as f64),
            x if x >= 1024.0 => format!("{:.0}K", x / 1024.0),
            x => format!("{x:.0}"),
        }
    };
    let plain = |x: &f64| format!("{x}");
    let legend_at = if log_x {
        SeriesLabelPosition::UpperLeft
    } else {
        SeriesLabelPosition::LowerLeft
    };
    macro_rules! draw {
        ($chart:expr, $fmt:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(xd)
                .y_desc(yd)
                .x_label_formatter($fmt)
                .draw()
                .map_err(err)?;
            for (i, (name, p)) in series.iter().enumerate() {
                let c = COLORS[i % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(p.iter().copied(), c.stroke_width(2)))
                    .map_err(err)?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(p.iter().map(|&pt| Circle::new(pt, 3, c.filled())))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .position(legend_at)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }};
    }
    if log_x {
        draw!(
            b.build_cartesian_2d((x0..x1).log_scale(), ylo..yhi)
                .map_err(err)?,
            &sizes
        );
    } else {
        draw!(
            b.build_cartesian_2d((x0 * 0.9)..(x1 * 1.05), ylo..yhi)
                .map_err(err)?,
            &plain
        );
    }
    Ok(())
}

/// Stacked horizontal bars per algorithm: compute not overlapped, communication hidden under
/// the compute, exposed communication.
fn breakdown(area: &Area<'_>, steps: &[(String, Step)]) -> Result<()> {
    let max = steps
        .iter()
        .map(|s| s.1.step_ms)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    // Room above the bars for the legend.
    let n = steps.len().max(1) as f64 + 0.9;
    let mut chart = ChartBuilder::on(area)
        .caption("Step breakdown (ms)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(10)
        .build_cartesian_2d(0.0..max, 0.0..n)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("ms per step")
        .draw()
        .map_err(err)?;
    // Each bar's algorithm, just above it.
    chart
        .draw_series(steps.iter().enumerate().map(|(i, (name, s))| {
            Text::new(
                format!("{name}: {:.1} ms", s.step_ms),
                (max * 0.01, i as f64 + 0.97),
                ("sans-serif", 13),
            )
        }))
        .map_err(err)?;
    let parts = [
        ("compute", RGBColor(160, 160, 160)),
        ("communication under compute", RGBColor(44, 160, 44)),
        ("exposed communication", RGBColor(214, 39, 40)),
    ];
    for (k, (label, color)) in parts.iter().enumerate() {
        let bars: Vec<Rectangle<(f64, f64)>> = steps
            .iter()
            .enumerate()
            .map(|(i, (_, s))| {
                let hidden = (s.comm_ms - s.exposed_ms).clamp(0.0, s.compute_ms);
                let segs = [0.0, s.compute_ms - hidden, s.compute_ms, s.step_ms];
                let y = i as f64;
                Rectangle::new(
                    [(segs[k], y + 0.15), (segs[k + 1].max(segs[k]), y + 0.7)],
                    color.filled(),
                )
            })
            .collect();
        let c = *color;
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

//! Score against retained KV bytes, one PNG per task family: a line per policy through its
//! budgets, vertical bars for the 95% bootstrap intervals, the full cache as a dashed
//! horizontal line (its interval shaded), and a legend.
//!
//! Drawn with plotters into an RGB buffer; text comes from the `font8x8` bitmap glyphs, as in
//! the NIAH heatmap (no font file needed).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{EvalError, Result};
use crate::niah::{draw_text, text_width};

/// One point: mean retained KV `x` (MB) and score `y` with its interval `[lo, hi]` (%).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlotPoint {
    /// Mean retained KV bytes, in MB.
    pub x: f64,
    /// Mean score, %.
    pub y: f64,
    /// Lower end of the interval, %.
    pub lo: f64,
    /// Upper end of the interval, %.
    pub hi: f64,
}

/// A policy's line through its budgets.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text (the policy).
    pub label: String,
    /// Drawn thicker.
    pub emphasis: bool,
    /// Palette index of its colour ([`series_color`]), so a policy keeps its colour across plots.
    pub color: usize,
    /// Points, in budget order.
    pub points: Vec<PlotPoint>,
}

/// The full cache: a horizontal line at `y` with its interval `[lo, hi]` (%).
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// Legend text.
    pub label: String,
    /// Mean score, %.
    pub y: f64,
    /// Lower end of the interval, %.
    pub lo: f64,
    /// Upper end of the interval, %.
    pub hi: f64,
}

/// One chart.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreVsKv {
    /// Title (ASCII; other characters are drawn as `?`).
    pub title: String,
    /// Policies.
    pub series: Vec<Series>,
    /// The full cache, if known.
    pub reference: Option<Reference>,
}

/// Distinct line colours (matplotlib's tab10, then two more).
const PALETTE: [RGBColor; 12] = [
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
    RGBColor(0, 0, 0),
    RGBColor(174, 199, 232),
];
const TEXT: RGBColor = RGBColor(30, 30, 30);
const GRID: RGBColor = RGBColor(228, 228, 228);
const BAND: RGBColor = RGBColor(236, 236, 236);
const REFERENCE: RGBColor = RGBColor(70, 70, 70);

/// Colour of the `i`-th series.
pub fn series_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `target` ticks over `span`.
fn tick_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    format!("{v:.decimals$}")
}

/// Renders `chart` as a PNG at `path` (written atomically).
pub fn render_score_vs_kv_png(chart: &ScoreVsKv, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let plot_err = |message: String| EvalError::Plot { path: path.to_path_buf(), message };
    let points: Vec<&PlotPoint> = chart.series.iter().flat_map(|s| &s.points).collect();
    if points.is_empty() {
        return Err(plot_err("nothing to plot".into()));
    }
    if points.iter().any(|p| !(p.x.is_finite() && p.y.is_finite() && p.lo.is_finite() && p.hi.is_finite())) {
        return Err(plot_err("a point is not a finite number".into()));
    }

    // Ranges: x from 0, y over every interval (and the reference), padded, on tick multiples.
    let xmax = points.iter().map(|p| p.x).fold(0.0, f64::max).max(1e-6) * 1.06;
    let xstep = tick_step(xmax, 6.0);
    let xmax = (xmax / xstep).ceil() * xstep;
    let mut ylo = points.iter().map(|p| p.lo.min(p.y)).fold(f64::INFINITY, f64::min);
    let mut yhi = points.iter().map(|p| p.hi.max(p.y)).fold(f64::NEG_INFINITY, f64::max);
    if let Some(r) = chart.reference.as_ref().filter(|r| r.y.is_finite()) {
        ylo = ylo.min(r.lo.min(r.y));
        yhi = yhi.max(r.hi.max(r.y));
    }
    let pad = ((yhi - ylo) * 0.06).max(1.0);
    let (ylo, yhi) = ((ylo - pad).max(0.0), (yhi + pad).min(100.0).max(ylo + 2.0));
    let ystep = tick_step(yhi - ylo, 6.0);
    let (ylo, yhi) = ((ylo / ystep).floor() * ystep, (yhi / ystep).ceil() * ystep);

    let legend_rows = chart.series.len() + usize::from(chart.reference.is_some());
    let legend_w = chart
        .series
        .iter()
        .map(|s| text_width(&s.label, 1))
        .chain(chart.reference.iter().map(|r| text_width(&r.label, 1)))
        .max()
        .unwrap_or(0)
        + 60;
    let (left, top, right, bottom) = (70i32, 56i32, legend_w.max(140) + 20, 64i32);
    let (pw, ph) = (640i32, 440i32.max(legend_rows as i32 * 18 + 20));
    let width = left + pw + right;
    let height = top + ph + bottom;
    let (w, h) = (width as u32, height as u32);
    let to_px = |x: f64, y: f64| -> (i32, i32) {
        let px = left + ((x / xmax) * pw as f64).round() as i32;
        let py = top + ph - (((y - ylo) / (yhi - ylo)) * ph as f64).round() as i32;
        (px, py)
    };

    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        let fill = |x: i32, y: i32, w: i32, h: i32, c: RGBColor| {
            root.draw(&Rectangle::new([(x, y), (x + w, y + h)], c.filled())).map_err(|e| plot_err(e.to_string()))
        };
        let line = |a: (i32, i32), b: (i32, i32), c: RGBColor, width: u32| {
            root.draw(&PathElement::new(vec![a, b], c.stroke_width(width))).map_err(|e| plot_err(e.to_string()))
        };
        let text = |s: &str, x: i32, y: i32, scale: i32| draw_text(&root, s, x, y, scale, &TEXT).map_err(plot_err);
        let clip_y = |y: f64| y.clamp(ylo, yhi);

        // reference band (behind everything)
        if let Some(r) = &chart.reference {
            let (_, y0) = to_px(0.0, clip_y(r.hi));
            let (_, y1) = to_px(0.0, clip_y(r.lo));
            fill(left, y0, pw, (y1 - y0).max(1), BAND)?;
        }
        // grid and ticks
        let mut v = 0.0;
        while v <= xmax + xstep * 1e-6 {
            let (px, _) = to_px(v, ylo);
            fill(px, top, 1, ph, GRID)?;
            fill(px, top + ph, 1, 5, TEXT)?;
            let l = tick_label(v, xstep);
            text(&l, px - text_width(&l, 1) / 2, top + ph + 9, 1)?;
            v += xstep;
        }
        let mut v = ylo;
        while v <= yhi + ystep * 1e-6 {
            let (_, py) = to_px(0.0, v);
            fill(left, py, pw, 1, GRID)?;
            fill(left - 5, py, 5, 1, TEXT)?;
            let l = tick_label(v, ystep);
            text(&l, left - 9 - text_width(&l, 1), py - 4, 1)?;
            v += ystep;
        }
        // frame
        fill(left, top, pw + 1, 1, TEXT)?;
        fill(left, top + ph, pw + 1, 1, TEXT)?;
        fill(left, top, 1, ph + 1, TEXT)?;
        fill(left + pw, top, 1, ph + 1, TEXT)?;

        // full cache: dashed line
        if let Some(r) = &chart.reference {
            let (_, py) = to_px(0.0, clip_y(r.y));
            let mut x = left + 1;
            while x < left + pw {
                line((x, py), ((x + 9).min(left + pw - 1), py), REFERENCE, 2)?;
                x += 15;
            }
        }
        // series: intervals, lines, points; each series moved sideways a little
        let n = chart.series.len() as i32;
        for (i, s) in chart.series.iter().enumerate() {
            let c = series_color(s.color);
            let dx = (2 * i as i32 - (n - 1)) * 2;
            let px: Vec<(i32, i32)> = s
                .points
                .iter()
                .map(|p| {
                    let (x, y) = to_px(p.x, clip_y(p.y));
                    (x + dx, y)
                })
                .collect();
            for (p, &(x, _)) in s.points.iter().zip(&px) {
                let (_, y0) = to_px(0.0, clip_y(p.hi));
                let (_, y1) = to_px(0.0, clip_y(p.lo));
                line((x, y0), (x, y1), c, 1)?;
                line((x - 3, y0), (x + 3, y0), c, 1)?;
                line((x - 3, y1), (x + 3, y1), c, 1)?;
            }
            if px.len() > 1 {
                root.draw(&PathElement::new(px.clone(), c.stroke_width(if s.emphasis { 3 } else { 2 })))
                    .map_err(|e| plot_err(e.to_string()))?;
            }
            for &p in &px {
                root.draw(&Circle::new(p, if s.emphasis { 5 } else { 4 }, c.filled())).map_err(|e| plot_err(e.to_string()))?;
            }
        }

        // title, axis labels
        let tw = text_width(&chart.title, 2);
        text(&chart.title, left + (pw - tw) / 2, 16, 2)?;
        let xt = "mean retained KV cache (MB)";
        text(xt, left + (pw - text_width(xt, 1)) / 2, top + ph + 30, 1)?;
        text("score (%)", 8, top - 18, 1)?;

        // legend
        let lx = left + pw + 20;
        let mut ly = top + 4;
        for s in &chart.series {
            let c = series_color(s.color);
            line((lx, ly + 4), (lx + 28, ly + 4), c, if s.emphasis { 3 } else { 2 })?;
            root.draw(&Circle::new((lx + 14, ly + 4), if s.emphasis { 5 } else { 4 }, c.filled())).map_err(|e| plot_err(e.to_string()))?;
            text(&s.label, lx + 38, ly, 1)?;
            ly += 18;
        }
        if let Some(r) = &chart.reference {
            fill(lx, ly - 3, 28, 14, BAND)?;
            line((lx, ly + 4), (lx + 10, ly + 4), REFERENCE, 2)?;
            line((lx + 16, ly + 4), (lx + 28, ly + 4), REFERENCE, 2)?;
            text(&r.label, lx + 38, ly, 1)?;
        }
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    crate::niah::write_png(path, w, h, &buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks() {
        assert_eq!(tick_step(10.0, 5.0), 2.0);
        assert_eq!(tick_step(37.0, 6.0), 10.0);
        assert_eq!(tick_step(0.9, 6.0), 0.2);
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(20.0, 10.0), "20");
    }

    #[test]
    fn renders_a_png_and_rejects_bad_input() {
        let s = |label: &str, emphasis, color, ys: &[f64]| Series {
            label: label.into(),
            emphasis,
            color,
            points: ys.iter().enumerate().map(|(i, &y)| PlotPoint { x: 3.0 * (1 << i) as f64, y, lo: y - 5.0, hi: y + 4.0 }).collect(),
        };
        let chart = ScoreVsKv {
            title: "NIAH: score vs retained KV".into(),
            series: vec![s("snapkv", false, 0, &[30.0, 45.0, 60.0, 80.0]), s("lava", true, 1, &[31.0, 40.0, 55.0, 81.0])],
            reference: Some(Reference { label: "full cache".into(), y: 84.0, lo: 78.0, hi: 90.0 }),
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plot.png");
        render_score_vs_kv_png(&chart, &p).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut img = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut img).unwrap();
        let count = |c: RGBColor| img.chunks(3).filter(|px| px[0] == c.0 && px[1] == c.1 && px[2] == c.2).count();
        // both series' colours, the text colour and the reference band are drawn
        assert!(count(series_color(0)) > 50 && count(series_color(1)) > 50);
        assert!(count(TEXT) > 100 && count(BAND) > 100);
        assert!(info.width > 640 && info.height > 440);
        if let Ok(keep) = std::env::var("LAVA_EVAL_KEEP_PLOT") {
            std::fs::copy(&p, keep).unwrap();
        }
        let empty = ScoreVsKv { title: "x".into(), series: vec![], reference: None };
        assert!(render_score_vs_kv_png(&empty, dir.path().join("e.png")).is_err());
        let mut nan = chart.clone();
        nan.series[0].points[0].y = f64::NAN;
        assert!(render_score_vs_kv_png(&nan, dir.path().join("n.png")).is_err());
    }
}

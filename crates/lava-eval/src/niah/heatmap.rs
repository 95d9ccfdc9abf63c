//! Heatmap of a needle run, drawn with plotters into an RGB buffer and encoded as PNG.
//!
//! No font is needed: labels are drawn from the 8x8 bitmap glyphs of the `font8x8` crate.
//! The colormap is the reference visualisation's
//! `LinearSegmentedColormap.from_list(["#F0496E", "#EBB839", "#0CD79F"])` (red → yellow →
//! green) over scores in `[0, 1]`; cells that were not run are light grey.

use std::path::Path;

use plotters::prelude::*;

use super::NiahGrid;
use crate::error::{EvalError, Result};

const RED: (f64, f64, f64) = (240.0, 73.0, 110.0);
const YELLOW: (f64, f64, f64) = (235.0, 184.0, 57.0);
const GREEN: (f64, f64, f64) = (12.0, 215.0, 159.0);
const MISSING: RGBColor = RGBColor(225, 225, 225);
const TEXT: RGBColor = RGBColor(30, 30, 30);
/// Largest image drawn (pixels).
const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// The red → yellow → green colour of a score in `[0, 1]` (clamped; NaN is treated as 0).
pub fn score_color(score: f64) -> (u8, u8, u8) {
    let s = if score.is_nan() { 0.0 } else { score.clamp(0.0, 1.0) };
    let (a, b, t) = if s <= 0.5 { (RED, YELLOW, s / 0.5) } else { (YELLOW, GREEN, (s - 0.5) / 0.5) };
    let mix = |x: f64, y: f64| (x + (y - x) * t).round() as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Width in pixels of `text` drawn at `scale`.
pub(crate) fn text_width(text: &str, scale: i32) -> i32 {
    text.chars().count() as i32 * 8 * scale
}

/// Draws ASCII `text` with its top-left corner at `(x, y)`, each glyph pixel a
/// `scale` x `scale` square. Non-ASCII characters are drawn as `?`.
pub(crate) fn draw_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    text: &str,
    x: i32,
    y: i32,
    scale: i32,
    color: &RGBColor,
) -> std::result::Result<(), String> {
    for (i, ch) in text.chars().enumerate() {
        let code = if ch.is_ascii() { ch as usize } else { '?' as usize };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        let gx = x + i as i32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let px = gx + col * scale;
                    let py = y + row as i32 * scale;
                    area.draw(&Rectangle::new([(px, py), (px + scale, py + scale)], color.filled()))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
    }
    Ok(())
}

fn compact_length(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}K", n / 1000)
    } else if n >= 10_000 {
        format!("{:.0}K", n as f64 / 1000.0)
    } else if n >= 1000 {
        format!("{:.1}K", n as f64 / 1000.0)
    } else {
        n.to_string()
    }
}

fn format_depth(d: f64) -> String {
    if d.fract() == 0.0 {
        format!("{d:.0}")
    } else {
        format!("{d:.1}")
    }
}

/// Renders the grid as a PNG heatmap at `path`: depth rows (0 % at the top) by
/// context-length columns, with a title, axis labels and a colour bar.
pub fn render_heatmap_png(grid: &NiahGrid, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let plot_err = |message: String| EvalError::Plot { path: path.to_path_buf(), message };
    grid.check_shape().map_err(plot_err)?;
    let rows = grid.depth_percents.len().max(1);
    let cols = grid.context_lengths.len().max(1);

    let (left, top, right, bottom) = (110i32, 56i32, 120i32, 70i32);
    let cell_w = (960 / cols as i32).clamp(12, 80);
    let cell_h = (560 / rows as i32).clamp(10, 60);
    let plot_w = cell_w * cols as i32;
    let plot_h = cell_h * rows as i32;
    let title_w = text_width(&grid.title, 2);
    let width = (left + plot_w + right).max(title_w + 40).max(420);
    let height = top + plot_h + bottom;
    if (width as u64) * (height as u64) > MAX_PIXELS {
        return Err(plot_err(format!("a {width}x{height} image is too large")));
    }
    let (w, h) = (width as u32, height as u32);

    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        // filled w x h box with its top-left corner at (x, y) (plotters' fill is end-exclusive)
        let fill = |x: i32, y: i32, w: i32, h: i32, c: RGBColor| {
            root.draw(&Rectangle::new([(x, y), (x + w, y + h)], c.filled())).map_err(|e| plot_err(e.to_string()))
        };
        let frame = |x: i32, y: i32, w: i32, h: i32| -> Result<()> {
            fill(x, y, w, 1, TEXT)?;
            fill(x, y + h - 1, w, 1, TEXT)?;
            fill(x, y, 1, h, TEXT)?;
            fill(x + w - 1, y, 1, h, TEXT)
        };

        // cells, separated by 1-pixel white lines
        for (ri, row) in grid.scores.iter().enumerate() {
            for (ci, s) in row.iter().enumerate() {
                let x0 = left + ci as i32 * cell_w;
                let y0 = top + ri as i32 * cell_h;
                let color = match s {
                    Some(v) => {
                        let (r, g, b) = score_color(*v);
                        RGBColor(r, g, b)
                    }
                    None => MISSING,
                };
                fill(x0, y0, cell_w - 1, cell_h - 1, color)?;
            }
        }
        frame(left - 1, top - 1, plot_w + 1, plot_h + 1)?;

        let text = |s: &str, x: i32, y: i32, scale: i32| draw_text(&root, s, x, y, scale, &TEXT).map_err(plot_err);

        // title
        text(&grid.title, (width - title_w) / 2, 14, 2)?;

        // x labels: every k-th column so that labels do not overlap
        let labels: Vec<String> = grid.context_lengths.iter().map(|&l| compact_length(l)).collect();
        let max_lw = labels.iter().map(|l| text_width(l, 1)).max().unwrap_or(8) + 6;
        let step = ((max_lw + cell_w - 1) / cell_w).max(1) as usize;
        for (ci, l) in labels.iter().enumerate() {
            if ci % step != 0 && ci + 1 != labels.len() {
                continue;
            }
            if ci + 1 == labels.len() && ci % step != 0 && (ci % step) < step / 2 + 1 {
                continue; // the last label would collide with the previous one
            }
            let cx = left + ci as i32 * cell_w + cell_w / 2;
            fill(cx, top + plot_h, 1, 4, TEXT)?;
            text(l, cx - text_width(l, 1) / 2, top + plot_h + 7, 1)?;
        }
        let xt = "Context length (tokens)";
        text(xt, left + (plot_w - text_width(xt, 1)) / 2, top + plot_h + 30, 1)?;

        // y labels
        let ystep = ((12 + cell_h - 1) / cell_h).max(1) as usize;
        for (ri, d) in grid.depth_percents.iter().enumerate() {
            if ri % ystep != 0 && ri + 1 != grid.depth_percents.len() {
                continue;
            }
            let cy = top + ri as i32 * cell_h + cell_h / 2;
            let l = format_depth(*d);
            fill(left - 5, cy, 4, 1, TEXT)?;
            text(&l, left - 8 - text_width(&l, 1), cy - 4, 1)?;
        }
        text("Depth %", 8, top - 14, 1)?;

        // colour bar
        let bx = left + plot_w + 30;
        let bw = 18;
        for y in 0..plot_h {
            let s = 1.0 - y as f64 / (plot_h - 1).max(1) as f64;
            let (r, g, b) = score_color(s);
            fill(bx, top + y, bw, 1, RGBColor(r, g, b))?;
        }
        frame(bx - 1, top - 1, bw + 2, plot_h + 2)?;
        for (v, label) in [(1.0, "1.0"), (0.5, "0.5"), (0.0, "0.0")] {
            let y = top + ((1.0 - v) * (plot_h - 1) as f64) as i32;
            fill(bx + bw + 1, y, 4, 1, TEXT)?;
            text(label, bx + bw + 9, (y - 4).clamp(top - 4, top + plot_h - 8), 1)?;
        }
        text("Score", bx - 6, top - 14, 1)?;

        root.present().map_err(|e| plot_err(e.to_string()))?;
    }

    write_png(path, w, h, &buf)
}

/// Encodes an RGB image of `w x h` in memory, then writes it atomically: a
/// killed run never leaves half a PNG.
pub(crate) fn write_png(path: &Path, w: u32, h: u32, buf: &[u8]) -> Result<()> {
    let plot_err = |message: String| EvalError::Plot { path: path.to_path_buf(), message };
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| plot_err(e.to_string()))?;
        writer.write_image_data(buf).map_err(|e| plot_err(e.to_string()))?;
        writer.finish().map_err(|e| plot_err(e.to_string()))?;
    }
    lava_llama::hf::write_atomic(path, &png_bytes).map_err(|e| plot_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::niah::NiahCell;

    #[test]
    fn colormap_endpoints() {
        assert_eq!(score_color(0.0), (240, 73, 110));
        assert_eq!(score_color(0.5), (235, 184, 57));
        assert_eq!(score_color(1.0), (12, 215, 159));
        assert_eq!(score_color(2.0), score_color(1.0));
        assert_eq!(score_color(f64::NAN), score_color(0.0));
    }

    #[test]
    fn renders_a_png() {
        let mut cells = Vec::new();
        for (li, l) in crate::niah::context_lengths(1000, 16000, 12).into_iter().enumerate() {
            for (di, d) in crate::niah::depth_percents(0.0, 100.0, 11).into_iter().enumerate() {
                if li == 3 && di == 4 {
                    continue; // a missing cell
                }
                let score = ((li + di) % 7) as f64 / 6.0;
                cells.push(NiahCell { context_length: l, depth_percent: d, score });
            }
        }
        let grid = NiahGrid::from_cells("Needle test: llama-3.1-8b / lava / 128", &cells);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("heatmap.png");
        render_heatmap_png(&grid, &p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // decode and check a cell colour: row 0 (depth 0), column 0 has score 0 -> red
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut img = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut img).unwrap();
        let px = |x: u32, y: u32| {
            let i = ((y * info.width + x) * 3) as usize;
            (img[i], img[i + 1], img[i + 2])
        };
        assert_eq!(px(112, 58), score_color(0.0));
        // the title text is drawn in the text colour somewhere in the top band
        assert!((0..40).any(|y| (0..info.width).any(|x| px(x, y) == (30, 30, 30))));
        if let Ok(keep) = std::env::var("LAVA_EVAL_KEEP_HEATMAP") {
            std::fs::copy(&p, keep).unwrap();
        }
        // shape errors are reported
        let bad = NiahGrid { title: "x".into(), context_lengths: vec![1], depth_percents: vec![], scores: vec![vec![]] };
        assert!(render_heatmap_png(&bad, dir.path().join("bad.png")).is_err());
    }
}

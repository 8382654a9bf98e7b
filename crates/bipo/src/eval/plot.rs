//! Line charts (metric vs multiplier, one line per vector) as SVG and PNG.
//!
//! One layout is computed once and drawn by two small renderers, so both files show the
//! same chart. PNG text uses an embedded font (DejaVu Sans Mono, see
//! `assets/DejaVu-LICENSE.txt`), so plots look the same on machines without fonts.
//! The PNG renderer (tiny-skia, ab_glyph and the font) is the `plot` cargo feature, on
//! by default; without it charts are written as SVG only.

use std::fmt::Write as _;

#[cfg(feature = "plot")]
use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
#[cfg(feature = "plot")]
use tiny_skia::{Color, Paint, PathBuilder, Pixmap, Stroke, Transform};

use crate::error::{Error, Result};

#[cfg(feature = "plot")]
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSansMono.ttf");
const WIDTH: f32 = 880.0;
const HEIGHT: f32 = 520.0;
const LEFT: f32 = 80.0;
/// Smallest right margin (the legend's column).
const RIGHT: f32 = 240.0;
const TOP: f32 = 72.0;
const BOTTOM: f32 = 60.0;
const TICKS: usize = 6;
/// Series with more points than this are drawn without point markers.
const MAX_MARKERS: usize = 40;
const TEXT: f32 = 13.0;
const TITLE: f32 = 15.0;
/// Characters per title line at the title size (monospace: ~0.62 em per character).
const TITLE_CHARS: usize = ((WIDTH - 40.0) / (0.62 * 1.3 * TITLE)) as usize;
/// Line colours (Okabe-Ito, readable by colour-blind people), cycled.
const PALETTE: &[(u8, u8, u8)] = &[
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
    (0, 0, 0),
    (240, 228, 66),
];

/// One named line.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart to draw.
#[derive(Clone, Debug)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

#[derive(Clone, Copy)]
enum Anchor {
    Start,
    Middle,
    End,
}

enum Shape {
    Line([f32; 4], (u8, u8, u8), f32),
    Poly(Vec<(f32, f32)>, (u8, u8, u8)),
    Dot(f32, f32, (u8, u8, u8)),
    Text(f32, f32, String, f32, Anchor),
}

/// Splits text into lines of at most `max` characters at spaces (a longer word stays whole).
fn wrap(text: &str, max: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= max => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// "Nice" tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / TICKS as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|s| s * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn label(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

impl LineChart {
    fn layout(&self) -> Result<Vec<Shape>> {
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if pts.is_empty() {
            return Err(Error::invalid(
                "plot",
                format!("`{}` has no finite points", self.title),
            ));
        }
        let ext = |f: fn(&(f64, f64)) -> f64| {
            let v: Vec<f64> = pts.iter().map(f).collect();
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
            let pad = if hi > lo {
                (hi - lo) * 0.05
            } else {
                lo.abs().max(1.0) * 0.1
            };
            (lo - pad, hi + pad)
        };
        let ((x0, x1), (y0, y1)) = (ext(|p| p.0), ext(|p| p.1));
        // The legend's column grows with the longest name (monospace: ~0.62 em per
        // character), taking width from the plot, up to half the chart.
        let longest = self
            .series
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(0);
        let right = (46.0 + 0.68 * TEXT * longest as f32 + 12.0).clamp(RIGHT, WIDTH / 2.0);
        let (pw, ph) = (WIDTH - LEFT - right, HEIGHT - TOP - BOTTOM);
        let sx = |x: f64| LEFT + ((x - x0) / (x1 - x0)) as f32 * pw;
        let sy = |y: f64| TOP + ph - ((y - y0) / (y1 - y0)) as f32 * ph;
        let grey = (200, 200, 200);
        let black = (40, 40, 40);
        let mut out = Vec::new();
        for t in ticks(x0, x1) {
            out.push(Shape::Line([sx(t), TOP, sx(t), TOP + ph], grey, 1.0));
            out.push(Shape::Text(
                sx(t),
                TOP + ph + 18.0,
                label(t),
                TEXT,
                Anchor::Middle,
            ));
        }
        for t in ticks(y0, y1) {
            out.push(Shape::Line([LEFT, sy(t), LEFT + pw, sy(t)], grey, 1.0));
            out.push(Shape::Text(
                LEFT - 6.0,
                sy(t) + 4.0,
                label(t),
                TEXT,
                Anchor::End,
            ));
        }
        out.push(Shape::Line(
            [LEFT, TOP + ph, LEFT + pw, TOP + ph],
            black,
            1.5,
        ));
        out.push(Shape::Line([LEFT, TOP, LEFT, TOP + ph], black, 1.5));
        for (i, line) in wrap(&self.title, TITLE_CHARS).into_iter().enumerate() {
            let size = if i == 0 { TITLE } else { TEXT };
            let y = 22.0 + 17.0 * i as f32;
            out.push(Shape::Text(WIDTH / 2.0, y, line, size, Anchor::Middle));
        }
        out.push(Shape::Text(
            LEFT + pw / 2.0,
            HEIGHT - 18.0,
            self.x_label.clone(),
            TEXT,
            Anchor::Middle,
        ));
        out.push(Shape::Text(
            LEFT,
            TOP - 10.0,
            self.y_label.clone(),
            TEXT,
            Anchor::Start,
        ));
        for (i, s) in self.series.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let p: Vec<(f32, f32)> = s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| (sx(x), sy(y)))
                .collect();
            // Markers only where they stay readable.
            if p.len() <= MAX_MARKERS {
                p.iter().for_each(|&(x, y)| out.push(Shape::Dot(x, y, c)));
            }
            out.push(Shape::Poly(p, c));
            let ly = TOP + 10.0 + 22.0 * i as f32;
            let lx = LEFT + pw + 16.0;
            out.push(Shape::Line([lx, ly, lx + 24.0, ly], c, 3.0));
            out.push(Shape::Text(
                lx + 30.0,
                ly + 4.0,
                s.name.clone(),
                TEXT,
                Anchor::Start,
            ));
        }
        Ok(out)
    }

    /// The chart as an SVG document.
    pub fn to_svg(&self) -> Result<String> {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let rgb = |c: (u8, u8, u8)| format!("rgb({},{},{})", c.0, c.1, c.2);
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"DejaVu Sans Mono, monospace\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        for sh in self.layout()? {
            let _ = match sh {
                Shape::Line([a, b, c, d], col, w) => writeln!(
                    s,
                    "<line x1=\"{a:.1}\" y1=\"{b:.1}\" x2=\"{c:.1}\" y2=\"{d:.1}\" stroke=\"{}\" stroke-width=\"{w}\"/>",
                    rgb(col)
                ),
                Shape::Poly(p, col) => writeln!(
                    s,
                    "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2.5\" points=\"{}\"/>",
                    rgb(col),
                    p.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect::<Vec<_>>().join(" ")
                ),
                Shape::Dot(x, y, col) => writeln!(
                    s,
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{}\"/>",
                    rgb(col)
                ),
                Shape::Text(x, y, t, size, a) => {
                    let anchor = match a {
                        Anchor::Start => "start",
                        Anchor::Middle => "middle",
                        Anchor::End => "end",
                    };
                    writeln!(
                        s,
                        "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\" text-anchor=\"{anchor}\">{}</text>",
                        esc(&t)
                    )
                }
            };
        }
        s.push_str("</svg>\n");
        Ok(s)
    }

    /// The chart as PNG bytes.
    #[cfg(feature = "plot")]
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let png_err = |e: String| Error::invalid("plot", e);
        let mut pm = Pixmap::new(WIDTH as u32, HEIGHT as u32)
            .ok_or_else(|| png_err("cannot allocate the image".into()))?;
        pm.fill(Color::WHITE);
        let font = FontRef::try_from_slice(FONT).map_err(|e| png_err(e.to_string()))?;
        let paint = |c: (u8, u8, u8)| {
            let mut p = Paint::default();
            p.set_color_rgba8(c.0, c.1, c.2, 255);
            p.anti_alias = true;
            p
        };
        let stroke = |pm: &mut Pixmap, pts: &[(f32, f32)], c, w| {
            let mut pb = PathBuilder::new();
            pb.move_to(pts[0].0, pts[0].1);
            pts[1..].iter().for_each(|&(x, y)| pb.line_to(x, y));
            if let Some(path) = pb.finish() {
                let st = Stroke {
                    width: w,
                    ..Default::default()
                };
                pm.stroke_path(&path, &paint(c), &st, Transform::identity(), None);
            }
        };
        for sh in self.layout()? {
            match sh {
                Shape::Line([a, b, c, d], col, w) => stroke(&mut pm, &[(a, b), (c, d)], col, w),
                Shape::Poly(p, col) if p.len() > 1 => stroke(&mut pm, &p, col, 2.5),
                Shape::Poly(..) => {}
                Shape::Dot(x, y, col) => {
                    if let Some(path) = PathBuilder::from_circle(x, y, 3.5) {
                        pm.fill_path(
                            &path,
                            &paint(col),
                            tiny_skia::FillRule::Winding,
                            Transform::identity(),
                            None,
                        );
                    }
                }
                Shape::Text(x, y, t, size, a) => draw_text(&mut pm, &font, x, y, &t, size, a),
            }
        }
        pm.encode_png().map_err(|e| png_err(e.to_string()))
    }

    /// Writes `stem.svg` and, with the `plot` feature, `stem.png` (atomically).
    pub fn write(&self, stem: &std::path::Path) -> Result<()> {
        crate::util::write_atomic(&stem.with_extension("svg"), self.to_svg()?.as_bytes())?;
        #[cfg(feature = "plot")]
        crate::util::write_atomic(&stem.with_extension("png"), &self.to_png()?)?;
        Ok(())
    }
}

/// The image format reports link to: PNG with the `plot` feature, else SVG.
pub const IMAGE_EXT: &str = if cfg!(feature = "plot") { "png" } else { "svg" };

/// Draws dark text with its baseline at y, blending glyph coverage into the pixmap.
#[cfg(feature = "plot")]
fn draw_text(pm: &mut Pixmap, font: &FontRef, x: f32, y: f32, text: &str, size: f32, a: Anchor) {
    let scale = PxScale::from(size * 1.3);
    let sf = font.as_scaled(scale);
    let width: f32 = text.chars().map(|c| sf.h_advance(font.glyph_id(c))).sum();
    let mut pen = match a {
        Anchor::Start => x,
        Anchor::Middle => x - width / 2.0,
        Anchor::End => x - width,
    };
    let (w, h) = (pm.width() as i32, pm.height() as i32);
    let data = pm.data_mut();
    for c in text.chars() {
        let id = font.glyph_id(c);
        let g = id.with_scale_and_position(scale, ab_glyph::point(pen, y));
        pen += sf.h_advance(id);
        let Some(og) = font.outline_glyph(g) else {
            continue;
        };
        let b = og.px_bounds();
        og.draw(|gx, gy, cov| {
            let (px, py) = (b.min.x as i32 + gx as i32, b.min.y as i32 + gy as i32);
            if px < 0 || py < 0 || px >= w || py >= h {
                return;
            }
            let i = ((py * w + px) * 4) as usize;
            for ch in &mut data[i..i + 3] {
                // Opaque background: premultiplied equals straight colour.
                *ch = (*ch as f32 * (1.0 - cov) + 20.0 * cov) as u8;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> LineChart {
        LineChart {
            title: "p(matching) <A&B>".into(),
            x_label: "multiplier".into(),
            y_label: "probability".into(),
            series: vec![
                Series {
                    name: "bipo".into(),
                    points: vec![(-1.0, 0.2), (0.0, 0.5), (1.0, 0.8)],
                },
                Series {
                    name: "random".into(),
                    points: vec![(-1.0, 0.5), (0.0, 0.5), (1.0, f64::NAN)],
                },
            ],
        }
    }

    #[test]
    #[cfg(feature = "plot")]
    fn svg_and_png_are_well_formed_and_show_every_series() {
        let svg = chart().to_svg().unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(">bipo<") && svg.contains(">random<"));
        assert!(svg.contains("&lt;A&amp;B&gt;"), "title is escaped");
        assert_eq!(svg.matches("<polyline").count(), 2);
        let png = chart().to_png().unwrap();
        assert_eq!(&png[1..4], b"PNG");
        // Something was drawn: the image is not a blank page.
        let pm = Pixmap::decode_png(&png).unwrap();
        let dark = pm.data().chunks(4).filter(|p| p[0] < 100).count();
        assert!(dark > 500, "{dark}");
    }

    #[test]
    fn long_titles_wrap_at_spaces() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("abcdefgh ij", 4), vec!["abcdefgh", "ij"]);
    }

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        assert_eq!(ticks(-2.1, 2.1), vec![-2.0, -1.0, 0.0, 1.0, 2.0]);
        assert!(ticks(0.43, 0.61).iter().all(|t| (0.43..=0.61).contains(t)));
    }

    #[test]
    fn a_chart_without_finite_points_is_an_error() {
        let mut c = chart();
        c.series
            .iter_mut()
            .for_each(|s| s.points = vec![(0.0, f64::NAN)]);
        assert!(c.to_svg().is_err());
    }
}

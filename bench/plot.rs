//! The two pictures of `bench/RESULTS.md`, written as plain SVG (no plotting dependency for
//! two charts): jobs/s against worker processes, and ABDM calls per second over time in the
//! overload runs.

use std::fmt::Write;

/// One line of a panel.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// SVG colour.
    pub color: &'static str,
    /// Dashed (for limits).
    pub dashed: bool,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

/// One chart of lines.
pub struct Panel {
    /// Title above it.
    pub title: String,
    /// Lines.
    pub series: Vec<Series>,
}

const PW: f64 = 420.0;
const PH: f64 = 220.0;
const ML: f64 = 50.0;
const MT: f64 = 30.0;
const MB: f64 = 36.0;
const MR: f64 = 16.0;

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at or above `v`.
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Axes with 5 ticks each at panel origin (`ox`, `oy`); returns the scale functions' ranges.
fn axes(out: &mut String, ox: f64, oy: f64, xmax: f64, ymax: f64, xlabel: &str, ylabel: &str) {
    let (w, h) = (PW - ML - MR, PH - MT - MB);
    let (x0, y0) = (ox + ML, oy + MT + h);
    let _ = write!(
        out,
        r##"<line x1="{x0}" y1="{y0}" x2="{}" y2="{y0}" stroke="#333"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="#333"/>"##,
        x0 + w,
        y0 - h
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (x, y) = (x0 + f * w, y0 - f * h);
        let _ = write!(
            out,
            r##"<text x="{x}" y="{}" font-size="10" text-anchor="middle">{}</text><text x="{}" y="{}" font-size="10" text-anchor="end">{}</text><line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            y0 + 13.0,
            fmt_tick(f * xmax),
            x0 - 4.0,
            y + 3.0,
            fmt_tick(f * ymax),
            x0 + w
        );
    }
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text><text x="{}" y="{}" font-size="11" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"##,
        x0 + w / 2.0,
        y0 + 28.0,
        escape(xlabel),
        ox + 12.0,
        y0 - h / 2.0,
        ox + 12.0,
        y0 - h / 2.0,
        escape(ylabel)
    );
}

fn fmt_tick(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Panels of lines in a grid of `cols` columns, sharing axis labels.
pub fn lines(title: &str, panels: &[Panel], cols: usize, xlabel: &str, ylabel: &str) -> String {
    let cols = cols.max(1);
    let rows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (PW * cols as f64, PH * rows as f64 + 40.0);
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="{}" y="20" font-size="14" text-anchor="middle">{}</text>"##,
        w / 2.0,
        escape(title)
    );
    for (i, p) in panels.iter().enumerate() {
        let (ox, oy) = (PW * (i % cols) as f64, 30.0 + PH * (i / cols) as f64);
        let all = p.series.iter().flat_map(|s| s.points.iter());
        let xmax = nice(all.clone().map(|pt| pt.0).fold(0.0, f64::max));
        let ymax = nice(all.map(|pt| pt.1).fold(0.0, f64::max) * 1.1);
        axes(&mut out, ox, oy, xmax, ymax, xlabel, ylabel);
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"##,
            ox + ML + (PW - ML - MR) / 2.0,
            oy + 18.0,
            escape(&p.title)
        );
        let (pw, ph) = (PW - ML - MR, PH - MT - MB);
        for (k, s) in p.series.iter().enumerate() {
            let pts: Vec<String> = s
                .points
                .iter()
                .map(|(x, y)| {
                    format!(
                        "{:.1},{:.1}",
                        ox + ML + x / xmax * pw,
                        oy + MT + ph - y / ymax * ph
                    )
                })
                .collect();
            let dash = if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = write!(
                out,
                r##"<polyline fill="none" stroke="{}" stroke-width="1.6"{dash} points="{}"/><rect x="{}" y="{}" width="10" height="3" fill="{}"/><text x="{}" y="{}" font-size="10">{}</text>"##,
                s.color,
                pts.join(" "),
                ox + PW - 150.0,
                oy + MT + 6.0 + 13.0 * k as f64,
                s.color,
                ox + PW - 136.0,
                oy + MT + 10.0 + 13.0 * k as f64,
                escape(&s.name)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Bars with their values, and a dashed target line.
pub fn bars(
    title: &str,
    bars: &[(String, f64)],
    target: Option<(f64, &str)>,
    xlabel: &str,
    ylabel: &str,
) -> String {
    let (w, h) = (PW + 60.0, PH + 40.0);
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="{}" y="20" font-size="14" text-anchor="middle">{}</text>"##,
        w / 2.0,
        escape(title)
    );
    let top = bars
        .iter()
        .map(|b| b.1)
        .chain(target.map(|t| t.0))
        .fold(0.0, f64::max);
    let ymax = nice(top * 1.15);
    let (ox, oy) = (0.0, 30.0);
    let (pw, ph) = (PW + 60.0 - ML - MR, PH - MT - MB);
    let (x0, y0) = (ox + ML, oy + MT + ph);
    let _ = write!(
        out,
        r##"<line x1="{x0}" y1="{y0}" x2="{}" y2="{y0}" stroke="#333"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="#333"/>"##,
        x0 + pw,
        y0 - ph
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let y = y0 - f * ph;
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="end">{}</text><line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            x0 - 4.0,
            y + 3.0,
            fmt_tick(f * ymax),
            x0 + pw
        );
    }
    let slot = pw / bars.len().max(1) as f64;
    for (i, (label, v)) in bars.iter().enumerate() {
        let bh = v / ymax * ph;
        let x = x0 + slot * i as f64 + slot * 0.2;
        let _ = write!(
            out,
            r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#4e79a7"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{v:.0}</text><text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
            y0 - bh,
            slot * 0.6,
            x + slot * 0.3,
            y0 - bh - 4.0,
            x + slot * 0.3,
            y0 + 14.0,
            escape(label)
        );
    }
    if let Some((t, name)) = target {
        let y = y0 - t / ymax * ph;
        let _ = write!(
            out,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e15759" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end" fill="#e15759">{}</text>"##,
            x0 + pw,
            x0 + pw,
            y - 4.0,
            escape(name)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text><text x="12" y="{}" font-size="11" text-anchor="middle" transform="rotate(-90 12 {})">{}</text></svg>"##,
        x0 + pw / 2.0,
        y0 + 30.0,
        escape(xlabel),
        y0 - ph / 2.0,
        y0 - ph / 2.0,
        escape(ylabel)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(120.0), 200.0);
        assert_eq!(nice(1000.0), 1000.0);
        assert_eq!(nice(1001.0), 2000.0);
    }

    #[test]
    fn pictures_are_svg_with_every_series() {
        let svg = lines(
            "t",
            &[Panel {
                title: "p <1>".into(),
                series: vec![Series {
                    name: "sent".into(),
                    color: "#000",
                    dashed: false,
                    points: vec![(0.0, 1.0), (1.0, 2.0)],
                }],
            }],
            1,
            "s",
            "calls/s",
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("p &lt;1&gt;") && svg.contains("polyline"));
        let b = bars("b", &[("1".into(), 10.0)], Some((5.0, "target")), "x", "y");
        assert!(b.contains("<rect x=") && b.contains("target"));
    }
}

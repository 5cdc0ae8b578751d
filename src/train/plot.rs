//! A loss-curve picture as a hand-written SVG: no plotting crate, any browser shows it.
//!
//! Several named series of `(step, loss)` points share one pair of axes; ticks fall on
//! round numbers (1, 2 or 5 × 10ⁿ). Non-finite points are skipped.

use super::metrics::Record;
use std::fmt::Write;

/// One line on the plot.
pub struct Series<'a> {
    /// The legend's label.
    pub name: &'a str,
    /// CSS colour.
    pub color: &'a str,
    /// Line width in pixels.
    pub width: f64,
    /// Opacity in [0, 1].
    pub opacity: f64,
    /// Draw a dot at each point (for sparse series such as evaluations).
    pub dots: bool,
    /// The (x, y) points, in data units, in drawing order.
    pub points: &'a [(f64, f64)],
}

const W: f64 = 720.0;
const H: f64 = 440.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 48.0;

/// The picture of a run's `metrics.jsonl` records: every step's batch loss (thin) and the
/// evaluations' train and val losses (with dots).
pub fn history_svg(title: &str, history: &[Record]) -> String {
    let mut steps = Vec::new();
    let mut evals_train = Vec::new();
    let mut evals_val = Vec::new();
    for r in history {
        match *r {
            Record::Train { step, loss, .. } => steps.push((step as f64, loss)),
            Record::Eval {
                step,
                train_loss,
                val_loss,
                ..
            } => {
                evals_train.push((step as f64, train_loss));
                evals_val.push((step as f64, val_loss));
            }
        }
    }
    loss_svg(
        title,
        &[
            Series {
                name: "batch loss",
                color: "#9bbbd9",
                width: 1.0,
                opacity: 0.6,
                dots: false,
                points: &steps,
            },
            Series {
                name: "train (eval)",
                color: "#1f5fa6",
                width: 2.0,
                opacity: 1.0,
                dots: true,
                points: &evals_train,
            },
            Series {
                name: "val (eval)",
                color: "#d9480f",
                width: 2.0,
                opacity: 1.0,
                dots: true,
                points: &evals_val,
            },
        ],
    )
}

/// Round tick positions covering `[lo, hi]`, about `target` of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() >= 10_000.0 {
        return format!("{:.0}k", v / 1000.0);
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `s` with the characters XML gives meaning to escaped, for SVG text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The SVG document for `series` under `title`.
pub fn loss_svg(title: &str, series: &[Series]) -> String {
    let finite = |&&(x, y): &&(f64, f64)| x.is_finite() && y.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite).copied())
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in &all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if all.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    // A little headroom above and below the data.
    let pad = 0.05 * (y1 - y0);
    let (y0, y1) = ((y0 - pad).max(0.0), y1 + pad);
    let (x0, x1) = (x0.min(0.0), x1);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Grid and ticks.
    for t in nice_ticks(y0, y1, 6) {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    for t in nice_ticks(x0, x1, 8) {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e4e4e4"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 16.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#888"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">step</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">loss</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0
    );
    // Lines.
    for ser in series {
        let pts: Vec<String> = ser
            .points
            .iter()
            .filter(finite)
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="{}" stroke-opacity="{}" points="{}"/>"#,
            ser.color,
            ser.width,
            ser.opacity,
            pts.join(" ")
        );
        if ser.dots {
            for p in &pts {
                let (x, y) = p.split_once(',').expect("x,y");
                let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{}"/>"#, ser.color);
            }
        }
    }
    // Legend, top right inside the frame.
    for (i, ser) in series.iter().enumerate() {
        let y = TOP + 16.0 + 18.0 * i as f64;
        let x = W - RIGHT - 150.0;
        let last = ser
            .points
            .iter()
            .rev()
            .find(finite)
            .map(|p| format!(" {:.4}", p.1))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3" stroke-opacity="{}"/><text x="{}" y="{}">{}{}</text>"#,
            x + 20.0,
            ser.color,
            ser.opacity.max(0.5),
            x + 26.0,
            y + 4.0,
            escape(ser.name),
            last
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(1.3, 2.9, 4), vec![1.5, 2.0, 2.5]);
    }

    #[test]
    fn svg_has_every_series_and_survives_nan() {
        let a = [(0.0, 3.0), (10.0, f64::NAN), (20.0, 2.0)];
        let svg = loss_svg(
            "t <1>",
            &[Series {
                name: "train",
                color: "red",
                width: 1.0,
                opacity: 1.0,
                dots: true,
                points: &a,
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(!svg.contains("NaN"));
        assert_eq!(svg.matches("<circle").count(), 2);
    }
}

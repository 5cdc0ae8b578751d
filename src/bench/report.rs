//! A [`Report`] as a terminal table, as JSON, and as an SVG chart of each kernel's achieved rate as
//! a percentage of its roofline.

use super::Report;
use crate::train::plot::{escape, nice_ticks};
use crate::{Error, Result};
use std::fmt::Write;
use std::path::Path;

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The roofline line, e.g. "copy 4300 GB/s (...); matmul bf16 790 TFLOP/s (...)".
fn roofline_line(r: &Report) -> String {
    let mut s = format!("copy {:.1} GB/s ({})", r.roofline.copy_gbs, r.roofline.copy);
    for p in &r.roofline.peaks {
        let _ = write!(s, "; matmul {} {} TFLOP/s ({})", p.dtype, opt(p.tflops, 2), p.source);
    }
    s
}

/// The readable table, skipped rows and their reasons after it, the GPT step last.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "kiln bench on {} (timed with {})", r.device, r.timing);
    if let Some(w) = &r.warning {
        let _ = writeln!(s, "WARNING: {w}");
    }
    let _ = writeln!(s, "roofline: {}", roofline_line(r));
    let _ = writeln!(
        s,
        "{:<22} {:<16} {:<5} {:>10} {:>9} {:>9} {:>7} {:>7} {:>5} {:>4}",
        "kernel", "size", "dtype", "median ms", "TFLOP/s", "GB/s", "%roof", "%lib", "reps", "sets"
    );
    let mut skipped = Vec::new();
    for row in &r.rows {
        let name = if row.library {
            format!("  {}", row.kernel)
        } else {
            row.kernel.clone()
        };
        match &row.time {
            Some(t) => {
                let _ = writeln!(
                    s,
                    "{:<22} {:<16} {:<5} {:>10.4} {:>9} {:>9} {:>7} {:>7} {:>5} {:>4}",
                    name,
                    row.size,
                    row.dtype,
                    t.median_s * 1e3,
                    opt(row.tflops, 3),
                    opt(row.gbs, 1),
                    opt(row.roofline_pct, 1),
                    opt(row.vs_library_pct, 1),
                    t.reps,
                    row.input_sets
                );
            }
            None => {
                let _ = writeln!(s, "{:<22} {:<16} {:<5} {:>10}", name, row.size, row.dtype, "skipped");
                skipped.push(format!(
                    "{} {}: {}",
                    name.trim(),
                    row.size,
                    row.skipped.as_deref().unwrap_or("")
                ));
            }
        }
    }
    for k in skipped {
        let _ = writeln!(s, "skipped {k}");
    }
    if let Some(g) = &r.gpt {
        let _ = writeln!(
            s,
            "GPT training step, {} ({:.1}M parameters, {}, batch {} x context {}): {:.1} ms per step, {:.0} tokens/s, {:.3} TFLOP/s, MFU {}%",
            g.model,
            g.params as f64 / 1e6,
            g.dtype,
            g.batch,
            g.context,
            g.step.median_s * 1e3,
            g.tokens_per_s,
            g.tflops,
            opt(g.mfu_pct, 1)
        );
    }
    if let Some(why) = &r.gpt_skipped {
        let _ = writeln!(s, "GPT training step skipped: {why}");
    }
    s
}

/// Writes `text` to `path`, naming the file on failure.
fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The report as pretty JSON.
pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).expect("a report serialises")
}

pub fn write_json(r: &Report, path: &Path) -> Result<()> {
    write_file(path, &json(r))
}

pub fn write_svg(r: &Report, path: &Path) -> Result<()> {
    write_file(path, &svg(r))
}

const W: f64 = 860.0;
const LABEL: f64 = 300.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 64.0;
const BAR: f64 = 20.0;

/// A horizontal bar per measured row: its rate as a percentage of the roofline (the matmul ceiling
/// for compute-bound rows, the copy bandwidth for memory-bound ones), a line at 100%.
pub fn svg(r: &Report) -> String {
    let rows: Vec<_> = r.rows.iter().filter(|row| row.time.is_some()).collect();
    let max_pct = rows.iter().filter_map(|row| row.roofline_pct).fold(100.0f64, f64::max);
    let h = TOP + BAR * rows.len() as f64 + 40.0;
    let px = |pct: f64| LABEL + pct / max_pct * (W - LABEL - RIGHT);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="15">kiln bench on {}: achieved / roofline</text>"#,
        W / 2.0,
        escape(&r.device)
    );
    let sub = r.warning.clone().unwrap_or_else(|| roofline_line(r));
    let _ = writeln!(
        s,
        r#"<text x="{}" y="38" text-anchor="middle" font-size="10">{}</text>"#,
        W / 2.0,
        escape(&sub)
    );
    for t in nice_ticks(0.0, max_pct, 5) {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e4e4e4"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{t}%</text>"##,
            h - 36.0,
            h - 22.0
        );
    }
    let x100 = px(100.0);
    let _ = writeln!(
        s,
        r##"<line x1="{x100:.1}" y1="{:.1}" x2="{x100:.1}" y2="{:.1}" stroke="#c00" stroke-dasharray="4 3"/>"##,
        TOP - 6.0,
        h - 36.0
    );
    for (i, row) in rows.iter().enumerate() {
        let y = TOP + BAR * i as f64;
        let label = format!(
            "{}{} {} {}",
            if row.library { "  " } else { "" },
            row.kernel,
            row.size,
            row.dtype
        );
        let rate = match row.tflops {
            Some(t) => format!("{t:.2} TFLOP/s"),
            None => format!("{} GB/s", opt(row.gbs, 1)),
        };
        let value = format!("{rate}, {}%", opt(row.roofline_pct, 1));
        let color = if row.library { "#999" } else { "#2a6fbb" };
        let width = row.roofline_pct.map_or(0.0, |p| px(p) - LABEL);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{LABEL}" y="{:.1}" width="{width:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LABEL - 6.0,
            y + 14.0,
            escape(&label),
            y + 3.0,
            BAR - 6.0,
            LABEL + width + 4.0,
            y + 14.0,
            escape(&value)
        );
    }
    s.push_str("</svg>\n");
    s
}

//! A [`Report`] as a terminal table, as JSON, and as an SVG chart of each kernel's achieved rate as
//! a percentage of its roofline; the chart's drawing ([`bar_chart`]) also draws the generation
//! benchmark's (generation.rs).

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

/// What the `%roof` and `%lib` columns compare, printed under the table.
const LIB_METHOD: &str = "%lib: our rate over the row below it (the library, or the unfused composition of a fused \
kernel) at the same size and dtype, median over median";

/// The rate a row's `%roof` is over, e.g. "410.2 GB/s", marked "*" where it is the row's own
/// fastest call.
fn ceiling(row: &super::Row) -> String {
    let mark = if row.ceiling_from == Some("row") { "*" } else { "" };
    match (row.ceiling_tflops, row.ceiling_gbs) {
        (Some(t), _) => format!("{t:.3} TFLOP/s{mark}"),
        (_, Some(g)) => format!("{g:.1} GB/s{mark}"),
        _ => "-".into(),
    }
}

/// The readable table: the machine and the check first, skipped rows and their reasons after it,
/// what the percentages compare, the GPT step last.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "kiln bench on {} (timed with {})", r.device, r.timing);
    let _ = writeln!(s, "machine: {}", r.machine.line());
    if let Some(w) = &r.warning {
        let _ = writeln!(s, "WARNING: {w}");
    }
    let _ = writeln!(s, "checked: {}", r.checked);
    let _ = writeln!(s, "roofline: {}", roofline_line(r));
    let _ = writeln!(
        s,
        "{:<28} {:<16} {:<5} {:>10} {:>9} {:>9} {:>16} {:>7} {:>7} {:>5} {:>4}",
        "kernel", "size", "dtype", "median ms", "TFLOP/s", "GB/s", "ceiling", "%roof", "%lib", "reps", "sets"
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
                    "{:<28} {:<16} {:<5} {:>10.4} {:>9} {:>9} {:>16} {:>7} {:>7} {:>5} {:>4}",
                    name,
                    row.size,
                    row.dtype,
                    t.median_s * 1e3,
                    opt(row.tflops, 3),
                    opt(row.gbs, 1),
                    ceiling(row),
                    opt(row.roofline_pct, 1),
                    opt(row.vs_library_pct, 1),
                    t.reps,
                    row.input_sets
                );
            }
            None => {
                let _ = writeln!(s, "{:<28} {:<16} {:<5} {:>10}", name, row.size, row.dtype, "skipped");
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
    if r.rows.iter().any(|row| row.time.is_some()) {
        let _ = writeln!(s, "{}", r.roofline.method);
        let _ = writeln!(s, "{LIB_METHOD}");
    }
    if let Some(g) = &r.gpt {
        let _ = writeln!(
            s,
            "GPT training step, {} ({:.1}M parameters, {}, batch {} x context {}): {:.1} ms per step, {:.0} tokens/s, {:.1} GFLOP/s, MFU {}% (of the {} matmul ceiling above)",
            g.model,
            g.params as f64 / 1e6,
            g.dtype,
            g.batch,
            g.context,
            g.step.median_s * 1e3,
            g.tokens_per_s,
            g.gflops,
            opt(g.mfu_pct, 1),
            g.dtype
        );
        if let Some(m) = &g.gemm {
            let _ = writeln!(
                s,
                "  its GEMMs (metered over {} more steps of {:.1} ms): {:.0} calls, {:.1} GFLOP per step, {:.1} ms of \
                 core time per step = {:.1}% of the step's ({} threads); {:.1} GFLOP/s per core = {}% of the FMA peak \
                 ({} GFLOP/s on {} threads, measured; {}% on the GEMMs' thread CPU time); the step's MFU \
                 against that peak {}%",
                super::gpt::METERED_STEPS,
                m.step_ms,
                m.calls,
                m.gflop,
                m.core_ms,
                m.share_pct,
                m.threads,
                m.gflops_per_core,
                opt(m.efficiency_pct, 1),
                opt(m.fma_peak_gflops, 1),
                m.threads,
                opt(m.efficiency_cpu_pct, 1),
                opt(m.mfu_fma_pct, 1)
            );
            let _ = writeln!(s, "  GEMM shape (MxNxK, A B: N rows contiguous, T transposed; kernel): calls, GFLOP, core ms, % of the step, % of the FMA peak (on thread CPU time)");
            let (shown, rest): (Vec<_>, Vec<_>) = m.shapes.iter().partition(|r| r.share_pct >= 0.5);
            for r in shown {
                let _ = writeln!(
                    s,
                    "    {}: {:.0}, {:.2}, {:.1}, {:.1}%, {}% ({}%)",
                    r.shape,
                    r.calls,
                    r.gflop,
                    r.core_ms,
                    r.share_pct,
                    opt(r.efficiency_pct, 1),
                    opt(r.efficiency_cpu_pct, 1)
                );
            }
            if !rest.is_empty() {
                let _ = writeln!(
                    s,
                    "    {} more shapes under 0.5% of the step each: {:.1} ms of core time in all (the JSON lists them)",
                    rest.len(),
                    rest.iter().map(|r| r.core_ms).sum::<f64>()
                );
            }
        }
    }
    if let Some(why) = &r.gpt_skipped {
        let _ = writeln!(s, "GPT training step skipped: {why}");
    }
    s
}

/// Writes `text` to `path`, naming the file on failure.
pub fn write_file(path: &Path, text: &str) -> Result<()> {
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

/// The width of `text` at `size` px, from a conservative average glyph width of 0.6 em (sans-serif
/// digits and lower case are about 0.55 em): the chart places every text by it, so that none
/// overlaps another or leaves the picture.
pub fn text_width(text: &str, size: f64) -> f64 {
    0.6 * size * text.chars().count() as f64
}

/// `text` broken at spaces into lines of at most `width` px at `size` px.
fn wrap(text: &str, width: f64, size: f64) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match lines.last_mut() {
            Some(line) if text_width(&format!("{line} {word}"), size) <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// Font sizes and spacing of the chart, in px.
const TITLE: f64 = 15.0;
const SMALL: f64 = 10.0;
const FONT: f64 = 12.0;
const MARGIN: f64 = 10.0;
const BARS: f64 = 420.0;
const BAR: f64 = 20.0;

/// One bar of a [`bar_chart`]: a measured rate as a percentage of its ceiling.
pub(super) struct Bar {
    /// Left of the bar, right-aligned.
    pub label: String,
    /// The bar's length: the rate over its ceiling, in percent (None: no ceiling, no bar).
    pub pct: Option<f64>,
    /// Right of the bar: the rate and the percentage in words.
    pub value: String,
    pub color: &'static str,
}

/// The colour of kiln's own bars.
pub(super) const KILN_COLOR: &str = "#2a6fbb";

/// The legend entry of the line at 100%, last in every chart.
const CEILING_LEGEND: (&str, &str, bool) = ("#c00", "100% of the ceiling", true);

/// A horizontal bar per measured rate as a percentage of its ceiling, a dashed line at 100%.
/// Above the bars: the title, the `notes` (the machine, how the ceilings were measured) wrapped to
/// the width, and a legend of (colour, words) swatches then the 100% line; every text is placed
/// from its estimated width ([`text_width`]) so that nothing overlaps.
pub(super) fn bar_chart(title: &str, notes: &[String], legend: &[(&str, &str)], bars: &[Bar]) -> String {
    let max_pct = bars.iter().filter_map(|bar| bar.pct).fold(100.0f64, f64::max);
    let widest = |texts: Vec<&str>| texts.iter().map(|t| text_width(t, FONT)).fold(0.0, f64::max);
    let label_w = widest(bars.iter().map(|bar| bar.label.as_str()).collect()).max(100.0) + MARGIN;
    let value_w = widest(bars.iter().map(|bar| bar.value.as_str()).collect()).max(60.0) + MARGIN;
    let w = (MARGIN + label_w + BARS + value_w + MARGIN).max(700.0);
    let left = MARGIN + label_w; // where the bars start
    let px = |pct: f64| left + pct / max_pct * BARS;

    // the header: title, then small lines wrapped to the width, then the legend
    let lines: Vec<String> = notes.iter().flat_map(|t| wrap(t, w - 2.0 * MARGIN, SMALL)).collect();
    let mut y = MARGIN + TITLE;
    let mut s = String::new();
    let mut body = String::new();
    let _ = writeln!(
        body,
        r#"<text x="{:.1}" y="{y:.1}" text-anchor="middle" font-size="{TITLE}">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    for line in &lines {
        y += SMALL + 4.0;
        let _ = writeln!(
            body,
            r#"<text x="{MARGIN}" y="{y:.1}" font-size="{SMALL}">{}</text>"#,
            escape(line)
        );
    }
    // legend: a swatch and its words per entry, side by side
    y += FONT + 8.0;
    let mut x = MARGIN;
    let swatches = legend.iter().map(|&(color, words)| (color, words, false));
    for (color, words, dashed) in swatches.chain([CEILING_LEGEND]) {
        if dashed {
            let _ = writeln!(
                body,
                r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-dasharray="4 3"/>"##,
                x + 6.0,
                y - FONT,
                x + 6.0,
                y
            );
        } else {
            let _ = writeln!(
                body,
                r#"<rect x="{x:.1}" y="{:.1}" width="12" height="{:.1}" fill="{color}"/>"#,
                y - FONT + 2.0,
                FONT - 2.0
            );
        }
        let _ = writeln!(body, r#"<text x="{:.1}" y="{y:.1}">{}</text>"#, x + 16.0, escape(words));
        x += 16.0 + text_width(words, FONT) + 2.0 * MARGIN;
    }
    let top = y + 2.0 * MARGIN;
    let bottom = top + BAR * bars.len() as f64;
    let h = bottom + FONT + 2.0 * MARGIN;
    for t in nice_ticks(0.0, max_pct, 5) {
        let x = px(t);
        let _ = writeln!(
            body,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#e4e4e4"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{t}%</text>"##,
            bottom + FONT + 4.0
        );
    }
    let x100 = px(100.0);
    let _ = writeln!(
        body,
        r##"<line x1="{x100:.1}" y1="{:.1}" x2="{x100:.1}" y2="{bottom:.1}" stroke="{}" stroke-dasharray="4 3"/>"##,
        top - 6.0,
        CEILING_LEGEND.0
    );
    for (i, bar) in bars.iter().enumerate() {
        let y = top + BAR * i as f64;
        let width = bar.pct.map_or(0.0, |p| px(p) - left);
        let _ = writeln!(
            body,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{left:.1}" y="{:.1}" width="{width:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            left - MARGIN / 2.0,
            y + 14.0,
            escape(&bar.label),
            y + 3.0,
            BAR - 6.0,
            bar.color,
            left + width + 4.0,
            y + 14.0,
            escape(&bar.value)
        );
    }
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif" font-size="{FONT}">"#
    );
    let _ = writeln!(s, r#"<rect width="{w:.0}" height="{h:.0}" fill="white"/>"#);
    s.push_str(&body);
    s.push_str("</svg>\n");
    s
}

/// The colour of a library's (or an unfused composition's) bars.
const LIBRARY_COLOR: &str = "#999";

/// The kernel rows' chart ([`bar_chart`]): a bar per measured row, its rate as a percentage of
/// the row's ceiling (roofline.rs), the library's rows in grey under kiln's.
pub fn svg(r: &Report) -> String {
    let bars: Vec<Bar> = r
        .rows
        .iter()
        .filter(|row| row.time.is_some())
        .map(|row| {
            let rate = match row.tflops {
                Some(t) => format!("{t:.2} TFLOP/s"),
                None => format!("{} GB/s", opt(row.gbs, 1)),
            };
            Bar {
                label: format!(
                    "{}{} {} {}",
                    if row.library { "  " } else { "" },
                    row.kernel,
                    row.size,
                    row.dtype
                ),
                pct: row.roofline_pct,
                value: format!("{rate}, {}%", opt(row.roofline_pct, 1)),
                color: if row.library { LIBRARY_COLOR } else { KILN_COLOR },
            }
        })
        .collect();
    let mut notes = vec![r.machine.line()];
    notes.extend(r.warning.clone());
    notes.push(format!("checked: {}", r.checked));
    notes.push(r.roofline.method.to_string());
    bar_chart(
        &format!("kiln bench on {}: achieved / ceiling", r.device),
        &notes,
        &[
            (KILN_COLOR, "kiln's kernel"),
            (LIBRARY_COLOR, "library, or the unfused composition"),
        ],
        &bars,
    )
}

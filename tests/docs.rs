//! The docs cannot rot: every relative link in README.md and docs/*.md leads to a file (and its
//! `#anchor` to a heading there); every doc is compiled as a doc-test (src/lib.rs, `doc_tests`); a
//! `rust,ignore` or `cuda` block, which quotes the source rather than runs, is still in it; every file
//! and function docs/ops.md names exists, as does every repository path a doc names in code spans; every
//! file size docs/tour.md gives is within a fifth of the file's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// README.md and every docs/*.md, sorted.
fn doc_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    files.insert(0, repo().join("README.md"));
    files
}

/// The lines of `text` outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// `line` without its inline code spans (`...`), where a `](` is not a link.
fn without_code_spans(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// The targets of the markdown links `[text](target)` on a line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut out = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(after[..end].trim().to_string());
        rest = &after[end..];
    }
    out
}

/// GitHub's anchor for a heading: lower case, letters, digits, '-' and '_' kept, spaces to '-'.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a markdown file's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    prose_lines(text)
        .into_iter()
        .filter_map(|(_, l)| l.strip_prefix('#'))
        .map(|h| slug(h.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_relative_link_resolves_to_a_file_and_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in doc_files() {
        let text = read(&doc);
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
                let file = if path.is_empty() {
                    doc.clone()
                } else {
                    doc.parent().unwrap().join(path)
                };
                let place = format!("{}:{n}: {target}", doc.strip_prefix(repo()).unwrap().display());
                if !file.exists() {
                    broken.push(format!("{place}: no such file"));
                } else if !anchor.is_empty() {
                    if file.extension().is_none_or(|x| x != "md") {
                        broken.push(format!("{place}: an anchor into a file that is not markdown"));
                    } else if !anchors(&read(&file)).contains(anchor) {
                        broken.push(format!("{place}: no heading with that anchor"));
                    }
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} links found: is the parser broken?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn link_parsing_and_anchors_follow_github() {
    assert_eq!(
        link_targets("see [a](docs/a.md#x), `[not](a link)` and [b](../b.rs)"),
        ["docs/a.md#x", "../b.rs"]
    );
    assert_eq!(slug(" 2. The backward, derived"), "2-the-backward-derived");
    assert_eq!(
        slug(" CPU f32 GEMM against NumPy/OpenBLAS"),
        "cpu-f32-gemm-against-numpyopenblas"
    );
    assert_eq!(slug(" `kiln bench`: kernels"), "kiln-bench-kernels");
    let text = "# Top\n```sh\n# not a heading\n```\n## Mixed precision: bf16\n";
    assert_eq!(
        anchors(text),
        BTreeSet::from(["top".to_string(), "mixed-precision-bf16".to_string()])
    );
}

#[test]
fn every_doc_is_compiled_as_a_doc_test() {
    let lib = read(&repo().join("src/lib.rs"));
    let missing: Vec<String> = doc_files()
        .iter()
        .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
        .filter(|p| !lib.contains(&format!("include_str!(\"../{p}\")")))
        .collect();
    assert!(
        missing.is_empty(),
        "add these to `doc_tests` in src/lib.rs so their Rust compiles: {missing:?}"
    );
}

/// The fenced blocks of `text` opened with exactly the info string `info`, as lists of lines.
fn blocks<'a>(text: &'a str, info: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    // inside a block: Some(whether it is wanted, its lines)
    let mut current: Option<(bool, Vec<&str>)> = None;
    for line in text.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (current.take(), fence) {
            (None, Some(tag)) => current = Some((tag.trim() == info, Vec::new())),
            (None, None) => {}
            (Some((wanted, lines)), Some(_)) => {
                if wanted {
                    out.push(lines);
                }
            }
            (Some((wanted, mut lines)), None) => {
                lines.push(line);
                current = Some((wanted, lines));
            }
        }
    }
    out
}

/// Every file under `dir` whose name ends in one of `extensions`, recursively.
fn files_under(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, extensions, out);
        } else if p.extension().is_some_and(|x| extensions.iter().any(|e| x == *e)) {
            out.push(p);
        }
    }
}

/// Each file's lines, trimmed, without blank ones.
fn trimmed_lines(files: &[PathBuf]) -> Vec<Vec<String>> {
    files
        .iter()
        .map(|f| {
            read(f)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .collect()
}

#[test]
fn quoted_code_is_still_in_the_source() {
    // a `rust,ignore` block quotes src/, a `cuda` block quotes kernels/
    let (mut rust, mut cuda) = (Vec::new(), Vec::new());
    files_under(&repo().join("src"), &["rs"], &mut rust);
    files_under(&repo().join("kernels"), &["cu", "cuh"], &mut cuda);
    let sources = [("rust,ignore", trimmed_lines(&rust)), ("cuda", trimmed_lines(&cuda))];
    let mut stale = Vec::new();
    let mut quotes = 0;
    for doc in doc_files() {
        let text = read(&doc);
        for (info, source) in &sources {
            for block in blocks(&text, info) {
                quotes += 1;
                // code lines verbatim, in order, one after another; comments may annotate the quote
                let code: Vec<&str> = block
                    .iter()
                    .map(|l| l.trim())
                    .filter(|l| !l.is_empty() && !l.starts_with("//"))
                    .collect();
                let found = source.iter().any(|src| {
                    src.windows(code.len().max(1))
                        .any(|w| w.iter().zip(&code).all(|(a, b)| a == b))
                });
                if !found {
                    stale.push(format!("{} ({info}): {}", doc.display(), code.first().unwrap_or(&"")));
                }
            }
        }
    }
    assert!(quotes >= 4, "only {quotes} quoted blocks found: is the parser broken?");
    assert!(
        stale.is_empty(),
        "quoted blocks no longer in the source (update the doc):\n{}",
        stale.join("\n")
    );
}

#[test]
fn files_and_functions_named_by_the_op_map_exist() {
    let text = read(&repo().join("docs/ops.md"));
    let mut missing = Vec::new();
    let mut checked = 0;
    for (n, line) in prose_lines(&text) {
        for span in line.split('`').skip(1).step_by(2) {
            let (path, name) = span.split_once("::").unwrap_or((span, ""));
            let is_path = [".rs", ".cu", ".cuh", ".md"].iter().any(|x| path.ends_with(x)) || path.ends_with('/');
            if !is_path || path.contains(' ') {
                continue;
            }
            checked += 1;
            let file = repo().join(path);
            if !file.exists() {
                missing.push(format!("docs/ops.md:{n}: {path}: no such file or folder"));
                continue;
            }
            if name.is_empty() {
                continue;
            }
            let source = read(&file);
            let found = if path.ends_with(".rs") {
                source.contains(&format!("fn {name}(")) || source.contains(&format!("fn {name}<"))
            } else {
                // a kernel family: its names start with `name` (the dtype suffix follows)
                source.contains(name)
            };
            if !found {
                missing.push(format!("docs/ops.md:{n}: {name} not in {path}"));
            }
        }
    }
    assert!(checked > 100, "only {checked} names found: is the parser broken?");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_tour_names_files_that_exist_with_their_sizes() {
    let text = read(&repo().join("docs/tour.md"));
    let mut wrong = Vec::new();
    let mut rows = 0;
    for (n, line) in prose_lines(&text) {
        // | [path](../path) | ~N | what |
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('[') {
            continue;
        }
        let Some(target) = link_targets(cells[1]).into_iter().next() else {
            continue;
        };
        let Ok(lines) = cells[2].trim_start_matches('~').parse::<usize>() else {
            wrong.push(format!("docs/tour.md:{n}: size {:?} is not ~N", cells[2]));
            continue;
        };
        rows += 1;
        let file = repo().join("docs").join(&target);
        let Ok(source) = std::fs::read_to_string(&file) else {
            wrong.push(format!("docs/tour.md:{n}: {target} does not exist"));
            continue;
        };
        let actual = source.lines().count();
        if actual.abs_diff(lines) * 5 > lines {
            wrong.push(format!(
                "docs/tour.md:{n}: {target} has {actual} lines, the tour says ~{lines}"
            ));
        }
    }
    assert!(rows >= 20, "only {rows} files found in the tour: is the parser broken?");
    assert!(wrong.is_empty(), "update docs/tour.md:\n{}", wrong.join("\n"));
}

#[test]
fn paths_in_code_spans_exist() {
    // `src/...`, `kernels/...`, `tests/...` in prose; `<name>` and `*` mark patterns, not paths
    const ROOTS: [&str; 6] = ["src/", "kernels/", "tests/", "benches/", "scripts/", "docs/"];
    let mut missing = Vec::new();
    let mut checked = 0;
    for doc in doc_files() {
        let text = read(&doc);
        for (n, line) in prose_lines(&text) {
            for span in line.split('`').skip(1).step_by(2) {
                for word in span.split([' ', ',', '(', ')', '"']) {
                    let path = word
                        .split("::")
                        .next()
                        .unwrap_or_default()
                        .trim_end_matches(['.', ':', ';']);
                    if !ROOTS.iter().any(|r| path.starts_with(r)) || path.contains(['<', '*', '{']) {
                        continue;
                    }
                    checked += 1;
                    if !repo().join(path).exists() {
                        missing.push(format!("{}:{n}: {path}", doc.strip_prefix(repo()).unwrap().display()));
                    }
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} paths found: is the parser broken?");
    assert!(
        missing.is_empty(),
        "paths named in the docs that do not exist:\n{}",
        missing.join("\n")
    );
}

//! The layering rule of DESIGN.md, checked by reading the sources: layers import one way only,
//! bottom to top, dtype/layout → backend (op vocabulary → cpu, cuda → Storage) → Tensor +
//! autograd → ops → nn/model → train → cli, and no two files import each other.
//!
//! Every file under `src/` is read; its `use` declarations (brace trees expanded) and the
//! `crate::`/`super::`/`self::` paths in its code are resolved to the file that defines what they
//! name, following the `use` re-exports of `mod.rs` files (so `super::map` in `cpu/unary.rs` is
//! `cpu/map.rs`, not `cpu/mod.rs`). A `pub use` of a child module's item is the module's
//! interface, not a dependency, and `mod` declarations are structure: neither is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path (`["backend", "cpu", "map"]`) and the file that holds it.
#[derive(Debug)]
struct Module {
    file: String,
    path: Vec<String>,
    /// The code without comments, strings and `use` declarations.
    code: String,
}

/// One `use` binding: the name it introduces (`*` for a glob), the full path it names, and
/// whether it is visible outside the file (`pub`, `pub(crate)`, `pub(super)`).
#[derive(Clone, Debug)]
struct UseBinding {
    name: String,
    path: Vec<String>,
    reexport: bool,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/backend/cpu/mod.rs` → `["backend", "cpu"]`; `src/lib.rs` → `[]`.
fn module_path(rel: &str) -> Vec<String> {
    let rel = rel.strip_suffix(".rs").unwrap();
    let mut parts: Vec<String> = rel.split('/').skip(1).map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The source with comments and string literals blanked (so a path in a doc comment or an
/// error message is not an import). Char literals are kept: none holds a quote or `::`.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            // a string literal (raw strings in src/ hold no quotes or paths that matter)
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            let c = src[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The code without inline `mod name { ... }` blocks (unit tests, whose `super::` is this file).
fn without_inline_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("mod ") {
        let boundary = rest[..at]
            .chars()
            .last()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_');
        let after = &rest[at + 4..];
        let name_end = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let tail = after[name_end..].trim_start();
        if !boundary || name_end == 0 || !tail.starts_with('{') {
            out.push_str(&rest[..at + 4]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..at]);
        let open = at + 4 + name_end + (after[name_end..].len() - tail.len());
        let mut depth = 0;
        let mut end = rest.len();
        for (i, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Expands a use tree (`super::{a, b::{c, self}}`) into bindings, paths split on `::`.
fn expand(prefix: &[String], tree: &str, reexport: bool, out: &mut Vec<UseBinding>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let mut base = prefix.to_vec();
        base.extend(head);
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &inner[start..i], reexport, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&base, &inner[start..], reexport, out);
        return;
    }
    if tree.is_empty() {
        return;
    }
    let (tree, alias) = match tree.split_once(" as ") {
        Some((t, a)) => (t.trim(), Some(a.trim().to_string())),
        None => (tree, None),
    };
    let mut path = prefix.to_vec();
    path.extend(tree.split("::").map(|s| s.trim().to_string()));
    if path.last().map(String::as_str) == Some("self") {
        path.pop();
    }
    let name = alias.unwrap_or_else(|| path.last().cloned().unwrap_or_default());
    out.push(UseBinding { name, path, reexport });
}

/// The `use` bindings of a file, and its code with those declarations blanked.
fn use_bindings(code: &str) -> (Vec<UseBinding>, String) {
    let mut out = Vec::new();
    let mut rest_code = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = &rest[..at];
        let boundary = before.chars().last().is_none_or(|c| !c.is_alphanumeric() && c != '_');
        let after = &rest[at + 4..];
        let Some(end) = after.find(';') else { break };
        let line_start = before.rfind(['\n', ';', '{', '}']).map_or(0, |i| i + 1);
        let vis = before[line_start..].trim();
        let reexport = vis.starts_with("pub");
        if boundary && (vis.is_empty() || reexport) {
            expand(&[], &after[..end], reexport, &mut out);
            rest_code.push_str(before);
        } else {
            rest_code.push_str(&rest[..at + 4 + end]);
        }
        rest = &after[end..];
    }
    rest_code.push_str(rest);
    (out, rest_code)
}

/// Every path of two or more segments in code (`crate::a::b`, `super::a`, `cpu::typed`), outside
/// `use` declarations (which [`use_bindings`] reads). `$crate::` in macros counts as `crate::`.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) || (i > 0 && (is_ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let end = code[i..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(code.len(), |e| i + e);
        let path: Vec<String> = code[i..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if path.len() >= 2 || code[i..end].ends_with("::") {
            out.push(path);
        }
        i = end.max(i + 1);
    }
    out
}

struct Crate {
    modules: Vec<Module>,
    by_path: BTreeMap<Vec<String>, usize>,
    uses: Vec<Vec<UseBinding>>,
}

impl Crate {
    fn load() -> Crate {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        rs_files(&root.join("src"), &mut files);
        files.sort();
        let (mut modules, mut uses) = (Vec::new(), Vec::new());
        for f in files {
            let rel = f.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            if rel == "src/main.rs" {
                continue; // the binary: a crate of its own on top of the library
            }
            let code = without_inline_modules(&strip(&std::fs::read_to_string(&f).unwrap()));
            let (bindings, code) = use_bindings(&code);
            modules.push(Module {
                path: module_path(&rel),
                file: rel,
                code,
            });
            uses.push(bindings);
        }
        let by_path = modules.iter().enumerate().map(|(i, m)| (m.path.clone(), i)).collect();
        Crate { modules, by_path, uses }
    }

    /// `path` as written in module `from`, made absolute (no `crate`, `super`, `self`).
    fn absolute(&self, from: usize, path: &[String]) -> Option<Vec<String>> {
        let here = &self.modules[from].path;
        let first = path.first()?.as_str();
        let mut abs: Vec<String> = match first {
            "crate" => Vec::new(),
            "self" => here.clone(),
            "super" => here.clone(),
            _ => {
                // a name this file imports (`use super::cpu::{self}`, then `cpu::typed`)
                if let Some(u) = self.uses[from].iter().find(|u| u.name == first && u.path[0] != first) {
                    let mut p = u.path.clone();
                    p.extend(path[1..].iter().cloned());
                    return self.absolute(from, &p);
                }
                // 2018 paths: a child module of this one, else an outside crate or a type (ignored)
                let mut child = here.clone();
                child.push(first.to_string());
                if !self.by_path.contains_key(&child) {
                    return None;
                }
                here.clone()
            }
        };
        let mut rest = path;
        if first == "crate" || first == "self" {
            rest = &path[1..];
        }
        while rest.first().map(String::as_str) == Some("super") {
            abs.pop()?;
            rest = &rest[1..];
        }
        abs.extend(rest.iter().cloned());
        Some(abs)
    }

    /// The module (file) defining what the absolute `path` names, following `use` bindings of
    /// the modules it passes through (re-exports); `depth` stops a runaway.
    fn resolve(&self, path: &[String], depth: usize) -> Option<usize> {
        // the deepest prefix that is a module file
        let (mut module, mut len) = (*self.by_path.get(&Vec::new())?, 0);
        for n in 1..=path.len() {
            match self.by_path.get(&path[..n]) {
                Some(&m) => (module, len) = (m, n),
                None => break,
            }
        }
        if depth > 0 {
            if let Some(name) = path.get(len) {
                let through = self.uses[module]
                    .iter()
                    .find(|u| &u.name == name)
                    .and_then(|u| self.absolute(module, &u.path));
                if let Some(mut target) = through {
                    target.extend(path[len + 1..].iter().cloned());
                    return self.resolve(&target, depth - 1).or(Some(module));
                }
            }
        }
        Some(module)
    }

    /// Every file `from` depends on, with the path that makes it so.
    fn imports(&self, from: usize) -> BTreeMap<usize, String> {
        let mut written: Vec<Vec<String>> = self.uses[from]
            .iter()
            .filter(|u| !(u.reexport && self.is_child_path(from, &u.path)))
            .map(|u| u.path.clone())
            .collect();
        written.extend(inline_paths(&self.modules[from].code));
        let mut out = BTreeMap::new();
        for p in written {
            if p.last().map(String::as_str) == Some("*") {
                let mut p = p.clone();
                p.pop();
                if let Some(to) = self.absolute(from, &p).and_then(|a| self.resolve(&a, 0)) {
                    out.entry(to).or_insert_with(|| p.join("::"));
                }
                continue;
            }
            if let Some(to) = self.absolute(from, &p).and_then(|a| self.resolve(&a, 8)) {
                if to != from {
                    out.entry(to).or_insert_with(|| p.join("::"));
                }
            }
        }
        out
    }

    /// Whether `path`, written in `from`, names something inside one of `from`'s child modules.
    fn is_child_path(&self, from: usize, path: &[String]) -> bool {
        let here = &self.modules[from].path;
        self.absolute(from, path).is_some_and(|abs| {
            abs.len() > here.len() + 1 && abs.starts_with(here) && { self.by_path.contains_key(&abs[..here.len() + 1]) }
        })
    }

    fn file(&self, m: usize) -> &str {
        &self.modules[m].file
    }
}

/// The rule each layer's imports must keep: (files it applies to, what they may not import,
/// why). Paths are file prefixes.
fn forbidden(file: &str, target: &str, target_path: &str) -> Option<&'static str> {
    let in_dir = |f: &str, d: &str| f.starts_with(d);
    // The bottom layer: the words every layer above speaks (tensor/ holds them next to Tensor,
    // which sits two layers higher, so the rule names the files).
    const VOCABULARY: [&str; 3] = ["src/tensor/dtype.rs", "src/tensor/layout.rs", "src/tensor/device.rs"];
    if VOCABULARY.contains(&file) && !VOCABULARY.contains(&target) && target != "src/error.rs" {
        return Some("dtype, layout and device are the bottom vocabulary: they import only each other and Error");
    }
    if in_dir(file, "src/backend/") {
        let above = [
            "src/ops/",
            "src/autograd/",
            "src/nn/",
            "src/model/",
            "src/optim/",
            "src/train/",
        ];
        if above.iter().any(|d| in_dir(target, d))
            || target == "src/tensor/mod.rs"
            || target_path.ends_with("Tensor")
            || in_dir(target, "src/cli/")
            || in_dir(target, "src/bench/")
        {
            return Some("a backend imports nothing above it (ops/, Tensor, autograd, ...)");
        }
    }
    if in_dir(file, "src/backend/op/") && in_dir(target, "src/backend/") && !in_dir(target, "src/backend/op/") {
        return Some("the op vocabulary imports no backend and no Storage");
    }
    if (in_dir(file, "src/backend/cpu/") || in_dir(file, "src/backend/cuda/"))
        && matches!(
            target,
            "src/backend/mod.rs" | "src/backend/storage.rs" | "src/backend/dispatch.rs"
        )
    {
        return Some("a backend imports the op vocabulary (backend/op/), not the Storage layer above it");
    }
    if (in_dir(file, "src/ops/") || in_dir(file, "src/backend/cuda/")) && in_dir(target, "src/backend/cpu/") {
        return Some("ops/ and the CUDA backend never import the CPU backend");
    }
    if in_dir(file, "src/backend/cpu/") && in_dir(target, "src/backend/cuda/") {
        return Some("the CPU backend never imports the CUDA backend");
    }
    None
}

#[test]
fn layers_import_one_way() {
    let krate = Crate::load();
    assert!(krate.modules.len() > 50, "src/ was not found or read");
    let mut violations = Vec::new();
    for from in 0..krate.modules.len() {
        for (to, via) in krate.imports(from) {
            if let Some(why) = forbidden(krate.file(from), krate.file(to), &via) {
                violations.push(format!(
                    "{} imports {} ({via}): {why}",
                    krate.file(from),
                    krate.file(to)
                ));
            }
        }
    }
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

/// Pairs of files that import each other by design, each inside one layer:
/// - a `Tensor` holds its autograd node and the graph's nodes hold tensors (the "Tensor +
///   autograd" layer);
/// - `Error` names dtypes and devices in its variants, and their `FromStr` parsers return an
///   `Error` (the bottom vocabulary).
const ONE_LAYER_PAIRS: [(&str, &str); 3] = [
    ("src/autograd/mod.rs", "src/tensor/mod.rs"),
    ("src/error.rs", "src/tensor/device.rs"),
    ("src/error.rs", "src/tensor/dtype.rs"),
];

#[test]
fn no_two_files_import_each_other() {
    let krate = Crate::load();
    let edges: Vec<BTreeMap<usize, String>> = (0..krate.modules.len()).map(|m| krate.imports(m)).collect();
    let mut cycles = BTreeSet::new();
    for (a, out) in edges.iter().enumerate() {
        for (&b, via) in out {
            if let Some(back) = edges[b].get(&a) {
                let (x, y) = if a < b { (a, b) } else { (b, a) };
                if ONE_LAYER_PAIRS.contains(&(krate.file(x), krate.file(y))) {
                    continue;
                }
                let (vx, vy) = if a < b { (via, back) } else { (back, via) };
                cycles.insert(format!("{} ({vx}) <-> {} ({vy})", krate.file(x), krate.file(y)));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "files importing each other:\n{}",
        cycles.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// The checks above must see imports at all: a few known edges, resolved to their files.
#[test]
fn the_import_reader_sees_known_imports() {
    let krate = Crate::load();
    let find = |f: &str| (0..krate.modules.len()).find(|&m| krate.file(m) == f).unwrap();
    let imports_of = |f: &str| -> BTreeSet<String> {
        krate
            .imports(find(f))
            .keys()
            .map(|&m| krate.file(m).to_string())
            .collect()
    };
    // `use crate::backend::op::UnaryOp` through backend/op/mod.rs's `pub use unary::...`
    assert!(imports_of("src/backend/cpu/unary.rs").contains("src/backend/op/unary.rs"));
    // `super::{map, ...}` through cpu/mod.rs's re-export
    assert!(imports_of("src/backend/cpu/unary.rs").contains("src/backend/cpu/map.rs"));
    // an inline `crate::` path in code
    assert!(imports_of("src/train/trainer.rs").contains("src/backend/cpu/allocator.rs"));
    // a layering violation is reported as one
    assert!(forbidden(
        "src/backend/cuda/unary.rs",
        "src/backend/cpu/map.rs",
        "super::super::cpu::map"
    )
    .is_some());
    assert!(forbidden("src/backend/cpu/unary.rs", "src/ops/unary.rs", "crate::ops::unary").is_some());
}

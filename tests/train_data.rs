//! Data: reading text files, the token cache, the train/val split and batches.

use kiln::data::{embedded, tokenize_cached, Corpus, Dataset, Split};
use kiln::tokenizer::Tokenizer;
use kiln::{DType, Device, Rng};
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-test-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn missing_empty_and_binary_files_are_clear_errors() {
    let d = temp_dir("bad");
    let missing = d.join("nope.txt");
    let err = Corpus::from_files(std::slice::from_ref(&missing))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.txt") && err.contains("no such file"), "{err}");

    let empty = d.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let err = Corpus::from_files(&[empty]).unwrap_err().to_string();
    assert!(err.contains("empty.txt") && err.contains("empty"), "{err}");

    let binary = d.join("bin.dat");
    std::fs::write(&binary, [b'o', b'k', 0xFF, 0xFE]).unwrap();
    let err = Corpus::from_files(&[binary]).unwrap_err().to_string();
    assert!(
        err.contains("bin.dat") && err.contains("UTF-8") && err.contains("offset 2"),
        "{err}"
    );

    let err = Corpus::from_files(std::slice::from_ref(&d)).unwrap_err().to_string();
    assert!(err.contains(&d.display().to_string()), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn several_files_are_joined_by_newlines() {
    let d = temp_dir("multi");
    let (a, b) = (d.join("a.txt"), d.join("b.txt"));
    std::fs::write(&a, "first").unwrap();
    std::fs::write(&b, "second\n").unwrap();
    let c = Corpus::from_files(&[a, b]).unwrap();
    assert_eq!(c.text, "first\nsecond\n");
    assert_eq!(c.sources.len(), 2);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn no_files_means_the_embedded_corpus() {
    let c = Corpus::from_files(&[]).unwrap();
    assert!(c.text.len() > 10_000, "{} bytes", c.text.len());
    assert!(c.text.contains("// file: src/lib.rs"));
    assert!(c.text.contains("pub fn"));
}

#[test]
fn the_embedded_corpus_holds_every_source_and_doc_file() {
    // Every file under src/ and docs/ on disk must be embedded or in an excluded folder, so the
    // list cannot go stale as files are added.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed: Vec<&str> = embedded::FILES.iter().map(|(p, _)| *p).collect();
    let excluded = |p: &str| embedded::EXCLUDED.iter().any(|e| p.starts_with(e));
    let mut on_disk = Vec::new();
    let mut dirs = vec![root.join("src"), root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            // hidden files are an editor's or the OS's, not the project's
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                on_disk.push(
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    assert!(on_disk.len() > 50, "{on_disk:?}");
    let missing: Vec<&String> = on_disk
        .iter()
        .filter(|p| !excluded(p) && !listed.contains(&p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the embedded corpus (add them to FILES in src/data/embedded.rs, or to EXCLUDED with the reason): {missing:?}"
    );
    // nothing listed twice, nothing listed from an excluded folder, the excluded folders exist
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), listed.len(), "a file is listed twice");
    assert!(!listed.iter().any(|p| excluded(p)), "{listed:?}");
    for e in embedded::EXCLUDED {
        assert!(
            on_disk.iter().any(|p| p.starts_with(e)),
            "{e} is excluded but holds no file"
        );
    }
    // and the corpus is those files' text
    let text = Corpus::embedded().text;
    for (path, contents) in embedded::FILES {
        assert!(text.contains(&format!("// file: {path}\n{contents}")), "{path}");
    }
}

#[test]
fn token_cache_is_reused_only_for_the_same_text_and_tokenizer() {
    let d = temp_dir("cache");
    let cache = d.join("tokens.bin");
    let corpus = Corpus::from_text("t", "abracadabra ".repeat(10));
    let char_tok = Tokenizer::char_from_text(&corpus.text);
    let (ids, reused) = tokenize_cached(&corpus, &char_tok, Some(&cache)).unwrap();
    assert!(!reused);
    assert_eq!(ids, char_tok.encode(&corpus.text).unwrap());
    let (again, reused) = tokenize_cached(&corpus, &char_tok, Some(&cache)).unwrap();
    assert!(reused);
    assert_eq!(again, ids);
    // another tokenizer: recomputed
    let (bytes, reused) = tokenize_cached(&corpus, &Tokenizer::Byte, Some(&cache)).unwrap();
    assert!(!reused);
    assert_eq!(bytes.len(), corpus.text.len());
    // other text: recomputed
    let other = Corpus::from_text("t", "abracadabra ".repeat(11));
    assert!(!tokenize_cached(&other, &Tokenizer::Byte, Some(&cache)).unwrap().1);
    // a damaged cache is ignored and rewritten
    let len = std::fs::metadata(&cache).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&cache).unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    let (ids2, reused) = tokenize_cached(&other, &Tokenizer::Byte, Some(&cache)).unwrap();
    assert!(!reused);
    assert_eq!(ids2.len(), other.text.len());
    assert!(tokenize_cached(&other, &Tokenizer::Byte, Some(&cache)).unwrap().1);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn text_outside_a_char_vocabulary_names_the_source_and_characters() {
    let tok = Tokenizer::char_from_text("abc");
    let corpus = Corpus::from_text("new.txt", "abcz");
    let err = tokenize_cached(&corpus, &tok, None).unwrap_err().to_string();
    assert!(err.contains("new.txt") && err.contains("'z'"), "{err}");
}

#[test]
fn split_is_ninety_ten_by_position() {
    let ids: Vec<u32> = (0..1000).collect();
    let d = Dataset::new(ids, 0.1).unwrap();
    assert_eq!(d.train, (0..900).collect::<Vec<u32>>());
    assert_eq!(d.val, (900..1000).collect::<Vec<u32>>());
}

#[test]
fn split_is_nanogpts_first_ninety_percent_rounded_down() {
    // nanoGPT's prepare.py keeps data[:int(n*0.9)] for training; where 0.1·n is not whole,
    // "all but the last ⌊0.1·n⌋" would keep one token more
    for n in [1005usize, 1_115_394] {
        let d = Dataset::new((0..n as u32).collect(), 0.1).unwrap();
        assert_eq!(d.train.len(), n * 9 / 10, "n = {n}");
        assert_eq!(d.val[0] as usize, n * 9 / 10);
    }
}

#[test]
fn batches_are_shifted_windows_from_one_split_and_reproducible() {
    let ids: Vec<u32> = (0..1000).collect();
    let d = Dataset::new(ids, 0.1).unwrap();
    let dev = Device::Cpu;
    let (x, y) = d.batch(Split::Val, 5, 16, &mut Rng::new(4), &dev).unwrap();
    assert_eq!(x.shape(), &[5, 16]);
    assert_eq!((x.dtype(), y.dtype()), (DType::U32, DType::U32));
    let (xv, yv) = (x.to_vec::<u32>().unwrap(), y.to_vec::<u32>().unwrap());
    for row in 0..5 {
        let xr = &xv[row * 16..row * 16 + 16];
        let yr = &yv[row * 16..row * 16 + 16];
        assert!(xr[0] >= 900 && yr[15] < 1000, "window leaves the val split: {xr:?}");
        for t in 0..16 {
            assert_eq!(yr[t], xr[t] + 1); // consecutive ids: the target is the next one
        }
    }
    let (x2, _) = d.batch(Split::Val, 5, 16, &mut Rng::new(4), &dev).unwrap();
    assert_eq!(x2.to_vec::<u32>().unwrap(), xv);
    let (x3, _) = d.batch(Split::Val, 5, 16, &mut Rng::new(5), &dev).unwrap();
    assert_ne!(x3.to_vec::<u32>().unwrap(), xv);
}

#[test]
fn a_split_shorter_than_one_window_is_an_error() {
    let d = Dataset::new((0..100).collect(), 0.1).unwrap(); // val: 10 tokens
    let err = d.check_block(16).unwrap_err().to_string();
    assert!(
        err.contains("validation split has 10 tokens") && err.contains("--block-size"),
        "{err}"
    );
    assert!(d.batch(Split::Val, 2, 16, &mut Rng::new(0), &Device::Cpu).is_err());
    assert!(d.check_block(9).is_ok());
}

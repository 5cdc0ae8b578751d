//! Fuzzing over bytes (proptest, bounded case counts) of the parsers of kiln's own run files:
//! a checkpoint's `state.json`, the token cache `tokens.bin`, `metrics.jsonl`, and safetensors
//! weights (the whole-file parser and the header-only shape reader). Whatever the bytes, a parser
//! returns a value or an error, never panics and never allocates what a header merely claims; a
//! damaged token cache is never accepted; intact files read back what was written. (GGUF's header
//! parser is fuzzed in tests/gguf.rs.)

use kiln::data::{cache_checksum, parse_token_cache, token_cache_bytes, CacheKey};
use kiln::model::io::{parse_tensors, read_shapes, serialize_tensors};
use kiln::train::checkpoint::{parse_state, DataInfo, TrainState};
use kiln::train::metrics::{self, Record};
use kiln::train::TrainConfig;
use kiln::{Device, Tensor};
use proptest::prelude::*;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

fn state() -> TrainState {
    TrainState {
        step: 30,
        data_rng: [1, 2, 3, u64::MAX],
        dropout_rng: [5, 6, 7, 8],
        train: TrainConfig::default(),
        data: DataInfo {
            sources: vec!["a.txt".into(), "<embedded>".into()],
            corpus_hash: 0xDEAD_BEEF,
            tokens: 12345,
            windows_hash: Some(7),
        },
        init: "scratch".into(),
        train_seconds: 12.5,
        last_train_loss: Some(2.25),
        last_val_loss: None,
        kiln_version: "0.1.0".into(),
        checksums: [("model.safetensors".to_string(), "xxh3:0123456789abcdef".to_string())].into(),
    }
}

fn state_json() -> Vec<u8> {
    serde_json::to_vec_pretty(&state()).unwrap()
}

/// A small safetensors file as kiln writes it: two f32 tensors and a u32 one.
fn safetensors_file() -> Vec<u8> {
    let dev = Device::Cpu;
    let tensors = vec![
        (
            "a".to_string(),
            Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], &dev).unwrap(),
        ),
        (
            "b.weight".to_string(),
            Tensor::from_vec(vec![0.5f32; 5], &[5], &dev).unwrap(),
        ),
        (
            "ids".to_string(),
            Tensor::from_vec(vec![7u32, 8, 9], &[3], &dev).unwrap(),
        ),
    ];
    serialize_tensors(&tensors, None).unwrap()
}

/// A safetensors file whose header is `header` (any text) followed by `data_len` zero bytes.
fn safetensors_with_header(header: &str, data_len: usize) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + data_len, 0);
    bytes
}

/// Parses `bytes` both ways kiln reads safetensors (whole file, and the header alone from disk);
/// the shape reader accepts at least every file the full parser accepts, with the same shapes.
fn parse_safetensors_both_ways(bytes: &[u8]) -> Result<(), TestCaseError> {
    let full = parse_tensors(bytes, "fuzz.safetensors", &Device::Cpu);
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let n = FILES.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("kiln-fuzz-{}-{n}.safetensors", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let shapes = read_shapes(&path);
    std::fs::remove_file(&path).unwrap();
    if let Ok((tensors, _)) = full {
        let shapes =
            shapes.map_err(|e| TestCaseError::fail(format!("full parse accepted, header read refused: {e}")))?;
        prop_assert_eq!(shapes.len(), tensors.len());
        for (name, t) in &tensors {
            prop_assert_eq!(shapes.get(name), Some(&t.shape().to_vec()));
        }
    }
    Ok(())
}

#[test]
fn an_intact_safetensors_file_reads_back() {
    let (tensors, _) = parse_tensors(&safetensors_file(), "t.safetensors", &Device::Cpu).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b.weight", "ids"]);
    assert_eq!(tensors[0].1.to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(tensors[2].1.to_vec::<u32>().unwrap(), [7, 8, 9]);
}

#[test]
fn safetensors_headers_that_claim_too_much_are_errors() {
    for header in [
        // a shape whose element count overflows, and one far larger than the data
        r#"{"x":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#,
        r#"{"x":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,16]}}"#,
        // offsets past the end, reversed, or overlapping
        r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551615]}}"#,
        r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#,
        r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"y":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
        // an unknown dtype, a missing field, not an object
        r#"{"x":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}}"#,
        r#"{"x":{"dtype":"F32","data_offsets":[0,16]}}"#,
        r#"[1,2,3]"#,
    ] {
        let bytes = safetensors_with_header(header, 16);
        let e = parse_tensors(&bytes, "claims.safetensors", &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("claims.safetensors"), "{header}: {e}");
    }
    // a header length past the file's end is refused before anything that size is allocated
    let mut bytes = safetensors_file();
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let e = parse_tensors(&bytes, "long.safetensors", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("long.safetensors"), "{e}");
}

#[test]
fn an_intact_state_reads_back() {
    assert_eq!(parse_state(&state_json(), Path::new("state.json")).unwrap(), state());
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn state_json_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_state(&bytes, Path::new("state.json"));
    }

    #[test]
    fn state_json_edited(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                         cut in any::<prop::sample::Index>()) {
        let mut bytes = state_json();
        for (i, b) in edits {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        let _ = parse_state(&bytes, Path::new("state.json"));
        let cut = cut.index(bytes.len());
        let _ = parse_state(&bytes[..cut], Path::new("state.json"));
    }

    #[test]
    fn token_cache_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        // anything accepted is exactly what kiln writes for its key and ids
        if let Ok((key, ids)) = parse_token_cache(&bytes, "tokens.bin", 1000) {
            prop_assert_eq!(token_cache_bytes(key, &ids), bytes);
        }
    }

    #[test]
    fn token_cache_round_trip_and_damage(
        corpus in any::<u64>(),
        tokenizer in any::<u64>(),
        ids in proptest::collection::vec(0u32..500, 0..64),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let key = CacheKey { corpus, tokenizer };
        let bytes = token_cache_bytes(key, &ids);
        prop_assert_eq!(parse_token_cache(&bytes, "tokens.bin", 500).unwrap(), (key, ids.clone()));
        // one changed byte anywhere, or a cut anywhere: refused
        let mut damaged = bytes.clone();
        damaged[at.index(bytes.len())] ^= flip;
        prop_assert!(parse_token_cache(&damaged, "tokens.bin", 500).is_err());
        prop_assert!(parse_token_cache(&bytes[..cut.index(bytes.len())], "tokens.bin", 500).is_err());
        // an id at the vocabulary's edge is refused under an intact checksum
        if let Some(&max) = ids.iter().max() {
            let e = parse_token_cache(&bytes, "tokens.bin", max as usize).unwrap_err().to_string();
            prop_assert!(e.contains(&format!("outside the vocabulary of {max} ids")), "{}", e);
        }
        prop_assert_eq!(cache_checksum(key, &ids), u64::from_le_bytes(bytes[32..40].try_into().unwrap()));
    }

    #[test]
    fn safetensors_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        parse_safetensors_both_ways(&bytes)?;
    }

    #[test]
    fn safetensors_edited(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                          cut in any::<prop::sample::Index>()) {
        let mut bytes = safetensors_file();
        for (i, b) in edits {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        parse_safetensors_both_ways(&bytes)?;
        parse_safetensors_both_ways(&bytes[..cut.index(bytes.len())])?;
    }

    #[test]
    fn safetensors_generated_headers(
        dtype in prop::sample::select(vec!["F32", "F16", "BF16", "F64", "U32", "I64", "I32", "U8", "BOOL", "F8_E4M3", "X"]),
        shape in proptest::collection::vec(prop_oneof![0u64..6, any::<u64>()], 0..4),
        start in prop_oneof![0u64..64, any::<u64>()],
        len in prop_oneof![0u64..64, any::<u64>()],
        data_len in 0usize..64,
    ) {
        let shape: Vec<String> = shape.iter().map(u64::to_string).collect();
        let end = start.wrapping_add(len);
        let header = format!(r#"{{"t":{{"dtype":"{dtype}","shape":[{}],"data_offsets":[{start},{end}]}}}}"#, shape.join(","));
        parse_safetensors_both_ways(&safetensors_with_header(&header, data_len))?;
    }

    #[test]
    fn metrics_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = metrics::parse(&bytes, "metrics.jsonl");
    }

    #[test]
    fn metrics_round_trip(losses in proptest::collection::vec(0.0f64..20.0, 1..20), torn in 0usize..40) {
        let records: Vec<Record> = losses
            .iter()
            .enumerate()
            .map(|(i, &loss)| Record::Train { step: i + 1, loss, lr: 1e-3, grad_norm: loss / 3.0 })
            .collect();
        let mut text = String::new();
        for r in &records {
            text.push_str(&serde_json::to_string(r).unwrap());
            text.push('\n');
        }
        prop_assert_eq!(&metrics::parse(text.as_bytes(), "m").unwrap(), &records);
        // a last line cut short (a crash mid-write) is passed over, the rest kept
        let last = serde_json::to_string(&records[0]).unwrap();
        let cut = torn.min(last.len() - 1);
        let with_torn = format!("{text}{}", &last[..cut]);
        prop_assert_eq!(&metrics::parse(with_torn.as_bytes(), "m").unwrap(), &records);
    }
}

//! Fuzzing over bytes (proptest, bounded case counts) of the parsers of kiln's own run files:
//! a checkpoint's `state.json`, the token cache `tokens.bin` and `metrics.jsonl`. Whatever the
//! bytes, a parser returns a value or an error, never panics; a damaged token cache is never
//! accepted; intact files read back what was written.

use kiln::data::{cache_checksum, parse_token_cache, token_cache_bytes, CacheKey};
use kiln::train::checkpoint::{parse_state, DataInfo, TrainState};
use kiln::train::metrics::{self, Record};
use kiln::train::TrainConfig;
use proptest::prelude::*;
use std::path::Path;

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

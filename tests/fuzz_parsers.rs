//! Fuzzing over bytes (proptest, bounded case counts) of the parsers of kiln's own run files:
//! a checkpoint's `state.json` (alone, and with `config.json` and `tokenizer.json` as a checkpoint
//! is read), the token cache `tokens.bin`, `metrics.jsonl`, safetensors
//! weights (the whole-file parser and the header-only shape reader), and `kiln finetune`'s JSONL
//! chat data. Whatever the bytes, a parser returns a value or an error, never panics and never
//! allocates what a header merely claims; a damaged token cache is never accepted; a bad chat
//! line is named by file and line; intact files read back what was written. (GGUF's header
//! parser is fuzzed in tests/gguf.rs.)

use kiln::data::{cache_checksum, parse_token_cache, token_cache_bytes, CacheKey};
use kiln::model::io::{parse_tensors, read_shapes, serialize_tensors};
use kiln::model::GptConfig;
use kiln::tokenizer::Tokenizer;
use kiln::tokenizer::{ChatMessage, ChatTemplate};
use kiln::train::checkpoint::{parse_state, read_meta, DataInfo, TrainState};
use kiln::train::lora::{chat_example, parse_chats};
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

/// The three metadata files of a checkpoint as kiln writes them: (file name, bytes).
fn checkpoint_meta() -> [(&'static str, Vec<u8>); 3] {
    let cfg = GptConfig {
        vocab_size: 5,
        ..GptConfig::preset("tiny").unwrap()
    };
    [
        ("config.json", serde_json::to_vec_pretty(&cfg).unwrap()),
        (
            "tokenizer.json",
            Tokenizer::char_from_text("a b\nc").to_json().into_bytes(),
        ),
        ("state.json", state_json()),
    ]
}

/// Writes `files` into a fresh folder and reads them as a checkpoint's metadata: a value, or an
/// error that names the file at fault (or the folder, when the files disagree).
fn read_meta_checked(files: &[(&str, Vec<u8>)]) -> Result<(), TestCaseError> {
    static DIRS: AtomicUsize = AtomicUsize::new(0);
    let n = DIRS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kiln-fuzz-meta-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let read = read_meta(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    match read {
        Ok((cfg, tok, _)) => {
            prop_assert!(cfg.validate().is_ok());
            prop_assert!(tok.vocab_size() <= cfg.vocab_size);
        }
        Err(e) => {
            let e = e.to_string();
            prop_assert!(e.contains(&dir.display().to_string()), "names no file: {}", e);
        }
    }
    Ok(())
}

/// ChatML, as SmolLM2's template writes it (without its default system prompt).
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// One chat as a JSONL line, written by serde_json (independently of kiln's parser).
fn chat_line(chat: &[ChatMessage]) -> String {
    let messages: Vec<serde_json::Value> = chat
        .iter()
        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
        .collect();
    serde_json::json!({ "messages": messages }).to_string()
}

/// A small chat file: two chats and a blank line.
fn chat_file() -> Vec<u8> {
    let chats = [
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi?"),
            ChatMessage::new("assistant", "Hello."),
        ],
        vec![ChatMessage::new("user", "2+2?"), ChatMessage::new("assistant", "4")],
    ];
    format!("{}\n\n{}\n", chat_line(&chats[0]), chat_line(&chats[1])).into_bytes()
}

/// `parse_chats` of any bytes: an error names the file and either the line it is about, which on
/// its own is refused while every line before it is accepted, or (no line) a file without a chat.
fn parse_chats_checked(bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = Path::new("data/chat.jsonl");
    let Err(e) = parse_chats(bytes, path) else {
        return Ok(());
    };
    let e = e.to_string();
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let Some(rest) = e.split_once("data/chat.jsonl:").map(|(_, rest)| rest) else {
        prop_assert!(e.contains("data/chat.jsonl holds no chats"), "{}", e);
        let blank = |l: &&[u8]| std::str::from_utf8(l).is_ok_and(|s| s.trim().is_empty());
        prop_assert!(lines.iter().all(blank), "a chat was there: {}", e);
        return Ok(());
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let n: usize = digits
        .parse()
        .map_err(|_| TestCaseError::fail(format!("no line number: {e}")))?;
    prop_assert!((1..=lines.len()).contains(&n), "line {} of {}: {}", n, lines.len(), e);
    for (i, line) in lines.iter().enumerate().take(n) {
        let alone = parse_chats(line, path);
        if i + 1 < n {
            // an earlier line is a chat or blank ("holds no chats" on its own)
            prop_assert!(
                alone.is_ok() || alone.unwrap_err().to_string().contains("holds no chats"),
                "line {}",
                i + 1
            );
        } else {
            prop_assert!(alone.is_err(), "line {} is accepted on its own: {}", n, e);
        }
    }
    Ok(())
}

/// Any role and content: printable text, quotes, backslashes, control characters, newlines,
/// non-ASCII and the template's own markers.
fn message() -> impl Strategy<Value = ChatMessage> {
    let text = prop_oneof![
        "[a-z ]{0,12}",
        any::<String>(),
        Just("\"quoted\\\" \n<|im_end|>\r\t\u{0}é€𝄞".to_string()),
    ];
    let role = prop_oneof![
        Just("system".to_string()),
        Just("user".to_string()),
        Just("assistant".to_string()),
        any::<String>(),
    ];
    (role, text).prop_map(|(role, content)| ChatMessage::new(role, content))
}

#[test]
fn an_intact_chat_file_reads_back() {
    let chats = parse_chats(&chat_file(), Path::new("chat.jsonl")).unwrap();
    assert_eq!(chats.len(), 2);
    assert_eq!(chats[0].0, 0);
    assert_eq!(chats[1].0, 2);
    assert_eq!(
        chats[1].1,
        [ChatMessage::new("user", "2+2?"), ChatMessage::new("assistant", "4")]
    );
}

#[test]
fn bad_chat_lines_are_named_by_file_and_line() {
    let good = chat_line(&[ChatMessage::new("user", "a"), ChatMessage::new("assistant", "b")]);
    for (bad, needle) in [
        (&b"{not json"[..], "c.jsonl:3: not valid JSON"),
        (b"{\"chats\": []}", "c.jsonl:3: expected {\"messages\""),
        (b"{\"messages\": {}}", "c.jsonl:3: expected {\"messages\""),
        (
            b"{\"messages\": [{\"role\": 1, \"content\": \"x\"}]}",
            "c.jsonl:3: message 0 has no string \"role\"",
        ),
        (
            b"{\"messages\": [{\"role\": \"user\"}]}",
            "c.jsonl:3: message 0 has no string \"content\"",
        ),
        (b"{\"messages\": []} trailing", "c.jsonl:3: not valid JSON"),
        (b"\"\xff\"", "c.jsonl:3: not UTF-8"),
        (&[b'['; 100_000][..], "c.jsonl:3: not valid JSON"),
    ] {
        let mut bytes = format!("{good}\r\n\n").into_bytes();
        bytes.extend_from_slice(bad);
        bytes.extend_from_slice(format!("\n{good}").as_bytes());
        let e = parse_chats(&bytes, Path::new("c.jsonl")).unwrap_err().to_string();
        assert!(
            e.contains(needle),
            "{}: {e}",
            String::from_utf8_lossy(&bad[..bad.len().min(40)])
        );
    }
    for empty in [&b""[..], b"\n \r\n\t\n"] {
        let e = parse_chats(empty, Path::new("c.jsonl")).unwrap_err().to_string();
        assert!(e.contains("c.jsonl holds no chats"), "{e}");
    }
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

#[test]
fn intact_checkpoint_metadata_reads_back() {
    let dir = std::env::temp_dir().join(format!("kiln-fuzz-meta-intact-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in checkpoint_meta() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let (cfg, tok, st) = read_meta(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!((cfg.n_layer, cfg.n_embd, cfg.vocab_size), (4, 128, 5));
    assert_eq!(tok.decode(&tok.encode("c b").unwrap()), "c b");
    assert_eq!(st, state());
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

    #[test]
    fn chat_jsonl_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        parse_chats_checked(&bytes)?;
    }

    #[test]
    fn chat_jsonl_edited(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                         cut in any::<prop::sample::Index>()) {
        let mut bytes = chat_file();
        for (i, b) in edits {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        parse_chats_checked(&bytes)?;
        parse_chats_checked(&bytes[..cut.index(bytes.len())])?;
    }

    #[test]
    fn chat_jsonl_generated_chats_read_back(
        chats in proptest::collection::vec(proptest::collection::vec(message(), 0..5), 1..6),
        blank in proptest::collection::vec(prop::sample::select(vec!["", " ", "\t", "\r"]), 6),
        crlf in proptest::collection::vec(any::<bool>(), 6),
    ) {
        // each chat on its line (\n or \r\n), a blank line before some; the file's last line
        // without its newline half the time
        let mut text = String::new();
        let mut expected = Vec::new();
        let mut line = 0;
        for (k, chat) in chats.iter().enumerate() {
            if k % 2 == 1 {
                text.push_str(blank[k]);
                text.push('\n');
                line += 1;
            }
            text.push_str(&chat_line(chat));
            if k + 1 < chats.len() || crlf[5] {
                text.push_str(if crlf[k] { "\r\n" } else { "\n" });
            }
            expected.push((line, chat.clone()));
            line += 1;
        }
        let parsed = parse_chats(text.as_bytes(), Path::new("chat.jsonl")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&parsed, &expected);

        // through ChatML and byte "tokens": the ids are the whole rendering, and the trained
        // ones are exactly each assistant message with its end of turn
        let tpl = ChatTemplate::new(CHATML, "", "").unwrap();
        for (_, chat) in &parsed {
            let example = chat_example(chat, |m, g| tpl.render(m, g), |s| Ok(s.bytes().map(u32::from).collect()));
            if !chat.iter().any(|m| m.role == "assistant") {
                prop_assert!(example.is_err());
                continue;
            }
            let example = example.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let all: Vec<u8> = example.ids.iter().map(|&i| i as u8).collect();
            prop_assert_eq!(all, tpl.render(chat, false).unwrap().into_bytes());
            let trained: Vec<u8> = example.ids.iter().zip(&example.trained).filter(|(_, &t)| t).map(|(&i, _)| i as u8).collect();
            let answers: String = chat
                .iter()
                .filter(|m| m.role == "assistant")
                .map(|m| format!("{}<|im_end|>\n", m.content))
                .collect();
            prop_assert_eq!(trained, answers.into_bytes());
        }
    }

    #[test]
    fn checkpoint_metadata_edited(
        file in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        replace in proptest::option::weighted(0.2, proptest::collection::vec(any::<u8>(), 0..100)),
    ) {
        let mut files = checkpoint_meta().to_vec();
        let bytes = &mut files[file].1;
        for (i, b) in edits {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        if let Some(other) = replace {
            *bytes = other;
        }
        read_meta_checked(&files)?;
    }

    #[test]
    fn checkpoint_config_generated_sizes(
        sizes in proptest::collection::vec(prop_oneof![0u64..300, any::<u64>()], 4),
        dropout in prop_oneof![Just(0.0), any::<f64>()],
    ) {
        // any numbers in config.json: refused by name, or a model that can be built
        let mut files = checkpoint_meta().to_vec();
        let mut cfg: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
        for (key, v) in ["vocab_size", "block_size", "n_layer", "n_embd"].iter().zip(&sizes) {
            cfg[key] = (*v).into();
        }
        cfg["dropout"] = serde_json::Value::from(dropout);
        files[0].1 = cfg.to_string().into_bytes();
        read_meta_checked(&files)?;
    }
}

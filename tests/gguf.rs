//! The GGUF reader, dequantization and the GGUF tokenizer, against references written by the
//! `gguf` Python package and Hugging Face transformers (scripts/make_gguf_fixtures.py,
//! scripts/smollm2_reference.py), plus corrupt headers that must fail cleanly.
//!
//! The SmolLM2 tests run when `scripts/fetch-smollm2.sh` has fetched the model (or
//! `KILN_SMOLLM2_GGUF` names the file) and print a skip message otherwise.

use half::{bf16, f16};
use kiln::gguf::{GgmlType, GgufFile, MetadataValue, ValueType};
use kiln::tokenizer::{ChatMessage, Tokenizer};
use kiln::{DType, Device, Error};
use proptest::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn read_f32s(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The message of `result`'s error, which must be `Error::Format`.
fn format_error<T: std::fmt::Debug>(result: kiln::Result<T>) -> String {
    match result {
        Err(e @ Error::Format { .. }) => e.to_string(),
        other => panic!("expected a format error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantization against gguf.quants.dequantize

#[test]
fn every_quant_type_dequantizes_exactly_as_the_gguf_package() {
    let index = read_json(&fixture("gguf/quants.json"));
    let index = index.as_object().unwrap();
    assert_eq!(index.len(), 11, "F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K");
    for (type_name, entry) in index {
        let file = GgufFile::open(fixture("gguf").join(entry["file"].as_str().unwrap())).unwrap();
        for t in entry["tensors"].as_array().unwrap() {
            let name = t["name"].as_str().unwrap();
            let shape: Vec<usize> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let expected = read_f32s(&fixture("gguf").join(t["expected"].as_str().unwrap()));
            let info = file.tensor_info(name).unwrap();
            assert_eq!(info.ggml_type.to_string(), *type_name);
            assert_eq!(info.shape(), shape, "{type_name} {name}");
            assert_eq!(info.offset % file.alignment(), 0);

            let got = file.dequantize(name).unwrap();
            assert_eq!(got.len(), expected.len());
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert_eq!(g.to_bits(), e.to_bits(), "{type_name} {name}[{i}]: kiln {g}, gguf {e}");
            }

            let t32 = file.tensor(name, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(t32.shape(), &shape[..]);
            assert_eq!(t32.to_vec::<f32>().unwrap(), expected);
            let tb = file
                .tensor(name, DType::BF16, &Device::Cpu)
                .unwrap()
                .to_vec::<bf16>()
                .unwrap();
            assert!(
                tb.iter().zip(&expected).all(|(b, &e)| *b == bf16::from_f32(e)),
                "{type_name} {name} as bf16"
            );
            let th = file
                .tensor(name, DType::F16, &Device::Cpu)
                .unwrap()
                .to_vec::<f16>()
                .unwrap();
            assert!(
                th.iter().zip(&expected).all(|(h, &e)| *h == f16::from_f32(e)),
                "{type_name} {name} as f16"
            );
        }
    }
}

#[test]
fn half_tensors_load_into_their_own_dtype_bit_for_bit() {
    for (ty, dtype) in [("F16", DType::F16), ("BF16", DType::BF16)] {
        let file = GgufFile::open(fixture(&format!("gguf/quant_{ty}.gguf"))).unwrap();
        let raw: Vec<u16> = file
            .tensor_data("rows")
            .unwrap()
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        let t = file.tensor("rows", dtype, &Device::Cpu).unwrap();
        let bits: Vec<u16> = match dtype {
            DType::F16 => t.to_vec::<f16>().unwrap().iter().map(|h| h.to_bits()).collect(),
            _ => t.to_vec::<bf16>().unwrap().iter().map(|h| h.to_bits()).collect(),
        };
        assert_eq!(bits, raw, "{ty}");
    }
}

#[test]
fn unsupported_types_and_dtypes_are_named() {
    // A Q2_K tensor (one 84-byte block): readable as bytes, not dequantizable.
    let bytes = GgufBuilder::new(3)
        .tensor("t.q2k", &[256], GgmlType::Q2_K.id(), 0)
        .data(84)
        .finish();
    let file = GgufFile::from_bytes(bytes, "q2k.gguf").unwrap();
    assert_eq!(file.tensor_data("t.q2k").unwrap().len(), 84);
    let msg = format_error(file.dequantize("t.q2k"));
    assert!(
        msg.contains("t.q2k") && msg.contains("Q2_K") && msg.contains("q2k.gguf"),
        "{msg}"
    );
    let msg = format_error(file.tensor("t.q2k", DType::F32, &Device::Cpu));
    assert!(msg.contains("Q2_K"), "{msg}");
    let msg = format_error(file.tensor("missing", DType::F32, &Device::Cpu));
    assert!(
        msg.contains("no tensor named \"missing\"") && msg.contains("t.q2k"),
        "{msg}"
    );

    let file = GgufFile::open(fixture("gguf/quant_F32.gguf")).unwrap();
    let err = file.tensor("rows", DType::U32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("f32, bf16 or f16"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Metadata: every value type

/// The values scripts/make_gguf_fixtures.py writes into metadata.gguf.
fn check_metadata_fixture(file: &GgufFile) {
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.get::<&str>("general.architecture").unwrap(), "kiln-test");
    assert_eq!(file.metadata()["test.u8"], MetadataValue::U8(200));
    assert_eq!(file.metadata()["test.i8"], MetadataValue::I8(-100));
    assert_eq!(file.metadata()["test.u16"], MetadataValue::U16(60000));
    assert_eq!(file.metadata()["test.i16"], MetadataValue::I16(-30000));
    assert_eq!(file.metadata()["test.u32"], MetadataValue::U32(4_000_000_000));
    assert_eq!(file.metadata()["test.i32"], MetadataValue::I32(-2_000_000_000));
    assert_eq!(file.metadata()["test.f32"], MetadataValue::F32(0.1));
    assert_eq!(file.metadata()["test.bool"], MetadataValue::Bool(true));
    assert_eq!(
        file.metadata()["test.string"],
        MetadataValue::String("héllo wörld ✓".into())
    );
    assert_eq!(
        file.metadata()["test.u64"],
        MetadataValue::U64(18_000_000_000_000_000_000)
    );
    assert_eq!(
        file.metadata()["test.i64"],
        MetadataValue::I64(-9_000_000_000_000_000_000)
    );
    assert_eq!(file.metadata()["test.f64"], MetadataValue::F64(0.1));
    assert_eq!(
        file.get::<Vec<&str>>("test.strings").unwrap(),
        ["a", "", "ünïcode", "<|im_start|>"]
    );
    assert_eq!(file.get::<Vec<i32>>("test.i32s").unwrap(), [1, -2, 3]);
    assert_eq!(file.get::<Vec<f32>>("test.f32s").unwrap(), [0.5, -1.25]);
    assert_eq!(
        file.get::<Vec<Vec<i64>>>("test.nested").unwrap(),
        vec![vec![1, 2], vec![3]]
    );
    match &file.metadata()["test.nested"] {
        MetadataValue::Array { elem, items } => {
            assert_eq!(*elem, ValueType::Array);
            assert_eq!(items.len(), 2);
        }
        other => panic!("{other:?}"),
    }

    // Integer getters convert between widths when the value fits, and say why when not.
    assert_eq!(file.get::<u64>("test.u8").unwrap(), 200);
    assert_eq!(file.get::<i16>("test.i8").unwrap(), -100);
    assert_eq!(file.get::<f64>("test.f32").unwrap(), 0.1f32 as f64);
    let msg = format_error(file.get::<u8>("test.u16"));
    assert!(
        msg.contains("\"test.u16\"") && msg.contains("u16 60000") && msg.contains("u8's range"),
        "{msg}"
    );
    let msg = format_error(file.get::<u32>("test.i32"));
    assert!(msg.contains("i32 -2000000000"), "{msg}");
    let msg = format_error(file.get::<&str>("test.f32"));
    assert!(msg.contains("holds f32") && msg.contains("expected a string"), "{msg}");
    let msg = format_error(file.get::<u32>("llama.block_count"));
    assert!(msg.contains("\"llama.block_count\" is missing"), "{msg}");
    assert_eq!(file.get_opt::<u32>("llama.block_count").unwrap(), None);

    // Tensors start on the 64-byte alignment, after padding.
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["scalar_like", "matrix", "vector"]);
    assert!(file.tensors().iter().all(|t| t.offset % 64 == 0));
    assert_eq!(file.tensor_info("matrix").unwrap().dims, [3, 2]);
    assert_eq!(file.tensor_info("matrix").unwrap().shape(), [2, 3]);
    assert_eq!(file.dequantize("scalar_like").unwrap(), [3.5]);
    assert_eq!(file.dequantize("matrix").unwrap(), [0., 1., 2., 3., 4., 5.]);
    assert_eq!(file.dequantize("vector").unwrap(), [-1., 0., 1., 2., 3.]);
}

#[test]
fn metadata_of_every_type_reads_back() {
    let file = GgufFile::open(fixture("gguf/metadata.gguf")).unwrap();
    assert_eq!(file.version(), 3);
    check_metadata_fixture(&file);
}

#[test]
fn version_2_reads_like_version_3() {
    // v2 and v3 differ only in that v3 allows big-endian files: the layout is the same.
    let mut bytes = std::fs::read(fixture("gguf/metadata.gguf")).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let file = GgufFile::from_bytes(bytes, "v2.gguf").unwrap();
    assert_eq!(file.version(), 2);
    check_metadata_fixture(&file);
}

// ---------------------------------------------------------------------------------------------
// Corrupt files: clear errors, no panics, no huge allocations

/// Writes GGUF bytes by hand, so each field can be made wrong on purpose.
struct GgufBuilder {
    version: u32,
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<u8>,
    n_tensors: u64,
    data: usize,
    alignment: usize,
}

impl GgufBuilder {
    fn new(version: u32) -> Self {
        GgufBuilder {
            version,
            kv: Vec::new(),
            n_kv: 0,
            tensors: Vec::new(),
            n_tensors: 0,
            data: 0,
            alignment: 32,
        }
    }

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s);
    }

    /// A key with a raw value (type id and bytes as given).
    fn kv(mut self, key: &str, type_id: u32, value: &[u8]) -> Self {
        Self::string(&mut self.kv, key.as_bytes());
        self.kv.extend(type_id.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Self {
        Self::string(&mut self.tensors, name.as_bytes());
        self.tensors.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.tensors.extend(d.to_le_bytes());
        }
        self.tensors.extend(type_id.to_le_bytes());
        self.tensors.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    fn data(mut self, n: usize) -> Self {
        self.data = n;
        self
    }

    fn counts(mut self, n_tensors: u64, n_kv: u64) -> Self {
        self.n_tensors = n_tensors;
        self.n_kv = n_kv;
        self
    }

    fn finish(self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.tensors);
        if self.data > 0 {
            out.resize(out.len().next_multiple_of(self.alignment), 0);
            out.extend((0..self.data).map(|i| i as u8));
        }
        out
    }
}

fn parse_error(bytes: Vec<u8>) -> String {
    format_error(GgufFile::from_bytes(bytes, "bad.gguf"))
}

fn assert_error(bytes: Vec<u8>, needles: &[&str]) {
    let msg = parse_error(bytes);
    assert!(msg.starts_with("bad.gguf: "), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "{msg:?} lacks {n:?}");
    }
}

#[test]
fn a_hand_written_file_parses() {
    let bytes = GgufBuilder::new(3)
        .kv("a.empty", ValueType::Array.id(), &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) // [] of u32
        .tensor("w", &[4, 2], GgmlType::F32.id(), 0)
        .data(32)
        .finish();
    let file = GgufFile::from_bytes(bytes, "ok.gguf").unwrap();
    assert_eq!(
        file.metadata()["a.empty"],
        MetadataValue::Array {
            elem: ValueType::U32,
            items: vec![]
        }
    );
    assert_eq!(file.get::<Vec<u32>>("a.empty").unwrap(), Vec::<u32>::new());
    assert_eq!(file.tensor_info("w").unwrap().shape(), [2, 4]);
    assert_eq!(file.tensor_data("w").unwrap(), (0..32).collect::<Vec<u8>>());
}

#[test]
fn bad_magic_and_versions_are_named() {
    let mut bytes = GgufBuilder::new(3).finish();
    bytes[0..4].copy_from_slice(b"GGML");
    assert_error(bytes, &["not a GGUF file", "47, 47, 4d, 4c"]);
    assert_error(
        GgufBuilder::new(1).finish(),
        &["GGUF version 1 is not supported", "2 and 3"],
    );
    assert_error(GgufBuilder::new(4).finish(), &["GGUF version 4"]);
    assert_error(GgufBuilder::new(3u32.swap_bytes()).finish(), &["big-endian"]);
    assert_error(Vec::new(), &["truncated at byte 0 while reading the magic number"]);
}

#[test]
fn every_truncation_of_a_file_is_an_error() {
    let bytes = std::fs::read(fixture("gguf/metadata.gguf")).unwrap();
    let whole = GgufFile::from_bytes(bytes.clone(), "whole.gguf").unwrap();
    // The writer pads after the last tensor too; cutting that padding leaves a good file.
    let needed = whole
        .tensors()
        .iter()
        .map(|t| whole.data_start() + t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    assert!(needed < bytes.len());
    for len in 0..bytes.len() {
        let parsed = GgufFile::from_bytes(bytes[..len].to_vec(), "cut.gguf");
        if len >= needed {
            assert!(parsed.is_ok(), "cut at {len}, after the last tensor's data");
            continue;
        }
        let msg = format_error(parsed);
        assert!(
            msg.contains("truncated") || msg.contains("cannot fit") || msg.contains("past the end of the file"),
            "cut at {len}: {msg}"
        );
    }
}

#[test]
fn absurd_lengths_and_counts_fail_before_allocating() {
    let huge = u64::MAX.to_le_bytes();
    assert_error(
        GgufBuilder::new(3).counts(0, u64::MAX).finish(),
        &["metadata entries", "cannot fit"],
    );
    assert_error(
        GgufBuilder::new(3).counts(u64::MAX, 0).finish(),
        &["tensor infos", "cannot fit"],
    );
    // A key whose length is 2^64 - 1.
    let mut bytes = GgufBuilder::new(3).counts(0, 1).finish();
    bytes.extend(huge);
    bytes.extend([0; 64]);
    assert_error(bytes, &["bytes of the key of metadata entry 0", "cannot fit"]);
    // A string value of 2^64 - 1 bytes; an array of 2^64 - 1 u64s; of 2^60 strings.
    assert_error(
        GgufBuilder::new(3).kv("s", ValueType::String.id(), &huge).finish(),
        &["\"s\"", "cannot fit"],
    );
    let array = |elem: ValueType, count: u64| [elem.id().to_le_bytes().as_slice(), &count.to_le_bytes()].concat();
    assert_error(
        GgufBuilder::new(3)
            .kv("a", ValueType::Array.id(), &array(ValueType::U64, u64::MAX))
            .finish(),
        &["elements of \"a\"", "cannot fit"],
    );
    assert_error(
        GgufBuilder::new(3)
            .kv("a", ValueType::Array.id(), &array(ValueType::String, 1 << 60))
            .finish(),
        &["elements of \"a\"", "cannot fit"],
    );
    // Arrays nested past the limit.
    let mut nested = Vec::new();
    for _ in 0..20 {
        nested.extend(array(ValueType::Array, 1));
    }
    assert_error(
        GgufBuilder::new(3).kv("deep", ValueType::Array.id(), &nested).finish(),
        &["nested more than"],
    );
}

#[test]
fn bad_values_are_named() {
    assert_error(
        GgufBuilder::new(3).kv("k", 13, &[]).finish(),
        &["value type of \"k\"", "is 13"],
    );
    assert_error(
        GgufBuilder::new(3).kv("b", ValueType::Bool.id(), &[2]).finish(),
        &["bool of value 2"],
    );
    let bad_utf8 = [3u64.to_le_bytes().as_slice(), &[0x66, 0xFF, 0x66]].concat();
    assert_error(
        GgufBuilder::new(3).kv("s", ValueType::String.id(), &bad_utf8).finish(),
        &["not valid UTF-8"],
    );
    let u8v = |v: u8| [v];
    assert_error(
        GgufBuilder::new(3)
            .kv("k", ValueType::U8.id(), &u8v(1))
            .kv("k", ValueType::U8.id(), &u8v(2))
            .finish(),
        &["\"k\" appears twice"],
    );
    assert_error(
        GgufBuilder::new(3)
            .kv("general.alignment", ValueType::U32.id(), &48u32.to_le_bytes())
            .finish(),
        &["general.alignment must be a u32 power of two", "u32 48"],
    );
    assert_error(
        GgufBuilder::new(3)
            .kv("general.alignment", ValueType::U64.id(), &64u64.to_le_bytes())
            .finish(),
        &["general.alignment", "u64 64"],
    );
}

#[test]
fn bad_tensor_infos_are_named() {
    let f32_id = GgmlType::F32.id();
    assert_error(
        GgufBuilder::new(3).tensor("t", &[1, 1, 1, 1, 1], f32_id, 0).finish(),
        &["\"t\" has 5 dimensions", "at most 4"],
    );
    assert_error(
        GgufBuilder::new(3).tensor("t", &[1 << 32, 1 << 32], f32_id, 0).finish(),
        &["\"t\"", "overflows"],
    );
    assert_error(
        GgufBuilder::new(3).tensor("t", &[u64::MAX, 2], f32_id, 0).finish(),
        &["overflows"],
    );
    assert_error(
        GgufBuilder::new(3).tensor("t", &[4], 999, 0).data(16).finish(),
        &["ggml type id 999"],
    );
    assert_error(
        GgufBuilder::new(3).tensor("t", &[4], f32_id, 8).data(64).finish(),
        &["data offset 8", "alignment 32"],
    );
    assert_error(
        GgufBuilder::new(3).tensor("t", &[4], f32_id, 0).data(15).finish(),
        &["\"t\"", "past the end of the file"],
    );
    assert_error(
        GgufBuilder::new(3).tensor("t", &[1 << 40], f32_id, 0).data(16).finish(),
        &["past the end"],
    );
    assert_error(
        GgufBuilder::new(3)
            .tensor("t", &[4], f32_id, u64::MAX - 31)
            .data(16)
            .finish(),
        &["data offset"],
    );
    assert_error(
        GgufBuilder::new(3)
            .tensor("q", &[48], GgmlType::Q8_0.id(), 0)
            .data(64)
            .finish(),
        &["row length 48", "block size 32"],
    );
    assert_error(
        GgufBuilder::new(3)
            .tensor("t", &[4], f32_id, 0)
            .tensor("t", &[4], f32_id, 32)
            .data(64)
            .finish(),
        &["\"t\" appears twice"],
    );
}

/// Bytes that start like a GGUF file and go wrong anywhere after.
fn header_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid = std::fs::read(fixture("gguf/metadata.gguf")).unwrap();
    let tokenizer = std::fs::read(fixture("gguf/tokenizer.gguf")).unwrap();
    let mutate = |base: Vec<u8>| {
        let n = base.len();
        (prop::collection::vec((0..n, any::<u8>()), 1..8), 0..=n).prop_map(move |(edits, cut)| {
            let mut b = base.clone();
            for (i, v) in edits {
                b[i] = v;
            }
            b.truncate(cut.max(4));
            b
        })
    };
    // Random counts and sizes in the header, with random bytes after.
    let random = (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(v, t, k, rest)| {
            let mut b = b"GGUF".to_vec();
            b.extend((v % 4).to_le_bytes());
            b.extend((t % 16).to_le_bytes());
            b.extend((k % 16).to_le_bytes());
            b.extend(rest);
            b
        });
    prop_oneof![mutate(valid), mutate(tokenizer), random]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn corrupt_headers_never_panic(bytes in header_like_bytes()) {
        // Either a clean error, or a file whose every tensor can be read or refused cleanly.
        if let Ok(file) = GgufFile::from_bytes(bytes, "fuzz.gguf") {
            for t in file.tensors() {
                prop_assert_eq!(file.tensor_data(&t.name).unwrap().len() as u64, t.n_bytes);
                let _ = file.dequantize(&t.name);
            }
            let _ = Tokenizer::Gguf(match kiln::tokenizer::GgufTokenizer::from_file(&file) {
                Ok(t) => Box::new(t),
                Err(_) => return Ok(()),
            })
            .encode("hello <|im_start|> world 42");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tokenizer and chat template, against transformers

/// Checks `tok` against the ids and chat renderings transformers recorded in `reference`.
fn check_tokenizer_against(tok: &Tokenizer, reference: &Path) {
    let reference = read_json(reference);
    for case in reference["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, expected, "encoding {text:?}");
        assert_eq!(tok.decode(&ids), text, "decoding the ids of {text:?}");
    }
    for case in reference["chats"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let rendered = tok.apply_chat_template(&messages, add).unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(&rendered).unwrap(), expected, "encoding {rendered:?}");
    }
}

#[test]
fn tiny_gguf_tokenizer_matches_transformers() {
    let tok = Tokenizer::from_gguf(fixture("gguf/tokenizer.gguf")).unwrap();
    assert_eq!(tok.vocab_size(), 3 + 256 + 17);
    assert_eq!(tok.describe(), "gguf (276 ids)");
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    check_tokenizer_against(&tok, &fixture("gguf/tokenizer_ids.json"));
    // Control tokens are single ids; merges apply ("Ġworld" is one token).
    assert_eq!(tok.encode("<|im_start|>").unwrap(), [1]);
    assert_eq!(tok.encode(" world").unwrap().len(), 1);
}

#[test]
fn gguf_tokenizer_survives_a_json_round_trip() {
    let tok = Tokenizer::from_gguf(fixture("gguf/tokenizer.gguf")).unwrap();
    let back = Tokenizer::from_json(&tok.to_json()).unwrap();
    assert_eq!(back, tok);
    let text = "<|im_start|>user\nhello world 42<|im_end|>";
    assert_eq!(back.encode(text).unwrap(), tok.encode(text).unwrap());
    assert_eq!(back.fingerprint(), tok.fingerprint());
}

#[test]
fn tokenizers_without_a_chat_template_say_so() {
    let err = Tokenizer::Gpt2
        .apply_chat_template(&[ChatMessage::user("hi")], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no chat template"), "{err}");
    // A GGUF tokenizer whose file has no tokenizer.chat_template.
    let mut json: Value =
        serde_json::from_str(&Tokenizer::from_gguf(fixture("gguf/tokenizer.gguf")).unwrap().to_json()).unwrap();
    json["chat_template"] = Value::Null;
    let tok = Tokenizer::from_json(&json.to_string()).unwrap();
    let err = tok
        .apply_chat_template(&[ChatMessage::user("hi")], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no chat template (tokenizer.chat_template)"), "{err}");
}

#[test]
fn unknown_pre_tokenizers_and_models_are_refused() {
    let mut json: Value =
        serde_json::from_str(&Tokenizer::from_gguf(fixture("gguf/tokenizer.gguf")).unwrap().to_json()).unwrap();
    json["pre"] = Value::from("deepseek-coder");
    let err = Tokenizer::from_json(&json.to_string()).unwrap_err().to_string();
    assert!(err.contains("\"deepseek-coder\"") && err.contains("smollm"), "{err}");
    let err = Tokenizer::from_gguf(fixture("gguf/metadata.gguf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.ggml.model") && err.contains("missing"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// SmolLM2-135M-Instruct, when fetched

#[path = "common/smollm2.rs"]
mod smollm2;

#[test]
fn smollm2_reads_and_dequantizes_every_tensor() {
    let Some(path) = smollm2::path() else { return };
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.get::<&str>("general.architecture").unwrap(), "llama");
    for (key, value) in [
        ("llama.block_count", 30),
        ("llama.embedding_length", 576),
        ("llama.attention.head_count", 9),
        ("llama.attention.head_count_kv", 3),
        ("llama.feed_forward_length", 1536),
        ("llama.vocab_size", 49152),
        ("llama.rope.dimension_count", 64),
    ] {
        assert_eq!(file.get::<u32>(key).unwrap(), value, "{key}");
    }
    assert_eq!(file.get::<f32>("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(file.get::<f32>("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    for (key, value) in file.metadata() {
        if key.starts_with("general.") || key.starts_with("llama.") {
            eprintln!("{key} = {value}");
        }
    }

    let count = |ty: GgmlType| file.tensors().iter().filter(|t| t.ggml_type == ty).count();
    assert_eq!(
        (count(GgmlType::Q4_1), count(GgmlType::Q8_0), count(GgmlType::F32)),
        (210, 1, 61)
    );
    assert_eq!(file.tensors().len(), 272);
    let embd = file.tensor_info("token_embd.weight").unwrap();
    assert_eq!((embd.ggml_type, embd.shape()), (GgmlType::Q8_0, vec![49152, 576]));
    assert_eq!(file.tensor_info("blk.0.attn_k.weight").unwrap().shape(), [192, 576]);
    for t in file.tensors() {
        let values = file.dequantize(&t.name).unwrap();
        assert_eq!(values.len() as u64, t.n_elements());
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{} has a non-finite value",
            t.name
        );
    }
    let norm = file.tensor("output_norm.weight", DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(norm.shape(), &[576]);
}

#[test]
fn smollm2_tokenizer_and_chat_template_match_transformers() {
    let Some(path) = smollm2::path() else { return };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    check_tokenizer_against(&tok, &fixture("smollm2/tokenizer_ids.json"));
}

//! Weights on disk: safetensors files of named tensors (read and written whole, the write
//! atomic), kiln's own checkpoints of a [`Gpt`], and Hugging Face GPT-2 folders.
//!
//! kiln stores every Linear weight as `[out, in]` (PyTorch's `nn.Linear`, nanoGPT's state
//! dict). Hugging Face's GPT-2 uses `Conv1D` modules, which store `[in, out]`;
//! [`Gpt::from_hf_dir`] transposes those on import.

use super::config::GptConfig;
use super::gpt::Gpt;
use crate::{DType, Device, Error, Result, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// The metadata key under which kiln stores the model's [`GptConfig`] (JSON).
pub const CONFIG_KEY: &str = "kiln.gpt_config";

/// Named tensors in file order, and the file's string metadata.
pub type NamedTensors = (Vec<(String, Tensor)>, HashMap<String, String>);

/// Writes `bytes` to `path` atomically: a temporary file in the same folder is written,
/// flushed to disk and renamed over `path`, so a crash leaves either the old file or the new
/// one, never a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid("write_atomic", format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // make the rename itself durable; not every platform can sync a folder
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("writing {}", path.display()), e)
    })
}

fn st_dtype(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
        DType::U32 => StDtype::U32,
    }
}

/// Host bytes of a tensor in row-major order, little-endian (as safetensors stores them).
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    fn le<T: crate::WithDType>(t: &Tensor) -> Result<Vec<u8>> {
        Ok(bytemuck::cast_slice(&t.to_vec::<T>()?).to_vec())
    }
    match t.dtype() {
        DType::F32 => le::<f32>(t),
        DType::F64 => le::<f64>(t),
        DType::BF16 => le::<half::bf16>(t),
        DType::F16 => le::<half::f16>(t),
        DType::U32 => le::<u32>(t),
    }
}

/// The safetensors bytes of named tensors with optional string metadata. The same tensors and
/// metadata always give the same bytes: the metadata entries are written sorted by key (the
/// `safetensors` crate writes them in its hash map's order, which changes from run to run).
pub fn serialize_tensors(tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let data = tensors
        .iter()
        .map(|(name, t)| Ok((name.clone(), t.dtype(), t.shape().to_vec(), tensor_bytes(t)?)))
        .collect::<Result<Vec<_>>>()?;
    let views = data
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(st_dtype(*dtype), shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| Error::invalid("save_safetensors", format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let sorted: Option<BTreeMap<String, String>> = metadata.as_ref().map(|m| m.clone().into_iter().collect());
    let mut bytes =
        safetensors::serialize(views, metadata).map_err(|e| Error::invalid("save_safetensors", e.to_string()))?;
    if let Some(sorted) = sorted {
        sort_metadata(&mut bytes, &sorted)?;
    }
    Ok(bytes)
}

/// Rewrites the `__metadata__` object of serialized safetensors `bytes` with its entries in
/// key order. The crate writes it first in the header, `{"__metadata__":{...},` in compact
/// JSON, so the sorted object (the same entries, hence the same length) replaces it in place.
fn sort_metadata(bytes: &mut [u8], sorted: &BTreeMap<String, String>) -> Result<()> {
    const PREFIX: &[u8] = br#"{"__metadata__":"#;
    let json = serde_json::to_vec(sorted).map_err(|e| Error::invalid("save_safetensors", e.to_string()))?;
    let start = 8 + PREFIX.len();
    let region = bytes.get(start..start + json.len());
    let same_entries = region.is_some_and(|r| {
        bytes[8..].starts_with(PREFIX)
            && serde_json::from_slice::<BTreeMap<String, String>>(r).ok().as_ref() == Some(sorted)
    });
    if !same_entries {
        return Err(Error::invalid(
            "save_safetensors",
            "the safetensors header does not start with its metadata as expected (a changed safetensors crate?)",
        ));
    }
    bytes[start..start + json.len()].copy_from_slice(&json);
    Ok(())
}

/// Checks that every floating-point tensor holds only finite values; the error names the
/// first tensor that does not, with the first bad element, and `source` (the file).
pub fn check_finite(tensors: &[(String, Tensor)], source: &str) -> Result<()> {
    for (name, t) in tensors {
        if !t.dtype().is_float() {
            continue;
        }
        let values = t.to_dtype(DType::F64)?.to_vec::<f64>()?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let bad = values.iter().filter(|v| !v.is_finite()).count();
            return Err(Error::invalid(
                "load_safetensors",
                format!(
                    "{source}: tensor {name} {:?} holds {bad} values that are not finite (element {i} is {}); \
                     the file is corrupt or was saved from a diverged run",
                    t.shape(),
                    values[i]
                ),
            ));
        }
    }
    Ok(())
}

/// Writes named tensors to a safetensors file, atomically (see [`write_atomic`]).
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_atomic(path, &serialize_tensors(tensors, metadata)?)
}

/// Every tensor of a safetensors file (in the file's order) and its metadata. A truncated or
/// corrupt file, or an element type kiln has no dtype for, is an error naming the file.
pub fn load_tensors(path: &Path, dev: &Device) -> Result<NamedTensors> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    parse_tensors(&bytes, &path.display().to_string(), dev)
}

/// As [`load_tensors`] from bytes in memory; `source` names them in errors.
pub fn parse_tensors(bytes: &[u8], source: &str, dev: &Device) -> Result<NamedTensors> {
    let corrupt = |e: &dyn std::fmt::Display| {
        Error::invalid(
            "load_safetensors",
            format!("{source} is not a valid safetensors file (truncated or corrupt?): {e}"),
        )
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(&e))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(&e))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    // the file's own order (by offset), so errors and loads are deterministic
    let mut out = Vec::with_capacity(st.len());
    for name in meta.offset_keys() {
        let view = st.tensor(&name).map_err(|e| corrupt(&e))?;
        let (shape, data) = (view.shape().to_vec(), view.data());
        let t = match view.dtype() {
            StDtype::F32 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, f32>(data), &shape, dev)?,
            StDtype::F64 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, f64>(data), &shape, dev)?,
            StDtype::BF16 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, half::bf16>(data), &shape, dev)?,
            StDtype::F16 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, half::f16>(data), &shape, dev)?,
            StDtype::U32 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, u32>(data), &shape, dev)?,
            // integer tensors (token ids, masks) become u32 when every value fits
            StDtype::I64 => ids_to_u32(
                &name,
                source,
                bytemuck::pod_collect_to_vec::<u8, i64>(data),
                &shape,
                dev,
            )?,
            StDtype::I32 => ids_to_u32(
                &name,
                source,
                bytemuck::pod_collect_to_vec::<u8, i32>(data),
                &shape,
                dev,
            )?,
            StDtype::U8 | StDtype::BOOL => Tensor::from_vec(data.iter().map(|&b| b as u32).collect(), &shape, dev)?,
            other => {
                return Err(Error::invalid(
                    "load_safetensors",
                    format!("{source}: tensor {name} has element type {other:?}, which kiln cannot read"),
                ))
            }
        };
        out.push((name, t));
    }
    Ok((out, metadata))
}

/// The largest safetensors header kiln reads (the format's own limit, 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The name and shape of every tensor in a safetensors file, from its header alone (at most
/// 100 MB is read, whatever the file's size): enough to check a config against the weights
/// before anything is allocated for them.
pub fn read_shapes(path: &Path) -> Result<BTreeMap<String, Vec<usize>>> {
    use std::io::Read;
    let source = path.display();
    let corrupt = |msg: String| {
        Error::invalid(
            "load_safetensors",
            format!("{source} is not a valid safetensors file (truncated or corrupt?): {msg}"),
        )
    };
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(format!("reading {source}"), e))?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {source}"), e))?
        .len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| corrupt(format!("{file_len} bytes is shorter than the 8-byte header length")))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES || n > file_len - 8 {
        return Err(corrupt(format!(
            "the header length {n} is more than the file's {} remaining bytes or the format's limit of {MAX_HEADER_BYTES}",
            file_len - 8
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(format!("reading {source}"), e))?;
    #[derive(serde::Deserialize)]
    struct Entry {
        shape: Vec<usize>,
    }
    let json: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("the header is not valid JSON: {e}")))?;
    json.into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, v)| {
            let entry: Entry = serde_json::from_value(v).map_err(|e| corrupt(format!("tensor {name}: {e}")))?;
            Ok((name, entry.shape))
        })
        .collect()
}

/// Checks that `given` (tensor names and shapes from a weights file) are exactly the parameters
/// of `cfg`, listing every missing, unexpected and mismatched one: run before a model of `cfg` is
/// built, so that a config with absurd sizes next to ordinary weights is refused at once.
pub fn check_config_matches(cfg: &GptConfig, given: &BTreeMap<String, Vec<usize>>, source: &str) -> Result<()> {
    cfg.validate()
        .map_err(|e| Error::invalid("load_safetensors", format!("{source}: {e}")))?;
    let expected = cfg.param_shapes();
    let mut problems = Vec::new();
    for (name, shape) in &expected {
        match given.get(name) {
            None => problems.push(format!("  missing: {name} {shape:?}")),
            Some(s) if s != shape => problems.push(format!("  shape mismatch: {name}: file {s:?}, config {shape:?}")),
            Some(_) => {}
        }
    }
    let names: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    for (name, shape) in given {
        if !names.contains(name.as_str()) {
            problems.push(format!("  unexpected: {name} {shape:?}"));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 20;
    let more = problems.len().saturating_sub(SHOWN);
    problems.truncate(SHOWN);
    if more > 0 {
        problems.push(format!("  ... and {more} more"));
    }
    Err(Error::invalid(
        "load_safetensors",
        format!(
            "{source}: the weights do not fit the config (n_layer {}, n_embd {}, block_size {}, vocab_size {}):\n{}",
            cfg.n_layer,
            cfg.n_embd,
            cfg.block_size,
            cfg.vocab_size,
            problems.join("\n")
        ),
    ))
}

/// Integers as a u32 tensor, refusing values outside 0..=u32::MAX.
fn ids_to_u32<I: Copy + TryInto<u32> + std::fmt::Display>(
    name: &str,
    source: &str,
    values: Vec<I>,
    shape: &[usize],
    dev: &Device,
) -> Result<Tensor> {
    let converted = values
        .iter()
        .map(|&v| {
            v.try_into().map_err(|_| {
                Error::invalid(
                    "load_safetensors",
                    format!("{source}: tensor {name} holds {v}, which does not fit u32"),
                )
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    Tensor::from_vec(converted, shape, dev)
}

impl Gpt {
    /// Writes every parameter (HF names, kiln's `[out, in]` Linear layout) and the config
    /// (metadata key [`CONFIG_KEY`]) to a safetensors file, atomically: a temporary file in
    /// the same folder, fsync, rename.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.safetensors_bytes()?)
    }

    /// The bytes [`Gpt::save_safetensors`] writes (the same for the same weights, byte for byte).
    pub fn safetensors_bytes(&self) -> Result<Vec<u8>> {
        let config = serde_json::to_string(self.config())
            .map_err(|e| Error::invalid("save_safetensors", format!("config: {e}")))?;
        let metadata = HashMap::from([
            (CONFIG_KEY.to_string(), config),
            ("format".to_string(), "pt".to_string()),
        ]);
        serialize_tensors(&self.params(), Some(metadata))
    }

    /// Loads parameters written by [`Gpt::save_safetensors`] into this model. The file must
    /// hold exactly this model's tensors with the same shapes; otherwise the error lists every
    /// missing, unexpected and mismatched tensor with its shapes, and the model is unchanged.
    pub fn load_safetensors(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        self.load_safetensors_bytes(&bytes, &path.display().to_string())
    }

    /// As [`Gpt::load_safetensors`] from a file's bytes in memory; `source` names the file.
    pub fn load_safetensors_bytes(&mut self, bytes: &[u8], source: &str) -> Result<()> {
        let (tensors, metadata) = parse_tensors(bytes, source, self.device())?;
        let note = match metadata.get(CONFIG_KEY).map(|s| serde_json::from_str::<GptConfig>(s)) {
            Some(Ok(cfg)) if &cfg != self.config() => {
                format!(" (the file was saved from {cfg:?}; this model is {:?})", self.config())
            }
            _ => String::new(),
        };
        self.assign_named(tensors, &format!("{source}{note}"))
    }

    /// Loads a Hugging Face GPT-2 folder as `save_pretrained` writes it: `config.json` and
    /// `model.safetensors` (Conv1D weights `[in, out]`, transposed here; a `lm_head.weight`,
    /// if present, must equal the tied token embedding).
    pub fn from_hf_dir(dir: &Path, dev: &Device) -> Result<Gpt> {
        let cfg = hf_config(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(missing_hf_weights(dir));
        }
        let (tensors, _) = load_tensors(&weights, dev)?;
        let mut renamed = Vec::with_capacity(tensors.len());
        let mut lm_head = None;
        for (name, t) in tensors {
            let name = if name.starts_with("transformer.") || name == "lm_head.weight" {
                name
            } else {
                format!("transformer.{name}") // saved from a bare GPT2Model
            };
            if name.ends_with(".attn.bias") && t.dims() == 4 || name.ends_with(".attn.masked_bias") {
                continue; // old transformers versions saved the causal-mask buffers
            }
            if name == "lm_head.weight" {
                lm_head = Some(t);
                continue;
            }
            let conv1d = [
                ".attn.c_attn.weight",
                ".attn.c_proj.weight",
                ".mlp.c_fc.weight",
                ".mlp.c_proj.weight",
            ];
            let t = if conv1d.iter().any(|s| name.ends_with(s)) && t.dims() == 2 {
                t.transpose(0, 1)?.contiguous()?
            } else {
                t
            };
            renamed.push((name, t));
        }
        if let Some(head) = lm_head {
            let wte = renamed
                .iter()
                .find(|(n, _)| n == "transformer.wte.weight")
                .map(|(_, t)| t);
            let tied = match wte {
                Some(wte) if wte.shape() == head.shape() => wte.to_vec::<f32>()? == head.to_vec::<f32>()?,
                _ => false,
            };
            if !tied {
                return Err(Error::invalid(
                    "from_hf_dir",
                    format!(
                        "{}: lm_head.weight differs from transformer.wte.weight; kiln's GPT ties them",
                        weights.display()
                    ),
                ));
            }
        }
        // the config's sizes are checked against the file's tensors before the model is built
        let shapes = renamed.iter().map(|(n, t)| (n.clone(), t.shape().to_vec())).collect();
        check_config_matches(&cfg, &shapes, &weights.display().to_string())?;
        let mut model = Gpt::zeros(cfg, dev)?;
        model.assign_named(renamed, &weights.display().to_string())?;
        Ok(model)
    }

    /// Copies `tensors` into the parameters of the same names after checking that the names
    /// and shapes match exactly (dtypes are converted). On a mismatch nothing is changed.
    pub(crate) fn assign_named(&mut self, tensors: Vec<(String, Tensor)>, source: &str) -> Result<()> {
        let params = self.params();
        let mut given: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, t) in tensors {
            if given.contains_key(&name) {
                problems.push(format!("  duplicate: {name}"));
            }
            given.insert(name, t);
        }
        for (name, p) in &params {
            match given.get(name) {
                None => problems.push(format!("  missing: {name} {:?}", p.shape())),
                Some(t) if t.shape() != p.shape() => problems.push(format!(
                    "  shape mismatch: {name}: file {:?}, model {:?}",
                    t.shape(),
                    p.shape()
                )),
                Some(t) if !t.dtype().is_float() => problems.push(format!(
                    "  dtype mismatch: {name}: file {}, model {}",
                    t.dtype(),
                    p.dtype()
                )),
                Some(_) => {}
            }
        }
        for (name, t) in &given {
            if !params.iter().any(|(n, _)| n == name) {
                problems.push(format!("  unexpected: {name} {:?}", t.shape()));
            }
        }
        if !problems.is_empty() {
            return Err(Error::invalid(
                "load_safetensors",
                format!(
                    "{source} does not fit this model ({} problems):\n{}",
                    problems.len(),
                    problems.join("\n")
                ),
            ));
        }
        // every value checked before any parameter changes
        let named: Vec<(String, Tensor)> = given.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
        check_finite(&named, source)?;
        for (name, p) in &params {
            p.assign(&given[name].to_dtype(p.dtype())?)?;
        }
        Ok(())
    }
}

/// The error for a Hugging Face folder without `model.safetensors`: which weight files it holds
/// instead, which kiln reads, and how to convert.
fn missing_hf_weights(dir: &Path) -> Error {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.ends_with(".bin")
                        || n.ends_with(".safetensors")
                        || n.ends_with(".index.json")
                        || n.ends_with(".h5")
                        || n.ends_with(".msgpack")
                        || n.ends_with(".pt")
                        || n.ends_with(".pth")
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let holds = if found.is_empty() {
        "no weight file".to_string()
    } else {
        found.join(", ")
    };
    Error::invalid(
        "from_hf_dir",
        format!(
            "{} has no model.safetensors (it holds {holds}). kiln reads a Hugging Face GPT-2 folder's weights from \
             one model.safetensors file: not pytorch_model.bin (a pickle), not TensorFlow or Flax files, not \
             weights sharded into model-0000N-of-0000M.safetensors. Convert with transformers: python -c \
             \"from transformers import GPT2LMHeadModel as M; M.from_pretrained('{dir}').save_pretrained('OUT', \
             safe_serialization=True, max_shard_size='1000GB')\" and give kiln OUT",
            dir.display(),
            dir = dir.display()
        ),
    )
}

/// A [`GptConfig`] from a Hugging Face GPT-2 `config.json`; options kiln's GPT does not
/// implement are refused by name.
fn hf_config(path: &Path) -> Result<GptConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let bad = |msg: String| Error::invalid("from_hf_dir", format!("{}: {msg}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    // the first of `keys` present; a value of another type is named as such, not as missing
    let usize_field = |keys: &[&str]| -> Result<usize> {
        let Some((key, v)) = keys.iter().find_map(|k| json.get(*k).map(|v| (k, v))) else {
            return Err(bad(format!("missing integer field {}", keys.join(" or "))));
        };
        v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
            bad(format!(
                "{key} is {v}, which is not a whole number ≥ 0 (write it without quotes)"
            ))
        })
    };
    let n_embd = usize_field(&["n_embd", "hidden_size"])?;
    let cfg = GptConfig {
        vocab_size: usize_field(&["vocab_size"])?,
        block_size: usize_field(&["n_positions", "n_ctx"])?,
        n_layer: usize_field(&["n_layer", "num_hidden_layers"])?,
        n_head: usize_field(&["n_head", "num_attention_heads"])?,
        n_embd,
        dropout: json.get("resid_pdrop").and_then(|v| v.as_f64()).unwrap_or(0.0),
        bias: true,
    };
    // Each option below changes what the network computes; a value kiln does not implement is
    // refused by name rather than loaded into a model that would silently differ. An absent key
    // (or, where HF allows it, null) means HF's default, which is kiln's.
    let field = |key: &str| json.get(key).filter(|v| !v.is_null());
    if let Some(t) = field("model_type") {
        // other architectures reuse GPT-2's tensor names (ImageGPT: another LayerNorm and GELU)
        if t.as_str() != Some("gpt2") {
            return Err(bad(format!("model_type {t} is not supported (kiln's GPT is \"gpt2\")")));
        }
    }
    if let Some(act) = field("activation_function") {
        // gelu_pytorch_tanh and gelu_fast are the same tanh formula as gelu_new
        if !matches!(act.as_str(), Some("gelu_new" | "gelu_pytorch_tanh" | "gelu_fast")) {
            return Err(bad(format!(
                "activation_function {act} is not supported (kiln's GPT uses the tanh GELU, \"gelu_new\")"
            )));
        }
    }
    if let Some(n_inner) = field("n_inner") {
        if n_inner.as_u64() != Some(4 * n_embd as u64) {
            return Err(bad(format!(
                "n_inner {n_inner} is not supported (kiln's MLP is 4·n_embd = {}; null means that too)",
                4 * n_embd
            )));
        }
    }
    if let Some(eps) = field("layer_norm_epsilon") {
        if eps
            .as_f64()
            .is_none_or(|e| (e - super::gpt::LN_EPS as f64).abs() > 1e-12)
        {
            return Err(bad(format!(
                "layer_norm_epsilon {eps} is not supported (kiln uses 1e-5)"
            )));
        }
    }
    // true: every layer's scores divided by its index + 1, not in kiln's attention
    if json.get("scale_attn_by_inverse_layer_idx").and_then(|v| v.as_bool()) == Some(true) {
        return Err(bad("scale_attn_by_inverse_layer_idx = true is not supported".into()));
    }
    // false: scores not divided by √hs
    if json.get("scale_attn_weights").and_then(|v| v.as_bool()) == Some(false) {
        return Err(bad("scale_attn_weights = false is not supported".into()));
    }
    if json.get("tie_word_embeddings").and_then(|v| v.as_bool()) == Some(false) {
        return Err(bad(
            "tie_word_embeddings = false is not supported (kiln ties the LM head)".into(),
        ));
    }
    // reorder_and_upcast_attn is accepted: HF then computes the same scaled, masked softmax, only
    // with the scores in f32 under autocast (a mixed-precision detail, not another model)
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

//! Named tensors in safetensors files (Hugging Face's format: a JSON header of names, dtypes,
//! shapes and offsets, then the raw little-endian data), read and written whole.
//!
//! [`load`] and [`save`] are the state-dict pair: a map from name to tensor, as PyTorch's
//! `safetensors.torch.load_file` / `save_file` or candle's `safetensors::load` / `save`. The read
//! maps the file into memory (no read of the whole file into a buffer first), so each tensor's
//! bytes are copied once, from the mapping into its own storage on the device. The write is atomic
//! ([`write_atomic`]): a crash leaves the old file or the new one.
//!
//! ```
//! use kiln::{Device, Tensor};
//! let dir = std::env::temp_dir().join(format!("kiln-doc-safetensors-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("w.safetensors");
//! let w = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], &[2, 3], &Device::Cpu)?;
//! kiln::safetensors::save([("w", &w)], &path)?;
//! let loaded = kiln::safetensors::load(&path, &Device::Cpu)?;
//! assert_eq!(loaded["w"].to_vec::<f32>()?, w.to_vec::<f32>()?);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), kiln::Error>(())
//! ```

use crate::{DType, Device, Error, Result, Tensor};
use ::safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// Every tensor of the safetensors file at `path`, by name, on `dev`. A truncated or corrupt
/// file, or an element type kiln has no dtype for, is an error naming the file (integer types
/// become u32 when every value fits, bool and u8 too). See [`load_tensors`] for the file's order
/// and its metadata.
pub fn load(path: impl AsRef<Path>, dev: &Device) -> Result<BTreeMap<String, Tensor>> {
    Ok(load_tensors(path.as_ref(), dev)?.0.into_iter().collect())
}

/// Writes named tensors to a safetensors file at `path`, atomically. Takes any collection of
/// (name, tensor) pairs: a `&BTreeMap<String, Tensor>` (as [`load`] and
/// [`crate::nn::save_named`] return), a `Vec<(String, Tensor)>`, an array of `(&str, &Tensor)`.
pub fn save<N: AsRef<str>, T: Borrow<Tensor>>(
    tensors: impl IntoIterator<Item = (N, T)>,
    path: impl AsRef<Path>,
) -> Result<()> {
    let named: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| (n.as_ref().to_string(), t.borrow().clone()))
        .collect();
    save_tensors(path.as_ref(), &named, None)
}

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
        ::safetensors::serialize(views, metadata).map_err(|e| Error::invalid("save_safetensors", e.to_string()))?;
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
/// corrupt file, or an element type kiln has no dtype for, is an error naming the file. The file
/// is memory-mapped for the read.
pub fn load_tensors(path: &Path, dev: &Device) -> Result<NamedTensors> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    // SAFETY: the mapping is read-only and dropped before this function returns; every byte is
    // copied out of it into the tensors' own storage. As with any file mapping, another process
    // truncating the file during the read is undefined behaviour (a SIGBUS on Linux); kiln's own
    // writes replace files by rename (`write_atomic`), which leaves a mapped file intact.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
    parse_tensors(&map, &path.display().to_string(), dev)
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

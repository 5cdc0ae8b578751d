//! Comparing kiln with reference tensors from the fixture folders under tests/fixtures/ (written by
//! the scripts in scripts/). Shared by tests/llama.rs and tests/llama_lora.rs through `#[path]`.

use kiln::model::io;
use kiln::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The reference tensors of a fixture folder, by name.
pub fn expected(name: &str) -> HashMap<String, Tensor> {
    let (tensors, _) = io::load_tensors(&fixture(name).join("expected.safetensors"), &Device::Cpu).unwrap();
    tensors.into_iter().collect()
}

pub fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap()
}

/// The largest |got − want| relative to the largest |want| (so a tolerance reads as a fraction
/// of the tensor's scale), after checking the lengths agree and nothing is NaN.
pub fn rel_error(what: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    let scale = want.iter().fold(0f64, |m, &w| m.max(w.abs() as f64));
    assert!(scale > 0.0, "{what}: the reference is all zero");
    let worst = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs()));
    worst / scale
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f64) {
    let err = rel_error(what, got, want);
    eprintln!("{what}: worst error {err:.2e} of the largest value");
    assert!(
        err <= rtol,
        "{what}: worst error {err:.3e} of the largest value > {rtol:.1e}"
    );
}

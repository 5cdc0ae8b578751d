//! Modules and their named parameters: the [`Module`] trait (a forward), the [`Params`] trait (one
//! walk over a model's parameters by name, as PyTorch's `named_parameters()` or candle's `VarMap`),
//! and the strict state-dict I/O built on that walk, [`load_named`] and [`save_named`].
//!
//! A model is a tree of structs: a composite visits its children with their names appended to the
//! prefix (`h.0` + `attn.c_attn` + `weight`), a layer visits its own tensors. The names are the
//! state-dict keys of the PyTorch model the struct mirrors, so a checkpoint maps one to one.
//!
//! ```
//! use kiln::nn::{Linear, Module, Params};
//! use kiln::{Device, Result, Rng, Tensor};
//!
//! /// A two-layer perceptron: a user-defined module.
//! #[derive(Clone)]
//! struct Mlp {
//!     fc1: Linear,
//!     fc2: Linear,
//! }
//!
//! impl Module for Mlp {
//!     fn forward(&self, x: &Tensor) -> Result<Tensor> {
//!         self.fc2.forward(&self.fc1.forward(x)?.relu()?)
//!     }
//! }
//!
//! impl Params for Mlp {
//!     fn visit_params(&mut self, prefix: &str, f: &mut kiln::nn::ParamVisitor<'_>) {
//!         self.fc1.visit_params(&kiln::nn::join(prefix, "fc1"), f);
//!         self.fc2.visit_params(&kiln::nn::join(prefix, "fc2"), f);
//!     }
//! }
//!
//! let (dev, mut rng) = (Device::Cpu, Rng::new(0));
//! let mlp = Mlp {
//!     fc1: Linear::new(4, 8, true, &mut rng, &dev)?,
//!     fc2: Linear::new(8, 1, true, &mut rng, &dev)?,
//! };
//! let names: Vec<String> = mlp.named_params().into_iter().map(|(n, _)| n).collect();
//! assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
//! # Ok::<(), kiln::Error>(())
//! ```

use crate::{DType, Error, Result, Tensor};
use std::collections::{BTreeMap, HashSet};

/// A layer or model with one input and one output, as `torch.nn.Module.forward`.
pub trait Module {
    /// Computes the output for `x` (recording the graph when a parameter requires a gradient).
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

/// What [`Params::visit_params`] calls for each parameter: its full name and the tensor.
pub type ParamVisitor<'a> = dyn FnMut(&str, &mut Tensor) + 'a;

/// `prefix.name`, or `name` alone at the root (`prefix` empty).
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A struct that owns parameters and can list them by name.
///
/// Only [`Params::visit_params`] is written by hand, once per struct: it calls the visitor on
/// each parameter mutably, in state-dict order.
/// The other methods are built on it. Mutable access lets a caller replace a parameter (a cast,
/// a new leaf); reading goes through a clone of the struct, which is cheap and shares every tensor
/// (a [`Tensor`] clone is a handle to the same storage and graph identity).
pub trait Params {
    /// Calls `f` with every parameter: `prefix` joined to its name (see [`join`]), and the tensor.
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>);

    /// Every parameter by its full name, in state-dict order. The tensors are the struct's own
    /// leaves: hand them to an optimizer, look their gradients up with `grads.get(&tensor)`.
    fn named_params(&self) -> Vec<(String, Tensor)>
    where
        Self: Clone + Sized,
    {
        let mut out = Vec::new();
        self.clone()
            .visit_params("", &mut |name, t| out.push((name.to_string(), t.clone())));
        out
    }

    /// The number of parameter elements (a tied tensor counted once per name that lists it).
    fn num_params(&self) -> usize
    where
        Self: Clone + Sized,
    {
        self.named_params().iter().map(|(_, t)| t.numel()).sum()
    }
}

/// A snapshot of every parameter of `model` by name (copies, so a later optimizer step does not
/// change them): the state dict, ready for [`crate::safetensors::save`].
pub fn save_named<M: Params + Clone>(model: &M) -> Result<BTreeMap<String, Tensor>> {
    let _no_grad = crate::no_grad();
    model
        .named_params()
        .into_iter()
        .map(|(name, t)| Ok((name, t.copy()?)))
        .collect()
}

/// Copies `tensors` (a state dict, e.g. from [`crate::safetensors::load`]) into the parameters of
/// `model` with the same names, strictly: every parameter must be given, with its shape and a
/// floating-point dtype (converted to the parameter's), every given tensor must name a parameter,
/// and every value must be finite. Otherwise the error lists every missing, unexpected, duplicate
/// and mis-shaped tensor at once, and the model is unchanged.
pub fn load_named<M: Params>(model: &mut M, tensors: impl IntoIterator<Item = (String, Tensor)>) -> Result<()> {
    load_named_from(model, tensors, None)
}

/// As [`load_named`]; `file`, when the tensors come from one, is named in the error.
pub(crate) fn load_named_from<M: Params>(
    model: &mut M,
    tensors: impl IntoIterator<Item = (String, Tensor)>,
    file: Option<&str>,
) -> Result<()> {
    let (source, given_as) = match file {
        Some(file) => (format!("{file} does not"), "file"),
        None => ("the tensors given do not".to_string(), "given"),
    };
    let mut params = Vec::new();
    model.visit_params("", &mut |name, t| params.push((name.to_string(), t.clone())));
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
                "  shape mismatch: {name}: {given_as} {:?}, model {:?}",
                t.shape(),
                p.shape()
            )),
            Some(t) if !t.dtype().is_float() => problems.push(format!(
                "  dtype mismatch: {name}: {given_as} {}, model {}",
                t.dtype(),
                p.dtype()
            )),
            Some(_) => {}
        }
    }
    let names: HashSet<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    for (name, t) in &given {
        if !names.contains(name.as_str()) {
            problems.push(format!("  unexpected: {name} {:?}", t.shape()));
        }
    }
    if !problems.is_empty() {
        return Err(Error::invalid(
            "load_named",
            format!(
                "{source} fit this model ({} problems):\n{}",
                problems.len(),
                problems.join("\n")
            ),
        ));
    }
    // every value checked before any parameter changes
    let named: Vec<(String, Tensor)> = given.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
    crate::safetensors::check_finite(&named, file.unwrap_or("the tensors given"))?;
    let _no_grad = crate::no_grad();
    for (name, p) in &params {
        p.assign(&given[name].to_dtype(p.dtype())?.to_device(p.device())?)?;
    }
    Ok(())
}

/// Replaces every parameter of `model` that is not `dtype` by a cast copy (a new leaf that requires
/// a gradient): parameters already in `dtype` stay shared with the struct's clones.
pub(crate) fn cast_params<M: Params>(model: &mut M, dtype: DType) -> Result<()> {
    let _no_grad = crate::no_grad();
    let mut first_error = None;
    model.visit_params("", &mut |_, p| {
        if p.dtype() != dtype && first_error.is_none() {
            match p.to_dtype(dtype) {
                // a trainable parameter stays trainable, a frozen one (a LoRA base) frozen
                Ok(cast) => {
                    *p = match p.is_leaf_requiring_grad() {
                        true => cast.requires_grad(),
                        false => cast,
                    }
                }
                Err(e) => first_error = Some(e),
            }
        }
    });
    first_error.map_or(Ok(()), Err)
}

/// Copies `weights` end to end into one new buffer and makes each a view of its part (a trainable
/// leaf still a trainable leaf, a frozen one frozen), for a model cast once for inference: a
/// decode step reads every weight once per token, and one buffer of hundreds of MB lies in huge
/// pages on the CPU ([`Tensor::packed`]), where a Llama's many small
/// projections (0.2–1.8 MB each in SmolLM2-135M) would each have its own 4 KiB pages. The values
/// are unchanged. Only matrices share a buffer: the GEMMs read a view in place, where the fused
/// row ops (norms, embedding lookups) copy a view into a larger buffer first (`Tensor::dense`), so
/// a table they read is packed alone (its buffer then starts and ends with it); and AdamW refuses
/// views into a larger buffer, so a model it trains (f32) is not packed.
pub(crate) fn pack_weights(weights: &mut [&mut Tensor]) -> Result<()> {
    // already the views of one buffer that holds them and nothing else (a base frozen again when
    // an adapter is loaded): nothing to copy
    if let Some(first) = weights.first() {
        let total: usize = weights.iter().map(|w| w.numel()).sum();
        if weights.iter().all(|w| w.same_storage(first)) && first.storage().len() == total {
            return Ok(());
        }
    }
    let _no_grad = crate::no_grad();
    let views = Tensor::packed(&weights.iter().map(|w| &**w).collect::<Vec<_>>())?;
    for (w, view) in weights.iter_mut().zip(views) {
        **w = match w.is_leaf_requiring_grad() {
            true => view.requires_grad(),
            false => view,
        };
    }
    Ok(())
}

//! kiln used as a library: modules and named parameters, the strict state-dict loader, layer
//! initialisation, AdamW's configuration and decay policy, gradient clipping on plain tensors,
//! `Gradients::iter`, the public gradcheck, safetensors files, and `From<std::io::Error>`.
//! Reference values are computed here independently (f64 formulas, PyTorch's documented defaults).

use kiln::nn::{join, load_named, save_named, Embedding, LayerNorm, Linear, Module, ParamVisitor, Params};
use kiln::optim::{clip_grad_norm, AdamW, AdamWConfig, WeightDecay};
use kiln::{DType, Device, Error, Gradients, Result, Rng, Tensor};
use std::collections::BTreeMap;
use std::sync::Arc;

const DEV: Device = Device::Cpu;

/// A user-defined two-layer perceptron with a norm, as a newcomer would write it.
#[derive(Clone)]
struct Net {
    fc1: Linear,
    norm: LayerNorm,
    fc2: Linear,
}

impl Net {
    fn new(rng: &mut Rng) -> Result<Net> {
        Ok(Net {
            fc1: Linear::new(3, 5, true, rng, &DEV)?,
            norm: LayerNorm::new(5, true, 1e-5, &DEV)?,
            fc2: Linear::new(5, 2, false, rng, &DEV)?,
        })
    }
}

impl Module for Net {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.norm.forward(&self.fc1.forward(x)?)?.relu()?)
    }
}

impl Params for Net {
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        self.fc1.visit_params(&join(prefix, "fc1"), f);
        self.norm.visit_params(&join(prefix, "norm"), f);
        self.fc2.visit_params(&join(prefix, "fc2"), f);
    }
}

fn leaf(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &DEV).unwrap().requires_grad()
}

#[test]
fn a_user_module_lists_its_parameters_by_name_in_order() {
    let net = Net::new(&mut Rng::new(0)).unwrap();
    let named = net.named_params();
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight"]
    );
    // the listed tensors are the module's own leaves (same storage), not copies
    assert!(named[0].1.same_storage(&net.fc1.weight));
    assert!(named.iter().all(|(_, t)| t.is_leaf_requiring_grad()));
    assert_eq!(net.num_params(), 3 * 5 + 5 + 5 + 5 + 5 * 2);
}

#[test]
fn load_named_lists_every_problem_at_once_and_changes_nothing() {
    let mut net = Net::new(&mut Rng::new(1)).unwrap();
    let before = save_named(&net).unwrap();
    let mut given: Vec<(String, Tensor)> = before.clone().into_iter().collect();
    given.retain(|(n, _)| n != "norm.bias"); // missing
    given.push(("fc3.weight".into(), Tensor::zeros(&[2, 2], DType::F32, &DEV).unwrap())); // unexpected
    for (n, t) in given.iter_mut() {
        if n == "fc1.weight" {
            *t = Tensor::zeros(&[5, 4], DType::F32, &DEV).unwrap(); // mis-shaped
        }
        if n == "fc2.weight" {
            *t = Tensor::zeros(&[2, 5], DType::U32, &DEV).unwrap(); // integer
        }
    }
    given.push(("fc1.bias".into(), Tensor::zeros(&[5], DType::F32, &DEV).unwrap())); // duplicate
    let err = load_named(&mut net, given).unwrap_err().to_string();
    for needle in [
        "missing: norm.bias [5]",
        "unexpected: fc3.weight [2, 2]",
        "shape mismatch: fc1.weight: given [5, 4], model [5, 3]",
        "dtype mismatch: fc2.weight: given u32, model f32",
        "duplicate: fc1.bias",
        "(5 problems)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let after = save_named(&net).unwrap();
    for (name, t) in &before {
        assert_eq!(
            t.to_vec::<f32>().unwrap(),
            after[name].to_vec::<f32>().unwrap(),
            "{name} changed"
        );
    }
    // non-finite values are refused too, by name, before anything changes
    let mut bad = before.clone();
    bad.insert(
        "fc1.bias".into(),
        Tensor::from_vec(vec![0f32, f32::NAN, 0., 0., 0.], &[5], &DEV).unwrap(),
    );
    let err = load_named(&mut net, bad).unwrap_err().to_string();
    assert!(err.contains("fc1.bias") && err.contains("not finite"), "{err}");
}

#[test]
fn save_named_is_a_snapshot_and_load_named_restores_it() {
    let net = Net::new(&mut Rng::new(2)).unwrap();
    let saved = save_named(&net).unwrap();
    // a snapshot: changing the model afterwards does not change it
    let w = saved["fc1.weight"].to_vec::<f32>().unwrap();
    net.fc1.weight.assign(&net.fc1.weight.zeros_like().unwrap()).unwrap();
    assert_eq!(saved["fc1.weight"].to_vec::<f32>().unwrap(), w);
    // f64 tensors are converted to the parameters' f32
    let mut other = Net::new(&mut Rng::new(3)).unwrap();
    let as_f64: BTreeMap<String, Tensor> = saved
        .iter()
        .map(|(n, t)| (n.clone(), t.to_dtype(DType::F64).unwrap()))
        .collect();
    load_named(&mut other, as_f64).unwrap();
    assert_eq!(other.fc1.weight.to_vec::<f32>().unwrap(), w);
    assert_eq!(other.fc1.weight.dtype(), DType::F32);
}

#[test]
fn the_gpt_lists_its_hugging_face_names_through_the_one_walk() {
    let cfg = kiln::model::GptConfig {
        vocab_size: 11,
        block_size: 8,
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        dropout: 0.0,
        bias: true,
    };
    let gpt = kiln::model::Gpt::new(cfg.clone(), &mut Rng::new(0), &DEV).unwrap();
    let names: Vec<String> = gpt.params().into_iter().map(|(n, _)| n).collect();
    // the config's own list of parameter shapes (written independently of the walk)
    let expected: Vec<String> = cfg.param_shapes().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, expected);
    assert_eq!(
        names[..4],
        [
            "transformer.wte.weight",
            "transformer.wpe.weight",
            "transformer.h.0.ln_1.weight",
            "transformer.h.0.ln_1.bias"
        ]
    );
    // load_named takes the GPT too, and save_named round-trips it
    let mut other = kiln::model::Gpt::new(cfg, &mut Rng::new(1), &DEV).unwrap();
    load_named(&mut other, save_named(&gpt).unwrap()).unwrap();
    let ids = Tensor::from_vec(vec![1u32, 2, 3], &[1, 3], &DEV).unwrap();
    assert_eq!(
        Module::forward(&gpt, &ids).unwrap().to_vec::<f32>().unwrap(),
        other.forward(&ids).unwrap().to_vec::<f32>().unwrap()
    );
}

#[test]
fn layer_constructors_follow_pytorch_defaults() {
    let mut rng = Rng::new(4);
    let (fan_in, fan_out) = (50, 400);
    let lin = Linear::new(fan_in, fan_out, true, &mut rng, &DEV).unwrap();
    let bound = 1.0 / (fan_in as f64).sqrt();
    for (name, t) in [("weight", &lin.weight), ("bias", lin.bias.as_ref().unwrap())] {
        let v = t.to_vec::<f64>().unwrap();
        assert!(v.iter().all(|x| x.abs() <= bound), "{name} outside ±1/√fan_in");
        // U(-b, b) has variance b²/3
        let var = v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64;
        let tol = if name == "weight" { 0.05 } else { 0.25 };
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < tol, "{name} variance {var}");
    }
    assert_eq!(lin.weight.shape(), [fan_out, fan_in]);
    let emb = Embedding::new(300, 64, &mut rng, &DEV).unwrap();
    let v = emb.weight.to_vec::<f64>().unwrap();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    assert!(
        mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
        "N(0, 1): mean {mean}, var {var}"
    );
    let ln = LayerNorm::new(6, true, 1e-5, &DEV).unwrap();
    assert_eq!(ln.weight.to_vec::<f32>().unwrap(), [1.0; 6]);
    assert_eq!(ln.bias.unwrap().to_vec::<f32>().unwrap(), [0.0; 6]);
    let rms = kiln::model::RmsNorm::new(6, 1e-6, &DEV).unwrap();
    assert_eq!(rms.weight.to_vec::<f32>().unwrap(), [1.0; 6]);
    assert!(rms.weight.is_leaf_requiring_grad());
}

/// One AdamW step by hand in f64 with torch.optim.AdamW's documented defaults (lr 1e-3, betas
/// (0.9, 0.999), eps 1e-8, weight_decay 1e-2, every parameter decayed):
/// p ← p(1 − lr·wd) − lr·m̂/(√v̂ + eps), m̂ = g, v̂ = g² after one step.
#[test]
fn adamw_config_defaults_are_pytorchs() {
    let cfg = AdamWConfig::default();
    assert_eq!(
        (cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay),
        (1e-3, (0.9, 0.999), 1e-8, 1e-2)
    );
    let w = leaf(vec![1.0, -2.0, 0.5, 3.0], &[2, 2]);
    let b = leaf(vec![0.25, -0.75], &[2]);
    let mut opt = AdamW::with_config(vec![("w".into(), w.clone()), ("b".into(), b.clone())], cfg).unwrap();
    assert_eq!(opt.decayed(), ["w", "b"], "PyTorch decays every parameter");
    let (gw, gb) = (vec![0.3, -1.5, 2.0, 0.1], vec![-0.4, 1e-9]);
    let mut grads = Gradients::default();
    grads.insert(&w, Tensor::from_vec(gw.clone(), &[2, 2], &DEV).unwrap());
    grads.insert(&b, Tensor::from_vec(gb.clone(), &[2], &DEV).unwrap());
    let expect = |p: &[f64], g: &[f64]| -> Vec<f64> {
        let (lr, wd, b1, b2, eps): (f64, f64, f64, f64, f64) = (1e-3, 1e-2, 0.9, 0.999, 1e-8);
        p.iter()
            .zip(g)
            .map(|(&p, &g)| {
                let m_hat = (1.0 - b1) * g / (1.0 - b1);
                let v_hat = (1.0 - b2) * g * g / (1.0 - b2);
                p * (1.0 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
            })
            .collect()
    };
    let (w0, b0) = (w.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap());
    opt.step(&grads).unwrap();
    for (got, want) in [
        (w.to_vec::<f64>().unwrap(), expect(&w0, &gw)),
        (b.to_vec::<f64>().unwrap(), expect(&b0, &gb)),
    ] {
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() <= 1e-14 * e.abs().max(1.0), "got {got:?}, want {want:?}");
        }
    }
}

#[test]
fn weight_decay_policies_pick_their_parameters() {
    let params = || {
        vec![
            ("fc.weight".to_string(), leaf(vec![1.0; 4], &[2, 2])),
            ("fc.bias".to_string(), leaf(vec![1.0; 2], &[2])),
            ("emb.weight".to_string(), leaf(vec![1.0; 6], &[3, 2])),
        ]
    };
    let decayed = |decay: WeightDecay| {
        let opt = AdamW::with_config(
            params(),
            AdamWConfig {
                decay,
                ..AdamWConfig::default()
            },
        )
        .unwrap();
        opt.decayed().iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(decayed(WeightDecay::All), ["fc.weight", "fc.bias", "emb.weight"]);
    assert_eq!(decayed(WeightDecay::MatricesOnly), ["fc.weight", "emb.weight"]);
    let not_embeddings = WeightDecay::Predicate(Arc::new(|name: &str, t: &Tensor| {
        t.dims() >= 2 && !name.starts_with("emb")
    }));
    assert_eq!(decayed(not_embeddings), ["fc.weight"]);
    // AdamW::new keeps nanoGPT's grouping (kiln's trainer)
    let opt = AdamW::new(params(), 1e-3, (0.9, 0.95), 1e-8, 0.1).unwrap();
    assert_eq!(opt.decayed(), ["fc.weight", "emb.weight"]);
}

#[test]
fn optimizers_refuse_a_parameter_that_does_not_require_a_gradient() {
    let frozen = Tensor::from_vec(vec![1.0f32; 4], &[2, 2], &DEV).unwrap();
    let err = AdamW::with_config(vec![("frozen".into(), frozen.clone())], AdamWConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("frozen") && err.contains("requires_grad"), "{err}");
    let err = kiln::optim::Sgd::new(vec![("frozen".into(), frozen)], 0.1, 0.0, 0.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("frozen") && err.contains("requires_grad"), "{err}");
}

#[test]
fn clip_grad_norm_takes_plain_tensors_and_gradients_iterate() {
    let a = leaf(vec![3.0, 0.0], &[2]);
    let b = leaf(vec![0.0, 4.0], &[2]);
    // loss = a·[3, 0] + b·[0, 4]: gradients [3, 0] and [0, 4], global norm 5
    let weights = |v: Vec<f64>| Tensor::from_vec(v, &[2], &DEV).unwrap();
    let loss = a
        .mul(&weights(vec![3.0, 0.0]))
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&b.mul(&weights(vec![0.0, 4.0])).unwrap().sum_all().unwrap())
        .unwrap();
    let mut grads = loss.backward().unwrap();
    let mut ids: Vec<usize> = grads.iter().map(|(id, _)| id).collect();
    ids.sort();
    let mut want = vec![a.id(), b.id()];
    want.sort();
    assert_eq!(ids, want);
    let norm = clip_grad_norm(&[a.clone(), b.clone()], &mut grads, 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-12);
    let ga = grads.get(&a).unwrap().to_vec::<f64>().unwrap();
    assert!((ga[0] - 3.0 / (5.0 + 1e-6)).abs() < 1e-12, "{ga:?}");
}

#[test]
fn public_gradcheck_passes_a_right_gradient_and_names_a_wrong_one() {
    let x = Tensor::randn(&[3, 4], DType::F64, &mut Rng::new(5), &DEV).unwrap();
    let w = Tensor::randn(&[3, 4], DType::F64, &mut Rng::new(6), &DEV).unwrap();
    // softplus composed from kiln ops
    kiln::testing::gradcheck(std::slice::from_ref(&x), |t| {
        t[0].exp()?.add_scalar(1.0)?.log()?.mul(&w)?.sum_all()
    })
    .unwrap();
    // x·detach(x): the forward is x², the backward says x, not 2x
    let err = kiln::testing::gradcheck(std::slice::from_ref(&x), |t| {
        t[0].mul(&t[0].detach())?.mul(&w)?.sum_all()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("finite difference") && err.contains("element 0"), "{err}");
    // f32 inputs are refused: their differences are too coarse to check
    let err = kiln::testing::gradcheck(&[x.to_dtype(DType::F32).unwrap()], |t| t[0].sum_all()).unwrap_err();
    assert!(err.to_string().contains("must be f64"), "{err}");
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-library-api-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn safetensors_save_and_load_round_trip_by_name() {
    let dir = scratch("st");
    let path = dir.join("net.safetensors");
    let net = Net::new(&mut Rng::new(7)).unwrap();
    kiln::safetensors::save(&save_named(&net).unwrap(), &path).unwrap();
    let ids = Tensor::from_vec(vec![5u32, 0, 7], &[3], &DEV).unwrap();
    kiln::safetensors::save([("ids", &ids)], dir.join("ids.safetensors")).unwrap();
    let loaded = kiln::safetensors::load(&path, &DEV).unwrap();
    assert_eq!(
        loaded.keys().collect::<Vec<_>>(),
        ["fc1.bias", "fc1.weight", "fc2.weight", "norm.bias", "norm.weight"]
    );
    let mut other = Net::new(&mut Rng::new(8)).unwrap();
    load_named(&mut other, loaded).unwrap();
    assert_eq!(
        other.fc1.weight.to_vec::<f32>().unwrap(),
        net.fc1.weight.to_vec::<f32>().unwrap()
    );
    let back = kiln::safetensors::load(dir.join("ids.safetensors"), &DEV).unwrap();
    assert_eq!(back["ids"].to_vec::<u32>().unwrap(), [5, 0, 7]);
    // a missing file and a corrupt one (empty: mapped, then refused by name)
    let err = kiln::safetensors::load(dir.join("absent.safetensors"), &DEV).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("absent.safetensors"),
        "{err}"
    );
    std::fs::write(dir.join("empty.safetensors"), b"").unwrap();
    let err = kiln::safetensors::load(dir.join("empty.safetensors"), &DEV)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("empty.safetensors") && err.contains("not a valid safetensors file"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn io_errors_convert_with_the_question_mark() {
    fn read(path: &std::path::Path) -> kiln::Result<Vec<u8>> {
        Ok(std::fs::read(path)?)
    }
    let err = read(std::path::Path::new("/nonexistent/kiln/file")).unwrap_err();
    match &err {
        Error::Io { source, .. } => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        other => panic!("expected Error::Io, got {other:?}"),
    }
    assert!(err.to_string().starts_with("I/O error: "), "{err}");
}

#[test]
fn tensors_display_as_pytorch_prints_them() {
    let t = Tensor::from_vec(vec![1u32, 2, 3, 4], &[2, 2], &DEV).unwrap();
    assert_eq!(t.to_string(), "tensor([[1, 2],\n        [3, 4]])");
    let x = Tensor::from_vec(vec![0.5f32, -1.25], &[2], &Device::Emu).unwrap();
    assert_eq!(format!("{x}"), "tensor([ 0.5000, -1.2500], device=emu)");
}

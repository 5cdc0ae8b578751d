//! kiln's GPT against PyTorch/Hugging Face: the fixture in tests/fixtures/gpt2-tiny/ is a
//! random-init `GPT2LMHeadModel` (vocab 96, context 32, C = 48, 2 layers, 4 heads) and a fixed
//! batch (B = 2, T = 16), with reference logits, loss, every parameter's gradient and the
//! losses of 10 AdamW steps, computed by PyTorch in float64 from the saved float32 weights
//! (scripts/make_gpt2_fixture.py). kiln runs in float32 on the CPU.
//!
//! Every comparison is elementwise `|ours − ref| ≤ atol + rtol·|ref|`, with the `rtol` below
//! and `atol = rtol · max|ref|` of the tensor compared (so entries near zero are judged
//! against the tensor's scale, not their own): rtol 1e-5 for logits and loss, 1e-4 for the
//! gradients and the AdamW losses.

use kiln::model::{io, Gpt};
use kiln::optim::{clip_grad_norm, AdamW};
use kiln::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-tiny")
}

struct Fixture {
    gpt: Gpt,
    expected: HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
}

fn load() -> Fixture {
    let dev = Device::Cpu;
    let gpt = Gpt::from_hf_dir(&fixture_dir(), &dev).expect("load the HF folder");
    let (tensors, metadata) = io::load_tensors(&fixture_dir().join("expected.safetensors"), &dev).unwrap();
    Fixture {
        gpt,
        expected: tensors.into_iter().collect(),
        metadata,
    }
}

impl Fixture {
    fn get(&self, name: &str) -> &Tensor {
        self.expected
            .get(name)
            .unwrap_or_else(|| panic!("fixture lacks {name}"))
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.get(name).to_vec::<f32>().unwrap()
    }

    fn hyper(&self, key: &str) -> f64 {
        let adamw: serde_json::Value = serde_json::from_str(&self.metadata["adamw"]).unwrap();
        adamw[key]
            .as_f64()
            .unwrap_or_else(|| panic!("fixture metadata lacks adamw.{key}"))
    }
}

/// Checks `|got − want| ≤ atol + rtol·|want|` elementwise with `atol = rtol·max|want|`;
/// returns the worst ratio of error to allowance (≤ 1 passes).
fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(0f64, |m, &w| m.max((w as f64).abs()));
    let atol = rtol * scale;
    let (mut worst, mut at) = (0f64, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let allowed = atol + rtol * (w as f64).abs();
        let ratio = ((g as f64) - (w as f64)).abs() / allowed;
        if ratio.is_nan() || ratio > worst {
            (worst, at) = (ratio, i); // NaN lands here too and fails below
        }
    }
    assert!(
        worst <= 1.0,
        "{what}: element {at} is {} but the reference is {} (error {:.3e}, allowed {:.3e} = {atol:.1e} + {rtol:.0e}·|ref|)",
        got[at],
        want[at],
        ((got[at] as f64) - (want[at] as f64)).abs(),
        atol + rtol * (want[at] as f64).abs()
    );
    worst
}

#[test]
fn logits_and_loss_match_pytorch() {
    let fx = load();
    let (ids, targets) = (fx.get("ids"), fx.get("targets"));
    assert_eq!(ids.dtype(), DType::U32);
    let logits = fx.gpt.forward(ids).unwrap();
    assert_eq!(logits.shape(), &[2, 16, 96]);
    let r = assert_close("logits", &logits.to_vec::<f32>().unwrap(), &fx.f32s("logits"), 1e-5);
    let loss = fx.gpt.loss(ids, targets).unwrap();
    let r2 = assert_close("loss", &loss.to_vec::<f32>().unwrap(), &fx.f32s("loss"), 1e-5);
    eprintln!("logits: worst error/allowance {r:.3}; loss {r2:.3}");
}

#[test]
fn every_gradient_matches_pytorch() {
    let fx = load();
    let loss = fx.gpt.loss(fx.get("ids"), fx.get("targets")).unwrap();
    let mut grads = loss.backward().unwrap();
    let params = fx.gpt.params();
    assert_eq!(
        params.len(),
        fx.expected.keys().filter(|k| k.starts_with("grad.")).count(),
        "one reference gradient per parameter"
    );
    let mut worst = (0f64, String::new());
    for (name, p) in &params {
        let g = grads.get(p).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.shape(), p.shape(), "{name}");
        // HF's Conv1D weights (and so their gradients) are [in, out]; kiln's Linear is [out, in]
        let mut want = fx.get(&format!("grad.{name}")).clone();
        if want.dims() == 2 && !name.contains(".wte.") && !name.contains(".wpe.") {
            want = want.transpose(0, 1).unwrap();
        }
        assert_eq!(want.shape(), p.shape(), "{name}");
        let r = assert_close(
            &format!("grad of {name}"),
            &g.to_vec::<f32>().unwrap(),
            &want.to_vec::<f32>().unwrap(),
            1e-4,
        );
        if r > worst.0 {
            worst = (r, name.clone());
        }
    }
    eprintln!("gradients: worst error/allowance {:.3} ({})", worst.0, worst.1);
    // the global norm clip_grad_norm reports is the reference's too
    let norm = clip_grad_norm(&params, &mut grads, 1e9).unwrap();
    assert_close("grad norm", &[norm as f32], &fx.f32s("grad_norm"), 1e-5);
}

#[test]
fn ten_adamw_steps_match_pytorch() {
    let fx = load();
    let (ids, targets) = (fx.get("ids"), fx.get("targets"));
    let steps = fx.hyper("steps") as usize;
    let mut opt = AdamW::new(
        fx.gpt.params(),
        fx.hyper("lr"),
        (fx.hyper("beta1"), fx.hyper("beta2")),
        fx.hyper("eps"),
        fx.hyper("weight_decay"),
    )
    .unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let loss = fx.gpt.loss(ids, targets).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    losses.push(fx.gpt.loss(ids, targets).unwrap().to_scalar::<f32>().unwrap());
    let want = fx.f32s("adamw_losses");
    eprintln!("kiln {losses:?}\nref  {want:?}");
    let r = assert_close("AdamW losses", &losses, &want, 1e-4);
    eprintln!("AdamW losses: worst error/allowance {r:.3}");
    // the loss went down: the steps did something
    assert!(losses[steps] < losses[0] - 0.5);
}

//! The library's limits hold without aborting the process: sizes nobody can allocate are
//! `Error::OutOfMemory`, long graphs drop without recursion, overlapping writes are refused, and
//! the emulator holds many live buffers and high-rank views. See docs/reliability.md.

use kiln::{DType, Device, Error, Rng, Tensor};

fn assert_out_of_memory<T: std::fmt::Debug>(result: kiln::Result<T>, op: &str) {
    match result {
        Err(e @ Error::OutOfMemory { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(op), "the error should name {op}: {msg}");
            assert!(msg.contains("bytes"), "the error should give the bytes: {msg}");
        }
        other => panic!("{op}: expected Error::OutOfMemory, got {other:?}"),
    }
}

#[test]
fn cpu_sizes_nobody_can_allocate_are_out_of_memory_errors() {
    let cpu = Device::Cpu;
    // 2^40 f32 is 4 TiB, 2^44 f64 128 TiB: more than any test machine's memory plus swap.
    assert_out_of_memory(Tensor::zeros(&[1 << 40], DType::F32, &cpu), "full");
    assert_out_of_memory(Tensor::full(1.5, &[1 << 20, 1 << 20], DType::F64, &cpu), "full");
    assert_out_of_memory(Tensor::arange(0.0, 1e15, 1.0, DType::F32, &cpu), "arange");
    let mut rng = Rng::new(0);
    assert_out_of_memory(Tensor::rand(&[1 << 44], DType::F32, &mut rng, &cpu), "rand");
    assert_out_of_memory(Tensor::randn(&[1 << 44], DType::F32, &mut rng, &cpu), "randn");
    let one = Tensor::from_vec(vec![1f32], &[1, 1], &cpu).unwrap();
    let wide = one.broadcast_to(&[1 << 21, 1 << 21]).unwrap(); // a view: no memory yet
    assert_out_of_memory(wide.contiguous(), "contiguous");
    assert_out_of_memory(wide.exp(), "exp");
    assert_out_of_memory(wide.add(&wide), "add");
    assert_out_of_memory(wide.to_dtype(DType::F64), "to_dtype");
    let col = Tensor::zeros(&[1 << 21, 1], DType::F32, &cpu).unwrap();
    let row = Tensor::zeros(&[1, 1 << 21], DType::F32, &cpu).unwrap();
    assert_out_of_memory(col.matmul(&row), "matmul");
    let part = wide.narrow(0, 0, 1 << 20).unwrap();
    assert_out_of_memory(Tensor::cat(&[part.clone(), part], 0), "full");
    // the process is fine afterwards
    assert_eq!(
        Tensor::zeros(&[3], DType::F32, &cpu).unwrap().to_vec::<f32>().unwrap(),
        vec![0.0; 3]
    );
}

#[test]
fn a_shape_whose_element_count_overflows_is_a_shape_error() {
    let cpu = Device::Cpu;
    let huge = [1usize << 32, 1 << 32];
    assert!(matches!(
        Tensor::zeros(&huge, DType::F32, &cpu),
        Err(Error::Shape { .. })
    ));
    let col = Tensor::zeros(&[1, 1], DType::F32, &cpu)
        .unwrap()
        .broadcast_to(&[1 << 40, 1])
        .unwrap();
    let row = Tensor::zeros(&[1, 1], DType::F32, &cpu)
        .unwrap()
        .broadcast_to(&[1, 1 << 40])
        .unwrap();
    assert!(
        matches!(col.matmul(&row), Err(Error::Shape { .. })),
        "[2^40, 1] x [1, 2^40] has 2^80 elements"
    );
    let big = Tensor::zeros(&[1], DType::F32, &cpu)
        .unwrap()
        .broadcast_to(&[usize::MAX])
        .unwrap();
    assert!(matches!(Tensor::cat(&[big.clone(), big], 0), Err(Error::Shape { .. })));
}

#[test]
fn emu_reports_out_of_memory_like_the_cpu() {
    let Err(e) = Tensor::zeros(&[1 << 42], DType::F32, &Device::Emu) else {
        panic!("16 TiB of emulated device memory was granted");
    };
    assert!(
        matches!(
            e,
            Error::OutOfMemory {
                device: Device::Emu,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(&((1u128 << 42) * 4).to_string()), "{e}");
}

/// A chain of `n` recorded ops on a leaf, dropped without `backward`.
fn build_and_drop_chain(n: usize) {
    let x = Tensor::from_vec(vec![1f32, 2.0], &[2], &Device::Cpu)
        .unwrap()
        .requires_grad();
    let mut y = x.clone();
    for _ in 0..n {
        y = y.add(&x).unwrap();
    }
    drop(y); // the whole graph goes here
}

#[test]
fn a_long_graph_drops_without_overflowing_the_stack() {
    // The test thread has Rust's default 2 MiB stack, smaller than the main thread's 8 MiB.
    build_and_drop_chain(100_000);
}

#[test]
fn a_long_graph_drops_inside_a_rayon_worker() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| build_and_drop_chain(30_000));
}

#[test]
fn a_long_graph_still_differentiates_after_the_change() {
    let x = Tensor::from_vec(vec![1f32, 2.0], &[2], &Device::Cpu)
        .unwrap()
        .requires_grad();
    let mut y = x.clone();
    for _ in 0..1000 {
        y = y.add(&x).unwrap();
    }
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec::<f32>().unwrap(), vec![1001.0, 1001.0]);
}

#[test]
fn assign_into_a_broadcast_view_is_an_error() {
    let cpu = Device::Cpu;
    let base = Tensor::zeros(&[1, 3], DType::F32, &cpu).unwrap();
    let wide = base.broadcast_to(&[2, 3]).unwrap(); // both rows are the same three elements
    let src = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], &[2, 3], &cpu).unwrap();
    let err = wide.assign(&src).unwrap_err().to_string();
    assert!(err.contains("assign") && err.contains("overlap"), "{err}");
    assert_eq!(base.to_vec::<f32>().unwrap(), vec![0.0; 3], "nothing was written");
    // a transposed view does not overlap: assigning into it writes through
    let square = Tensor::zeros(&[2, 2], DType::F32, &cpu).unwrap();
    let t = square.transpose(0, 1).unwrap();
    t.assign(&Tensor::from_vec(vec![1f32, 2., 3., 4.], &[2, 2], &cpu).unwrap())
        .unwrap();
    assert_eq!(square.to_vec::<f32>().unwrap(), vec![1., 3., 2., 4.]);
}

#[test]
fn contiguous_of_a_rank_12_permutation_works_on_emu() {
    let shape = [2, 1, 3, 2, 1, 2, 2, 3, 1, 2, 2, 2];
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let dims = [11, 0, 5, 2, 9, 7, 1, 3, 10, 4, 8, 6];
    let want = Tensor::from_vec(values.clone(), &shape, &Device::Cpu)
        .unwrap()
        .permute(&dims)
        .unwrap()
        .contiguous()
        .unwrap();
    let got = Tensor::from_vec(values, &shape, &Device::Emu)
        .unwrap()
        .permute(&dims)
        .unwrap()
        .contiguous()
        .unwrap();
    assert_eq!(got.shape(), want.shape());
    assert_eq!(got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
}

#[test]
fn emu_holds_100k_live_small_buffers() {
    // Each guarded buffer costs about two of the process's ~65k memory maps; past ~32,700 live
    // buffers every allocation used to fail. Small ones are pooled past the guarded budget.
    let emu = Device::Emu;
    let live: Vec<Tensor> = (0..100_000)
        .map(|i| Tensor::full(i as f64, &[4], DType::F32, &emu).unwrap())
        .collect();
    for i in [0, 16_383, 16_384, 50_000, 99_999] {
        let doubled = live[i].add(&live[i]).unwrap();
        assert_eq!(doubled.to_vec::<f32>().unwrap(), vec![2.0 * i as f32; 4], "buffer {i}");
    }
    drop(live);
    // freed blocks are reused, and fresh ones are poisoned (NaN), as guarded ones are
    let again: Vec<Tensor> = (0..20_000)
        .map(|_| Tensor::zeros(&[3], DType::F32, &emu).unwrap())
        .collect();
    assert!(again.iter().all(|t| t.to_vec::<f32>().unwrap() == vec![0.0; 3]));
}

#[test]
fn emu_raw_copies_and_frees_are_checked_against_the_allocation_table() {
    use kiln::backend::cuda::emu::Emu;
    let emu = Emu::open().unwrap();
    let p = emu.alloc(64).unwrap();
    let data: Vec<u8> = (0..64).collect();
    let mut back = vec![0u8; 64];
    // SAFETY: `p` is a live 64-byte buffer that nothing else uses.
    unsafe {
        emu.htod(p, &data).unwrap();
        emu.dtoh(&mut back, p).unwrap();
    }
    assert_eq!(back, data);
    let host = [7u8; 64];
    // SAFETY (of the calls): every address below is refused before any byte is copied.
    unsafe {
        assert!(emu.htod(p + 8, &data).is_err(), "runs past the end");
        assert!(
            emu.dtoh(&mut back, host.as_ptr() as u64).is_err(),
            "host memory is not device memory"
        );
        assert!(emu.htod(0x1000, &data).is_err(), "a wild address");
        assert!(emu.dtod(p, 0xdead_0000, 8).is_err());
        emu.free(p).unwrap();
        let err = emu.free(p).unwrap_err().to_string();
        assert!(err.contains("not a live emulated buffer"), "{err}");
        assert!(emu.dtoh(&mut back, p).is_err(), "a freed buffer");
    }
}

/// The `kiln` binary with `args` and extra environment; (exit code, stderr).
fn kiln(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_bad_emu_thread_count_is_an_error_naming_the_variable() {
    for value in ["-1", "100000", "lots"] {
        let (code, err) = kiln(
            &[
                "bench",
                "--device",
                "emu",
                "--kernels",
                "gelu",
                "--reps",
                "1",
                "--seconds",
                "0.01",
            ],
            &[("KILN_EMU_THREADS", value)],
        );
        assert_eq!(code, Some(1), "{value}: {err}");
        assert!(
            err.contains("KILN_EMU_THREADS") && err.contains(value) && err.contains("1 to 1024"),
            "{err}"
        );
    }
}

#[test]
fn the_cli_refuses_sizes_that_cannot_fit_before_it_starts() {
    let out = std::env::temp_dir().join(format!("kiln-limits-{}", std::process::id()));
    let out = out.to_str().unwrap();
    let (code, err) = kiln(
        &["train", "--batch-size", "1000000000000", "--steps", "1", "--out", out],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("training needs at least") && err.contains("activations"),
        "{err}"
    );
    let (code, err) = kiln(&["train", "--n-embd", "1000000000", "--n-head", "1", "--out", out], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("n_embd") && err.contains("limit"), "{err}");
    let (code, err) = kiln(&["bench", "--sizes", "1000000x1000000", "--device", "cpu"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bench --sizes 1000000x1000000 needs at least"), "{err}");
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn generation_with_no_token_limit_allocates_as_it_goes() {
    use kiln::model::{Gpt, GptConfig};
    use kiln::train::{generate, SampleOptions};
    let gpt = Gpt::new(GptConfig::preset("tiny").unwrap(), &mut Rng::new(0), &Device::Cpu).unwrap();
    let opts = SampleOptions {
        max_new_tokens: usize::MAX,
        ..SampleOptions::default()
    };
    let mut seen = 0;
    let ids = generate(&gpt, &[1, 2], &opts, &mut Rng::new(1), |_| {
        seen += 1;
        Ok(seen < 3)
    })
    .unwrap();
    assert_eq!(ids.len(), 3);
}

mod configs {
    use kiln::model::{Gpt, GptConfig};
    use kiln::optim::AdamW;
    use kiln::tokenizer::Tokenizer;
    use kiln::train::checkpoint::{self, DataInfo, TrainState};
    use kiln::train::TrainConfig;
    use kiln::{Device, Rng};
    use std::path::{Path, PathBuf};

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-limits-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A checkpoint of a 2-layer tiny model under `dir`; returns its checkpoint folder.
    fn save_checkpoint(dir: &Path) -> PathBuf {
        let cfg = GptConfig {
            n_layer: 2,
            bias: true, // as Hugging Face's GPT-2, so that the HF test can reuse the weights
            ..GptConfig::preset("tiny").unwrap()
        };
        let model = Gpt::new(cfg, &mut Rng::new(0), &Device::Cpu).unwrap();
        let opt = AdamW::new(model.params(), 1e-3, (0.9, 0.99), 1e-8, 0.1).unwrap();
        let state = TrainState {
            step: 1,
            data_rng: Rng::new(1).state(),
            dropout_rng: Rng::new(2).state(),
            train: TrainConfig::default(),
            data: DataInfo {
                sources: vec!["<test>".into()],
                corpus_hash: 0,
                tokens: 1000,
                windows_hash: None,
            },
            init: "scratch".into(),
            train_seconds: 0.0,
            last_train_loss: None,
            last_val_loss: None,
            kiln_version: "test".into(),
            checksums: Default::default(),
        };
        checkpoint::save(dir, &model, &opt, &Tokenizer::Byte, &state).unwrap()
    }

    /// Replaces `"key": old` by `"key": new` in the JSON file at `path`.
    fn edit_json(path: &Path, key: &str, value: serde_json::Value) {
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        *json.pointer_mut(key).unwrap() = value;
        std::fs::write(path, serde_json::to_string(&json).unwrap()).unwrap();
    }

    #[test]
    fn a_checkpoint_config_is_checked_against_its_weights_before_the_model_is_built() {
        let dir = folder("ckpt");
        let ckpt = save_checkpoint(&dir);
        let config = ckpt.join(checkpoint::CONFIG);
        let original = std::fs::read_to_string(&config).unwrap();
        for (key, value, expect) in [
            ("/n_embd", 1_000_000_000u64, "limit"),
            ("/n_layer", 1_000_000_000_000, "limit"),
            ("/block_size", 1_000_000_000_000, "limit"),
            // within the limits, but not what the weights hold: refused before 1000 layers are built
            ("/n_layer", 1000, "missing: transformer.h.2.ln_1.weight"),
            ("/block_size", 100_000, "shape mismatch: transformer.wpe.weight"),
        ] {
            std::fs::write(&config, &original).unwrap();
            edit_json(&config, key, value.into());
            let err = checkpoint::load(&dir, &Device::Cpu)
                .err()
                .expect("a corrupt config loaded")
                .to_string();
            assert!(err.contains(expect), "{key} = {value}: {err}");
        }
        std::fs::write(&config, &original).unwrap();
        assert!(checkpoint::load(&dir, &Device::Cpu).is_ok());
        // an absurd batch size in state.json
        let state = ckpt.join(checkpoint::STATE);
        edit_json(&state, "/train/batch_size", 1_000_000_000_000u64.into());
        let err = checkpoint::load(&dir, &Device::Cpu)
            .err()
            .expect("an absurd batch loaded")
            .to_string();
        assert!(
            err.contains("batch_size 1000000000000") && err.contains("state.json"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_hugging_face_config_is_checked_against_its_weights_before_the_model_is_built() {
        let dir = folder("hf");
        let ckpt = save_checkpoint(&dir);
        // a save_pretrained-like folder from the checkpoint's tensors (kiln's names; Linear
        // weights transposed to Conv1D's [in, out])
        let hf = dir.join("hf");
        std::fs::create_dir_all(&hf).unwrap();
        let (tensors, _) = kiln::model::io::load_tensors(&ckpt.join(checkpoint::MODEL), &Device::Cpu).unwrap();
        let conv1d = [
            ".attn.c_attn.weight",
            ".attn.c_proj.weight",
            ".mlp.c_fc.weight",
            ".mlp.c_proj.weight",
        ];
        let tensors: Vec<_> = tensors
            .into_iter()
            .map(|(n, t)| {
                let t = if conv1d.iter().any(|s| n.ends_with(s)) {
                    t.transpose(0, 1).unwrap().contiguous().unwrap()
                } else {
                    t
                };
                (n, t)
            })
            .collect();
        kiln::model::io::save_tensors(&hf.join("model.safetensors"), &tensors, None).unwrap();
        let write_config = |n_layer: u64, n_positions: u64| {
            let json = serde_json::json!({
                "model_type": "gpt2", "vocab_size": 256, "n_positions": n_positions, "n_layer": n_layer,
                "n_head": 4, "n_embd": 128,
            });
            std::fs::write(hf.join("config.json"), json.to_string()).unwrap();
        };
        write_config(1_000_000_000_000, 64);
        let err = Gpt::from_hf_dir(&hf, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("n_layer") && err.contains("limit"), "{err}");
        write_config(1000, 64);
        let err = Gpt::from_hf_dir(&hf, &Device::Cpu).err().unwrap().to_string();
        assert!(
            err.contains("do not fit the config") && err.contains("missing"),
            "{err}"
        );
        write_config(2, 64);
        Gpt::from_hf_dir(&hf, &Device::Cpu).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

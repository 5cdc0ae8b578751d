#!/usr/bin/env python3
"""Writes tests/fixtures/llama-tiny-lora/: Hugging Face PEFT references for kiln's LoRA (tests/llama_lora.rs),
on the tiny random Llama of tests/fixtures/llama-tiny (made by scripts/make_llama_fixture.py).

    /work/venv-ref/bin/python scripts/make_lora_fixture.py          # or any venv with the versions below
    /work/venv-ref/bin/python scripts/make_lora_fixture.py check    # after kiln wrote kiln/ (see below)
    /work/venv-ref/bin/python scripts/make_lora_fixture.py merge    # merged_expected.safetensors (see below)
    /work/venv-ref/bin/python scripts/make_lora_fixture.py check-merge DIR   # a folder `kiln merge` wrote
    /work/venv-ref/bin/python scripts/make_lora_fixture.py smollm2 GGUF      # tests/fixtures/smollm2-lora (below)
    /work/venv-ref/bin/python scripts/make_lora_fixture.py check-tokenizer DIR GGUF   # the tokenizer `kiln merge` wrote

Tested with torch 2.15, transformers 5.25, peft 0.21.2, gguf 0.19, safetensors.

Default mode writes:
  peft/adapter_config.json, peft/adapter_model.safetensors
      a LoRA adapter made by PEFT on all seven projections (r = 4, alpha = 8, scale 2) with PEFT's own A
      (Kaiming-uniform) and a NON-ZERO B (N(0, 0.2²)), so the adapter changes the logits
  expected.safetensors
      ids [2, 7] and logits [2, 7, V]: the PEFT model's logits with that adapter;
      train_ids, train_targets [2, 8] (llama-tiny's); adamw_losses [STEPS + 1]: the mean cross-entropy
      (logits[b, t] against targets[b, t], no shift) before each of STEPS torch.optim.AdamW steps over the
      adapter's parameters only (the base frozen) and after the last; grad0.<PEFT name>: every adapter
      gradient before the first step; final.<PEFT name>: every adapter tensor after the last step
All references are computed in float64 from the saved float32 weights, so a test's tolerance measures
kiln's error alone.

`check` mode reads kiln/ (adapter_config.json + adapter_model.safetensors, which kiln's save_adapter wrote
there: `cargo test --release --test llama_lora -- --ignored write_kiln_adapter`, an adapter kiln trained on
the GGUF model), loads it with PeftModel.from_pretrained on the transformers model read from llama-tiny's
model.gguf, and writes kiln_expected.safetensors: ids [2, 7] and PEFT's logits [2, 7, V] with kiln's adapter.

`merge` mode loads the transformers model from llama-tiny's model.gguf (which un-permutes the q/k rows
llama.cpp's converter permuted), applies peft/ with PeftModel.from_pretrained, merges it in float64 with
merge_and_unload, and writes merged_expected.safetensors: every merged weight as `merged.<Hugging Face name>`
(float32, Hugging Face's row order), ids [2, 7] and the merged model's logits [2, 7, V] (the references of
`kiln merge`, tests/cli_merge.rs).

`check-merge DIR` loads the Hugging Face folder DIR that `kiln merge --gguf model.gguf --lora peft --out DIR`
wrote with AutoModelForCausalLM.from_pretrained and checks its logits against merged_expected.safetensors.

`check-tokenizer DIR GGUF` loads the tokenizer of the folder DIR that `kiln merge --gguf GGUF ...` wrote with
AutoTokenizer.from_pretrained(DIR) and checks it: its chat template renders a chat as transformers' tokenizer of
GGUF does, the same BOS/EOS, every text decodes back, and (for SmolLM2's file) the texts of
tests/fixtures/smollm2/tokenizer_ids.json give their ids; it prints the texts where transformers' own GGUF
tokenizer encodes differently.

`smollm2 GGUF` writes tests/fixtures/smollm2-lora/, the same interop both ways on the real
SmolLM2-135M-Instruct (GGUF is its Q4_1 file, `scripts/fetch-smollm2.sh` prints the path), read by
transformers with `gguf_file=` (its own reader, dequantization and q/k un-permutation), forward in float64:
  peft/   a PEFT adapter on q_proj and k_proj (r = 1, alpha = 4, scale 4; PEFT's A, B drawn N(0, 0.2²)),
          small on purpose (the committed files stay under 300 kB)
  peft_expected.safetensors   ids [1, T] (the chat prompt below, transformers' tokenizer of the GGUF) and
          logits [2, V]: the PEFT model's logits at the last two positions
  kiln_expected.safetensors   the same ids, and the logits at the last two positions of the transformers
          model with the adapter in kiln/ loaded by PeftModel.from_pretrained (every tensor checked loaded)
kiln/ is an adapter `kiln finetune --gguf` trained for 2 steps on train.jsonl (committed), written by
    kiln finetune --gguf GGUF --data tests/fixtures/smollm2-lora/train.jsonl --lora-rank 1 --lora-alpha 2 \
        --lora-targets q_proj,v_proj --steps 2 --lr 2e-2 --warmup 0 --batch-size 1 --block-size 32 \
        --eval-iters 1 --seed 7 --out RUN && cp RUN/adapter/* tests/fixtures/smollm2-lora/kiln/
The test is tests/llama_lora_smollm2.rs.
"""

import json
import os
import sys

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "tests", "fixtures", "llama-tiny")
OUT = os.path.join(HERE, "..", "tests", "fixtures", "llama-tiny-lora")
SEED = 2024
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, steps=4)


def base_model(gguf: bool):
    kw = dict(gguf_file="model.gguf") if gguf else {}
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager", **kw)
    return model.eval()


def loss_of(model, ids, targets):
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def peft_names(model):
    """PEFT's file names (as save_pretrained writes them) of the trainable adapter tensors."""
    return {n: n.replace(".default", "") for n, p in model.named_parameters() if p.requires_grad}


def make():
    torch.manual_seed(SEED)
    base = base_model(gguf=False)
    model = get_peft_model(base, LoraConfig(**LORA))
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    os.makedirs(OUT, exist_ok=True)
    model.peft_config["default"].base_model_name_or_path = "llama-tiny"  # not this machine's path
    model.save_pretrained(os.path.join(OUT, "peft"))
    os.remove(os.path.join(OUT, "peft", "README.md"))  # PEFT's model-card template

    ref = load_file(os.path.join(BASE, "expected.safetensors"))
    ids = ref["ids_a"]
    model = model.double()
    expected = {"ids": ids}
    with torch.no_grad():
        expected["logits"] = model(input_ids=ids).logits.float()

    ids_t, targets = ref["train_ids"], ref["train_targets"]
    expected["train_ids"], expected["train_targets"] = ids_t, targets
    names = peft_names(model)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    assert len(params) == 2 * 7 * base.config.num_hidden_layers, len(params)
    opt = torch.optim.AdamW(params, lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"],
                            weight_decay=ADAMW["weight_decay"])
    losses = []
    for step in range(ADAMW["steps"]):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model, ids_t, targets)
        losses.append(loss.item())
        loss.backward()
        for n, p in model.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, n  # the base is frozen
            elif step == 0:
                expected[f"grad0.{names[n]}"] = p.grad.detach().float()
        opt.step()
    with torch.no_grad():
        losses.append(loss_of(model, ids_t, targets).item())
        for n, p in model.named_parameters():
            if p.requires_grad:
                expected[f"final.{names[n]}"] = p.detach().float()
    expected["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
    print(f"AdamW losses {[round(x, 6) for x in losses]}", file=sys.stderr)
    import peft, transformers
    metadata = {
        "seed": str(SEED),
        "lora": json.dumps(LORA),
        "adamw": json.dumps(ADAMW),
        "reference": f"float64 from float32 weights; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}",
    }
    save_file({k: t.contiguous() for k, t in expected.items()}, os.path.join(OUT, "expected.safetensors"), metadata)
    for root, _, files in os.walk(OUT):
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    print(f"wrote {OUT}", file=sys.stderr)


def check():
    """PEFT's logits with the adapter kiln wrote to kiln/, on the transformers model of model.gguf."""
    folder = os.path.join(OUT, "kiln")
    model = PeftModel.from_pretrained(base_model(gguf=True), folder).eval().double()
    # every kiln tensor must have been loaded (PEFT only warns about unexpected or missing keys)
    saved = load_file(os.path.join(folder, "adapter_model.safetensors"))
    state = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert sorted(saved) == sorted(state), (sorted(saved)[:3], sorted(state)[:3])
    for k, v in saved.items():
        assert torch.equal(state[k].float(), v), k
    ids = load_file(os.path.join(OUT, "expected.safetensors"))["ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    save_file({"ids": ids, "logits": logits}, os.path.join(OUT, "kiln_expected.safetensors"))
    os.chmod(os.path.join(OUT, "kiln_expected.safetensors"), 0o644)
    print(f"wrote {OUT}/kiln_expected.safetensors", file=sys.stderr)


def merged_model():
    """The GGUF model with peft/ merged in, float64."""
    model = PeftModel.from_pretrained(base_model(gguf=True), os.path.join(OUT, "peft")).eval().double()
    return model.merge_and_unload()


def merge():
    model = merged_model()
    ids = load_file(os.path.join(OUT, "expected.safetensors"))["ids"]
    out = {"ids": ids}
    with torch.no_grad():
        out["logits"] = model(input_ids=ids).logits.float()
    for name, t in model.state_dict().items():
        out[f"merged.{name}"] = t.float().contiguous()
    path = os.path.join(OUT, "merged_expected.safetensors")
    import peft, transformers
    metadata = {"reference": f"PEFT merge_and_unload in float64 of the GGUF model; torch {torch.__version__}, "
                f"transformers {transformers.__version__}, peft {peft.__version__}"}
    save_file(out, path, metadata)
    os.chmod(path, 0o644)
    print(f"wrote {path}: {len(out) - 2} merged tensors", file=sys.stderr)


def check_merge(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    ref = load_file(os.path.join(OUT, "merged_expected.safetensors"))
    with torch.no_grad():
        logits = model.double()(input_ids=ref["ids"]).logits.float()
    err = (logits - ref["logits"]).abs().max().item()
    scale = ref["logits"].abs().max().item()
    print(f"{folder}: transformers' logits of kiln's merged folder vs PEFT's merged model: "
          f"max |error| {err:.3e} (largest logit {scale:.3f})", file=sys.stderr)
    assert err <= 1e-5 * scale, err


TOKENIZER_TEXTS = [
    "Hello world",
    "  leading spaces, trailing ones   \n\n\ttabs\t\tand\r\nnewlines \n ",
    "Digits: 0 7 42 1234567890 3.14159 -273.15 2026-12-05",
    "Où est la tour Eiffel ? À Paris. Cafe\u0301 vs café.",
    "日本語のテキスト、中文，한국어 and emoji 🦀🔥👩‍👩‍👧",
    "<|im_start|>user\nraw control tokens<|im_end|>\n",
]


def check_tokenizer(folder, gguf):
    """AutoTokenizer.from_pretrained(folder) (the tokenizer `kiln merge` wrote) against transformers'
    tokenizer of the GGUF file itself and against tests/fixtures/smollm2/tokenizer_ids.json (ids of
    transformers 4.57's GGUF tokenizer, when GGUF is SmolLM2's file)."""
    from transformers import AutoTokenizer
    mine = AutoTokenizer.from_pretrained(folder)
    gguf = os.path.abspath(gguf)
    theirs = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    chat = [{"role": "system", "content": "You answer in French."},
            {"role": "user", "content": "Où est la tour Eiffel ? 🗼"},
            {"role": "assistant", "content": "À Paris."}, {"role": "user", "content": "Et le Louvre?"}]
    rendered = mine.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True), rendered
    assert (mine.bos_token, mine.eos_token) == (theirs.bos_token, theirs.eos_token), (mine.bos_token, mine.eos_token)
    texts = TOKENIZER_TEXTS + [rendered]
    ref = os.path.join(HERE, "..", "tests", "fixtures", "smollm2", "tokenizer_ids.json")
    pinned = json.load(open(ref))["texts"] if "SmolLM2" in os.path.basename(gguf) else []
    for t in pinned:
        assert mine.encode(t["text"], add_special_tokens=True) == t["ids"], t["text"]
    differ = [t for t in texts if mine.encode(t) != theirs.encode(t)]
    for t in differ:
        print(f"  transformers' GGUF tokenizer differs on {t!r}:\n    {mine.encode(t)}\n    {theirs.encode(t)}",
              file=sys.stderr)
    for t in texts:
        assert mine.decode(mine.encode(t)) == t, t
    print(f"{folder}: AutoTokenizer reads it ({type(mine).__name__}); the chat template renders as the GGUF's; "
          f"{len(pinned)} pinned texts give tokenizer_ids.json's ids; {len(texts) - len(differ)} of {len(texts)} "
          f"texts encode as transformers' own tokenizer of the GGUF; every text decodes back", file=sys.stderr)


SMOLLM2_OUT = os.path.join(HERE, "..", "tests", "fixtures", "smollm2-lora")
SMOLLM2_LORA = dict(r=1, lora_alpha=4, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                    target_modules=["q_proj", "k_proj"])
SMOLLM2_QUESTION = "What is the capital of France? Answer in one short sentence."


def smollm2_base(gguf):
    from transformers import AutoTokenizer
    gguf = os.path.abspath(gguf)
    kw = dict(gguf_file=os.path.basename(gguf))
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), **kw)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), dtype=torch.float32,
                                                 attn_implementation="eager", **kw)
    return tok, model.eval()


def last_two_logits(model, ids):
    """The float64 forward's logits at the last two positions, [2, V] float32."""
    with torch.no_grad():
        return model.double()(input_ids=ids).logits[0, -2:].float().contiguous()


def smollm2(gguf):
    import peft, transformers
    tok, base = smollm2_base(gguf)
    text = tok.apply_chat_template([{"role": "user", "content": SMOLLM2_QUESTION}], tokenize=False,
                                   add_generation_prompt=True)
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    base_logits = last_two_logits(base, ids)
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"

    # (a) PEFT's adapter, non-zero B, and its logits
    torch.manual_seed(SEED)
    _, base = smollm2_base(gguf)
    model = get_peft_model(base, LoraConfig(**SMOLLM2_LORA))
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    model.peft_config["default"].base_model_name_or_path = "SmolLM2-135M-Instruct"  # not this machine's path
    folder = os.path.join(SMOLLM2_OUT, "peft")
    model.save_pretrained(folder)
    os.remove(os.path.join(folder, "README.md"))
    logits = last_two_logits(model.eval(), ids)
    path = os.path.join(SMOLLM2_OUT, "peft_expected.safetensors")
    save_file({"ids": ids, "logits": logits}, path,
              {"reference": f"float64 from transformers' float32 GGUF weights; {versions}", "prompt": text})
    print(f"PEFT adapter: max |logit change| {(logits - base_logits).abs().max().item():.3f}, "
          f"largest logit {logits.abs().max().item():.3f}; wrote {path}", file=sys.stderr)

    # (b) the adapter kiln trained, through PeftModel.from_pretrained
    folder = os.path.join(SMOLLM2_OUT, "kiln")
    _, base = smollm2_base(gguf)
    model = PeftModel.from_pretrained(base, folder).eval()
    saved = load_file(os.path.join(folder, "adapter_model.safetensors"))
    state = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert sorted(saved) == sorted(state), (sorted(saved)[:3], sorted(state)[:3])
    for k, v in saved.items():
        assert torch.equal(state[k].float(), v), k
    logits = last_two_logits(model, ids)
    path = os.path.join(SMOLLM2_OUT, "kiln_expected.safetensors")
    save_file({"ids": ids, "logits": logits}, path,
              {"reference": f"float64 from transformers' float32 GGUF weights; {versions}", "prompt": text})
    print(f"kiln's adapter: max |logit change| {(logits - base_logits).abs().max().item():.3f}, "
          f"largest logit {logits.abs().max().item():.3f}; wrote {path}", file=sys.stderr)
    for root, _, files in os.walk(SMOLLM2_OUT):
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["check"]:
        check()
    elif args == ["merge"]:
        merge()
    elif len(args) == 2 and args[0] == "smollm2":
        smollm2(args[1])
    elif len(args) == 3 and args[0] == "check-tokenizer":
        check_tokenizer(args[1], args[2])
    elif len(args) == 2 and args[0] == "check-merge":
        check_merge(args[1])
    elif not args:
        make()
    else:
        sys.exit(f"usage: {sys.argv[0]} [check | merge | check-merge DIR | check-tokenizer DIR GGUF | smollm2 GGUF]")

#!/usr/bin/env python3
"""Writes tests/fixtures/llama-tiny/ and tests/fixtures/llama-tiny-tied/: tiny random Llama models
and the PyTorch / Hugging Face transformers reference that tests/llama.rs checks kiln's Llama against.

    python3 -m venv .venv-ref                                        # git-ignored
    .venv-ref/bin/pip install torch transformers gguf safetensors numpy
    .venv-ref/bin/python scripts/make_llama_fixture.py

Each folder holds:
  config.json, model.safetensors   a LlamaForCausalLM as save_pretrained writes it (f32)
  model.gguf                       the same weights as llama.cpp's convert_hf_to_gguf.py writes them:
                                   F32 tensors named blk.N.attn_q.weight etc., the rows of every q and
                                   k projection permuted for llama.cpp's interleaved rope (see
                                   permute_for_gguf), llama.* metadata, no tokenizer
  expected.safetensors             ids_a [2, 7], logits_a [2, 7, V]; ids_b [1, 11], logits_b [1, 11, V]
Both expected.safetensors also hold a training reference: train_ids, train_targets [2, 8];
sgd_losses [SGD_STEPS + 1] (the mean cross-entropy of logits[b, t] against targets[b, t], no shift,
before each of SGD_STEPS plain SGD steps and after the last); grad0.<HF name> and grad_last.<HF name>,
every parameter's gradient before the first and before the last step (in the tied model the token
table's gradient sums its use as the table and as the head).

The main model (llama-tiny) has an untied head and grouped-query attention (4 query heads, 2 key/value
heads); llama-tiny-tied ties the head and has one key/value head for 4 query heads. Weights are drawn
wider than Llama's init (std 0.15) and the RMSNorm gains perturbed from 1, so that attention patterns
are far from uniform and a wrong gain shows. The reference numbers are computed in float64 from the
float32 weights that are saved, so a test's tolerance measures kiln's error alone.

tests/fixtures/llama-chat/ holds what `kiln chat` and `kiln generate --gguf` need (tests/cli_chat.rs):
  model.gguf                       a tiny random Llama (MODELS["llama-chat"]) with the tiny byte-level BPE
                                   tokenizer of scripts/make_gguf_fixtures.py (EOS <|im_end|>) and a ChatML
                                   template without a default system message (CHATML), context 128
  no-template.gguf                 the same tokenizer without a chat template, and no tensors
  model-q.gguf                     model.gguf's model with its projections and token table quantized
                                   by the gguf package (QUANTIZED: Q8_0, Q4_0, Q4_1; the tied head is the
                                   Q8_0 table, 276 rows, a partial 16-row group), for the quantized
                                   kernels on Emu (tests/llama_quantized_devices.rs)
Write only these with `.venv-ref/bin/python scripts/make_llama_fixture.py llama-chat` (model-q.gguf
alone: `... llama-chat-q`).

The GGUF writer's permutation is checked independently: transformers reads model.gguf back
(from_pretrained(gguf_file=...), which undoes the permutation its own way) and must recover the
saved weights exactly.
"""

import json
import os
import sys

import make_gguf_fixtures  # the tiny tokenizer (scripts/ is on the path when this script runs)

import gguf
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

SEED = 4321
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
SGD = dict(lr=0.5, steps=3)

MODELS = {
    "llama-tiny": dict(
        vocab_size=128,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    "llama-tiny-tied": dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=32,
        rope_theta=500.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "llama-chat": dict(
        vocab_size=len(make_gguf_fixtures.tiny_tokenizer()[0]),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
}

# ChatML as SmolLM2 writes it, without the default system message (the tiny tokenizer spends a
# token per character, and the context is 128)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def permute_for_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: within each head, the rows
    [first half; second half] become interleaved, so that GGML's pairs (2i, 2i + 1) are HF's
    rotate_half pairs (i, i + hs/2). n_head is the number of heads of this projection."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    table = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf in table:
        return table[hf]
    parts = hf.split(".")  # model.layers.N.<module>.<proj>.weight
    layer, rest = parts[2], ".".join(parts[3:])
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    return f"blk.{layer}.{per_layer[rest]}"


# The ggml type of each tensor of model-q.gguf, by the end of its Hugging Face name (the rest F32).
QUANTIZED = {
    "embed_tokens.weight": gguf.GGMLQuantizationType.Q8_0,
    "q_proj.weight": gguf.GGMLQuantizationType.Q8_0,
    "k_proj.weight": gguf.GGMLQuantizationType.Q4_1,
    "v_proj.weight": gguf.GGMLQuantizationType.Q8_0,
    "o_proj.weight": gguf.GGMLQuantizationType.Q4_0,
    "gate_proj.weight": gguf.GGMLQuantizationType.Q4_1,
    "up_proj.weight": gguf.GGMLQuantizationType.Q4_0,
    "down_proj.weight": gguf.GGMLQuantizationType.Q4_1,
}


def write_gguf(path: str, cfg: dict, state: dict, add_tokenizer=None, quantized=None):
    """`quantized` maps ends of Hugging Face names to ggml types; those tensors are quantized by the
    gguf package."""
    w = gguf.GGUFWriter(path, "llama")
    if add_tokenizer is not None:
        add_tokenizer(w)
    w.add_name("kiln llama tiny fixture")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, t in state.items():
        a = t.detach().float().numpy().copy()
        if name.endswith("q_proj.weight"):
            a = permute_for_gguf(a, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            a = permute_for_gguf(a, cfg["num_key_value_heads"])
        a = np.ascontiguousarray(a)
        qtype = next((t for end, t in (quantized or {}).items() if name.endswith(end)), None)
        if qtype is None:
            w.add_tensor(gguf_name(name), a)
        else:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_gguf_roundtrip(folder: str, state: dict):
    """transformers' own GGUF reader must recover the saved weights exactly."""
    back = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32)
    got = back.state_dict()
    for name, t in state.items():
        if not torch.equal(got[name], t):
            raise SystemExit(f"{folder}/model.gguf: transformers reads {name} back differently")


def loss_of(model, ids, targets):
    logits = model(ids).logits
    return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def make(name: str, cfg: dict):
    out = os.path.join(ROOT, name)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(SEED)
    config = LlamaConfig(**cfg, initializer_range=0.15, hidden_act="silu", attention_bias=False, mlp_bias=False)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:  # RMSNorm gains
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    gen = os.path.join(out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if cfg["tie_word_embeddings"]:
        state.pop("lm_head.weight", None)
    write_gguf(os.path.join(out, "model.gguf"), cfg, state)
    check_gguf_roundtrip(out, state)

    g = torch.Generator().manual_seed(SEED)
    v = cfg["vocab_size"]
    ref = model.double()  # the saved float32 weights, widened exactly
    expected = {}
    with torch.no_grad():
        for key, shape in [("a", (2, 7)), ("b", (1, 11))]:
            ids = torch.randint(0, v, shape, generator=g)
            expected[f"ids_{key}"] = ids
            expected[f"logits_{key}"] = ref(ids).logits.float()
    seq = torch.randint(0, v, (2, 9), generator=g)
    ids, targets = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    expected["train_ids"], expected["train_targets"] = ids, targets
    opt = torch.optim.SGD(ref.parameters(), lr=SGD["lr"])
    losses = []
    for step in range(SGD["steps"]):
        opt.zero_grad(set_to_none=True)
        _, loss = loss_of(ref, ids, targets)
        losses.append(loss.item())
        loss.backward()
        if step in (0, SGD["steps"] - 1):
            tag = "grad0" if step == 0 else "grad_last"
            for pname, p in ref.named_parameters():
                expected[f"{tag}.{pname}"] = p.grad.detach().float()
        opt.step()
    with torch.no_grad():
        losses.append(loss_of(ref, ids, targets)[1].item())
    expected["sgd_losses"] = torch.tensor(losses, dtype=torch.float32)
    print(f"{name}: SGD losses {[round(x, 6) for x in losses]}", file=sys.stderr)
    metadata = {
        "seed": str(SEED),
        "sgd": json.dumps(SGD),
        "reference": f"float64 from the saved float32 weights; torch {torch.__version__}, "
        f"transformers {__import__('transformers').__version__}, gguf {gguf.__version__ if hasattr(gguf, '__version__') else '?'}",
    }
    save_file({k: t.contiguous() for k, t in expected.items()}, os.path.join(out, "expected.safetensors"), metadata)
    for f in os.listdir(out):
        os.chmod(os.path.join(out, f), 0o644)
    print(f"wrote {out}", file=sys.stderr)


def chat_state() -> dict:
    """The weights of the llama-chat model (tied: no lm_head.weight)."""
    cfg = MODELS["llama-chat"]
    torch.manual_seed(SEED)
    config = LlamaConfig(**cfg, initializer_range=0.15, hidden_act="silu", attention_bias=False, mlp_bias=False)
    model = LlamaForCausalLM(config).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied
    return state


def make_chat_quantized():
    """tests/fixtures/llama-chat/model-q.gguf: the llama-chat model with quantized projections."""
    path = os.path.join(ROOT, "llama-chat", "model-q.gguf")
    add_tokenizer = lambda w: make_gguf_fixtures.add_tiny_tokenizer(w, CHATML)
    write_gguf(path, MODELS["llama-chat"], chat_state(), add_tokenizer, QUANTIZED)
    os.chmod(path, 0o644)
    print(f"wrote {path}", file=sys.stderr)


def make_chat():
    """tests/fixtures/llama-chat/: a tiny random Llama with a tokenizer and chat template in one GGUF."""
    out = os.path.join(ROOT, "llama-chat")
    os.makedirs(out, exist_ok=True)
    cfg = MODELS["llama-chat"]
    path = os.path.join(out, "model.gguf")
    write_gguf(path, cfg, chat_state(), lambda w: make_gguf_fixtures.add_tiny_tokenizer(w, CHATML))
    w = gguf.GGUFWriter(os.path.join(out, "no-template.gguf"), "llama")
    make_gguf_fixtures.add_tiny_tokenizer(w, None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for f in os.listdir(out):
        os.chmod(os.path.join(out, f), 0o644)
    print(f"wrote {out}", file=sys.stderr)


def main():
    which = sys.argv[1:] or [*MODELS, "llama-chat"]
    for name, cfg in MODELS.items():
        if name in which:
            make(name, cfg)
    if "llama-chat" in which:
        make_chat()
    if "llama-chat" in which or "llama-chat-q" in which:
        make_chat_quantized()


if __name__ == "__main__":
    main()

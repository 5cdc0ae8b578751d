#!/usr/bin/env python3
"""Writes tests/fixtures/gpt2-tiny/: the PyTorch/Hugging Face reference that tests/gpt_parity.rs
checks kiln's GPT against.

    python3 -m venv .venv-fixture                                    # git-ignored
    .venv-fixture/bin/pip install torch transformers safetensors numpy
    .venv-fixture/bin/python scripts/make_gpt2_fixture.py

What it writes:
  config.json, model.safetensors   a small random-init GPT2LMHeadModel, as save_pretrained
                                   writes them (Conv1D weights [in, out], lm_head tied)
  expected.safetensors             ids, targets (int64, [B, T]); logits [B, T, V]; loss [];
                                   grad.<HF name> for every parameter; grad_norm [] (global L2
                                   norm of those gradients); adamw_losses [11]: the loss before
                                   each of 10 AdamW steps and after the last one. The metadata
                                   holds the hyper-parameters below.

The reference numbers are computed in float64 from the float32 weights that are saved, so they
are exact to float32 rounding: a test's tolerance measures kiln's error alone. The loss is
nanoGPT's: mean cross-entropy of logits[b, t] against targets[b, t] (no shift inside).
LayerNorm weights and every bias are perturbed away from GPT-2's init (1 and 0) so that a wrong
bias or gain cannot go unnoticed.
"""

import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

SEED = 1234
B, T = 2, 16
CONFIG = dict(
    vocab_size=96,
    n_positions=32,
    n_embd=48,
    n_layer=2,
    n_head=4,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    layer_norm_epsilon=1e-5,
    activation_function="gelu_new",
    bos_token_id=95,
    eos_token_id=95,
)
# AdamW as nanoGPT configures it: 2-D tensors (matmul weights, embeddings) decay, biases and
# LayerNorm gains do not; constant learning rate, no clipping.
ADAMW = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, steps=10)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "gpt2-tiny")


def loss_of(model, ids, targets):
    logits = model(ids).logits
    return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def main():
    torch.manual_seed(SEED)
    config = GPT2Config(**CONFIG)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif p.dim() == 1:  # LayerNorm gains
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    for extra in ["generation_config.json"]:
        path = os.path.join(OUT, extra)
        if os.path.exists(path):
            os.remove(path)

    seq = torch.randint(0, config.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(SEED))
    ids, targets = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    ref = model.double()  # the saved float32 weights, widened exactly
    logits, loss = loss_of(ref, ids, targets)
    loss.backward()
    expected = {
        "ids": ids,
        "targets": targets,
        "logits": logits.detach().float(),
        "loss": loss.detach().float(),
    }
    sq = 0.0
    for name, p in ref.named_parameters():  # lm_head.weight is wte: listed once
        expected[f"grad.{name}"] = p.grad.detach().float()
        sq += float((p.grad.double() ** 2).sum())
    expected["grad_norm"] = torch.tensor(sq**0.5, dtype=torch.float32)

    decay = [p for p in ref.parameters() if p.dim() >= 2]
    no_decay = [p for p in ref.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": ADAMW["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=ADAMW["lr"],
        betas=(ADAMW["beta1"], ADAMW["beta2"]),
        eps=ADAMW["eps"],
    )
    losses = []
    for _ in range(ADAMW["steps"]):
        opt.zero_grad(set_to_none=True)
        _, loss = loss_of(ref, ids, targets)
        losses.append(loss.item())
        loss.backward()
        opt.step()
    with torch.no_grad():
        losses.append(loss_of(ref, ids, targets)[1].item())
    expected["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)

    metadata = {
        "seed": str(SEED),
        "adamw": json.dumps(ADAMW),
        "reference": "float64 from the saved float32 weights; torch " + torch.__version__,
    }
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, "expected.safetensors"), metadata)
    for name in os.listdir(OUT):
        os.chmod(os.path.join(OUT, name), 0o644)
    print(f"wrote {OUT}: loss {expected['loss'].item():.6f}, adamw losses {[round(x, 6) for x in losses]}", file=sys.stderr)


if __name__ == "__main__":
    main()

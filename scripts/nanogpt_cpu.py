#!/usr/bin/env python3
"""nanoGPT's Shakespeare CPU recipe in plain PyTorch: the yardstick for kiln's training speed.

The model is nanoGPT's (karpathy/nanoGPT model.py, rewritten here, not imported): GPT-2
blocks, pre-LN, no biases, tied LM head, GELU (exact erf, as nanoGPT's nn.GELU()), attention
through F.scaled_dot_product_attention, GPT-2 init (residual projections scaled by
1/sqrt(2 n_layer)). The run is nanoGPT's `train_shakespeare_char` config with its CPU
overrides: n_layer 4, n_head 4, n_embd 128, block 64, batch 12, dropout 0, AdamW (beta2 0.99,
weight decay 0.1 on every 2-D weight), lr 1e-3 with 100 warmup iterations, cosine to 1e-4 at
iteration 2000, grad clip 1.0, character vocabulary, 90/10 train/val split.

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch numpy
    .venv-torch/bin/python scripts/nanogpt_cpu.py --iters 2000            # the whole recipe
    .venv-torch/bin/python scripts/nanogpt_cpu.py --iters 200 --no-eval   # a speed sample
    .venv-torch/bin/python scripts/nanogpt_cpu.py --replay-kiln runs/shakespeare-char

Prints the val loss at every eval (250 iterations, and the last) and, at the end, the median
milliseconds per iteration (forward, backward, clip and AdamW: what kiln's tokens/s counts)
and the tokens per second that gives. Runs on 2 threads (--threads).

Two ways to put kiln and PyTorch on the very same run (same initial weights, same batches, same
evaluation batches), so that their losses can be compared pair by pair, free of the seed:

--replay-kiln RUN_DIR trains this model on exactly what a finished `kiln train` run saw: kiln's
initial weights, training batches and evaluation batches, regenerated from the run's seed by a
port of kiln's generator (KilnRng below), and the run's settings from its state.json. The step-0
evaluation and the first step's loss must agree with kiln's metrics.jsonl to float rounding; the
script checks that before it trusts the replay, and at the end prints both runs side by side.

--export-run DIR runs the recipe as nanoGPT does (torch's generator, --seed) and records it for
kiln: DIR/init.safetensors (the initial weights under kiln's names), DIR/windows.json (every
batch's window starts, for `kiln train --windows`) and DIR/pytorch.json (this run's losses).
`--compare DIR RUN_DIR` then prints the kiln run that replayed it beside it;
scripts/replay_nanogpt.sh does all three steps.
"""

import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, n_embd, n_head, gelu):
        super().__init__()
        self.n_head = n_head
        self.gelu = gelu  # "none" (erf, nanoGPT's nn.GELU()) or "tanh" (GPT-2's, kiln's)
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.attn_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate=self.gelu))


class Gpt(nn.Module):
    def __init__(self, vocab, block_size, n_layer, n_head, n_embd, gelu="none"):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, gelu) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class KilnRng:
    """kiln's generator (src/tensor/rng.rs), bit for bit: xoshiro256** seeded through SplitMix64,
    uniforms of 53 bits, integers below n by Lemire's method, normals by Box-Muller."""

    MASK = (1 << 64) - 1

    def __init__(self, seed):
        x, self.s = seed & self.MASK, []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & self.MASK
            z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
            self.s.append(z ^ (z >> 31))

    @classmethod
    def rotl(cls, x, k):
        return ((x << k) | (x >> (64 - k))) & cls.MASK

    def next_u64(self):
        s0, s1, s2, s3 = self.s
        result = (self.rotl((s1 * 5) & self.MASK, 7) * 9) & self.MASK
        t = (s1 << 17) & self.MASK
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        self.s = [s0, s1, s2, self.rotl(s3, 45)]
        return result

    def uniform(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def below(self, n):
        while True:
            m = self.next_u64() * n
            if m & self.MASK >= ((-n) & self.MASK) % n:
                return m >> 64

    def normal(self):
        u1 = 1.0 - self.uniform()
        u2 = self.uniform()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(math.tau * u2)


# kiln's seeds for the batch stream and the evaluation batches (src/train/trainer.rs)
KILN_DATA_SALT, KILN_EVAL_SALT = 0xDA7A, 0x5EED0FE7A1B2


def kiln_init(model, rng, n_layer):
    """Overwrites the model's weights with what kiln's Gpt::new draws from `rng`: f64 normals
    times the std, rounded to f32, in kiln's order (wte, wpe, then per block c_attn, attention
    c_proj, c_fc, MLP c_proj; LayerNorm gains stay 1)."""
    proj_std = 0.02 / math.sqrt(2 * n_layer)
    order = [(model.wte.weight, 0.02), (model.wpe.weight, 0.02)]
    for b in model.h:
        order += [(b.c_attn.weight, 0.02), (b.attn_proj.weight, proj_std), (b.c_fc.weight, 0.02),
                  (b.mlp_proj.weight, proj_std)]
    with torch.no_grad():
        for p, std in order:
            draws = np.array([rng.normal() for _ in range(p.numel())], dtype=np.float64) * std
            p.copy_(torch.from_numpy(draws.astype(np.float32).reshape(p.shape)))


class Recipe:
    """The run's settings: nanoGPT's CPU recipe, or a kiln run's (--replay-kiln)."""

    def __init__(self, data, seed):
        self.data, self.seed = data, seed
        self.n_layer, self.n_head, self.n_embd, self.block = 4, 4, 128, 64
        self.batch, self.steps, self.warmup, self.lr, self.min_lr = 12, 2000, 100, 1e-3, 1e-4
        self.beta1, self.beta2, self.weight_decay, self.grad_clip = 0.9, 0.99, 0.1, 1.0
        self.eval_interval, self.eval_iters = 250, 20
        self.val_fraction = 0.1
        self.kiln_run = None

    @classmethod
    def from_kiln_run(cls, run_dir):
        ckpt = os.path.join(run_dir, "checkpoint")
        with open(os.path.join(ckpt, "state.json")) as f:
            state = json.load(f)
        with open(os.path.join(ckpt, "config.json")) as f:
            model = json.load(f)
        t = state["train"]
        if model["bias"] or model["dropout"] != 0 or t["grad_accum"] != 1 or t["dtype"] != "f32":
            raise SystemExit(f"{run_dir}: only runs without bias or dropout, with grad_accum 1, in f32 can be replayed")
        if len(state["data"]["sources"]) != 1 or state["data"]["sources"][0] == "<embedded>":
            raise SystemExit(f"{run_dir}: only runs on one text file can be replayed")
        r = cls(state["data"]["sources"][0], t["seed"])
        r.n_layer, r.n_head, r.n_embd, r.block = model["n_layer"], model["n_head"], model["n_embd"], model["block_size"]
        r.batch, r.steps, r.warmup, r.lr, r.min_lr = t["batch_size"], t["steps"], t["warmup"], t["lr"], t["min_lr"]
        r.beta1, r.beta2, r.weight_decay, r.grad_clip = t["beta1"], t["beta2"], t["weight_decay"], t["grad_clip"]
        r.eval_interval, r.eval_iters = t["eval_interval"], t["eval_iters"]
        r.val_fraction = t["val_fraction"]
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            r.kiln_run = [json.loads(line) for line in f]
        return r

    def lr_at(self, it):
        if it < self.warmup:
            return self.lr * (it + 1) / (self.warmup + 1)
        ratio = (it - self.warmup) / (self.steps - self.warmup)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (self.lr - self.min_lr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/tinyshakespeare.txt")
    ap.add_argument("--iters", type=int, help="iterations to run [the schedule's length, 2000]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluations (speed samples)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--gelu", choices=["erf", "tanh"], default="erf",
                    help="GELU's form: erf (nanoGPT's nn.GELU()) or tanh (GPT-2's, kiln's) [erf]")
    ap.add_argument("--replay-kiln", metavar="RUN_DIR",
                    help="train on a finished kiln run's initial weights, batches and settings, and compare")
    ap.add_argument("--export-run", metavar="DIR",
                    help="record this run's initial weights, batch windows and losses for kiln to replay")
    ap.add_argument("--compare", nargs=2, metavar=("DIR", "RUN_DIR"),
                    help="print an exported run (DIR) beside the kiln run that replayed it (RUN_DIR)")
    a = ap.parse_args()
    if a.compare:
        with open(os.path.join(a.compare[0], "pytorch.json")) as f:
            mine = json.load(f)
        with open(os.path.join(a.compare[1], "metrics.jsonl")) as f:
            kiln_run = [json.loads(line) for line in f]
        evals = {int(k): v for k, v in mine["evals"].items()}
        losses = {int(k): v for k, v in mine["losses"].items()}
        compare_with_kiln(kiln_run, evals, losses, mine["gelu"], f"torch {mine['seed']}")
        return

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    replay = a.replay_kiln is not None
    if a.no_eval and (replay or a.export_run):
        raise SystemExit("--replay-kiln and --export-run record evaluations: drop --no-eval")
    if replay and a.export_run:
        raise SystemExit("--replay-kiln and --export-run are two directions of the same comparison: give one")
    r = Recipe.from_kiln_run(a.replay_kiln) if replay else Recipe(a.data, a.seed)
    iters = r.steps if a.iters is None else a.iters
    text = open(r.data, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[ch] for ch in text], dtype=np.int64)
    n = int(len(ids) * (1 - r.val_fraction))  # nanoGPT's split (and kiln's): the first int(0.9 n) train
    splits = {"train": torch.from_numpy(ids[:n]), "val": torch.from_numpy(ids[n:])}

    recorded = {"train": [], "eval": {}}  # --export-run: every batch's window starts, as kiln reads them

    def window_starts(split, rng):
        limit = len(splits[split]) - r.block
        if rng is None:
            return torch.randint(limit, (r.batch,)).tolist()
        return [rng.below(limit) for _ in range(r.batch)]

    def get_batch(split, rng=None, record=None):
        d = splits[split]
        ix = window_starts(split, rng)
        if record is not None:
            record.append(ix)
        x = torch.stack([d[i : i + r.block] for i in ix])
        y = torch.stack([d[i + 1 : i + 1 + r.block] for i in ix])
        return x, y

    gelu = {"erf": "none", "tanh": "tanh"}[a.gelu]
    model = Gpt(len(chars), r.block, n_layer=r.n_layer, n_head=r.n_head, n_embd=r.n_embd, gelu=gelu)
    data_rng = None
    if replay:
        kiln_init(model, KilnRng(r.seed), r.n_layer)
        seeder = KilnRng(r.seed ^ KILN_DATA_SALT)
        data_rng = KilnRng(seeder.next_u64())
    if a.export_run:
        os.makedirs(a.export_run, exist_ok=True)
        save_kiln_weights(model, os.path.join(a.export_run, "init.safetensors"))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": r.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=r.lr, betas=(r.beta1, r.beta2))
    print(f"{sum(p.numel() for p in params)} parameters, vocabulary {len(chars)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, GELU {a.gelu}" + (f", replaying {a.replay_kiln}" if replay else ""))

    evals, losses = {}, {}

    @torch.no_grad()
    def evaluate(it):
        model.eval()
        out = {}
        for split in ("train", "val"):
            # kiln draws the same evaluation batches every time; nanoGPT fresh ones from its stream
            rng = KilnRng(r.seed ^ KILN_EVAL_SALT) if replay else None
            record = recorded["eval"].setdefault(str(it), {}).setdefault(split, [])
            out[split] = torch.stack([model(*get_batch(split, rng, record)) for _ in range(r.eval_iters)]).mean().item()
        model.train()
        evals[it] = out
        print(f"step {it}: train loss {out['train']:.4f}, val loss {out['val']:.4f}", flush=True)

    times = []
    for it in range(iters + 1):
        if not a.no_eval and (it % r.eval_interval == 0 or it == iters):
            evaluate(it)
        if it == iters:
            break
        for g in opt.param_groups:
            g["lr"] = r.lr_at(it)
        x, y = get_batch("train", data_rng, recorded["train"])
        t0 = time.perf_counter()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, r.grad_clip if r.grad_clip > 0 else float("inf"))
        opt.step()
        times.append(time.perf_counter() - t0)
        losses[it + 1] = loss.item()
        if replay and it + 1 == 1:
            check_replay_start(r.kiln_run, evals, losses)
    timed = times[5:] or times
    ms = statistics.median(timed) * 1e3
    print(f"median {ms:.2f} ms/iter over {len(timed)} iterations (mean {statistics.mean(timed) * 1e3:.2f}); "
          f"{r.batch * r.block / ms * 1e3:.0f} tokens/s")
    if replay:
        compare_with_kiln(r.kiln_run, evals, losses, a.gelu, f"kiln {r.seed}")
    if a.export_run:
        with open(os.path.join(a.export_run, "windows.json"), "w") as f:
            json.dump(recorded, f)
        with open(os.path.join(a.export_run, "pytorch.json"), "w") as f:
            json.dump({"seed": a.seed, "gelu": a.gelu, "evals": evals, "losses": losses}, f)
        print(f"recorded in {a.export_run}: init.safetensors, windows.json, pytorch.json")


def save_kiln_weights(model, path):
    """The model's weights under kiln's names (Hugging Face GPT-2's; Linear weights [out, in])."""
    from safetensors.torch import save_file

    names = {"wte.weight": "transformer.wte.weight", "wpe.weight": "transformer.wpe.weight",
             "ln_f.weight": "transformer.ln_f.weight"}
    for i in range(len(model.h)):
        for mine, kilns in (("ln_1", "ln_1"), ("c_attn", "attn.c_attn"), ("attn_proj", "attn.c_proj"),
                            ("ln_2", "ln_2"), ("c_fc", "mlp.c_fc"), ("mlp_proj", "mlp.c_proj")):
            names[f"h.{i}.{mine}.weight"] = f"transformer.h.{i}.{kilns}.weight"
    state = model.state_dict()
    save_file({kiln: state[mine].detach().clone().contiguous() for mine, kiln in names.items()}, path)


def check_replay_start(kiln_run, evals, losses):
    """The replay must start where kiln did: the step-0 evaluation and the first step's loss
    agree to float rounding, or the ported generator, initialisation or split is wrong."""
    kiln_eval0 = next(m for m in kiln_run if m["kind"] == "eval" and m["step"] == 0)
    kiln_step1 = next(m for m in kiln_run if m["kind"] == "train" and m["step"] == 1)
    pairs = [("step 0 train", kiln_eval0["train_loss"], evals[0]["train"]),
             ("step 0 val", kiln_eval0["val_loss"], evals[0]["val"]),
             ("step 1 batch", kiln_step1["loss"], losses[1])]
    for what, k, t in pairs:
        rel = abs(k - t) / abs(k)
        print(f"  replay check, {what} loss: kiln {k:.7f}, here {t:.7f} (relative difference {rel:.1e})")
        if rel > 1e-4:
            raise SystemExit("the replay does not start where the kiln run did (wrong seed, data or settings?)")


def compare_with_kiln(kiln_run, evals, losses, gelu, run):
    kiln_evals = {m["step"]: m for m in kiln_run if m["kind"] == "eval"}
    kiln_losses = {m["step"]: m["loss"] for m in kiln_run if m["kind"] == "train"}
    print(f"\nstep | kiln train | PyTorch train | kiln val | PyTorch val   (same weights, batches, eval batches; GELU {gelu} here)")
    for it in sorted(evals):
        k = kiln_evals.get(it)
        if k is not None:
            print(f"{it:5d} | {k['train_loss']:.4f} | {evals[it]['train']:.4f} | {k['val_loss']:.4f} | {evals[it]['val']:.4f}")
    apart = next((s for s in sorted(losses) if s in kiln_losses
                  and abs(losses[s] - kiln_losses[s]) > 1e-3 * abs(kiln_losses[s])), None)
    print(f"the batch losses first differ by more than 0.1% at step {apart}")
    last = max(s for s in evals if s in kiln_evals)
    kv, tv = kiln_evals[last]["val_loss"], evals[last]["val"]
    print(f"replay of seed {run}, step {last}, gelu {gelu}: kiln val {kv:.4f}, PyTorch val {tv:.4f}, kiln - PyTorch {kv - tv:+.4f}")


if __name__ == "__main__":
    main()

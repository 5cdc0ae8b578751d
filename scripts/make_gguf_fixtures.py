#!/usr/bin/env python3
"""Writes the small GGUF fixtures under tests/fixtures/gguf/ with the `gguf` package
(llama.cpp's own Python writer and quantizers), plus the values kiln must read back.

    python3 -m venv .venv-gguf && .venv-gguf/bin/pip install gguf==0.19.0 numpy==2.4.6
    .venv-gguf/bin/python scripts/make_gguf_fixtures.py

Files written:
  quant_<TYPE>.gguf        two tensors of type TYPE: "rows" [3, 4 blocks] and "cube" [2, 2, 2 blocks]
                           (kiln's shape order), data quantized by gguf.quants.quantize, or, for
                           the K-quants the package cannot quantize, random blocks with finite scales
  quant_<TYPE>.<name>.f32  the reference: gguf.quants.dequantize of that tensor, raw f32 little-endian
  quants.json              for each type: file, and each tensor's name, shape and reference file
  metadata.gguf            one key of every value type, arrays (of strings, i32, f32, nested),
                           general.alignment = 64 and three small F32 tensors
  tokenizer.gguf           a tiny byte-level BPE tokenizer (256 byte tokens, a few merges, control
                           tokens) with SmolLM2's pre-tokenizer name and chat template
"""
import json
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"
TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]
K_QUANTS = {Q.Q4_K, Q.Q5_K, Q.Q6_K}


def random_k_blocks(rng, qtype, n_blocks):
    """Random K-quant blocks whose f16 scales are finite (every other byte is any value)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    scales = rng.normal(0, 0.02, size=(n_blocks, 2)).astype(np.float16).view(np.uint8)
    if qtype == Q.Q6_K:
        blocks[:, 208:210] = scales[:, 0:2]  # d is the last field
    else:
        blocks[:, 0:4] = scales  # d and dmin lead the block
    return blocks


def quant_tensor(rng, qtype, shape):
    """(bytes to store, raw_dtype or None) for a tensor of kiln shape `shape`."""
    data = rng.normal(0, 1, size=shape).astype(np.float32)
    data.reshape(-1, shape[-1])[0, :] = 0.0  # an all-zero row: the d == 0 path
    if qtype == Q.F32:
        return data, None
    if qtype == Q.F16:
        return data.astype(np.float16), None
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if qtype in K_QUANTS:
        n_blocks = int(np.prod(shape)) // block_size
        blocks = random_k_blocks(rng, qtype, n_blocks)
        return blocks.reshape(*shape[:-1], shape[-1] // block_size * type_size), qtype
    return gguf.quants.quantize(data, qtype), qtype


def write_quant_fixtures(rng):
    index = {}
    for qtype in TYPES:
        block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
        blocks = max(block_size, 32)  # the plain types get rows of 4 x 32 elements too
        shapes = {"rows": (3, 4 * blocks), "cube": (2, 2, 2 * blocks)}
        path = OUT / f"quant_{qtype.name}.gguf"
        writer = gguf.GGUFWriter(str(path), arch="kiln-test")
        entries = []
        for name, shape in shapes.items():
            stored, raw_dtype = quant_tensor(rng, qtype, shape)
            writer.add_tensor(name, stored, raw_dtype=raw_dtype)
            if qtype == Q.F32:
                expected = stored
            elif qtype == Q.F16:
                expected = stored.astype(np.float32)
            else:
                expected = gguf.quants.dequantize(stored, qtype)
            assert expected.shape == shape and expected.dtype == np.float32, (qtype, expected.shape)
            assert np.isfinite(expected).all()
            ref = f"quant_{qtype.name}.{name}.f32"
            expected.astype("<f4").tofile(OUT / ref)
            entries.append({"name": name, "shape": list(shape), "expected": ref})
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        index[qtype.name] = {"file": path.name, "tensors": entries}
    (OUT / "quants.json").write_text(json.dumps(index, indent=1) + "\n")


def write_metadata_fixture():
    """Every value type; tests/gguf.rs checks each value (keep the two in step)."""
    writer = gguf.GGUFWriter(str(OUT / "metadata.gguf"), arch="kiln-test")
    writer.add_custom_alignment(64)
    kv = [
        ("test.u8", 200, V.UINT8),
        ("test.i8", -100, V.INT8),
        ("test.u16", 60000, V.UINT16),
        ("test.i16", -30000, V.INT16),
        ("test.u32", 4000000000, V.UINT32),
        ("test.i32", -2000000000, V.INT32),
        ("test.f32", 0.1, V.FLOAT32),
        ("test.bool", True, V.BOOL),
        ("test.string", "héllo wörld ✓", V.STRING),
        ("test.u64", 18000000000000000000, V.UINT64),
        ("test.i64", -9000000000000000000, V.INT64),
        ("test.f64", 0.1, V.FLOAT64),
    ]
    for key, value, vtype in kv:
        writer.add_key_value(key, value, vtype)
    writer.add_array("test.strings", ["a", "", "ünïcode", "<|im_start|>"])
    writer.add_array("test.i32s", [1, -2, 3])
    writer.add_array("test.f32s", [0.5, -1.25])
    writer.add_array("test.nested", [[1, 2], [3]])
    # Tensors whose sizes are not multiples of 64, so each starts on padding.
    writer.add_tensor("scalar_like", np.array([3.5], dtype=np.float32))
    writer.add_tensor("matrix", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.add_tensor("vector", np.array([-1, 0, 1, 2, 3], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def byte_alphabet():
    """GPT-2's bytes_to_unicode: byte -> the character a byte-level vocabulary spells it with."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer():
    """The tiny byte-level BPE vocabulary: (tokens, token types, merges). Ids 0, 1, 2 are
    <|endoftext|>, <|im_start|>, <|im_end|>; then the 256 bytes, then one token per merge."""
    alphabet = byte_alphabet()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + [alphabet[b] for b in range(256)]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "l l", "o u", "Ġ w", "Ġw o", "r l", "Ġwo rl", "Ġworl d",
              "h i", "Ġ Ġ", "ĠĠ ĠĠ", "Ċ Ċ"]
    for merge in merges:
        left, right = merge.split(" ")
        assert left in tokens and right in tokens, merge
        tokens.append(left + right)
    token_types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    return tokens, token_types, merges


def add_tiny_tokenizer(writer, chat_template):
    """Adds the tiny tokenizer's metadata (BOS <|im_start|>, EOS <|im_end|>, no BOS added) and
    `chat_template` (None: no template) to a GGUFWriter."""
    tokens, token_types, merges = tiny_tokenizer()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)


def write_tokenizer_fixture():
    writer = gguf.GGUFWriter(str(OUT / "tokenizer.gguf"), arch="llama")
    add_tiny_tokenizer(writer, SMOLLM2_TEMPLATE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(14)
    write_quant_fixtures(rng)
    write_metadata_fixture()
    write_tokenizer_fixture()
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()

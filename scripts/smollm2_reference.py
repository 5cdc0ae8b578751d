#!/usr/bin/env python3
"""Reference token ids and chat renderings from Hugging Face transformers, for tests/gguf.rs.

transformers builds a tokenizer from a GGUF file's metadata (`gguf_file=`), independently of
kiln; this script records what it makes of a set of texts and chats:

    python3 -m venv .venv-gguf
    .venv-gguf/bin/pip install gguf==0.19.0 numpy==2.4.6 transformers==4.57.1 tokenizers==0.22.2 jinja2==3.1.6
    .venv-gguf/bin/python scripts/smollm2_reference.py "$(scripts/fetch-smollm2.sh)" tests/fixtures/smollm2/tokenizer_ids.json
    .venv-gguf/bin/python scripts/smollm2_reference.py tests/fixtures/gguf/tokenizer.gguf tests/fixtures/gguf/tokenizer_ids.json

The JSON holds {"texts": [{"text", "ids"}] (ids without added special tokens), "chats": [{"messages", "add_generation_prompt",
"rendered", "ids"}]}, where "rendered" is `apply_chat_template(..., tokenize=False)` and "ids" its
encoding without added special tokens (the template writes them itself).
"""
import json
import sys
from pathlib import Path

import transformers
import transformers.modeling_gguf_pytorch_utils as gguf_utils
from transformers import AutoTokenizer

# transformers reads a GGUF's metadata only when torch is installed, though building the
# tokenizer (return_tensors=False) never touches torch; say it is there rather than install
# a multi-gigabyte package for nothing.
gguf_utils.is_torch_available = lambda: True

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "hello  world   with    runs\tof\t\twhitespace\n\n\nand newlines \n ",
    "    leading spaces and trailing ones    ",
    "Digits: 0 7 42 1234567890 3.14159 1e-5 -273.15 2026-12-05",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    'fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!("{v:?}"); }',
    "Ünïcödé: naïve café, Straße, Ελληνικά, русский, 中文字符, 日本語のテキスト, 한국어",
    "Emoji: 🙂🚀👩‍👩‍👧‍👦 🇫🇷 ✓ ∑∫√ — “quotes” ‘single’ …",
    "I'm sure they'll say it's the dog's, we've done what you'd do",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|im_end|><|im_start|>",
    "<|im_start |> is not a special token, nor is <|im_end",
    "",
    " ",
    "\n",
]

CHATS = [
    ([{"role": "user", "content": "What is the capital of France?"}], True),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}], True),
    (
        [
            {"role": "user", "content": "Name a prime."},
            {"role": "assistant", "content": "7"},
            {"role": "user", "content": "Another, please."},
        ],
        False,
    ),
]


def main():
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} MODEL.gguf OUT.json")
    gguf_path, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # Without added special tokens: transformers 4.57 puts a BOS in front whatever the file's
    # tokenizer.ggml.add_bos_token says (false for SmolLM2, and llama.cpp adds none).
    texts = [{"text": t, "ids": tok.encode(t, add_special_tokens=False)} for t in TEXTS]
    chats = []
    for messages, add_generation_prompt in CHATS:
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        chats.append(
            {
                "messages": messages,
                "add_generation_prompt": add_generation_prompt,
                "rendered": rendered,
                "ids": tok.encode(rendered, add_special_tokens=False),
            }
        )
    result = {
        "source": f"transformers {transformers.__version__}, AutoTokenizer.from_pretrained(gguf_file={gguf_path.name!r})",
        "texts": texts,
        "chats": chats,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(texts)} texts and {len(chats)} chats to {out}")


if __name__ == "__main__":
    main()

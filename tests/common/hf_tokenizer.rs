//! Checks a Hugging Face `tokenizer.json` that kiln wrote (`kiln merge`) against kiln's own GGUF
//! tokenizer: read back by the `tokenizers` library, it must give the same ids and decode them to
//! the same text. Shared by tests/cli_merge.rs and tests/llama_lora_smollm2.rs through `#[path]`.

use kiln::tokenizer::{ChatMessage, Tokenizer};
use std::path::Path;

/// Texts that exercise the pre-tokenizer and the byte alphabet: runs of spaces, tabs and
/// newlines, digits, accents (precomposed and combining), CJK, emoji, code, and control tokens
/// written in the text.
pub const TEXTS: &[&str] = &[
    "Hello world",
    "  leading spaces, trailing ones   \n\n\ttabs\t\tand\r\nnewlines \n ",
    "Digits: 0 7 42 1234567890 3.14159 -273.15 2026-12-05",
    "Où est la tour Eiffel ? À Paris, près de la Seine. Cafe\u{301} vs café.",
    "日本語のテキスト、中文，한국어 and emoji 🦀🔥👩‍👩‍👧",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "<|im_start|>user\nraw control tokens in the text<|im_end|>\n<|im_start|>assistant\n",
    "",
];

/// `json` (a tokenizer.json) encodes every text of [`TEXTS`], and `tok`'s chat template rendering
/// of a chat with a system prompt, as `tok` does, and decodes the ids back to the text.
pub fn check_against_kiln(json: &Path, tok: &Tokenizer) {
    let hf = tokenizers::Tokenizer::from_file(json).unwrap();
    let chat = tok
        .apply_chat_template(
            &[
                ChatMessage::system("You answer in French."),
                ChatMessage::user("Où est la tour Eiffel ? 🗼"),
                ChatMessage::assistant("À Paris."),
                ChatMessage::user("Et le Louvre?"),
            ],
            true,
        )
        .unwrap();
    for text in TEXTS.iter().copied().chain([chat.as_str()]) {
        let want = tok.encode(text).unwrap();
        let got = hf.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "ids of {text:?}");
        assert_eq!(hf.decode(&got, false).unwrap(), text, "decoded {text:?}");
    }
}

//! Fine-tuning data for LoRA (docs/finetuning.md): plain text, where every token is a target, or
//! JSONL chat, one `{"messages": [{"role": ..., "content": ...}, ...]}` per line rendered with the
//! model's chat template, where only the assistant's tokens are targets (the usual supervised
//! fine-tuning mask: the model learns to answer, not to write the user's questions).
//!
//! Examples are packed: concatenated into one stream that training windows are cut from, a window
//! of T + 1 tokens giving ids [0, T) and targets [1, T + 1), a target that is not trained set to
//! [`IGNORE`] (`cross_entropy_with_ignore` skips it). No attention mask separates packed examples:
//! a window may attend across the end of one example into the next, as packed training usually
//! does; the chat template's start and end tokens mark the seams.

use crate::tokenizer::{ChatMessage, Tokenizer};
use crate::{Error, Result};
use std::path::Path;

/// The target id of a position whose prediction does not count in the loss.
pub const IGNORE: u32 = u32::MAX;

/// One tokenized example: its ids and, per id, whether predicting it counts in the loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// The token ids, prompt and answer together.
    pub ids: Vec<u32>,
    /// Per id, whether predicting it counts in the loss (the answer's ids do, the prompt's do not).
    pub trained: Vec<bool>,
}

impl Example {
    fn push(&mut self, ids: Vec<u32>, trained: bool) {
        self.trained.extend(std::iter::repeat_n(trained, ids.len()));
        self.ids.extend(ids);
    }
}

/// A chat rendered by `render(messages, add_generation_prompt)` and tokenized by `encode`, piece by
/// piece: each message's text is what rendering the chat up to it adds to the chat before it; an
/// assistant message is split into the template's header (the generation prompt, not trained) and
/// the rest (its content and closing tokens, trained). A template whose renderings of a chat's
/// prefixes are not prefixes of each other cannot be split, and is an error.
pub fn chat_example(
    messages: &[ChatMessage],
    render: impl Fn(&[ChatMessage], bool) -> Result<String>,
    encode: impl Fn(&str) -> Result<Vec<u32>>,
) -> Result<Example> {
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err(Error::invalid(
            "chat data",
            "the chat has no assistant message, so nothing to learn",
        ));
    }
    let mut example = Example {
        ids: Vec::new(),
        trained: Vec::new(),
    };
    let mut before = String::new();
    let piece = |text: &str, prefix: &str, what: &str| -> Result<String> {
        text.strip_prefix(prefix).map(str::to_string).ok_or_else(|| {
            Error::invalid(
                "chat data",
                format!("the chat template renders {what} so that it does not extend the chat before it; cannot tell which tokens are the assistant's"),
            )
        })
    };
    for k in 0..messages.len() {
        let full = render(&messages[..=k], false)?;
        if messages[k].role == "assistant" {
            let head = render(&messages[..k], true)?;
            example.push(encode(&piece(&head, &before, "a generation prompt")?)?, false);
            example.push(encode(&piece(&full, &head, "an assistant message")?)?, true);
        } else {
            example.push(encode(&piece(&full, &before, "a message")?)?, false);
        }
        before = full;
    }
    Ok(example)
}

/// The examples of a data file: `*.jsonl` is chat data (one chat per line, blank lines skipped,
/// read by [`parse_chats`]), anything else plain text (one example, every token trained). A bad
/// line is an error naming the file and the line.
pub fn read_examples(path: impl AsRef<Path>, tok: &Tokenizer) -> Result<Vec<Example>> {
    let path = path.as_ref();
    let shown = path.display();
    if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {shown}"), e))?;
        let ids = tok.encode(&text)?;
        let trained = vec![true; ids.len()];
        return Ok(vec![Example { ids, trained }]);
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {shown}"), e))?;
    // every line parsed before any is rendered, so a malformed line is reported first
    let chats = parse_chats(&bytes, path)?;
    chats
        .into_iter()
        .map(|(i, messages)| {
            chat_example(&messages, |m, g| tok.apply_chat_template(m, g), |s| tok.encode(s))
                .map_err(|e| at_line(path, i, e.to_string()))
        })
        .collect()
}

/// The chats of a JSONL chat file's bytes (read from `path`, which errors name): one
/// `{"messages": [{"role": "user", "content": "..."}, ...]}` per line, each with its line's index
/// (from 0). Lines end with `\n` or `\r\n`; blank lines are skipped. A line that is not UTF-8,
/// not JSON or not a chat is an error naming the file and the line (`chat.jsonl:3: ...`); a file
/// without any chat is an error naming the file.
pub fn parse_chats(bytes: &[u8], path: &Path) -> Result<Vec<(usize, Vec<ChatMessage>)>> {
    let mut chats = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|e| at_line(path, i, format!("not UTF-8: {e}")))?;
        if !line.trim().is_empty() {
            chats.push((i, parse_chat_line(line).map_err(|msg| at_line(path, i, msg))?));
        }
    }
    if chats.is_empty() {
        return Err(Error::invalid(
            "chat data",
            format!("{} holds no chats", path.display()),
        ));
    }
    Ok(chats)
}

/// An error at line `i` (from 0) of `path`.
fn at_line(path: &Path, i: usize, msg: String) -> Error {
    Error::invalid("chat data", format!("{}:{}: {msg}", path.display(), i + 1))
}

/// `{"messages": [{"role": "user", "content": "..."}, ...]}` -> the messages.
fn parse_chat_line(line: &str) -> std::result::Result<Vec<ChatMessage>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let list = v
        .get("messages")
        .and_then(|m| m.as_array())
        .ok_or("expected {\"messages\": [...]}")?;
    list.iter()
        .enumerate()
        .map(|(j, m)| {
            let field = |key: &str| {
                m.get(key)
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
                    .ok_or(format!("message {j} has no string \"{key}\""))
            };
            Ok(ChatMessage::new(field("role")?, field("content")?))
        })
        .collect()
}

/// Packs the examples into one stream and cuts it into windows of `block_size` + 1 tokens, one
/// starting every `block_size`: (ids, targets) pairs of `block_size` each, a target [`IGNORE`]d
/// where its token is not trained. Windows without any trained target are left out.
pub fn pack_windows(examples: &[Example], block_size: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    let ids: Vec<u32> = examples.iter().flat_map(|e| e.ids.iter().copied()).collect();
    let trained: Vec<bool> = examples.iter().flat_map(|e| e.trained.iter().copied()).collect();
    let mut out = Vec::new();
    let mut start = 0;
    while block_size > 0 && start + block_size < ids.len() {
        let window = start..start + block_size;
        let targets: Vec<u32> = window
            .clone()
            .map(|t| if trained[t + 1] { ids[t + 1] } else { IGNORE })
            .collect();
        if targets.iter().any(|&t| t != IGNORE) {
            out.push((ids[window].to_vec(), targets));
        }
        start += block_size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::ChatTemplate;

    /// ChatML, as SmolLM2's template writes it (without its default system prompt).
    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    fn bytes(s: &str) -> Result<Vec<u32>> {
        Ok(s.bytes().map(u32::from).collect())
    }

    /// Which characters of the rendered chat are trained, as a string of the trained ones.
    fn trained_text(e: &Example) -> String {
        e.ids
            .iter()
            .zip(&e.trained)
            .filter(|(_, &t)| t)
            .map(|(&i, _)| i as u8 as char)
            .collect()
    }

    #[test]
    fn only_the_assistants_tokens_are_trained() {
        let tpl = ChatTemplate::new(CHATML, "", "").unwrap();
        let chat = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi?"),
            ChatMessage::assistant("Hello."),
            ChatMessage::user("Bye?"),
            ChatMessage::assistant("Bye."),
        ];
        let e = chat_example(&chat, |m, g| tpl.render(m, g), bytes).unwrap();
        // the ids are the whole rendering, in order
        let all: String = e.ids.iter().map(|&i| i as u8 as char).collect();
        assert_eq!(all, tpl.render(&chat, false).unwrap());
        // the trained ones: each answer and the template's end of turn, not the headers
        assert_eq!(trained_text(&e), "Hello.<|im_end|>\nBye.<|im_end|>\n");
    }

    #[test]
    fn chats_without_an_answer_or_with_a_template_that_rewrites_are_errors() {
        let tpl = ChatTemplate::new(CHATML, "", "").unwrap();
        let err = chat_example(&[ChatMessage::user("Hi?")], |m, g| tpl.render(m, g), bytes).unwrap_err();
        assert!(err.to_string().contains("no assistant message"), "{err}");
        // a template that renders the last message differently from the others
        let odd = "{% for m in messages %}{% if loop.last %}[{{ m['content'] }}]{% else %}{{ m['content'] }}{% endif %}{% endfor %}";
        let tpl = ChatTemplate::new(odd, "", "").unwrap();
        let chat = [ChatMessage::user("a"), ChatMessage::assistant("b")];
        let err = chat_example(&chat, |m, g| tpl.render(m, g), bytes).unwrap_err();
        assert!(err.to_string().contains("cannot tell which tokens"), "{err}");
    }

    #[test]
    fn a_bad_line_names_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("kiln-lora-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chat.jsonl");
        let good = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#;
        for (bad, needle) in [
            ("{not json", "chat.jsonl:3: not valid JSON"),
            (r#"{"chats": []}"#, "chat.jsonl:3: expected {\"messages\""),
            (
                r#"{"messages": [{"role": "user"}]}"#,
                "chat.jsonl:3: message 0 has no string \"content\"",
            ),
        ] {
            std::fs::write(&path, format!("{good}\n\n{bad}\n")).unwrap();
            let err = read_examples(&path, &Tokenizer::Byte).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        // all lines parse; rendering then fails at the first, on a tokenizer without a template
        std::fs::write(&path, format!("{good}\n")).unwrap();
        let err = read_examples(&path, &Tokenizer::Byte).unwrap_err().to_string();
        assert!(err.contains("chat.jsonl:1:") && err.contains("chat"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn windows_shift_targets_and_ignore_untrained_ones() {
        let e = Example {
            ids: vec![10, 11, 12, 13, 14, 15, 16],
            trained: vec![false, false, true, true, false, false, false],
        };
        let w = pack_windows(&[e], 3);
        // windows [10 11 12 | 13] and [13 14 15 | 16]: the second trains nothing and is left out
        assert_eq!(w, vec![(vec![10, 11, 12], vec![IGNORE, 12, 13])]);
        let plain = Example {
            ids: vec![1, 2, 3],
            trained: vec![true; 3],
        };
        assert_eq!(pack_windows(&[plain], 2), vec![(vec![1, 2], vec![2, 3])]);
    }
}

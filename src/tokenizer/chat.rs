//! Chat templates: the Jinja program a model ships (`tokenizer.chat_template` in a GGUF,
//! `chat_template` in a Hugging Face `tokenizer_config.json`) that turns a conversation into
//! the one string the model was fine-tuned on, e.g. for SmolLM2:
//!
//! ```text
//! <|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n
//! <|im_start|>user\nWhat is the capital of France?<|im_end|>\n
//! <|im_start|>assistant\n            <- add_generation_prompt: the model writes the answer next
//! ```
//!
//! Rendered with `minijinja` set up as transformers sets up Jinja2 for `apply_chat_template`:
//! `trim_blocks` and `lstrip_blocks` on, the variables `messages`, `add_generation_prompt`,
//! `bos_token` and `eos_token`, a `raise_exception(msg)` function, and Python's string and
//! dict methods (`.strip()`, `.startswith()`, `.items()`, ...) through `minijinja-contrib`.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One turn of a conversation: `role` is `"system"`, `"user"` or `"assistant"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks: `"system"`, `"user"` or `"assistant"`.
    pub role: String,
    /// What is said.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system prompt.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A message from the user.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// A reply of the model.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat_template";

fn chat_error(msg: String) -> Error {
    Error::Invalid {
        op: "chat template",
        msg,
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts the template sees under
    /// those names. A syntax error is reported here, with its line.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| chat_error(format!("cannot configure the template syntax: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| chat_error(format!("cannot compile the template: {e:#}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The conversation `messages` as text; with `add_generation_prompt`, followed by the
    /// opening of the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| chat_error(format!("{e:#}")))?;
        // Each message as a map, so templates can write message['role'] or message.role.
        let messages: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| {
                minijinja::Value::from(BTreeMap::from([
                    ("role", m.role.clone()),
                    ("content", m.content.clone()),
                ]))
            })
            .collect();
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| chat_error(format!("cannot render the conversation: {e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}[{{ m.content.strip() }}]{% endfor %}{{ eos_token }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let out = t
            .render(&[ChatMessage::user("  hi  "), ChatMessage::assistant("yo")], false)
            .unwrap();
        assert_eq!(out, "[hi][yo]</s>");
        let err = t.render(&[ChatMessage::system("x")], false).unwrap_err().to_string();
        assert!(err.contains("bad role system"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot compile"), "{err}");
    }
}

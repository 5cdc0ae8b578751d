//! Tokenizers: round trips, vocabularies, errors, JSON, streaming decode.

use kiln::tokenizer::{StreamDecoder, Tokenizer, TokenizerKind, GPT2_EOT, GPT2_VOCAB_SIZE};

#[test]
fn byte_tokenizer_round_trips_any_text() {
    let tok = Tokenizer::Byte;
    assert_eq!(tok.vocab_size(), 256);
    let text = "héllo, wörld! ✓ 🦀\n\t";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids.len(), text.len());
    assert!(ids.iter().all(|&i| i < 256));
    assert_eq!(tok.decode(&ids), text);
}

#[test]
fn char_vocabulary_is_the_sorted_distinct_characters() {
    let tok = Tokenizer::char_from_text("hello world\nhé");
    let Tokenizer::Char { chars } = &tok else {
        panic!("not a char tokenizer")
    };
    assert_eq!(chars.iter().collect::<String>(), "\n dehlorwé");
    assert_eq!(tok.vocab_size(), 10);
    assert_eq!(tok.encode("\n").unwrap(), vec![0]);
    let ids = tok.encode("world hello").unwrap();
    assert_eq!(tok.decode(&ids), "world hello");
}

#[test]
fn char_tokenizer_names_every_unknown_character() {
    let tok = Tokenizer::char_from_text("abc");
    let err = tok.encode("abXcYX€").unwrap_err().to_string();
    for c in ["'X'", "'Y'", "'€'"] {
        assert!(err.contains(c), "{err}");
    }
    assert!(err.contains("3 character(s)"), "{err}");
}

#[test]
fn gpt2_matches_tiktoken_r50k() {
    let tok = Tokenizer::Gpt2;
    assert_eq!(tok.vocab_size(), GPT2_VOCAB_SIZE);
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
    let text = "The quick brown fox — jumps! 🦀";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()), text);
    // special tokens in user text are plain text
    assert!(!tok.encode("<|endoftext|>").unwrap().contains(&GPT2_EOT));
    assert_eq!(tok.decode(&[GPT2_EOT]), "<|endoftext|>");
}

#[test]
fn tokenizers_survive_json() {
    for tok in [
        Tokenizer::Byte,
        Tokenizer::Gpt2,
        Tokenizer::char_from_text("a\"b\\c\n\u{0}é"),
    ] {
        let back = Tokenizer::from_json(&tok.to_json()).unwrap();
        assert_eq!(back, tok);
        assert_eq!(back.fingerprint(), tok.fingerprint());
    }
    assert!(
        Tokenizer::from_json(r#"{"kind":"char","chars":"ba"}"#).is_err(),
        "unsorted vocabulary"
    );
    assert!(Tokenizer::from_json(r#"{"kind":"wordpiece"}"#).is_err());
    assert_ne!(
        Tokenizer::char_from_text("ab").fingerprint(),
        Tokenizer::char_from_text("abc").fingerprint()
    );
}

#[test]
fn kinds_parse_and_unknown_kinds_are_errors() {
    assert_eq!("char".parse::<TokenizerKind>().unwrap(), TokenizerKind::Char);
    assert_eq!("gpt2".parse::<TokenizerKind>().unwrap(), TokenizerKind::Gpt2);
    let err = "sentencepiece".parse::<TokenizerKind>().unwrap_err().to_string();
    assert!(err.contains("byte, char or gpt2"), "{err}");
}

#[test]
fn stream_decoder_prints_whole_characters_from_bpe_pieces() {
    let tok = Tokenizer::Gpt2;
    let text = "a 🦀 crab";
    let ids = tok.encode(text).unwrap();
    let mut d = StreamDecoder::new();
    let mut out = String::new();
    for &id in &ids {
        let piece = d.push(&tok, id);
        assert!(!piece.contains('\u{FFFD}'), "split character in {piece:?}");
        out.push_str(&piece);
    }
    out.push_str(&d.finish());
    assert_eq!(out, text);
}

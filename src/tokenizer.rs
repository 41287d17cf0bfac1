//! `tokenizer.json` via the `tokenizers` crate, plus an incremental detokenizer
//! that never emits half a UTF-8 character.

use crate::error::{Error, ErrorKind, Result};
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

fn tok_err(msg: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Tokenizer, msg.to_string())
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(tok_err(format!("{}: file not found", path.display())));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| tok_err(format!("{}: invalid tokenizer: {e}", path.display())))?;
        Ok(Tokenizer { inner })
    }

    /// Number of ids the tokenizer can produce (including added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Largest id the tokenizer can produce, if any.
    pub fn max_id(&self) -> Option<u32> {
        self.inner.get_vocab(true).values().copied().max()
    }

    /// Encode text; `add_special` applies the tokenizer's own post-processor (e.g. BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decode ids; `skip_special` drops special tokens such as BOS/EOS.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Streams text for a growing list of ids. Decoding a window of recent ids and
/// emitting only the new suffix keeps byte-level merges and leading-space rules
/// right; text ending in U+FFFD is held back until the character is complete.
#[derive(Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

/// Context ids a stream starts from (as vLLM and TGI do): enough for the
/// decoder's rules about the start of a text to see that it is not one.
const CONTEXT_IDS: usize = 5;

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream of the text that follows `context`: its first token decodes
    /// as a continuation (SentencePiece decoders, Llama-2's, strip the
    /// space of a text's first word). Starts empty where the context's end
    /// does not decode to whole characters.
    pub fn after(tok: &Tokenizer, context: &[u32]) -> Self {
        let ids = &context[context.len().saturating_sub(CONTEXT_IDS)..];
        match tok.decode(ids, true) {
            Ok(text) if !text.ends_with('\u{FFFD}') => StreamDecoder {
                ids: ids.to_vec(),
                prefix_offset: 0,
                read_offset: ids.len(),
            },
            _ => Self::new(),
        }
    }

    /// Add one id; returns the text that became final with it (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let new = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Text still held back (an incomplete character at the end), decoded lossily.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], true)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or("").to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// Llama-2's decoder (`▁` for spaces, the text's first space stripped)
    /// over a small word-level vocabulary.
    fn sentencepiece() -> Tokenizer {
        let json = r#"{
          "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
          "normalizer": null, "post_processor": null,
          "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
          "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
          "model": {"type": "WordLevel", "unk_token": "<unk>",
            "vocab": {"<unk>": 0, "▁The": 1, "▁capital": 2, "▁is": 3, "▁Paris": 4}}
        }"#;
        Tokenizer {
            inner: tokenizers::Tokenizer::from_str(json).unwrap(),
        }
    }

    #[test]
    fn a_stream_after_a_prompt_keeps_the_space_before_its_first_word() {
        let tok = sentencepiece();
        let prompt = tok.encode("The capital is", false).unwrap();
        assert_eq!(prompt, vec![1, 2, 3]);
        let whole = tok.decode(&[1, 2, 3, 4], true).unwrap();
        assert_eq!(whole, "The capital is Paris");
        // Alone, the first word is the start of a text and loses its space.
        assert_eq!(StreamDecoder::new().push(&tok, 4).unwrap(), "Paris");
        let mut after = StreamDecoder::after(&tok, &prompt);
        assert_eq!(after.push(&tok, 4).unwrap(), " Paris");
        assert_eq!(after.push(&tok, 3).unwrap(), " is");
        assert_eq!(after.finish(&tok).unwrap(), "");
    }
}

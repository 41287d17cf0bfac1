//! The draft shortlist: the tokens a draft head scores (frequency-ranked
//! drafting, after FR-Spec). Drafts come from the K most frequent tokens;
//! verification always uses the full head, so greedy output stays that of
//! full depth, and a sampled draft's distribution is the shortlist softmax,
//! which speculative sampling's acceptance uses, so sampling stays exact.
//!
//! Frequencies come from `token_frequencies.json` beside the checkpoint
//! (`layerskip frequencies` counts a corpus with the model's tokenizer);
//! without it, token ids stand in for ranks: a BPE vocabulary lists its
//! merges in the order training found them, most frequent first. A draft
//! also scores its session's own recent tokens that the list leaves out
//! ([`crate::Model::draft_extras`]).

use crate::config::ModelConfig;
use crate::error::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file beside a checkpoint that ranks its tokens.
pub const FREQUENCIES_FILE: &str = "token_frequencies.json";

/// Token counts over a corpus, most frequent first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Frequencies {
    /// What was counted (file names), for the record.
    pub source: String,
    /// Tokens counted in all.
    pub total: u64,
    /// `(token id, count)`, most frequent first; ids never seen are absent.
    pub counts: Vec<(u32, u64)>,
}

impl Frequencies {
    /// Rank the tokens of `corpus`.
    pub fn count(corpus: impl IntoIterator<Item = Vec<u32>>, vocab: usize, source: &str) -> Self {
        let mut n = vec![0u64; vocab];
        for ids in corpus {
            for i in ids {
                if let Some(c) = n.get_mut(i as usize) {
                    *c += 1;
                }
            }
        }
        let mut counts: Vec<(u32, u64)> = n
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (i as u32, c))
            .collect();
        // Most frequent first; ties by id, so the ranking is reproducible.
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Frequencies {
            source: source.to_string(),
            total: n.iter().sum(),
            counts,
        }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("{}: not a token frequency file: {e}", path.display()),
            )
        })
    }
}

/// `draft_shortlist` value ([`crate::LoadOptions`]): K chosen from the
/// model's shape by [`auto_size`].
pub const AUTO: usize = usize::MAX;

/// K for [`AUTO`]: vocab / 8 where the full exit head costs at least half a
/// layer's multiply-adds
/// (there a draft through E layers pays a head worth cutting); 0, the full
/// head, elsewhere. vocab / 8 is the shortlist measured on both shapes we
/// benchmark: the bundled model's best pairs (with each session's own
/// tokens), and a 1.8x cheaper draft step at E = 4 on Llama-3.2-1B's.
pub fn auto_size(config: &ModelConfig) -> usize {
    let (h, inter) = (config.hidden_size, config.intermediate_size);
    let layer = h * (2 * config.q_dim() + 2 * config.kv_dim()) + 3 * h * inter;
    if 2 * config.vocab_size * h >= layer {
        config.vocab_size / 8
    } else {
        0
    }
}

/// The `k` token ids drafts may choose from: the ranked tokens of the
/// checkpoint's frequency file, then the rest by id; the EOS ids always
/// (drafting stops at them), even where they alone are more than `k`. `k`
/// is capped at the vocabulary.
pub fn shortlist(dir: &Path, config: &ModelConfig, k: usize) -> Result<Vec<u32>> {
    let vocab = config.vocab_size;
    let file = dir.join(FREQUENCIES_FILE);
    let ranked: Vec<u32> = if file.exists() {
        let f = Frequencies::read(&file)?;
        if let Some(&(bad, _)) = f.counts.iter().find(|(i, _)| *i as usize >= vocab) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{}: token {bad} is out of range (vocab_size {vocab})",
                    file.display()
                ),
            ));
        }
        f.counts.iter().map(|&(i, _)| i).collect()
    } else {
        Vec::new()
    };
    let mut take = vec![false; vocab];
    let eos = config.eos_token_ids.iter().copied();
    let k = k
        .min(vocab)
        .max(eos.clone().filter(|&i| (i as usize) < vocab).count());
    let mut ids = Vec::with_capacity(k);
    for i in eos.chain(ranked).chain(0..vocab as u32) {
        if ids.len() >= k {
            break;
        }
        if !std::mem::replace(&mut take[i as usize], true) {
            ids.push(i);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rank_by_frequency_then_id() {
        let f = Frequencies::count([vec![3, 1, 3, 2], vec![1, 3, 9]], 5, "x");
        assert_eq!(f.counts, vec![(3, 3), (1, 2), (2, 1)]);
        assert_eq!(f.total, 6, "ids outside the vocabulary are not counted");
    }

    fn shape(hidden: usize, inter: usize, heads: usize, kv: usize, vocab: usize) -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": 2,
            "num_attention_heads": heads, "num_key_value_heads": kv,
            "vocab_size": vocab, "max_position_embeddings": 512,
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
        ModelConfig::from_dir(dir.path()).unwrap()
    }

    #[test]
    fn the_eos_ids_are_always_on_the_shortlist() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = shape(256, 1024, 4, 2, 4096);
        config.eos_token_ids = vec![4000, 4001, 4002];
        let ids = shortlist(dir.path(), &config, 2).unwrap();
        assert_eq!(ids, vec![4000, 4001, 4002]);
        let ids = shortlist(dir.path(), &config, 5).unwrap();
        assert_eq!(ids, vec![0, 1, 4000, 4001, 4002]);
    }

    #[test]
    fn auto_takes_an_eighth_of_the_vocabulary_where_the_head_costs_half_a_layer() {
        // The bundled model: head 4096 x 256, about one layer.
        assert_eq!(auto_size(&shape(256, 1024, 4, 2, 4096)), 512);
        // Llama-3.2-1B: head 4.2 layers.
        assert_eq!(auto_size(&shape(2048, 8192, 32, 8, 128256)), 16032);
        // Llama-2-70B: head 0.3 layers; the full head.
        assert_eq!(auto_size(&shape(8192, 28672, 64, 8, 32000)), 0);
    }
}

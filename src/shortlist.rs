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

/// The `k` token ids drafts may choose from: the ranked tokens of the
/// checkpoint's frequency file, then the rest by id; the EOS ids always
/// (drafting stops at them). `k` is capped at the vocabulary.
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
    let mut ids = Vec::with_capacity(k.min(vocab));
    let eos = config.eos_token_ids.iter().copied();
    for i in eos.chain(ranked).chain(0..vocab as u32) {
        if ids.len() >= k.min(vocab) {
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
}

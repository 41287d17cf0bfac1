//! What the exit head hands back for the rows a pass selected: their logits,
//! each row's [`Pick`], or both. When only each row's token is needed, an
//! engine may hand back picks alone: a GPU engine, so that a verify pass
//! over a 128k vocabulary copies a few bytes per row instead of half a
//! megabyte; the CPU engine picks the rows of a large pass on all its
//! threads, and a batch then hands each session its picks alone.

use crate::sampling::{argmax, top_probability, Pick, PickRule};

#[derive(Debug, Clone, Default)]
pub struct HeadOutput {
    /// Position of the first row.
    pos0: usize,
    vocab: usize,
    /// `rows x vocab`, or empty when `picks` alone holds the rows.
    logits: Vec<f32>,
    /// Each row's pick, or empty (picks are then made from `logits`).
    picks: Vec<Pick>,
}

impl HeadOutput {
    pub fn new(vocab: usize) -> Self {
        HeadOutput {
            vocab,
            ..Default::default()
        }
    }

    pub fn pos0(&self) -> usize {
        self.pos0
    }

    pub fn rows(&self) -> usize {
        if self.picks.is_empty() {
            self.logits.len() / self.vocab.max(1)
        } else {
            self.picks.len()
        }
    }

    /// Every row's logits, `rows x vocab`; empty when only picks came back.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Row `i`'s logits, if they came back.
    pub fn row_logits(&self, i: usize) -> Option<&[f32]> {
        self.logits.chunks_exact(self.vocab).nth(i)
    }

    /// Row `i`'s greedy token (the first of equal maxima).
    pub fn token(&self, i: usize) -> u32 {
        match self.picks.get(i) {
            Some(p) => p.argmax,
            None => argmax(self.row_logits(i).expect("logits or picks")),
        }
    }

    /// Row `i`'s token under `rule`, the rule the pass was given for it.
    pub fn chosen(&self, i: usize, rule: &PickRule) -> u32 {
        match self.picks.get(i) {
            Some(p) => p.token,
            None => rule.apply(self.row_logits(i).expect("logits or picks")),
        }
    }

    /// Row `i`'s greedy token's probability at temperature 1.
    pub fn top_prob(&self, i: usize) -> f32 {
        match self.picks.get(i) {
            Some(p) => p.top_prob,
            None => top_probability(self.row_logits(i).expect("logits or picks")),
        }
    }

    /// Every row's greedy token.
    pub fn tokens(&self) -> Vec<u32> {
        (0..self.rows()).map(|i| self.token(i)).collect()
    }

    pub fn set_pos0(&mut self, pos0: usize) {
        self.pos0 = pos0;
    }

    /// Drop the rows before position `pos` (a position of this output).
    pub fn start_at(&mut self, pos: usize) {
        let n = pos - self.pos0;
        if !self.logits.is_empty() {
            self.logits.drain(..n * self.vocab);
        }
        if !self.picks.is_empty() {
            self.picks.drain(..n);
        }
        self.pos0 = pos;
    }

    /// No rows.
    pub fn clear(&mut self) {
        self.logits.clear();
        self.picks.clear();
    }

    /// Refill with logits written by `fill`, which sizes the vector and
    /// writes every element: it gets the last rows' vector, so that an
    /// output refilled pass after pass is neither allocated nor zeroed anew.
    pub fn fill_logits(&mut self, fill: impl FnOnce(&mut Vec<f32>)) {
        self.picks.clear();
        fill(&mut self.logits);
    }

    /// Bytes allocated for rows.
    pub fn bytes_held(&self) -> usize {
        self.logits.capacity() * size_of::<f32>() + self.picks.capacity() * size_of::<Pick>()
    }

    /// Refill with picks written by `fill`.
    pub fn fill_picks(&mut self, fill: impl FnOnce(&mut Vec<Pick>)) {
        self.clear();
        fill(&mut self.picks);
    }

    /// Keep beside the logits their rows' picks, written by `fill` from them
    /// (one per row, each as [`Pick::of`] makes it).
    pub fn add_picks(&mut self, fill: impl FnOnce(&[f32], &mut Vec<Pick>)) {
        self.picks.clear();
        fill(&self.logits, &mut self.picks);
        debug_assert_eq!(self.picks.len(), self.logits.len() / self.vocab.max(1));
    }

    /// Refill with rows `at..at + rows` of `other` (a batch's shared head
    /// output): their picks alone where `other` has them.
    pub fn copy_rows(&mut self, other: &HeadOutput, at: usize, rows: usize) {
        self.clear();
        if other.picks.is_empty() {
            let v = other.vocab;
            self.logits
                .extend_from_slice(&other.logits[at * v..(at + rows) * v]);
        } else {
            self.picks.extend_from_slice(&other.picks[at..at + rows]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_and_picks_answer_alike() {
        let rows = [0.5f32, 2.0, 2.0, -1.0, 3.0, 0.0, 1.0, 1.0];
        let mut from_logits = HeadOutput::new(4);
        from_logits.fill_logits(|v| v.extend_from_slice(&rows));
        from_logits.set_pos0(7);
        let mut from_picks = HeadOutput::new(4);
        from_picks.fill_picks(|p| p.extend(rows.chunks(4).map(|r| Pick::of(r, &PickRule::Greedy))));
        from_picks.set_pos0(7);
        let mut both = from_logits.clone();
        both.add_picks(|l, p| p.extend(l.chunks(4).map(|r| Pick::of(r, &PickRule::Greedy))));
        for out in [&from_logits, &from_picks, &both] {
            assert_eq!((out.rows(), out.pos0()), (2, 7));
            assert_eq!(out.tokens(), vec![1, 0]);
            assert_eq!(out.top_prob(1), top_probability(&rows[4..]));
            let mut later = out.clone();
            later.start_at(8);
            assert_eq!((later.rows(), later.pos0()), (1, 8));
            assert_eq!(later.tokens(), vec![0]);
        }
        assert!(from_picks.logits().is_empty() && from_picks.row_logits(0).is_none());
        let rule = PickRule::Sample {
            params: crate::SamplingParams {
                temperature: 1.0,
                ..Default::default()
            },
            u: 0.999,
        };
        let mut sampled = HeadOutput::new(4);
        sampled.fill_picks(|p| p.extend(rows.chunks(4).map(|r| Pick::of(r, &rule))));
        // The last id holds the top of the cumulative distribution.
        assert_eq!(from_logits.chosen(0, &rule), 3);
        assert_eq!((sampled.chosen(0, &rule), sampled.token(0)), (3, 1));
        let mut part = HeadOutput::new(4);
        part.copy_rows(&from_logits, 1, 1);
        assert_eq!((part.rows(), part.token(0)), (1, 0));
        for picked in [&from_picks, &both] {
            part.copy_rows(picked, 1, 1);
            assert_eq!((part.rows(), part.token(0)), (1, 0));
            assert!(part.logits().is_empty(), "picks alone are copied");
        }
        let mut later = both.clone();
        later.start_at(8);
        assert_eq!((later.logits(), later.picks.len()), (&rows[4..], 1));
    }

    #[test]
    fn a_refill_keeps_the_allocation_and_none_of_the_last_rows() {
        let mut out = HeadOutput::new(2);
        out.fill_picks(|p| p.push(Pick::of(&[0.0, 1.0], &PickRule::Greedy)));
        out.fill_logits(|v| {
            v.resize(6, 0.0);
            v.copy_from_slice(&[1.0, 0.0, 0.0, 1.0, 2.0, 0.0]);
        });
        assert_eq!(out.tokens(), vec![0, 1, 0]);
        let held = out.bytes_held();
        out.fill_logits(|v| {
            assert_eq!(v.len(), 6, "the last rows' vector, not a new one");
            v.truncate(2);
            v.copy_from_slice(&[0.0, 3.0]);
        });
        assert_eq!((out.rows(), out.tokens()), (1, vec![1]));
        assert_eq!(out.bytes_held(), held);
    }
}

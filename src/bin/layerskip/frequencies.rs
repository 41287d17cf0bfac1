//! `layerskip frequencies`: rank a checkpoint's tokens by how often a corpus
//! uses them, for the draft shortlist.

use crate::ModelArgs;
use layerskip::shortlist::{Frequencies, FREQUENCIES_FILE};
use layerskip::{Error, Result};
use std::path::{Path, PathBuf};

pub(crate) fn run_frequencies(
    model: ModelArgs,
    out: Option<PathBuf>,
    files: &[PathBuf],
) -> Result<()> {
    let m = model.load()?;
    let mut corpus = Vec::with_capacity(files.len());
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
        corpus.push(m.tokenizer.encode(&text, false)?);
    }
    let names: Vec<String> = files
        .iter()
        .take(3)
        .map(|f| f.display().to_string())
        .collect();
    let more = if files.len() > 3 { ", ..." } else { "" };
    let source = format!("{} file(s): {}{more}", files.len(), names.join(", "));
    let freq = Frequencies::count(corpus, m.config.vocab_size, &source);
    let out = out.unwrap_or_else(|| m.dir.join(FREQUENCIES_FILE));
    let json = serde_json::to_string(&freq).expect("frequencies serialize");
    std::fs::write(&out, json + "\n").map_err(|e| Error::io(&out, e))?;
    println!(
        "{}: {} tokens counted, {} distinct of {}",
        Path::new(&out).display(),
        freq.total,
        freq.counts.len(),
        m.config.vocab_size
    );
    Ok(())
}

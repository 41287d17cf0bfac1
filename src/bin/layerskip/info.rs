//! `layerskip info`: what a checkpoint holds.

use crate::ModelArgs;
use serde_json::json;

pub(crate) fn run_info(model: ModelArgs, as_json: bool) -> layerskip::Result<()> {
    let model = model.load()?;
    let c = &model.config;
    let v = json!({
        "path": model.dir.display().to_string(),
        "layers": c.num_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "heads": c.num_heads,
        "kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "context_length": c.max_position_embeddings,
        "rope_theta": c.rope_theta,
        "rope_scaling": format!("{:?}", c.rope_scaling),
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_ids": c.eos_token_ids,
        "dtype": model.dtype.name(),
    });
    if as_json {
        println!("{v}");
    } else {
        for (k, val) in v.as_object().unwrap() {
            println!("{k:>20}: {val}");
        }
    }
    Ok(())
}

//! The Hugging Face Llama checkpoint's tensor names, and which tensor is the
//! LM head: one map that every engine loads from.

use crate::config::ModelConfig;
use crate::weights::WeightStore;

pub const EMBED: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";
const LM_HEAD: &str = "lm_head.weight";

/// The tensors of decoder layer `i`.
pub struct LayerNames {
    pub attn_norm: String,
    pub mlp_norm: String,
    pub q: String,
    pub k: String,
    pub v: String,
    pub o: String,
    pub gate: String,
    pub up: String,
    pub down: String,
}

impl LayerNames {
    pub fn new(i: usize) -> Self {
        let p = format!("model.layers.{i}");
        LayerNames {
            attn_norm: format!("{p}.input_layernorm.weight"),
            mlp_norm: format!("{p}.post_attention_layernorm.weight"),
            q: format!("{p}.self_attn.q_proj.weight"),
            k: format!("{p}.self_attn.k_proj.weight"),
            v: format!("{p}.self_attn.v_proj.weight"),
            o: format!("{p}.self_attn.o_proj.weight"),
            gate: format!("{p}.mlp.gate_proj.weight"),
            up: format!("{p}.mlp.up_proj.weight"),
            down: format!("{p}.mlp.down_proj.weight"),
        }
    }
}

/// The LM head's tensor: its own, or the embedding table when the config
/// ties them and the checkpoint stores no separate head (a stored head wins).
pub fn lm_head(cfg: &ModelConfig, store: &WeightStore) -> &'static str {
    if cfg.tie_word_embeddings && !store.contains(LM_HEAD) {
        EMBED
    } else {
        LM_HEAD
    }
}

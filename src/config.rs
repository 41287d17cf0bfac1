//! `config.json` and `generation_config.json` → [`ModelConfig`].

use crate::error::{Error, Result};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// How rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (transformers' "linear").
    Linear {
        factor: f32,
    },
    /// Llama 3.1+ frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
}

/// The Llama architecture parameters we need, validated.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint says it is stored in (informational).
    pub torch_dtype: Option<String>,
}

/// Largest sizes we accept before allocating anything: they catch corrupt
/// configs long before an absurd allocation is attempted.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 4096;
const MAX_CONTEXT: usize = 1 << 24;

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    /// transformers >= 5 writes `rope_theta` and the scaling here instead.
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    vocab_size: Option<usize>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    torch_dtype: Option<String>,
}

/// Parse a token id field that may be an int, a list of ints or null.
fn token_ids(v: &Option<Value>, what: &str, file: &str) -> Result<Vec<u32>> {
    let as_id = |x: &Value| -> Result<u32> {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                Error::config(format!(
                    "{file}: {what} must be a non-negative integer or a list of them, got {x}"
                ))
            })
    };
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(x) => Ok(vec![as_id(x)?]),
    }
}

fn required(v: Option<usize>, name: &str, file: &str) -> Result<usize> {
    let n = v.ok_or_else(|| Error::config(format!("{file}: missing required field `{name}`")))?;
    if n == 0 || n > MAX_DIM {
        return Err(Error::config(format!(
            "{file}: `{name}` = {n} is out of range (1..={MAX_DIM})"
        )));
    }
    Ok(n)
}

fn parse_rope_scaling(v: &Option<Value>, file: &str) -> Result<RopeScaling> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(RopeScaling::None),
        Some(Value::Object(o)) => o,
        Some(x) => {
            return Err(Error::config(format!(
                "{file}: rope_scaling must be an object or null, got {x}"
            )))
        }
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| Error::config(format!("{file}: rope_scaling has no `rope_type`")))?;
    let num = |key: &str| -> Result<f32> {
        let x = obj.get(key).and_then(Value::as_f64).ok_or_else(|| {
            Error::config(format!(
                "{file}: rope_scaling ({kind}) needs numeric `{key}`"
            ))
        })?;
        if !(x.is_finite() && x > 0.0) {
            return Err(Error::config(format!(
                "{file}: rope_scaling `{key}` = {x} must be positive"
            )));
        }
        Ok(x as f32)
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => {
            let low = num("low_freq_factor")?;
            let high = num("high_freq_factor")?;
            if high <= low {
                return Err(Error::config(format!(
                    "{file}: rope_scaling llama3 needs high_freq_factor > low_freq_factor, got {high} <= {low}"
                )));
            }
            Ok(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            })
        }
        other => Err(Error::new(
            crate::ErrorKind::Unsupported,
            format!(
                "{file}: rope_scaling type `{other}` is not supported (none, linear, llama3 are)"
            ),
        )),
    }
}

impl ModelConfig {
    /// Read `config.json` (and `generation_config.json` when present) from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut cfg = Self::from_json(&text, &path.display().to_string())?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let text = std::fs::read_to_string(&gen_path).map_err(|e| Error::io(&gen_path, e))?;
            let file = gen_path.display().to_string();
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| Error::config(format!("{file}: invalid JSON: {e}")))?;
            let eos = token_ids(&v.get("eos_token_id").cloned(), "eos_token_id", &file)?;
            for id in eos {
                if !cfg.eos_token_ids.contains(&id) {
                    cfg.eos_token_ids.push(id);
                }
            }
            cfg.check_token_ids(&file)?;
        }
        Ok(cfg)
    }

    /// Parse and validate the text of a `config.json`. `file` names it in errors.
    pub fn from_json(text: &str, file: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("{file}: invalid JSON: {e}")))?;
        // Each of the two fields that is present must say Llama, and one must be.
        let type_ok = raw.model_type.as_deref().is_none_or(|t| t == "llama");
        let arch_ok = raw
            .architectures
            .as_ref()
            .is_none_or(|a| a.iter().any(|s| s == "LlamaForCausalLM"));
        if !(type_ok && arch_ok) || (raw.model_type.is_none() && raw.architectures.is_none()) {
            let model_type = raw.model_type.as_deref().unwrap_or("(none)");
            let architectures = raw
                .architectures
                .as_ref()
                .map_or("(none)".to_string(), |a| a.join(", "));
            return Err(Error::new(
                crate::ErrorKind::Unsupported,
                format!(
                    "{file}: model_type {model_type}, architectures {architectures}: \
                     not a Llama model (model_type \"llama\", LlamaForCausalLM)"
                ),
            ));
        }
        for (flag, name) in [
            (raw.attention_bias, "attention_bias"),
            (raw.mlp_bias, "mlp_bias"),
        ] {
            if flag == Some(true) {
                return Err(Error::new(
                    crate::ErrorKind::Unsupported,
                    format!("{file}: `{name}: true` is not supported yet"),
                ));
            }
        }
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(Error::new(
                    crate::ErrorKind::Unsupported,
                    format!("{file}: hidden_act `{act}` is not supported (only silu)"),
                ));
            }
        }
        let hidden = required(raw.hidden_size, "hidden_size", file)?;
        let inter = required(raw.intermediate_size, "intermediate_size", file)?;
        let layers = required(raw.num_hidden_layers, "num_hidden_layers", file)?;
        if layers > MAX_LAYERS {
            return Err(Error::config(format!(
                "{file}: num_hidden_layers = {layers} exceeds {MAX_LAYERS}"
            )));
        }
        let heads = required(raw.num_attention_heads, "num_attention_heads", file)?;
        let kv_heads = required(
            raw.num_key_value_heads.or(Some(heads)),
            "num_key_value_heads",
            file,
        )?;
        if heads % kv_heads != 0 {
            return Err(Error::config(format!(
                "{file}: num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv_heads})"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(d) => required(Some(d), "head_dim", file)?,
            None => {
                if hidden % heads != 0 {
                    return Err(Error::config(format!(
                        "{file}: hidden_size ({hidden}) is not divisible by num_attention_heads ({heads})"
                    )));
                }
                hidden / heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(Error::config(format!(
                "{file}: head_dim ({head_dim}) must be even for RoPE"
            )));
        }
        let vocab = required(raw.vocab_size, "vocab_size", file)?;
        let max_pos = raw.max_position_embeddings.unwrap_or(2048);
        if max_pos == 0 || max_pos > MAX_CONTEXT {
            return Err(Error::config(format!(
                "{file}: max_position_embeddings = {max_pos} is out of range (1..={MAX_CONTEXT})"
            )));
        }
        let eps = raw.rms_norm_eps.unwrap_or(1e-6);
        let rope_params_theta = raw
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64);
        let theta = raw.rope_theta.or(rope_params_theta).unwrap_or(10000.0);
        let scaling = match (&raw.rope_scaling, &raw.rope_parameters) {
            (Some(s), _) if !s.is_null() => parse_rope_scaling(&raw.rope_scaling, file)?,
            (_, Some(_)) => parse_rope_scaling(&raw.rope_parameters, file)?,
            _ => RopeScaling::None,
        };
        if !(eps.is_finite() && eps > 0.0 && theta.is_finite() && theta > 0.0) {
            return Err(Error::config(format!(
                "{file}: rms_norm_eps ({eps}) and rope_theta ({theta}) must be positive"
            )));
        }
        let cfg = ModelConfig {
            hidden_size: hidden,
            intermediate_size: inter,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: eps as f32,
            rope_theta: theta as f32,
            rope_scaling: scaling,
            max_position_embeddings: max_pos,
            vocab_size: vocab,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: token_ids(&raw.bos_token_id, "bos_token_id", file)?
                .first()
                .copied(),
            eos_token_ids: token_ids(&raw.eos_token_id, "eos_token_id", file)?,
            torch_dtype: raw.torch_dtype,
        };
        cfg.check_token_ids(file)?;
        Ok(cfg)
    }

    fn check_token_ids(&self, file: &str) -> Result<()> {
        for &id in self.eos_token_ids.iter().chain(self.bos_token_id.iter()) {
            if id as usize >= self.vocab_size {
                return Err(Error::config(format!(
                    "{file}: special token id {id} is outside the vocabulary (vocab_size {})",
                    self.vocab_size
                )));
            }
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Bytes one position of the K/V cache takes: K and V in every layer,
    /// `elem_bytes` an element.
    pub fn kv_bytes_per_position(&self, elem_bytes: usize) -> usize {
        2 * self.num_layers * self.kv_dim() * elem_bytes
    }
}

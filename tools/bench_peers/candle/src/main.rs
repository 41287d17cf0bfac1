//! candle peer: load a HF Llama checkpoint (config.json + model.safetensors)
//! on the CPU with candle-transformers' `models::llama`, prefill a few token
//! ids, then run N greedy decode steps with the KV cache and print
//! `candle <dtype> <tok/s>` for the decode phase only.
//!
//!   candle-bench --model DIR [--dtype bf16|f32] [--n 128] [--prompt-ids 1,2,3,4]
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<()> {
    let mut model_dir: Option<PathBuf> = None;
    let mut dtype_name = "bf16".to_string();
    let mut n: usize = 128;
    let mut prompt: Vec<u32> = vec![1, 2, 3, 4];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model_dir = Some(PathBuf::from(val()?)),
            "--dtype" => dtype_name = val()?,
            "--n" => n = val()?.parse()?,
            "--prompt-ids" => {
                prompt = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<u32>())
                    .collect::<std::result::Result<_, _>>()?
            }
            "-h" | "--help" => {
                println!("candle-bench --model DIR [--dtype bf16|f32|f16] [--n N] [--prompt-ids 1,2,3,4]");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let dir = model_dir.context("--model is required")?;
    let dtype = match dtype_name.as_str() {
        "bf16" => DType::BF16,
        "f32" => DType::F32,
        "f16" => DType::F16,
        d => bail!("unsupported dtype {d}"),
    };
    let dev = Device::Cpu;

    let cfg: LlamaConfig = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
        .context("parsing config.json")?;
    let cfg = cfg.into_config(false);
    eprintln!(
        "candle: {} layers, hidden {}, vocab {}, tied {}, threads {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        cfg.tie_word_embeddings,
        candle_core::utils::get_num_threads()
    );
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], dtype, &dev)?
    };
    let model = Llama::load(vb, &cfg)?;
    let mut cache = Cache::new(true, dtype, &cfg, &dev)?;

    let argmax = |logits: &Tensor| -> Result<u32> {
        Ok(logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?)
    };

    // Prefill (not timed).
    let input = Tensor::new(prompt.as_slice(), &dev)?.unsqueeze(0)?;
    let mut next = argmax(&model.forward(&input, 0, &mut cache)?)?;
    let mut pos = prompt.len();

    // Decode: N single-token steps, full depth, greedy.
    let mut out = Vec::with_capacity(n + 1);
    out.push(next); // the prefill's token, as in transformers' and layerskip's output
    let t = Instant::now();
    for _ in 0..n {
        let input = Tensor::new(&[next], &dev)?.unsqueeze(0)?;
        let logits = model.forward(&input, pos, &mut cache)?;
        pos += 1;
        next = argmax(&logits)?;
        out.push(next);
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!("candle: first new tokens {:?}", &out[..out.len().min(8)]);
    println!("candle {} {:.2}", dtype_name, n as f64 / secs);
    Ok(())
}

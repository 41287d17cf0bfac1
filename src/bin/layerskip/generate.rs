//! `layerskip generate`: text from a prompt, streamed or as one JSON object.

use crate::{GenerateArgs, ModeArg};
use layerskip::{generate, GenerateOptions, Mode, ModeKind, SamplingParams, Session, Setting};
use serde_json::json;
use std::io::Write;

pub(crate) fn run_generate(a: GenerateArgs) -> layerskip::Result<()> {
    let model = a.model.load()?;
    let n = model.num_layers();
    let kind = match a.mode {
        ModeArg::Full => ModeKind::Full,
        ModeArg::EarlyExit => ModeKind::EarlyExit,
        ModeArg::SelfSpeculative => ModeKind::SelfSpeculative,
    };
    let exit = a.exit_layer.unwrap_or(Setting::Default);
    let mode = Mode::resolve(kind, exit, a.draft_len.unwrap_or(Setting::Default), n)?;
    let prompt = match (&a.prompt_ids, &a.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => model.encode_prompt(text)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        mode,
        sampling: SamplingParams {
            temperature: if a.greedy { 0.0 } else { a.temperature },
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        ignore_eos: a.ignore_eos,
        stop_strings: a.stop,
        confidence_threshold: a.confidence_threshold,
    };
    let mut session = Session::new(model.clone(), 0)?;
    let stream = !a.json;
    if stream {
        if let Some(text) = &a.prompt {
            let mut out = std::io::stdout();
            let _ = write!(out, "{text}");
        }
    }
    // On one of the engine's workers: no hand-off between threads per token.
    let res = layerskip::engine::Engine::enter(&model.engine, || {
        generate(&mut session, &prompt, &opts, |_, piece| {
            if stream && !piece.is_empty() {
                let mut out = std::io::stdout();
                let _ = write!(out, "{piece}");
                let _ = out.flush();
            }
            true
        })
    })?;
    let mut out = std::io::stdout().lock();
    let s = &res.stats;
    if a.json {
        let v = json!({
            "tokens": res.tokens,
            "text": res.text,
            "stop_reason": res.stop_reason.as_str(),
            "stats": {
                "prompt_tokens": s.prompt_tokens,
                "generated_tokens": s.generated_tokens,
                "seconds": s.seconds,
                "tokens_per_second": s.tokens_per_second,
                "prompt_seconds": s.prompt_seconds,
                "prompt_tokens_per_second": s.prompt_tokens_per_second,
                "decode_tokens_per_second": s.decode_tokens_per_second,
                "drafted": s.drafted,
                "accepted": s.accepted,
                "acceptance_rate": s.acceptance_rate,
                "rounds": s.rounds,
                "draft_seconds": s.draft_seconds,
                "verify_seconds": s.verify_seconds,
                "choices": s.choices.iter().map(|c| json!({
                    "first_token": c.first_token,
                    "exit_layer": c.exit_layer,
                    "draft_len": c.draft_len,
                    "rounds": c.rounds,
                    "tokens": c.tokens,
                })).collect::<Vec<_>>(),
            }
        });
        writeln!(out, "{v}").ok();
    } else {
        writeln!(out).ok();
        out.flush().ok();
        eprintln!(
            "[{} tokens in {:.2}s: prompt {} tokens at {:.1} tokens/s, decode {:.1} tokens/s{}]",
            s.generated_tokens,
            s.seconds,
            s.prompt_tokens,
            s.prompt_tokens_per_second,
            s.decode_tokens_per_second,
            if s.drafted > 0 {
                format!(", acceptance {:.1}%", 100.0 * s.acceptance_rate)
            } else {
                String::new()
            }
        );
        if let (Mode::Auto(_), Some((e, d))) = (opts.mode, s.main_choice()) {
            eprintln!(
                "[auto: mostly E={e} d={d}; {} changes of (E, d)]",
                s.choices.len().saturating_sub(1)
            );
        }
    }
    Ok(())
}

//! The `layerskip` command line, run as a user would.

mod common;
use common::*;
use serde_json::Value;
use std::process::{Command, Output};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_layerskip"))
        .args(args)
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn ids_arg(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn generate_json_matches_reference_in_every_mode() {
    for name in FIXTURES {
        let dir = fixture_dir(name);
        let dir = dir.to_str().unwrap();
        let r = reference(name);
        let prompt = ids_arg(&prompts(name)[1]);
        let l = load(name).num_layers();
        let want = |exit: usize| {
            let case = r["greedy"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["prompt"] == 1 && c["exit"] == exit)
                .unwrap();
            ids(&case["tokens"])
        };
        let base = [
            "generate",
            "--model",
            dir,
            "--prompt-ids",
            &prompt,
            "--max-new-tokens",
            "24",
            "--ignore-eos",
            "--greedy",
            "--json",
        ];
        let v = json_of(&cli(&base));
        assert_eq!(ids(&v["tokens"]), want(l), "{name} full");
        let stats = &v["stats"];
        assert_eq!(stats["prompt_tokens"], 11);
        assert_eq!(stats["generated_tokens"], 24);
        for k in [
            "seconds",
            "tokens_per_second",
            "prompt_seconds",
            "prompt_tokens_per_second",
            "decode_tokens_per_second",
            "drafted",
            "accepted",
            "acceptance_rate",
        ] {
            assert!(stats[k].is_number(), "{k} missing");
        }
        // Prefill and decoding are timed apart, and add up to the whole.
        let secs = |k: &str| stats[k].as_f64().unwrap();
        assert!(secs("prompt_seconds") > 0.0 && secs("prompt_seconds") < secs("seconds"));
        assert!(secs("decode_tokens_per_second") > 0.0);
        let ee = json_of(&cli(&[
            &base[..],
            &["--mode", "early-exit", "--exit-layer", "2"],
        ]
        .concat()));
        assert_eq!(ids(&ee["tokens"]), want(2), "{name} early exit");
        let ss = json_of(&cli(&[
            &base[..],
            &[
                "--mode",
                "self-speculative",
                "--exit-layer",
                "1",
                "--draft-len",
                "3",
            ],
        ]
        .concat()));
        assert_eq!(ids(&ss["tokens"]), want(l), "{name} self-speculative");
        assert!(ss["stats"]["drafted"].as_u64().unwrap() > 0);
    }
}

#[test]
fn generate_streams_text_and_info_reports_the_model() {
    let dir = fixture_dir("gqa-bf16-tied-llama3-sharded");
    let dir = dir.to_str().unwrap();
    let out = cli(&[
        "generate",
        "--model",
        dir,
        "--prompt",
        "def f(x):",
        "--max-new-tokens",
        "8",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("def f(x):"));
    let v = json_of(&cli(&["info", "--model", dir, "--json"]));
    assert_eq!(v["layers"], 5);
    assert_eq!(v["kv_heads"], 2);
    assert_eq!(v["dtype"], "bf16");
    assert_eq!(v["eos_token_ids"], serde_json::json!([2, 3]));
}

#[test]
fn errors_exit_nonzero_without_a_panic() {
    let dir = fixture_dir("mha-f32");
    let dir = dir.to_str().unwrap();
    let long_prompt = ids_arg(&[5; 129]);
    let blank = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(blank.path(), "\n  \n").unwrap();
    let blank = blank.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["bench", "--model", dir, "--prompt-file", blank],
            "no prompts",
        ),
        (
            vec!["generate", "--model", "/no/such/dir", "--prompt", "x"],
            "/no/such/dir",
        ),
        (
            vec![
                "generate",
                "--model",
                dir,
                "--prompt",
                "x",
                "--mode",
                "early-exit",
                "--exit-layer",
                "9",
            ],
            "exit layer",
        ),
        (
            vec!["generate", "--model", dir, "--prompt-ids", "1,99999"],
            "99999",
        ),
        (
            vec!["generate", "--model", dir, "--prompt", "x", "--top-p", "0"],
            "top_p",
        ),
        (
            vec!["generate", "--model", dir, "--prompt-ids", &long_prompt],
            "context overflow",
        ),
        (vec!["info", "--model", "/no/such/dir"], "not found"),
    ];
    for (args, needle) in cases {
        let out = cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: {err} should mention {needle}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // Generation stops, and says so, when the context (128 here) is full.
    let v = json_of(&cli(&[
        "generate",
        "--model",
        dir,
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "500",
        "--ignore-eos",
        "--json",
    ]));
    assert_eq!(v["tokens"].as_array().unwrap().len(), 126);
    assert_eq!(v["stop_reason"], "context_full");
    let out = cli(&["generate", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn eval_reports_perplexity_and_int8_agreement() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("tools/make_fixtures.py");
    let file = file.to_str().unwrap();
    let out = cli(&[
        "eval",
        "--file",
        file,
        "--seq",
        "64",
        "--windows",
        "4",
        "--quantize",
        "int8",
        "--json",
    ]);
    let v = json_of(&out);
    assert_eq!(v["quantize"], "int8");
    assert_eq!(v["eval"]["positions"], 256);
    let ppl = v["eval"]["perplexity"].as_f64().unwrap();
    let base = v["unquantized"]["perplexity"].as_f64().unwrap();
    assert!(
        ppl > 1.0 && (ppl / base - 1.0).abs() < 0.05,
        "{ppl} vs {base}"
    );
    assert!(v["top1_agreement_with_unquantized"].as_f64().unwrap() > 0.9);
    // Too little text for one window: a clear error, exit code 1.
    let short = cli(&["eval", "--file", file, "--seq", "1000000"]);
    assert_eq!(short.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&short.stderr).contains("too short"));
}

#[test]
fn bench_json_has_rows_and_a_roofline() {
    let dir = fixture_dir("mha-f32");
    let out = cli(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "def f(x):",
        "--max-new-tokens",
        "4",
        "--exit-layers",
        "1",
        "--draft-lens",
        "2",
        "--no-auto",
        "--json",
    ]);
    let v = json_of(&out);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["lossless"] == true));
    let roof = &v["roofline"];
    let bytes = roof["weight_bytes_per_token"].as_f64().unwrap();
    let full = rows[0]["tokens_per_second"].as_f64().unwrap();
    assert!(bytes > 0.0 && roof["measured_gb_per_s"].as_f64().unwrap() > 0.0);
    assert!((roof["achieved_gb_per_s"].as_f64().unwrap() - bytes * full / 1e9).abs() < 1e-6);
}

#[test]
fn bench_confirmation_reruns_full_the_best_pair_and_auto() {
    let dir = fixture_dir("mha-f32");
    let out = cli(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "def f(x):",
        "--max-new-tokens",
        "6",
        "--exit-layers",
        "1",
        "--draft-lens",
        "2,3",
        "--confirm",
        "2",
        "--json",
    ]);
    let v = json_of(&out);
    let rows = v["rows"].as_array().unwrap();
    let phase = |p: &str| rows.iter().filter(|r| r["phase"] == p).collect::<Vec<_>>();
    let (sweep, confirm) = (phase("sweep"), phase("confirm"));
    assert_eq!(sweep.len(), 4, "full, two pairs, auto");
    let modes: Vec<_> = confirm
        .iter()
        .map(|r| r["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["full", "self-speculative", "auto"]);
    // Auto's tokens by exit: shares of every token it made, largest first;
    // only automatic rows carry them.
    let shares = sweep[3]["exit_shares"].as_array().unwrap();
    let share = |x: &Value| x["share"].as_f64().unwrap();
    assert!((shares.iter().map(share).sum::<f64>() - 1.0).abs() < 1e-9);
    assert!(shares.windows(2).all(|w| share(&w[0]) >= share(&w[1])));
    assert!(sweep[..3].iter().all(|r| r.get("exit_shares").is_none()));
    // The confirmed pair is the sweep's fastest (by its median speedup over
    // full depth, paired run by run), and every row stays lossless.
    let best = sweep
        .iter()
        .filter(|r| r["mode"] == "self-speculative")
        .max_by(|a, b| {
            let t = |r: &&&serde_json::Value| r["speedup"].as_f64().unwrap();
            t(a).total_cmp(&t(b))
        })
        .unwrap();
    // One run per prompt and repetition, paired with full depth's.
    for r in &sweep {
        let runs = r["run_tokens_per_second"].as_array().unwrap();
        assert_eq!(runs.len(), 1);
        let full = sweep[0]["run_tokens_per_second"][0].as_f64().unwrap();
        let ratio = runs[0].as_f64().unwrap() / full;
        assert!((r["speedup"].as_f64().unwrap() - ratio).abs() < 1e-9);
        assert!(r["speedup_q1"].as_f64().unwrap() <= r["speedup_q3"].as_f64().unwrap());
        // Prefill and decoding alone, next to the whole generation's rate.
        let rate = |k: &str| r[k].as_f64().unwrap();
        assert!(rate("prompt_tokens_per_second") > 0.0 && rate("decode_tokens_per_second") > 0.0);
    }
    assert_eq!(
        confirm[0]["run_tokens_per_second"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(confirm[1]["draft_len"], best["draft_len"]);
    assert!(rows.iter().all(|r| r["lossless"] == true));
    // Each confirmation row covers 2 rounds of 6 tokens.
    assert!(confirm.iter().all(|r| r["tokens"] == 12));
}

#[test]
fn costs_times_rounds_next_to_the_cost_models_predictions() {
    let dir = fixture_dir("mha-f32");
    let out = cli(&[
        "costs",
        "--model",
        dir.to_str().unwrap(),
        "--rounds",
        "1:2,1:1",
        "--repeat",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("full depth"))
        .unwrap();
    assert!(lines[at + 1].starts_with("E=1 d=2") && lines[at + 2].starts_with("E=1 d=1"));
    // measured, predicted, their ratio, and both over full depth's (1.00 for full depth).
    let cols: Vec<f64> = lines[at]
        .split_whitespace()
        .skip(2)
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(cols.len(), 5);
    assert!(cols[0] > 0.0 && cols[1] > 0.0 && cols[3] == 1.0 && cols[4] == 1.0);
    for bad in ["1:9", "0:2", "2"] {
        let out = cli(&["costs", "--model", dir.to_str().unwrap(), "--rounds", bad]);
        assert!(!out.status.success(), "--rounds {bad}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
}

#[test]
fn output_into_a_closed_pipe_ends_without_a_panic() {
    // The reader is gone before the first line is printed.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let dir = fixture_dir("mha-f32");
    let out = Command::new(env!("CARGO_BIN_EXE_layerskip"))
        .args(["info", "--model", dir.to_str().unwrap()])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE));
    }
}

#[test]
fn frequencies_writes_the_ranking_the_shortlist_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("corpus.py");
    std::fs::write(&text, "def f(x):\n    return x + x + x\n".repeat(20)).unwrap();
    let out = tmp.path().join("freq.json");
    let run = cli(&[
        "frequencies",
        "--out",
        out.to_str().unwrap(),
        text.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let f = layerskip::shortlist::Frequencies::read(&out).unwrap();
    assert!(f.total > 100 && !f.counts.is_empty());
    assert!(
        f.counts.windows(2).all(|w| w[0].1 >= w[1].1),
        "most frequent first"
    );
    // The shortlist option loads with it in generate.
    let gen = cli(&[
        "generate",
        "--prompt",
        "def f(x):",
        "--greedy",
        "--max-new-tokens",
        "8",
        "--mode",
        "self-speculative",
        "--draft-shortlist",
        "256",
    ]);
    let full = cli(&[
        "generate",
        "--prompt",
        "def f(x):",
        "--greedy",
        "--max-new-tokens",
        "8",
    ]);
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    assert_eq!(
        gen.stdout, full.stdout,
        "greedy self-speculation is lossless with a shortlist"
    );
    let bad = cli(&["frequencies", "/no/such/file.txt"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/no/such/file.txt"));
}

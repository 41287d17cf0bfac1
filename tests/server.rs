//! The example server (examples/server, C++ over the C API): built with
//! CMake, started on loopback, and driven with concurrent streaming and
//! non-streaming requests. Greedy outputs must equal the CLI's; a bounded
//! load test must finish with no errors and no lost tokens.

mod common;

use common::{lib_dir, skip, REQUIRE_TOOLS};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bundled() -> PathBuf {
    root().join("assets/layerskip-pycode-8l")
}

/// The packages the server builds against (Debian's names).
const INSTALL: &str = "apt-get install cmake pkg-config libcpp-httplib-dev nlohmann-json3-dev";

/// Builds the server, or None (a visible skip) where CMake or its libraries
/// are missing.
fn build_server(dir: &Path) -> Option<PathBuf> {
    let lib = lib_dir();
    let run = |cmd: &mut Command| match cmd.output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("no cmake: {e}")),
        Err(e) => panic!("{cmd:?}: {e}"),
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{cmd:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    };
    let configured = run(Command::new("cmake")
        .arg("-S")
        .arg(root().join("examples/server"))
        .arg("-B")
        .arg(dir)
        .arg("-DCMAKE_BUILD_TYPE=Release")
        .arg(format!("-DLAYERSKIP_LIB_DIR={}", lib.display())));
    if let Err(why) = configured {
        // A missing CMake, pkg-config or library is this machine's; any other
        // configure error is the project's.
        let missing = [
            "no cmake:",
            "Could not find a package configuration file",
            "required packages were not found",
            "Could NOT find PkgConfig",
        ];
        if let Some(line) = why.lines().find(|l| missing.iter().any(|m| l.contains(m))) {
            let reason = format!("{} ({INSTALL})", line.trim());
            skip(Some(REQUIRE_TOOLS), "example server", &reason);
            return None;
        }
        panic!("{why}");
    }
    run(Command::new("cmake").arg("--build").arg(dir).arg("-j2")).unwrap_or_else(|e| panic!("{e}"));
    Some(dir.join("layerskip-server"))
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(exe: &Path) -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(exe)
        .args([
            "--model",
            bundled().to_str().unwrap(),
            "--port",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok((200, body)) = request(port, "GET", "/health", None) {
            assert_eq!(body, r#"{"status":"ok"}"#);
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not come up");
}

/// One request's raw response. A connection reset before any byte of the
/// response is retried (twice at most): the server's HTTP library listens
/// with a backlog of 5, so under 16 concurrent new connections the kernel
/// can drop one before the server ever sees it. A reset after the response
/// began is an error.
fn exchange(port: u16, request: &str) -> std::io::Result<Vec<u8>> {
    let mut tries = 0;
    loop {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut raw = Vec::new();
        let r = s
            .write_all(request.as_bytes())
            .and_then(|_| s.read_to_end(&mut raw));
        match r {
            Err(e)
                if raw.is_empty()
                    && tries < 2
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
            {
                tries += 1;
                eprintln!("connection reset before a response: retrying ({e})");
            }
            Err(e) => return Err(e),
            Ok(_) => return Ok(raw),
        }
    }
}

/// A minimal HTTP/1.1 client: (status, body), chunked bodies decoded.
fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let raw = exchange(
        port,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn complete(port: u16, body: &Value) -> Value {
    let (status, text) = request(port, "POST", "/v1/completions", Some(body)).unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The text of a streamed completion, and its finish reason.
fn stream(port: u16, body: &Value) -> (String, String) {
    let (status, text) = request(port, "POST", "/v1/completions", Some(body)).unwrap();
    assert_eq!(status, 200, "{text}");
    let mut out = String::new();
    let mut reason = String::new();
    let mut done = false;
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        out.push_str(v["choices"][0]["text"].as_str().unwrap());
        if let Some(r) = v["choices"][0]["finish_reason"].as_str() {
            reason = r.to_string();
        }
    }
    assert!(done, "no [DONE] in {text}");
    (out, reason)
}

fn cli_text(prompt: &str, n: usize, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_layerskip"))
        .args([
            "generate",
            "--prompt",
            prompt,
            "--max-new-tokens",
            &n.to_string(),
            "--greedy",
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["text"].as_str().unwrap().to_string()
}

const PROMPTS: [&str; 4] = [
    "def fibonacci(n):",
    "import os\n\nclass Config:\n",
    "for i in range(10):",
    "    return self.",
];

#[test]
fn server_matches_the_cli_and_survives_a_load_test() {
    let build = tempfile::tempdir().unwrap();
    let Some(exe) = build_server(build.path()) else {
        return;
    };
    let server = start(&exe);
    let port = server.port;

    // Greedy outputs equal the CLI's, streamed or not, in every mode.
    let modes: [(&str, Vec<&str>, Value); 4] = [
        ("full", vec![], json!({})),
        (
            "self_speculative",
            vec![
                "--mode",
                "self-speculative",
                "--exit-layer",
                "5",
                "--draft-len",
                "2",
            ],
            json!({"exit_layer": 5, "draft_len": 2}),
        ),
        (
            "auto",
            vec![
                "--mode",
                "self-speculative",
                "--exit-layer",
                "auto",
                "--draft-len",
                "auto",
            ],
            json!({}),
        ),
        (
            "early_exit",
            vec!["--mode", "early-exit", "--exit-layer", "6"],
            json!({"exit_layer": 6}),
        ),
    ];
    let mut expected = Vec::new();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (mode, cli_args, extra) in &modes {
            for prompt in PROMPTS {
                let want = cli_text(prompt, 24, cli_args);
                let mut body = json!({"prompt": prompt, "max_tokens": 24, "mode": mode});
                for (k, v) in extra.as_object().unwrap() {
                    body[k] = v.clone();
                }
                if *mode == "full" {
                    expected.push((prompt, want.clone()));
                }
                handles.push(scope.spawn(move || {
                    let v = complete(port, &body);
                    assert_eq!(v["choices"][0]["text"], want, "{mode} {prompt:?}");
                    let mut sbody = body.clone();
                    sbody["stream"] = true.into();
                    let (text, _) = stream(port, &sbody);
                    assert_eq!(text, want, "{mode} {prompt:?} streamed");
                }));
            }
        }
        for h in handles {
            h.join().unwrap();
        }
    });

    // Bad requests are 4xx JSON errors.
    for bad in [
        json!({}),
        json!({"prompt": ""}),
        json!({"prompt": "x", "max_tokens": -1}),
        json!({"prompt": "x", "mode": "fast"}),
        json!({"prompt": "x", "top_p": 0}),
        json!({"prompt": "x", "exit_layer": 99}),
        json!({"prompt": "x", "stop": [1, 2]}),
        json!({"prompt": "x", "stream": "yes"}),
        json!({"prompt": "x", "mode": 5}),
    ] {
        let (status, text) = request(port, "POST", "/v1/completions", Some(&bad)).unwrap();
        assert_eq!(status, 400, "{bad}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"]["message"].is_string(), "{text}");
    }
    let (status, _) = request(port, "POST", "/v1/completions", None).unwrap();
    assert_eq!(status, 400);

    // A client that disconnects mid-stream frees its session.
    {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = json!({"prompt": "def f(x):", "max_tokens": 400, "stream": true}).to_string();
        write!(
            s,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, m) = request(port, "GET", "/metrics", None).unwrap();
        if m.contains("layerskip_active_sessions 0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned stream still holds a session:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Load: 200 requests, 16 at a time, under a deadline.
    let total = 200;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let (prompt, want) = &expected[k % expected.len()];
                let t = Instant::now();
                let body =
                    json!({"prompt": prompt, "max_tokens": 24, "stream": k.is_multiple_of(2)});
                let text = if k.is_multiple_of(2) {
                    stream(port, &body).0
                } else {
                    complete(port, &body)["choices"][0]["text"]
                        .as_str()
                        .unwrap()
                        .to_string()
                };
                let ok = &text == want;
                results
                    .lock()
                    .unwrap()
                    .push((ok, t.elapsed().as_secs_f64()));
            });
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let results = results.into_inner().unwrap();
    assert_eq!(results.len(), total);
    let errors = results.iter().filter(|(ok, _)| !ok).count();
    assert_eq!(
        errors, 0,
        "responses that differ from the CLI (lost or wrong tokens)"
    );
    assert!(elapsed < 120.0, "load test took {elapsed:.1}s");
    let mut per_token: Vec<f64> = results.iter().map(|(_, s)| s / 24.0).collect();
    per_token.sort_by(f64::total_cmp);
    let (_, m) = request(port, "GET", "/metrics", None).unwrap();
    println!(
        "server load: {total} requests x 24 tokens, 16 concurrent: {elapsed:.2}s, {:.0} tokens/s; \
         latency per token p50 {:.2} ms, p99 {:.2} ms\n{m}",
        (total * 24) as f64 / elapsed,
        1e3 * per_token[per_token.len() / 2],
        1e3 * per_token[per_token.len() * 99 / 100],
    );
    drop(server);
}

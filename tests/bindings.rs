//! The Go binding's own tests, and every example (C, C++, Go, Rust) printing
//! the same greedy continuation as the CLI.

mod common;
use common::{lib_dir, skip, REQUIRE_TOOLS};
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn go() -> Command {
    let mut c = Command::new("go");
    // The binding's own cgo flags point at target/release (what `cargo build`
    // fills); add the directory this test run built the library into.
    let lib = lib_dir();
    c.current_dir(root().join("examples/go"))
        .env("CGO_ENABLED", "1")
        .env(
            "CGO_LDFLAGS",
            format!("-L{0} -Wl,-rpath,{0}", lib.display()),
        );
    c
}

fn have_go() -> bool {
    let ok = Command::new("go").arg("version").output().is_ok();
    if !ok {
        skip(
            Some(REQUIRE_TOOLS),
            "Go binding",
            "no Go toolchain on this machine (apt-get install golang-go)",
        );
    }
    ok
}

#[test]
fn go_vet_and_go_test_pass() {
    if !have_go() {
        return;
    }
    output(go().args(["vet", "./..."]));
    // -race: the binding's handles are shared by goroutines (Close during Generate).
    let out = output(go().args(["test", "-race", "-count=1", "-v", "./..."]));
    println!("{out}");
    assert!(
        out.contains("--- PASS: TestGenerateModesAgree")
            && out.contains("--- PASS: TestCloseDuringGenerate")
            && !out.contains("FAIL"),
        "{out}"
    );
}

#[test]
fn examples_print_the_same_greedy_continuation_as_the_cli() {
    let model = root().join("assets/layerskip-pycode-8l");
    let model = model.to_str().unwrap();
    let prompt = "def fibonacci(n):";
    let n = "32";
    let cli = output(Command::new(env!("CARGO_BIN_EXE_layerskip")).args([
        "generate",
        "--model",
        model,
        "--prompt",
        prompt,
        "--max-new-tokens",
        n,
        "--greedy",
    ]));
    assert!(cli.len() > prompt.len() + 8, "{cli:?}");

    let tmp = tempfile::tempdir().unwrap();
    let lib = lib_dir();
    let link = [
        format!("-I{}", root().join("include").display()),
        format!("-L{}", lib.display()),
        "-llayerskip".to_string(),
        format!("-Wl,-rpath,{}", lib.display()),
    ];
    for (compiler, src, std) in [
        ("cc", "examples/c/generate.c", "-std=c99"),
        ("c++", "examples/cpp/generate.cpp", "-std=c++17"),
    ] {
        let exe = tmp.path().join(compiler);
        output(
            Command::new(compiler)
                .args([std, "-Wall", "-Wextra", "-Werror"])
                .arg(root().join(src))
                .arg("-o")
                .arg(&exe)
                .args(&link),
        );
        assert_eq!(
            output(Command::new(&exe).args([model, prompt, n])),
            cli,
            "{src}"
        );
    }
    // The Rust example is self-speculative: lossless, so the same text.
    let rust = output(Command::new(env!("CARGO")).current_dir(root()).args([
        "run",
        "--release",
        "--quiet",
        "--example",
        "generate",
        "--",
        model,
        prompt,
        n,
    ]));
    assert_eq!(rust, cli, "examples/generate.rs");
    if have_go() {
        let goout = output(go().args([
            "run",
            "./cmd/generate",
            "-model",
            model,
            "-prompt",
            prompt,
            "-max-new-tokens",
            n,
        ]));
        assert_eq!(goout, cli, "examples/go/cmd/generate");
    }
}

/// The README's C example compiles as written (strict C99) and prints the
/// CLI's greedy continuation: automatic self-speculation is lossless.
#[test]
fn readme_c_example_prints_the_greedy_continuation() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme.find("```c\n").expect("README.md has a C example") + 5;
    let len = readme[start..].find("```").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("app.c");
    std::fs::write(&src, &readme[start..start + len]).unwrap();
    let lib = lib_dir();
    let exe = tmp.path().join("app");
    output(
        Command::new("cc")
            .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"])
            .arg(&src)
            .arg(format!("-I{}", root().join("include").display()))
            .arg("-o")
            .arg(&exe)
            .arg(format!("-L{}", lib.display()))
            .arg("-llayerskip")
            .arg(format!("-Wl,-rpath,{}", lib.display())),
    );
    let text = output(Command::new(&exe).current_dir(root()));
    let cli = output(Command::new(env!("CARGO_BIN_EXE_layerskip")).args([
        "generate",
        "--prompt",
        "class Stack:",
        "--greedy",
        "--json",
    ]));
    let cli: serde_json::Value = serde_json::from_str(&cli).unwrap();
    assert!(text.len() > 16, "{text:?}");
    assert_eq!(text, cli["text"].as_str().unwrap());
}

/// examples/host_loop: a scheduler driving lsk_sessions_round, with arrivals,
/// departures, mixed modes and sampling, checks every output against the
/// same request run alone (and the greedy ones against lsk_batch).
#[test]
fn host_loop_outputs_equal_solo_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = lib_dir();
    let exe = tmp.path().join("host_loop");
    output(
        Command::new("c++")
            .args([
                "-std=c++17",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
            ])
            .arg(format!("-I{}", root().join("include").display()))
            .arg(root().join("examples/host_loop/host_loop.cpp"))
            .arg("-o")
            .arg(&exe)
            .arg(format!("-L{}", lib.display()))
            .arg("-llayerskip")
            .arg(format!("-Wl,-rpath,{}", lib.display())),
    );
    let model = root().join("assets/layerskip-pycode-8l");
    let out = output(Command::new(&exe).arg(&model).args([
        "--requests",
        "14",
        "--concurrency",
        "5",
        "--max-new-tokens",
        "24",
        "--arrive-every",
        "2",
    ]));
    println!("{out}");
    assert!(out.contains("identical to solo runs: yes"), "{out}");
    assert!(out.contains("requests 14, concurrency 5"), "{out}");
}

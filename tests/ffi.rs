//! Builds and runs the C and C++ programs in ffi_tests/ against the cdylib:
//! plain, under ASan/UBSan, and under valgrind; checks the header is current.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");
    stdout
}

/// Compile `sources` into `out` with `flags`, linking liblayerskip.
fn compile(compiler: &str, sources: &[&str], out: &Path, flags: &[&str]) {
    let lib = lib_dir();
    let mut cmd = Command::new(compiler);
    cmd.args(flags)
        .arg(format!("-I{}", root().join("include").display()))
        .args(sources.iter().map(|s| root().join("ffi_tests").join(s)))
        .arg("-o")
        .arg(out)
        .arg(format!("-L{}", lib.display()))
        .arg("-llayerskip")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lpthread");
    run_ok(&mut cmd);
}

const C_FLAGS: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"];
const CXX_FLAGS: &[&str] = &[
    "-std=c++17",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pedantic",
    "-g",
];

/// Arguments of api_test: model, corrupt copy, prompt, full and exit-1 greedy ids.
fn api_args(tmp: &Path) -> Vec<String> {
    let name = "gqa-bf16-tied-llama3-sharded";
    let r = reference(name);
    let l = load(name).num_layers() as u64;
    let greedy = |exit: u64| {
        let c = r["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["prompt"] == 1 && c["exit"] == exit)
            .unwrap();
        ids(&c["tokens"])
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let corrupt = tmp.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    for e in std::fs::read_dir(fixture_dir("mha-f32")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), corrupt.join(e.file_name())).unwrap();
    }
    let st = corrupt.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let prompt = prompts(name)[1]
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    vec![
        fixture_dir(name).display().to_string(),
        corrupt.display().to_string(),
        prompt,
        greedy(l),
        greedy(1),
    ]
}

fn assert_summary(out: &str) {
    let last = out.lines().last().unwrap_or("");
    assert!(
        last.ends_with(" 0 failed") && !last.starts_with("0 passed"),
        "{out}"
    );
}

#[test]
fn c_api_test_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("api_test");
    compile("cc", &["api_test.c"], &exe, C_FLAGS);
    let out = run_ok(Command::new(&exe).args(api_args(tmp.path())));
    assert_summary(&out);
}

#[test]
fn c_api_test_passes_under_asan_and_ubsan() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("api_test_asan");
    let flags = [
        C_FLAGS,
        &[
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=all",
        ],
    ]
    .concat();
    compile("cc", &["api_test.c"], &exe, &flags);
    // Leak checking is valgrind's job below; LSan cannot see through Rust's thread pool.
    let out = run_ok(
        Command::new(&exe)
            .args(api_args(tmp.path()))
            .env("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
            .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1"),
    );
    assert!(
        out.contains("asan: on"),
        "the sanitizer was not linked:\n{out}"
    );
    assert_summary(&out);
}

#[test]
fn c_api_test_passes_under_valgrind() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        return skip(
            Some(REQUIRE_TOOLS),
            "C API under valgrind",
            "valgrind is not installed (apt-get install valgrind)",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("api_test_vg");
    compile("cc", &["api_test.c"], &exe, C_FLAGS);
    let out = run_ok(
        Command::new("valgrind")
            .args([
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
                "--quiet",
            ])
            .arg(&exe)
            .args(api_args(tmp.path())),
    );
    assert_summary(&out);
}

#[test]
fn cpp_wrapper_test_passes_from_two_translation_units() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("cpp_test");
    compile(
        "c++",
        &["cpp_test.cpp", "cpp_second_tu.cpp"],
        &exe,
        CXX_FLAGS,
    );
    let out = run_ok(Command::new(&exe).args(api_args(tmp.path())));
    assert_summary(&out);
}

#[test]
fn cpp_wrapper_test_is_clean_under_asan_and_leak_sanitizer() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("cpp_test_asan");
    let flags = [
        CXX_FLAGS,
        &["-fsanitize=address,undefined", "-fno-omit-frame-pointer"],
    ]
    .concat();
    compile("c++", &["cpp_test.cpp", "cpp_second_tu.cpp"], &exe, &flags);
    let out = run_ok(
        Command::new(&exe)
            .args(api_args(tmp.path()))
            .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
            .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1"),
    );
    assert_summary(&out);
}

#[test]
fn header_is_up_to_date() {
    let generated =
        std::fs::read_to_string(Path::new(env!("OUT_DIR")).join("layerskip.h")).unwrap();
    let checked_in = std::fs::read_to_string(root().join("include/layerskip.h")).unwrap();
    assert!(
        generated == checked_in,
        "include/layerskip.h is stale: run `LAYERSKIP_UPDATE_HEADER=1 cargo build --release` and commit it"
    );
}

#[test]
fn header_version_macros_match_cargo_toml() {
    let h = std::fs::read_to_string(root().join("include/layerskip.h")).unwrap();
    let v: Vec<&str> = env!("CARGO_PKG_VERSION").split('.').collect();
    for (name, val) in [("MAJOR", v[0]), ("MINOR", v[1]), ("PATCH", v[2])] {
        assert!(
            h.contains(&format!("#define LSK_VERSION_{name} {val}\n")),
            "LSK_VERSION_{name}"
        );
    }
    assert!(h.contains(&format!(
        "#define LSK_VERSION_STRING \"{}\"",
        env!("CARGO_PKG_VERSION")
    )));
}

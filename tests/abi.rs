//! ABI 1.0 stays: a program built against the frozen 1.0 header
//! (`ffi_tests/abi/layerskip-1.0.h`, never edited) runs against the current
//! library, whose structs may have grown since, and the library never
//! writes past the structs that program passes.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_program_built_against_the_1_0_header_runs_against_this_library() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let abi = root.join("ffi_tests/abi");
    let lib = lib_dir();
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("old_caller");
    let cc = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .arg(abi.join("old_caller.c"))
        .arg(format!("-I{}", abi.display()))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg("-llayerskip")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .output();
    let cc = match cc {
        Ok(out) => out,
        Err(e) => {
            return skip(
                Some(REQUIRE_TOOLS),
                "ABI 1.0 caller",
                &format!("no cc: {e}"),
            )
        }
    };
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let run = Command::new(&exe)
        .arg(fixture_dir("mha-f32"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    println!("{out}");
    assert!(
        run.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.contains(", 0 failed"), "{out}");
}

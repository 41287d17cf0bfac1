//! The crate's top-level modules depend on each other one way:
//! `tools/module_deps.py` lists the edges and fails on any cycle.

use std::process::Command;

#[test]
fn modules_have_no_import_cycles() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/module_deps.py");
    let out = Command::new("python3").arg(script).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("no import cycles"), "{text}");
}

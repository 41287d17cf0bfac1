//! Generates the C header (checked in as include/layerskip.h; a test fails when
//! it is stale) and a pkg-config file for linking from a checkout.

use std::env;
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=LAYERSKIP_UPDATE_HEADER");

    let major = env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    let minor = env::var("CARGO_PKG_VERSION_MINOR").unwrap();
    let patch = env::var("CARGO_PKG_VERSION_PATCH").unwrap();
    let version = env::var("CARGO_PKG_VERSION").unwrap();
    let macros = format!(
        "\n#define LSK_VERSION_MAJOR {major}\n#define LSK_VERSION_MINOR {minor}\n#define LSK_VERSION_PATCH {patch}\n\
         #define LSK_VERSION_STRING \"{version}\"\n"
    );
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let header = out.join("layerskip.h");
    // Only src/ffi (mod.rs and the modules it declares) is parsed: the C ABI
    // lives there and nowhere else.
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .with_after_include(macros)
        .generate()
        .expect("cbindgen could not generate the header")
        .write_to_file(&header);
    if env::var_os("LAYERSKIP_UPDATE_HEADER").is_some() {
        std::fs::copy(&header, root.join("include/layerskip.h"))
            .expect("write include/layerskip.h");
    }

    // target/<profile>/ is three levels above OUT_DIR.
    if let Some(profile_dir) = out.ancestors().nth(3) {
        let pc = format!(
            "prefix={}\nincludedir=${{prefix}}/include\nlibdir={}\n\nName: layerskip\n\
             Description: LayerSkip early exit and self-speculative decoding\nVersion: {version}\n\
             Cflags: -I${{includedir}}\nLibs: -L${{libdir}} -llayerskip -Wl,-rpath,${{libdir}}\n",
            root.display(),
            profile_dir.display()
        );
        let _ = std::fs::write(profile_dir.join("layerskip.pc"), pc);
    }
}

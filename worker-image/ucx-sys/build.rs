//! Generates bindings to the system UCX (`libucx-dev`, pkg-config name `ucx`) and links
//! `libucp`/`libucs` dynamically. Fails with a message naming the package to install.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    let lib = match pkg_config::Config::new()
        .atleast_version("1.10")
        .probe("ucx")
    {
        Ok(lib) => lib,
        Err(e) => panic!(
            "ucx-sys: system UCX not found through pkg-config ({e}); install the Debian packages \
             libucx-dev and pkg-config (scripts/install-deps.sh)"
        ),
    };
    // pkg-config's `ucx` links libucp, libuct, libucs; make sure ucp and ucs are there.
    for l in ["ucp", "ucs"] {
        if !lib.libs.iter().any(|x| x == l) {
            println!("cargo:rustc-link-lib=dylib={l}");
        }
    }
    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("ucp_.*|ucs_status_string|ucs_cpu_.*")
        .allowlist_type("ucp_.*|ucs_.*|uct_.*")
        .allowlist_var("UCP_.*|UCS_.*|UCT_.*")
        // ucs_status_t is a signed 1-byte enum: constants, not a Rust enum (pitfall 1).
        .constified_enum_module("ucs_status_t")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for p in &lib.include_paths {
        builder = builder.clang_arg(format!("-I{}", p.display()));
    }
    let bindings = builder
        .generate()
        .expect("ucx-sys: bindgen failed on wrapper.h (is libclang-dev installed?)");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("ucx-sys: cannot write bindings.rs");
}

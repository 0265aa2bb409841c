//! The committed include/mlorc.h is what cbindgen generates from the sources now, and its
//! version macros agree with Cargo.toml.

use std::path::Path;

#[test]
fn committed_header_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let committed = std::fs::read(root.join("include/mlorc.h")).expect("include/mlorc.h exists");
    assert!(
        generated == committed,
        "include/mlorc.h is stale: run `make header` and commit the result"
    );
}

#[test]
fn version_macros_match_the_crate_version() {
    use mlorc::capi::library::{MLORC_VERSION_MAJOR, MLORC_VERSION_MINOR, MLORC_VERSION_PATCH};
    assert_eq!(MLORC_VERSION_MAJOR.to_string(), env!("CARGO_PKG_VERSION_MAJOR"));
    assert_eq!(MLORC_VERSION_MINOR.to_string(), env!("CARGO_PKG_VERSION_MINOR"));
    assert_eq!(MLORC_VERSION_PATCH.to_string(), env!("CARGO_PKG_VERSION_PATCH"));
    let header = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/mlorc.h")).unwrap();
    assert!(header.contains(&format!("#define MLORC_ABI_VERSION {}", mlorc::capi::types::MLORC_ABI_VERSION)));
}

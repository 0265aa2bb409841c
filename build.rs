//! Gives the shared library its soname, `libmlorc.so.<ABI version>` (MLORC_ABI_VERSION in
//! src/capi/types.rs), so that an incompatible ABI is a different file to the dynamic linker.

fn main() {
    const ABI_VERSION: u32 = 1;
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" || target_os == "android" || target_os.ends_with("bsd") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmlorc.so.{ABI_VERSION}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

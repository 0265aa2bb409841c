//! Every CUDA kernel compiles with NVRTC to a CUBIN for sm_80 and sm_90 (the GPUs this library
//! targets), on a machine without a GPU. Needs libnvrtc on the loader path (scripts/nvrtc-check.sh
//! points LD_LIBRARY_PATH at PyTorch's pip copy); without it the test says SKIP and passes,
//! unless MLORC_REQUIRE_NVRTC=1 (the script sets it) makes a missing libnvrtc a failure.

#[test]
fn kernels_compile_to_cubin_for_sm80_and_sm90() {
    if !mlorc::cuda::probe::nvrtc_present() {
        if std::env::var("MLORC_REQUIRE_NVRTC").as_deref() == Ok("1") {
            panic!("MLORC_REQUIRE_NVRTC=1 but libnvrtc was not found on the loader path");
        }
        eprintln!("SKIP: libnvrtc not found (run scripts/nvrtc-check.sh to compile the kernels)");
        return;
    }
    eprintln!("NVRTC version {:?}", mlorc::cuda::module::nvrtc_version());
    for arch in ["sm_80", "sm_90"] {
        let t = std::time::Instant::now();
        match mlorc::cuda::module::compile_cubin(arch) {
            Ok(cubin) => {
                assert!(!cubin.is_empty(), "{arch}: empty CUBIN");
                // An ELF image.
                assert_eq!(&cubin[..4], b"\x7fELF", "{arch}: not an ELF CUBIN");
                eprintln!("{arch}: CUBIN of {} bytes in {:?}", cubin.len(), t.elapsed());
            }
            Err(e) => panic!("{arch}: {e}"),
        }
    }
}

#[test]
fn a_broken_kernel_is_an_error_not_a_panic() {
    if !mlorc::cuda::probe::nvrtc_present() {
        eprintln!("SKIP: libnvrtc not found");
        return;
    }
    // An unknown architecture must come back as an error with NVRTC's words.
    let err = mlorc::cuda::module::compile_cubin("sm_1").unwrap_err();
    assert!(!err.message().is_empty());
}

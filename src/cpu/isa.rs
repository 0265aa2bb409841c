//! Which build of the CPU kernels runs. `multiversion!` compiles every kernel three times:
//! portable, AVX2 + FMA, and the same code with AVX-512 enabled, which gives the compiler 32
//! vector registers instead of 16 and runs the f32 passes of `wide` sixteen lanes at a time.
//! All three execute the same IEEE operations in the same order per element, so they give the
//! same bits. The widest build the CPU
//! supports runs unless `MLORC_CPU_KERNELS` (`portable`, `avx2`) or `limit` asks for a narrower
//! one: for comparing builds, never needed for correctness.

use std::sync::atomic::{AtomicU8, Ordering};

use once_cell::sync::Lazy;

/// A build of the kernels, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CpuKernels {
    Portable = 0,
    Avx2 = 1,
    /// AVX2 code with AVX-512VL's registers.
    Avx512Vl = 2,
}

impl CpuKernels {
    fn from_level(level: u8) -> CpuKernels {
        match level {
            0 => CpuKernels::Portable,
            1 => CpuKernels::Avx2,
            _ => CpuKernels::Avx512Vl,
        }
    }

    /// The widest build this CPU can run.
    pub fn supported() -> CpuKernels {
        *SUPPORTED
    }
}

static SUPPORTED: Lazy<CpuKernels> = Lazy::new(detect);

/// The caller's cap (`limit`); starts at the widest.
static LIMIT: AtomicU8 = AtomicU8::new(CpuKernels::Avx512Vl as u8);

/// The CPU's widest build, capped by MLORC_CPU_KERNELS (an unknown value caps nothing).
fn detect() -> CpuKernels {
    let cap = match std::env::var("MLORC_CPU_KERNELS").as_deref() {
        Ok("portable") => CpuKernels::Portable,
        Ok("avx2") => CpuKernels::Avx2,
        _ => CpuKernels::Avx512Vl,
    };
    cpu_widest().min(cap)
}

#[cfg(target_arch = "x86_64")]
fn cpu_widest() -> CpuKernels {
    if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
        CpuKernels::Portable
    } else if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
        CpuKernels::Avx512Vl
    } else {
        CpuKernels::Avx2
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_widest() -> CpuKernels {
    CpuKernels::Portable
}

/// The build that the next kernel call runs: never wider than the CPU supports.
#[inline]
pub fn active() -> CpuKernels {
    CpuKernels::supported().min(CpuKernels::from_level(LIMIT.load(Ordering::Relaxed)))
}

/// Caps the builds used from now on, process-wide; returns the build that will run.
pub fn limit(widest: CpuKernels) -> CpuKernels {
    LIMIT.store(widest as u8, Ordering::Relaxed);
    active()
}

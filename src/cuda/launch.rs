//! Launch geometry of the kernels and the structs they take by value, `#[repr(C)]` twins of
//! those in kernels.cu. The geometry constants are passed to NVRTC as -D options, and
//! mirror.rs replays the same partition on the CPU: one source of truth.

/// Rows per block of the sketch pass.
pub(crate) const SK_ROWS: u32 = 4;
/// Threads per block of the sketch pass (a multiple of 32).
pub(crate) const SK_THREADS: u32 = 256;
/// Consecutive columns of one sketch thread (vector loads; a row's U·S read once for all).
pub(crate) const SK_VEC: u32 = 4;
/// Threads across the columns of a projection block (one warp wide).
pub(crate) const PJ_COLS: u32 = 32;
/// Consecutive columns of one projection thread (vector loads; a row's factors read once for
/// all of them).
pub(crate) const PJ_VEC: u32 = 4;
/// Row slabs per block of the projection pass.
pub(crate) const PJ_SLABS: u32 = 8;
/// Threads of the one-block-per-moment factorization kernels.
pub(crate) const ORTH_THREADS: u32 = 1024;
/// Most dynamic shared memory mlorc_orthonormalize takes for its f64 columns (k·len·8 bytes);
/// larger problems keep them in the workspace.
pub(crate) const ORTH_SHARED_MAX: u32 = 160 * 1024;
/// Largest sketch width whose Gram matrix and rotations (2·k² f64) mlorc_gram_eigen keeps in
/// shared memory.
pub(crate) const GRAM_SHARED_K: u32 = 32;
/// Largest sketch width whose Gram matrix mlorc_gram_eigen sums in one sweep (k(k+1)/2 sums
/// per thread in registers).
pub(crate) const GRAM_FUSED_K: u32 = 4;
/// Blocks and threads of the negative-fill sweep.
pub(crate) const NEG_BLOCKS: u32 = 1024;
pub(crate) const NEG_THREADS: u32 = 256;
/// Threads per block of the elementwise kernels.
pub(crate) const ELEMENTWISE_THREADS: u32 = 256;
/// Sketch widths with a compiled kernel; wider sketches run in chunks of the largest.
pub(crate) const SKETCH_CHUNKS: [u32; 4] = [1, 2, 4, 8];

/// NVRTC -D options that fix the kernels' geometry.
pub fn defines() -> Vec<String> {
    vec![
        format!("-DSK_ROWS={SK_ROWS}"),
        format!("-DSK_THREADS={SK_THREADS}"),
        format!("-DSK_VEC={SK_VEC}"),
        format!("-DPJ_COLS={PJ_COLS}"),
        format!("-DPJ_VEC={PJ_VEC}"),
        format!("-DPJ_SLABS={PJ_SLABS}"),
        format!("-DORTH_THREADS={ORTH_THREADS}"),
        format!("-DGRAM_SHARED_K={GRAM_SHARED_K}"),
        format!("-DGRAM_FUSED_K={GRAM_FUSED_K}"),
    ]
}

/// Row slabs of the projection across the grid: enough threads to fill a large GPU (~2^17),
/// at least one row per slab, at most 16. Depends on (m, n) only, so results do not depend on
/// the device.
pub fn grid_slabs(m: usize, n: usize) -> u32 {
    let threads_across = n.div_ceil(PJ_VEC as usize).div_ceil(PJ_COLS as usize) * PJ_COLS as usize;
    let want = (1usize << 17).div_ceil(threads_across * PJ_SLABS as usize);
    let most = (m / PJ_SLABS as usize).max(1);
    want.clamp(1, 16).min(most) as u32
}

/// Dynamic shared memory a kernel may take without opting in (the sketch keeps SK_ROWS rows of
/// U·S per moment there, the negative sweep one row).
pub(crate) const DEFAULT_SHARED_BYTES: usize = 48 * 1024;

/// The largest rank the kernels' shared memory holds for a state of `moments` moments.
pub const fn max_rank(moments: usize) -> usize {
    let moments = if moments == 0 { 1 } else { moments };
    DEFAULT_SHARED_BYTES / (4 * SK_ROWS as usize * moments)
}

// Every rank a config may ask for (rank + oversampling ≤ MAX_SKETCH_WIDTH) fits: no launch can
// fail for want of shared memory half-way through a step.
const _: () = assert!(crate::config::MAX_SKETCH_WIDTH as usize <= max_rank(2));

/// The chunk width used for sketch columns l0 .. k: the smallest compiled width covering the
/// rest, or the largest.
pub fn chunk_width(remaining: u32) -> u32 {
    SKETCH_CHUNKS.iter().copied().find(|&w| w >= remaining).unwrap_or(SKETCH_CHUNKS[SKETCH_CHUNKS.len() - 1])
}

/// Bytes of the device control block (`struct Ctrl`).
pub(crate) const CTRL_BYTES: usize = 88;
/// Offset of `Ctrl.step` (u64) and `Ctrl.error` (u32).
pub(crate) const CTRL_STEP_OFFSET: usize = 0;
pub(crate) const CTRL_ERROR_OFFSET: usize = 28;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Hyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub bias_correction: u32,
    pub stochastic: u32,
    pub adamw: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Ptrs {
    pub u: [u64; 2],
    pub s: [u64; 2],
    pub v: [u64; 2],
    pub vt: [u64; 2],
    pub xt: [u64; 2],
    pub yt: [u64; 2],
    pub bt: [u64; 2],
    pub part: u64,
    pub dwork: u64,
    pub small: u64,
    pub negp: u64,
    pub m: u32,
    pub n: u32,
    pub r: u32,
    pub k: u32,
    pub moments: u32,
    pub grid_slabs: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Io {
    pub param: u64,
    pub grad: u64,
    pub param_dtype: u32,
    pub grad_dtype: u32,
}

/// Elements of f32 / f64 workspace a FACTORED state needs, per `Ptrs` field.
#[derive(Debug, Clone, Copy)]
pub struct WorkspaceSizes {
    pub vt: usize,
    pub xt: usize,
    pub yt: usize,
    pub bt: usize,
    pub part: usize,
    pub dwork: usize,
    pub small: usize,
    pub negp: usize,
}

impl WorkspaceSizes {
    /// O((m + n)·k) in all; nothing m×n.
    pub fn new(m: usize, n: usize, r: usize, k: usize, moments: usize) -> WorkspaceSizes {
        WorkspaceSizes {
            vt: r * n,
            xt: k * n,
            yt: k * m,
            bt: k * n,
            part: grid_slabs(m, n) as usize * moments * k * n,
            dwork: moments * k * m.max(n),
            small: moments * (2 * k * k + k),
            negp: 2 * NEG_BLOCKS as usize,
        }
    }

    /// Bytes in all (f32 fields ×4 per moment, f64 fields ×8).
    pub fn bytes(&self, moments: usize) -> usize {
        4 * moments * (self.vt + self.xt + self.yt + self.bt) + 4 * self.part + 8 * (self.dwork + self.small + self.negp)
    }
}

/// Names of the kernels (extern "C" in kernels.cu).
pub(crate) const KERNEL_NAMES: &[&str] = &[
    "mlorc_prepare",
    "mlorc_finish",
    "mlorc_dense",
    "mlorc_transpose_v",
    "mlorc_negative_partial",
    "mlorc_negative_final",
    "mlorc_omega",
    "mlorc_sketch_k1",
    "mlorc_sketch_k2",
    "mlorc_sketch_k4",
    "mlorc_sketch_k8",
    "mlorc_project_k1",
    "mlorc_project_k2",
    "mlorc_project_k4",
    "mlorc_project_k8",
    "mlorc_project_r1",
    "mlorc_project_r2",
    "mlorc_project_r4",
    "mlorc_project_r8",
    "mlorc_project_reduce",
    "mlorc_orthonormalize",
    "mlorc_gram_eigen",
    "mlorc_compose",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_kernels_cu() {
        assert_eq!(std::mem::size_of::<Hyper>(), 64);
        assert_eq!(std::mem::size_of::<Ptrs>(), 7 * 16 + 4 * 8 + 6 * 4);
        assert_eq!(std::mem::size_of::<Io>(), 24);
        let src = super::super::KERNELS_SOURCE;
        for name in KERNEL_NAMES {
            // mlorc_sketch_k4 comes from SKETCH_KERNEL(4), mlorc_project_k4 from PROJECT_KERNEL(4),
            // mlorc_project_r4 from PROJECT_RANK_KERNEL(4).
            let generated = [("_k", "KERNEL"), ("_r", "RANK_KERNEL")].iter().find_map(|(suffix, kind)| {
                let (stem, width) = name.rsplit_once(suffix)?;
                let mac = stem.trim_start_matches("mlorc_").to_uppercase();
                width.parse::<u32>().ok().map(|w| format!("{mac}_{kind}({w})"))
            });
            let found = src.contains(&format!(" {name}(")) || generated.is_some_and(|g| src.contains(&g));
            assert!(found, "{name} missing from kernels.cu");
        }
    }

    #[test]
    fn workspace_is_linear_in_rows_plus_cols() {
        let (m, n, r, k) = (4096usize, 11008usize, 4usize, 4usize);
        let w = WorkspaceSizes::new(m, n, r, k, 2);
        // A small multiple of (m + n)·k floats, nowhere near m·n.
        assert!(w.bytes(2) < 64 * (m + n) * k * 4, "{} bytes", w.bytes(2));
        assert!(w.bytes(2) < m * n / 4);
        assert!((1..=16).contains(&grid_slabs(m, n)));
        assert_eq!(grid_slabs(3, 5), 1);
        assert_eq!(chunk_width(3), 4);
        // The sketch's U·S rows of the largest rank fill the shared memory exactly.
        assert_eq!(max_rank(2) * SK_ROWS as usize * 2 * 4, DEFAULT_SHARED_BYTES);
        assert!(max_rank(1) >= 1024);
        assert_eq!(chunk_width(20), 8);
    }
}

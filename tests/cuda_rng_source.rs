//! The CUDA kernels draw Ω with their own copy of Box–Muller (src/cuda/kernels.cu); both
//! backends promise the same bits. No GPU here, so that copy is compiled for the host with the
//! C++ compiler (contraction off, as NVRTC's --fmad=false) and compared with src/rng.rs on
//! random words and the edge cases. Without a C++ compiler the test says SKIP and passes,
//! unless MLORC_REQUIRE_CXX=1.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = include_str!("../src/cuda/kernels.cu");
const FIRST_LINE: &str = "// Box–Muller exactly as src/rng.rs";
const LAST_LINE: &str = "    *z1 = radius * s;\n}";

/// Stand-ins for the CUDA qualifiers and bit casts the copied functions use.
const HOST_PRELUDE: &str = r#"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
typedef unsigned long long u64;
typedef unsigned int u32;
#define __device__
#define __forceinline__ inline
static long long __double_as_longlong(double x) { long long r; std::memcpy(&r, &x, 8); return r; }
static double __longlong_as_double(long long x) { double r; std::memcpy(&r, &x, 8); return r; }
"#;

/// Reads pairs of words from the arguments' file and prints both normals' bits.
const HOST_MAIN: &str = r#"
int main(int argc, char** argv) {
    FILE* in = std::fopen(argv[1], "r");
    if (!in) return 2;
    u32 a, b;
    while (std::fscanf(in, "%u %u", &a, &b) == 2) {
        double z0, z1;
        box_muller(a, b, &z0, &z1);
        std::printf("%016llx %016llx\n", (unsigned long long)__double_as_longlong(z0),
                    (unsigned long long)__double_as_longlong(z1));
    }
    return 0;
}
"#;

fn words() -> Vec<(u32, u32)> {
    let mut pairs: Vec<(u32, u32)> = (0..20_000u32)
        .map(|i| {
            let [a, b, _, _] = mlorc::rng::philox4x32_10([i, 3, 0, 0], [5, 6]);
            (a, b)
        })
        .collect();
    for octant in 0..8u32 {
        let edge = octant << 29;
        for b in [edge, edge.wrapping_add(1), edge.wrapping_sub(1)] {
            pairs.extend([(0, b), (u32::MAX, b), (1 << 31, b), (0xB504_F333, b)]);
        }
    }
    pairs
}

#[test]
fn cuda_box_muller_source_equals_the_cpu_one() {
    let start = SOURCE.find(FIRST_LINE).expect("kernels.cu: Box–Muller section not found");
    let end = SOURCE[start..].find(LAST_LINE).expect("kernels.cu: end of box_muller not found") + start + LAST_LINE.len();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cuda_rng_source");
    std::fs::create_dir_all(&dir).unwrap();
    let (source, binary, input) = (dir.join("box_muller.cpp"), dir.join("box_muller"), dir.join("words.txt"));
    std::fs::write(&source, format!("{HOST_PRELUDE}\n{}\n{HOST_MAIN}", &SOURCE[start..end])).unwrap();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let compiled = Command::new(&cxx).args(["-O2", "-ffp-contract=off", "-o"]).arg(&binary).arg(&source).output();
    match compiled {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("{cxx} could not compile the Box–Muller of kernels.cu:\n{}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => {
            if std::env::var("MLORC_REQUIRE_CXX").as_deref() == Ok("1") {
                panic!("MLORC_REQUIRE_CXX=1 but {cxx} cannot run: {e}");
            }
            eprintln!("SKIP: no C++ compiler ({cxx}: {e})");
            return;
        }
    }
    let pairs = words();
    std::fs::write(&input, pairs.iter().map(|(a, b)| format!("{a} {b}\n")).collect::<String>()).unwrap();
    let out = Command::new(&binary).arg(&input).output().unwrap();
    assert!(out.status.success(), "the host build of kernels.cu's Box–Muller failed");
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), pairs.len());
    for (&(a, b), line) in pairs.iter().zip(&lines) {
        let (z0, z1) = mlorc::rng::box_muller(a, b);
        let cpu = format!("{:016x} {:016x}", z0.to_bits(), z1.to_bits());
        assert_eq!(*line, cpu, "words ({a:#x}, {b:#x}): CUDA source vs src/rng.rs");
    }
}

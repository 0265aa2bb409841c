#!/usr/bin/env bash
# Installs the release build of libmlorc into a prefix:
#   lib/libmlorc.so.<ABI>  lib/libmlorc.so -> libmlorc.so.<ABI>  lib/libmlorc.a
#   include/mlorc.h
#   lib/cmake/MLorc/MLorcConfig.cmake  lib/cmake/MLorc/MLorcConfigVersion.cmake
#   lib/pkgconfig/mlorc.pc
# Usage: scripts/install.sh PREFIX   (run `cargo build --release` first; `make install` does)
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 PREFIX" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$1"
prefix="$(cd "$1" && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}/release"

# Version from Cargo.toml ([package] version), ABI version from the header.
version="$(sed -n '/^\[package\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' "$root/Cargo.toml" | head -n1)"
abi="$(sed -n 's/^#define MLORC_ABI_VERSION \([0-9][0-9]*\).*/\1/p' "$root/include/mlorc.h")"
if [ -z "$version" ] || [ -z "$abi" ]; then
    echo "install.sh: cannot read the version from Cargo.toml or the ABI version from include/mlorc.h" >&2
    exit 1
fi
soname="libmlorc.so.$abi"

for f in libmlorc.so libmlorc.a; do
    if [ ! -f "$target_dir/$f" ]; then
        echo "install.sh: $target_dir/$f is missing: run 'cargo build --release' first" >&2
        exit 1
    fi
done

# The soname baked in by build.rs must carry the header's ABI version.
if command -v readelf >/dev/null 2>&1; then
    found="$(readelf -d "$target_dir/libmlorc.so" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')"
    if [ "$found" != "$soname" ]; then
        echo "install.sh: libmlorc.so has soname '$found', expected '$soname' (build.rs vs MLORC_ABI_VERSION)" >&2
        exit 1
    fi
fi

install -d "$prefix/lib" "$prefix/include" "$prefix/lib/cmake/MLorc" "$prefix/lib/pkgconfig"
install -m 0755 "$target_dir/libmlorc.so" "$prefix/lib/$soname"
ln -sfn "$soname" "$prefix/lib/libmlorc.so"
install -m 0644 "$target_dir/libmlorc.a" "$prefix/lib/libmlorc.a"
install -m 0644 "$root/include/mlorc.h" "$prefix/include/mlorc.h"

subst() {
    sed -e "s|@MLORC_VERSION@|$version|g" \
        -e "s|@MLORC_SONAME@|$soname|g" \
        "$1" > "$2"
    chmod 0644 "$2"
}
subst "$root/cmake/MLorcConfig.cmake.in" "$prefix/lib/cmake/MLorc/MLorcConfig.cmake"
subst "$root/cmake/MLorcConfigVersion.cmake.in" "$prefix/lib/cmake/MLorc/MLorcConfigVersion.cmake"
subst "$root/cmake/mlorc.pc.in" "$prefix/lib/pkgconfig/mlorc.pc"

echo "installed libmlorc $version (soname $soname) into $prefix"

#!/bin/sh
# Builds test_header.c the way a Makefile user would, with the installed mlorc.pc, and runs it.
# usage: pkgconfig_check.sh PKG_CONFIG CC PREFIX SOURCE WORKDIR
set -eu
pkg_config=$1 cc=$2 prefix=$3 source=$4 work=$5
mkdir -p "$work"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
flags=$("$pkg_config" --cflags --libs mlorc)
echo "pkg-config --cflags --libs mlorc: $flags"
echo "pkg-config --modversion mlorc: $("$pkg_config" --modversion mlorc)"
# shellcheck disable=SC2086 # the flags are a word list
"$cc" -std=c11 -Wall -Wextra -Wpedantic -Werror -o "$work/test_header_pkgconfig" "$source" $flags
# Static link through Libs.private as well.
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -Wpedantic -Werror -o "$work/test_header_pkgconfig_static" "$source" \
    $("$pkg_config" --cflags mlorc) "$prefix/lib/libmlorc.a" $("$pkg_config" --libs-only-l --static mlorc | sed 's/-lmlorc//')
LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$work/test_header_pkgconfig"
"$work/test_header_pkgconfig_static"

#!/usr/bin/env bash
# Regenerates the benchmark's template objects objects/<arch>/tpl_*.o from src/ with clang-22.
#
#   benchmarks/build_objects.sh          rebuild objects/ in place
#   benchmarks/build_objects.sh --check  rebuild into a scratch folder and compare with objects/
#
# Same flags as tests/fixtures/build_objects.sh (deterministic: no -g, clang writes no
# timestamps into MH_OBJECTs), plus -DPREFIX=<token>: the 7-character token that
# make_corpus.py rewrites in each copy's string table (see src/bench.h).
set -euo pipefail
cd "$(dirname "$0")"

CLANG=${CLANG:-clang-22}
EXPECTED_VERSION="Debian clang version 22.1.8 (1~deb12u1)"
ARCHS=(arm64 arm64e x86_64)
# template name : its own symbol prefix (make_corpus.py's TEMPLATES must agree)
TEMPLATES=(code:Zc0000_ data:Zd0000_ client:Ze0000_)

check=0
if [ "${1:-}" = "--check" ]; then
    check=1
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--check]" >&2
    exit 2
fi

if ! command -v "$CLANG" >/dev/null 2>&1; then
    echo "$CLANG not found: apt-get install clang-22 (Debian bookworm-security)" >&2
    exit 1
fi
version=$("$CLANG" --version | head -n 1)
if [ "$version" != "$EXPECTED_VERSION" ]; then
    echo "warning: $version is not $EXPECTED_VERSION; objects may differ from the committed ones" >&2
fi

COMMON=(-O2 -c -Wall -Wextra -Werror -fno-stack-protector -fno-common -fno-builtin
        "-ffile-prefix-map=$PWD=." -Isrc)

OBJ=objects
out=$OBJ
if [ $check = 1 ]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi

for arch in "${ARCHS[@]}"; do
    mkdir -p "$out/$arch"
    for t in "${TEMPLATES[@]}"; do
        name=${t%%:*}
        prefix=${t#*:}
        "$CLANG" -target "$arch-apple-macos13" "${COMMON[@]}" "-DPREFIX=$prefix" \
            "src/tpl_$name.c" -o "$out/$arch/tpl_$name.o"
    done
done

if [ $check = 1 ]; then
    if diff -r "$out" "$OBJ" >/dev/null; then
        echo "objects/ is up to date"
    else
        diff -rq "$out" "$OBJ" || true
        echo "objects/ differs from a fresh build" >&2
        exit 1
    fi
else
    echo "built: $(find "$OBJ" -name '*.o' | wc -l) objects"
fi

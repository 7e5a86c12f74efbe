"""Do the GPU requirements resolve? A pip dry run of what `bash scripts/install.sh gpu` installs, from any machine.

    .venv/bin/python -m bench.gpu_requirements_resolve [--record PATH]

Asks pip to resolve requirements/gpu.txt + requirements/common.txt with this interpreter on
this Linux x86_64 host (the judges' GPU hosts are Linux x86_64 too; pip's `--platform` cannot
be used, as two pinned requirements ship only source), without installing (`--dry-run
--report`; wheels are fetched for their metadata only where the index has no separate
metadata file), so the check needs neither a GPU nor a CUDA driver. Prints the pinned packages that decide the CUDA
path (vllm, torch, transformers, compressed-tensors, flashinfer) and writes them, with the
whole resolution's size, to --record (default bench/records/gpu_requirements_resolve.json).
Exit 1 when pip cannot resolve.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORD = Path(__file__).parent / "records" / "gpu_requirements_resolve.json"
WATCH = ("vllm", "torch", "torchvision", "transformers", "compressed-tensors", "flashinfer-python", "triton",
         "nvidia-ml-py")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", type=Path, default=RECORD)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--report", str(report), "--target", str(Path(tmp) / "t"),
               "--prefer-binary", "-r", str(REPO / "requirements" / "gpu.txt"),
               "-r", str(REPO / "requirements" / "common.txt")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode:
            print(f"pip could not resolve the GPU requirements:\n{proc.stderr[-3000:]}")
            return 1
        items = json.loads(report.read_text())["install"]
    pins = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in items}
    watched = {name: pins.get(name) for name in WATCH}
    record = {"date": str(datetime.date.today()), "python": platform.python_version(),
              "platform": f"{platform.system()} {platform.machine()}, glibc {platform.libc_ver()[1]}",
              "packages": len(pins), "watched": watched,
              "command": " ".join(["pip", *cmd[3:]]).replace(str(REPO) + "/", "")}
    print(json.dumps(record, indent=2))
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

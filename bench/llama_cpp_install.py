"""What building llama.cpp adds to `bash scripts/install.sh`: a cold build and a cached rerun.

    .venv/bin/python -m bench.llama_cpp_install            # cpu flavour, writes bench/records/llama_cpp_install.txt
    .venv/bin/python -m bench.llama_cpp_install --flavour gpu --record /tmp/gpu.txt

Runs scripts/build_llama_cpp.sh twice into a fresh temporary cache (HARNESS_LLAMA_CPP_CACHE) and
link (HARNESS_LLAMA_CPP_LINK), so the project's own build and its <venv>/llama.cpp link are left
alone. The cold run is what a fresh machine pays: source download from PyPI, configure, compile and
install of the two programs; the second run is what every later install.sh pays. cpu_s is the
children's user + system CPU time, which says what the build costs on a machine with more cores.
The venv's cmake and ninja wheels are installed by install.sh before this and are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build_llama_cpp.sh"


def run_build(flavour: str, cache: Path, link: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of the build script; raises if it fails."""
    env = {**os.environ, "HARNESS_LLAMA_CPP_CACHE": str(cache), "HARNESS_LLAMA_CPP_LINK": str(link)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["bash", str(SCRIPT), flavour], env=env, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(flavour: str) -> list[str]:
    """Cold and cached runs in a temporary cache; the record's lines."""
    with tempfile.TemporaryDirectory(prefix="llama-cpp-bench-") as tmp:
        cache, link = Path(tmp) / "cache", Path(tmp) / "llama.cpp"
        load_before = os.getloadavg()[0]
        cold_s, cold_cpu_s = run_build(flavour, cache, link)
        load_after = os.getloadavg()[0]
        cached_s, _ = run_build(flavour, cache, link)
        home = link.resolve()
        info = json.loads((home / "BUILD.json").read_text())
        sizes = {p.name: p.stat().st_size for p in sorted((home / "bin").iterdir())}
        src_mb = sum(p.stat().st_size for p in (home / "src").rglob("*") if p.is_file()) / 1e6
        return [
            f"# .venv/bin/python -m bench.llama_cpp_install --flavour {flavour}",
            f"# {date.today()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
            f"-march=native is {info['march_native']}; 1-min load average {load_before:.1f} before the cold build, "
            f"{load_after:.1f} after (other work on the machine slows it)",
            f"source: {info['source']}, sha256 {info['sha256']}",
            f"toolchain: {info['toolchain']}",
            f"cold install: {cold_s:.0f} s wall, {cold_cpu_s:.0f} s CPU "
            f"(download {info['download_seconds']} s, configure + compile {info['build_seconds']} s)",
            f"cached install: {cached_s:.2f} s wall",
            *(f"bin/{name}: {size / 1e6:.1f} MB" for name, size in sizes.items()),
            f"src/ (converter, conversion/, gguf-py/): {src_mb:.1f} MB",
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--record", type=Path, default=REPO / "bench" / "records" / "llama_cpp_install.txt")
    args = parser.parse_args()
    lines = measure(args.flavour)
    print("\n".join(lines))
    args.record.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Records the keys `vllm serve --config` accepts in the pinned GPU vLLM, read from its wheel without installing it.

    .venv/bin/python -m bench.vllm_gpu_args [--wheel PATH] [--record PATH]

The CUDA build of vLLM cannot share the CPU environment (FACTS, "vLLM on a CPU-only machine"),
so its parser cannot be built here. This downloads the wheel of the version requirements/gpu.txt
pins (`pip download --no-deps`) and reads, without importing anything, the source `vllm serve`
builds its parser from: the module `vllm/entrypoints/cli/serve.py` takes `make_arg_parser` from
(the options added there), and each `X.add_cli_args(parser)` it calls: the option literals of
`add_cli_args` in X and its bases, plus one option per dataclass field when options are
computed from the fields (`FrontendArgs`: `f"--{key.replace('_', '-')}"` over `get_kwargs(cls)`).
vLLM turns a config-file line `key: value` into `--key value` (`key: false` into `--no-key`),
so a key is an option's long name without the dashes. tests/test_submit_keys.py checks this
reading against the live parser of the installed CPU vLLM. Writes
bench/records/vllm_<version>_serve_keys.json: version, wheel name and sha256, files read, the
wheel's pins of compressed-tensors, transformers and torch (its METADATA), and the keys;
`python -m harness.submit` checks every vllm_config.yaml it writes against those keys.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from harness.submit.target import GPU_PINS, keys_record, pinned_vllm

SERVE_MODULE = "vllm.entrypoints.cli.serve"
# Libraries whose pins in the wheel's metadata the submission checks name (they parse what vLLM parses).
PINNED_LIBRARIES = ("compressed-tensors", "transformers", "torch")
Reader = Callable[[str], str]  # module path ("vllm/x/y.py") -> its source text


def serve_keys(read: Reader) -> tuple[list[str], list[str]]:
    """The sorted config-file keys of `vllm serve`, and the module files read to find them."""
    source = _Source(read)
    module = source.imported_from(SERVE_MODULE, "make_arg_parser")
    builder = _function(source.tree(module), "make_arg_parser")
    keys = set(_literal_options(builder))
    for name in _add_cli_args_receivers(builder):
        keys |= source.class_options(name, module)
    return sorted(keys), sorted(source.read_files)


class _Source:
    """Parsed modules of one vLLM source tree, and the class and import lookups over them."""

    def __init__(self, read: Reader) -> None:
        self._read = read
        self._trees: dict[str, ast.Module] = {}
        self.read_files: set[str] = set()

    def tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            for path in (module.replace(".", "/") + ".py", module.replace(".", "/") + "/__init__.py"):
                try:
                    text = self._read(path)
                except (KeyError, FileNotFoundError):
                    continue
                self._trees[module] = ast.parse(text)
                self.read_files.add(path)
                break
            else:
                raise LookupError(f"module {module} is not in this vLLM source")
        return self._trees[module]

    def imported_from(self, module: str, name: str) -> str:
        """The module `module` imports `name` from (`from X import name`)."""
        for node in ast.walk(self.tree(module)):
            if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
                return _absolute(module, node)
        raise LookupError(f"{module} does not import {name}")

    def find_class(self, name: str, module: str) -> tuple[ast.ClassDef, str] | None:
        """The class `name` as seen from `module` (defined there or imported), None when outside vLLM."""
        tree = self.tree(module)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return node, module
        try:
            origin = self.imported_from(module, name)
        except LookupError:
            return None
        return self.find_class(name, origin) if origin.startswith("vllm") else None

    def lineage(self, name: str, module: str) -> list[ast.ClassDef]:
        """The class and its bases defined in vLLM, nearest first."""
        found = self.find_class(name, module)
        if found is None:
            return []
        cls, home = found
        bases = [b.id for b in cls.bases if isinstance(b, ast.Name)]
        return [cls] + [c for base in bases for c in self.lineage(base, home)]

    def class_options(self, name: str, module: str) -> set[str]:
        """Options `name.add_cli_args` registers: literals in the lineage, plus fields where computed."""
        lineage = self.lineage(name, module)
        methods = [m for cls in lineage if (m := _method(cls, "add_cli_args")) is not None]
        options = {o for m in methods for o in _literal_options(m)}
        if any(_computes_options(m) for m in methods):
            options |= {f.replace("_", "-") for cls in lineage for f in _fields(cls)}
        return options


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return str(node.module)
    parts = module.split(".")[: -node.level]
    return ".".join(parts + ([node.module] if node.module else []))


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise LookupError(f"no function {name}")


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    return next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _add_argument_calls(fn: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "add_argument"]


def _literal_options(fn: ast.AST) -> list[str]:
    """Long option names written out in `add_argument("--name", ...)` calls, without the dashes."""
    return [a.value[2:] for call in _add_argument_calls(fn) for a in call.args
            if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("--")]


def _computes_options(fn: ast.AST) -> bool:
    """An option name built at run time (an f-string over the class's fields)."""
    return any(isinstance(a, ast.JoinedStr) for call in _add_argument_calls(fn) for a in call.args)


def _add_cli_args_receivers(fn: ast.AST) -> list[str]:
    """Names X of the `X.add_cli_args(parser)` calls, in order."""
    return [n.func.value.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "add_cli_args" and isinstance(n.func.value, ast.Name)]


def _fields(cls: ast.ClassDef) -> list[str]:
    """Dataclass fields: annotated names of the class body, ClassVar and InitVar left out."""
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            and not any(t in ast.unparse(n.annotation) for t in ("ClassVar", "InitVar"))]


def wheel_reader(wheel: Path) -> Reader:
    archive = zipfile.ZipFile(wheel)
    return lambda path: archive.read(path).decode("utf-8")


def folder_reader(root: Path) -> Reader:
    """Reads a source tree whose top folder is `vllm/` (e.g. site-packages)."""
    return lambda path: (root / path).read_text(encoding="utf-8")


def download(version: str, dest: Path) -> Path:
    """The wheel of vllm==version for this machine's platform, fetched from PyPI without its dependencies."""
    subprocess.run([sys.executable, "-m", "pip", "download", f"vllm=={version}", "--no-deps", "--only-binary=:all:",
                    "--dest", str(dest), "--quiet"], check=True)
    wheels = sorted(dest.glob(f"vllm-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip downloaded no vllm-{version} wheel into {dest}")
    return wheels[0]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def requires(wheel: Path, version: str) -> dict[str, str]:
    """The wheel's own pins (Requires-Dist without extras) of PINNED_LIBRARIES, e.g. {"torch": "==2.14.0"}."""
    metadata = wheel_reader(wheel)(f"vllm-{version}.dist-info/METADATA")
    pins = {}
    for line in metadata.splitlines():
        spec = line.removeprefix("Requires-Dist: ")
        if spec == line or ";" in spec:
            continue
        name = re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0]
        if name in PINNED_LIBRARIES:
            pins[name] = spec[len(name):].strip()
    return pins


def record(wheel: Path, version: str) -> dict:
    keys, files = serve_keys(wheel_reader(wheel))
    return {"vllm_version": version, "wheel": wheel.name, "wheel_sha256": sha256(wheel),
            "how": "python -m bench.vllm_gpu_args (static reading of the wheel's source, see its docstring)",
            "read_from": files, "requires": requires(wheel, version), "keys": keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vllm_gpu_args", description=__doc__.split("\n")[0])
    parser.add_argument("--wheel", type=Path, help="a vllm wheel already downloaded (default: pip download)")
    parser.add_argument("--record", type=Path,
                        help="output JSON (default bench/records/vllm_<version>_serve_keys.json)")
    args = parser.parse_args(argv)
    version = pinned_vllm()
    with tempfile.TemporaryDirectory(prefix="vllm-wheel-") as tmp:
        wheel = args.wheel or download(version, Path(tmp))
        if f"vllm-{version}-" not in wheel.name:
            raise SystemExit(f"{wheel.name} is not vllm {version}, the version {GPU_PINS.name} pins")
        data = record(wheel, version)
    out = args.record or keys_record(version)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"vllm {version} ({data['wheel']}, sha256 {data['wheel_sha256'][:16]}...): {len(data['keys'])} serve "
          f"keys from {', '.join(data['read_from'])} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

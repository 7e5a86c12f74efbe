"""export_gguf: a dense checkpoint folder in, the folder llama.cpp's llama-server serves out.

The folder follows the GGUF variant contract (docs/INTERFACES.md): one text-model GGUF named after
its type (``model-Q4_K_M.gguf``), the vision tower and projector beside it
(``mmproj-model-F16.gguf``), and recipe.json; that is what ``llama-server -hf <repo>`` resolves on
a hub repository. The work is done by llama.cpp's own converter and llama-quantize from the
project's build (harness.serve.llama_cpp_home), so the files come from the same source tree as
the server that reads them; this module only runs them, checks the result and records it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from compress.configs import config_to_dict
from compress.folders import check_paths, fresh_partial
from compress.gguf_config import GgufConfig
from compress.lineage import write_recipe
from compress.llama_cpp_home import binary, build_info, converter, gguf_py

# Matrix types each text type promises; llama-quantize's Q4_K_M mixes Q6_K into half of the
# attn_v and ffn_down matrices and the output, by design. Anything else in a file is recorded by name.
PROMISED = {"F16": {"F16"}, "BF16": {"BF16"}, "Q8_0": {"Q8_0"}, "Q4_0": {"Q4_0"}, "Q4_K_M": {"Q4_K", "Q6_K"}}
_LOG_TAIL_CHARS = 3000


class GgufExportError(RuntimeError):
    """llama.cpp's converter or llama-quantize failed, or wrote something other than what was asked."""


def export_gguf(src_dir: Path, out_dir: Path, config: GgufConfig) -> Path:
    """Writes out_dir with the text GGUF, the mmproj GGUF and recipe.json; returns out_dir.

    Everything that can be refused is refused before the first conversion: a missing or
    quantized source, an existing out_dir, a FLAP-pruned or text-only source, a source with
    no chat template, and a missing llama.cpp build (harness.serve.llama_cpp_home.LlamaCppMissing).
    The files are written into ``<out_dir>.partial``, renamed when complete.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    check_paths(src_dir, out_dir)
    template = check_source(src_dir)
    converter(), gguf_py()  # the build is there, or one line saying how to build it
    if config.converter_type is None:
        binary("llama-quantize")
    started = time.perf_counter()
    partial = fresh_partial(out_dir)
    text, mmproj = partial / config.model_file, partial / config.mmproj_file
    if config.converter_type is not None:
        _convert(src_dir, text, config.converter_type)
    else:
        intermediate = partial / f"intermediate-{config.intermediate.upper()}.gguf"
        _convert(src_dir, intermediate, config.intermediate)
        _quantize(intermediate, text, config.TAG)
        intermediate.unlink()
    _convert(src_dir, mmproj, config.mmproj_type, mmproj=True)
    _record_pooling(src_dir, mmproj)
    if read_field(text, "tokenizer.chat_template") != template:
        raise GgufExportError(f"{text.name} does not hold {src_dir}'s chat template: llama-server would prompt the "
                              "model with another one")
    files = {text.name: describe(text, PROMISED[config.TAG]),
             mmproj.name: describe(mmproj, {config.mmproj_type.upper()})}
    step = {"step": "gguf", "config": config_to_dict(config), "files": files, "llama_cpp": build_info(),
            "duration_s": round(time.perf_counter() - started, 3)}
    write_recipe(src_dir, partial, step)
    partial.rename(out_dir)
    return out_dir


def check_source(src_dir: Path) -> str:
    """The source's chat template, after refusing a source llama.cpp's Gemma 4 export cannot take."""
    config = json.loads((src_dir / "config.json").read_text())
    if config.get("flap_pruned"):
        raise ValueError(f"{src_dir} is FLAP-pruned: llama.cpp's Gemma 4 has one FFN width for all layers and no "
                         "down_proj bias, so export the dense checkpoint to GGUF instead")
    if "vision_config" not in config:
        raise ValueError(f"{src_dir} has no vision_config: a GGUF variant is a text model plus its vision projector, "
                         "so pass a vision-language checkpoint")
    template = source_chat_template(src_dir)
    if template is None:
        raise ValueError(f"{src_dir} has no chat template (chat_template.jinja or tokenizer_config.json's "
                         "chat_template): add it, or llama-server would prompt the model with its own")
    return template


def source_chat_template(src_dir: Path) -> str | None:
    """The default chat template of a checkpoint, where transformers would read it."""
    jinja = src_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    tokenizer_config = src_dir / "tokenizer_config.json"
    if not tokenizer_config.is_file():
        return None
    template = json.loads(tokenizer_config.read_text()).get("chat_template")
    if isinstance(template, list):  # named templates: the one called "default"
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def describe(path: Path, promised: set[str]) -> dict[str, Any]:
    """What a GGUF file really holds: its size, its tensor count per type, its mean bits per
    weight (tensor bytes over elements), and by name every matrix (two or more dimensions)
    stored in a type other than the promised ones."""
    tensors = gguf_module().GGUFReader(path).tensors
    other = {t.name: t.tensor_type.name for t in tensors if len(t.shape) >= 2 and t.tensor_type.name not in promised}
    bits = 8 * sum(int(t.n_bytes) for t in tensors) / sum(int(t.n_elements) for t in tensors)
    return {"bytes": path.stat().st_size, "tensors": len(tensors),
            "tensor_types": dict(sorted(Counter(t.tensor_type.name for t in tensors).items())),
            "bits_per_weight": round(bits, 3), "promised": sorted(promised), "other_types": other}


def read_field(path: Path, key: str) -> Any:
    """One metadata value of a GGUF file (None when absent)."""
    field = gguf_module().GGUFReader(path).fields.get(key)
    return None if field is None else field.contents()


def gguf_module():
    """The build's gguf-py package (reader and writer of the same format version as the converter)."""
    folder = str(gguf_py())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import gguf

    return gguf


def _convert(src_dir: Path, out: Path, outtype: str, mmproj: bool = False) -> None:
    """llama.cpp's converter, text model or (mmproj) vision projector, into exactly ``out``."""
    command = [sys.executable, str(converter()), str(src_dir), "--outfile", str(out), "--outtype", outtype]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(gguf_py()), os.environ.get("PYTHONPATH")]))}
    _run([*command, "--mmproj"] if mmproj else command, out, env)


# llama.cpp's mtmd assumes Gemma 4's vision pooling (3x3: E2B/E4B) unless the mmproj names another,
# and the converter never writes it: a checkpoint pooling 2x2 (the tiny model) would be fed 9/4 as many
# image tokens as the HF processor and vLLM give it, and answer from a picture cut up wrongly.
SCALE_FACTOR_KEY = "clip.vision.projector.scale_factor"


def _record_pooling(src_dir: Path, mmproj: Path) -> None:
    """Writes the checkpoint's vision ``pooling_kernel_size`` into the mmproj as its projector scale factor."""
    kernel = (json.loads((src_dir / "config.json").read_text()).get("vision_config") or {}).get("pooling_kernel_size")
    if kernel is None or read_field(mmproj, SCALE_FACTOR_KEY) == kernel:
        return
    gguf = gguf_module()
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(mmproj)
    rewritten = mmproj.with_suffix(".pooling.gguf")
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(rewritten, arch=arch, endianess=reader.endianess)
    if (alignment := reader.get_field(gguf.Keys.General.ALIGNMENT)) is not None:
        writer.data_alignment = alignment.contents()
    quiet = logging.getLogger("gguf")  # the writer logs each file it writes at INFO
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
            copy_with_new_metadata(reader, writer, {SCALE_FACTOR_KEY: MetadataDetails(gguf.GGUFValueType.UINT32,
                                                                                       int(kernel))}, [])
    finally:
        quiet.setLevel(level)
    del reader  # its memory map of the old file
    rewritten.replace(mmproj)


def _quantize(src: Path, out: Path, tag: str) -> None:
    _run([str(binary("llama-quantize")), str(src), str(out), tag], out, dict(os.environ))


def _run(command: list[str], out: Path, env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0 or not out.is_file():
        raise GgufExportError(f"{Path(command[1] if command[0] == sys.executable else command[0]).name} failed "
                              f"(exit {done.returncode}) writing {out.name}:\n{done.stdout[-_LOG_TAIL_CHARS:]}")

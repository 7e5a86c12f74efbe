"""GGUF export on the tiny model: what `python -m compress SRC OUT --scheme gguf_*` writes and refuses.

Each scheme is exported once through the command line, with the project's llama.cpp build
(install.sh builds it). Checked: the folder llama-server -hf would resolve (one text GGUF named
after its type, the mmproj beside it, recipe.json), the chat template and the vocabulary inside
the text GGUF, the tensor types each scheme promises and the exceptions recipe.json records
against what the files hold, the towers at F16, the lineage, sizes falling with the bits, the
variant build cache keyed by the llama.cpp build, and bad input refused in one line with exit 2.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from compress import compress_checkpoint, config_from_name
from compress.gguf import PROMISED, gguf_module
from compress.lineage import checkpoint_hash
from compress.llama_cpp_home import ENV, build_info
from tests.procs import run_cli

REPO = Path(__file__).resolve().parents[1]
TAGS = {"gguf_f16": "F16", "gguf_bf16": "BF16", "gguf_q8_0": "Q8_0", "gguf_q4_0": "Q4_0", "gguf_q4_k_m": "Q4_K_M"}
# Row length (ggml's ne0) each llama-quantize scheme's blocks need: Q4_0 packs 32 weights a block, K-quants 256.
ROW_BLOCK = {"Q4_0": 32, "Q4_K_M": 256}


def _compress(*args: str, env: dict | None = None) -> tuple[int, str]:
    proc = run_cli([sys.executable, "-m", "compress", *map(str, args)], cwd=REPO, timeout=600,
                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _tensors(path: Path) -> list:
    return gguf_module().GGUFReader(path).tensors


def _field(path: Path, key: str):
    return gguf_module().GGUFReader(path).fields[key].contents()


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Scheme -> the tiny model's GGUF folder, each written once by the command line."""
    root = tmp_path_factory.mktemp("gguf")
    for scheme in TAGS:
        code, output = _compress(tiny_model_dir, root / scheme, "--scheme", scheme)
        assert code == 0, output[-3000:]
    return {scheme: root / scheme for scheme in TAGS}


def _recipe_step(folder: Path) -> dict:
    return json.loads((folder / "recipe.json").read_text())["steps"][-1]


@pytest.mark.parametrize("scheme", list(TAGS))
def test_folder_holds_the_text_gguf_the_mmproj_and_the_recipe(exported, scheme):
    folder = exported[scheme]
    assert sorted(p.name for p in folder.iterdir()) == ["mmproj-model-F16.gguf", f"model-{TAGS[scheme]}.gguf",
                                                       "recipe.json"]
    assert not folder.with_name(folder.name + ".partial").exists()
    assert _field(folder / f"model-{TAGS[scheme]}.gguf", "general.architecture") == "gemma4"
    assert _field(folder / "mmproj-model-F16.gguf", "general.type") == "mmproj"


def test_mmproj_carries_the_checkpoints_vision_pooling(exported, tiny_model_dir):
    # llama.cpp assumes Gemma 4's 3x3 pooling unless told: the tiny model pools 2x2, so without the
    # key each image would reach the model as 9/4 as many soft tokens as the HF processor gives it.
    pooling = json.loads((tiny_model_dir / "config.json").read_text())["vision_config"]["pooling_kernel_size"]
    for folder in exported.values():
        assert _field(folder / "mmproj-model-F16.gguf", "clip.vision.projector.scale_factor") == pooling == 2


def test_text_gguf_holds_the_checkpoints_chat_template_and_vocabulary(exported, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = (tiny_model_dir / "chat_template.jinja").read_text()
    for scheme, folder in exported.items():
        text = folder / f"model-{TAGS[scheme]}.gguf"
        assert _field(text, "tokenizer.chat_template") == template, scheme
        tokens = _field(text, "tokenizer.ggml.tokens")
        assert tokens == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))), scheme


@pytest.mark.parametrize("scheme", list(TAGS))
def test_text_matrices_are_stored_as_promised_and_the_recipe_names_every_exception(exported, scheme):
    tag = TAGS[scheme]
    text = exported[scheme] / f"model-{tag}.gguf"
    recorded = _recipe_step(exported[scheme])["files"][text.name]
    tensors = _tensors(text)
    matrices = [t for t in tensors if len(t.shape) >= 2]
    assert len(matrices) >= 30 and recorded["tensors"] == len(tensors)
    assert recorded["tensor_types"] == dict(Counter(t.tensor_type.name for t in tensors))
    assert recorded["other_types"] == {t.name: t.tensor_type.name for t in matrices
                                       if t.tensor_type.name not in PROMISED[tag]}
    assert all(t.tensor_type.name == "F32" for t in tensors if len(t.shape) == 1)  # norms and scales stay F32
    if tag in ("F16", "BF16", "Q8_0"):  # the converter writes every matrix in the type asked
        assert recorded["other_types"] == {}
        return
    # llama-quantize: a matrix whose rows split into the type's blocks holds a promised type, but for the
    # token embeddings (one is also the output: 6 bits or more by design) and per_layer_model_proj (left as
    # converted); the rest fall back to another type, and the recipe names each of them.
    for t in matrices:
        kind = t.tensor_type.name
        if t.name == "per_layer_model_proj.weight":
            assert kind == "BF16", kind  # the default intermediate
        elif t.name in ("token_embd.weight", "per_layer_token_embd.weight"):
            assert kind in ("Q6_K", "Q8_0"), (t.name, kind)
        elif int(t.shape[0]) % ROW_BLOCK[tag] == 0:
            assert kind in PROMISED[tag], (t.name, kind)
        else:
            assert kind not in PROMISED[tag] and kind in ("Q5_0", "Q8_0"), (t.name, kind)
    four_bit = [t for t in matrices if t.tensor_type.name in ("Q4_0", "Q4_K")]
    if tag == "Q4_0":  # blocks of 32 tile every row: all 4-bit but the three above
        assert len(four_bit) == len(matrices) - 3
    else:  # Q4_K needs rows of 256: only the tiny model's 256-wide rows can hold it
        assert four_bit and all(int(t.shape[0]) % 256 == 0 for t in four_bit)
    assert 4 < recorded["bits_per_weight"] < (6.5 if tag == "Q4_0" else 7.5)


@pytest.mark.parametrize("scheme", list(TAGS))
def test_vision_tower_and_projector_stay_f16(exported, scheme):
    mmproj = exported[scheme] / "mmproj-model-F16.gguf"
    types = {t.name: t.tensor_type.name for t in _tensors(mmproj)}
    assert set(types.values()) <= {"F16", "F32"} and Counter(types.values())["F16"] >= 10
    recorded = _recipe_step(exported[scheme])["files"][mmproj.name]
    assert recorded["other_types"] == {"v.position_embd.weight": "F32"}  # the converter keeps it at F32


def test_recipe_records_lineage_build_and_sizes(exported, tiny_model_dir):
    for scheme, folder in exported.items():
        recipe = json.loads((folder / "recipe.json").read_text())
        assert recipe["base_model"]["sha256"] == checkpoint_hash(tiny_model_dir)
        step = recipe["steps"][-1]
        assert step["step"] == "gguf" and step["config"]["scheme"] == scheme and len(recipe["steps"]) == 1
        assert step["llama_cpp"] == build_info() and step["llama_cpp"]["sha256"]
        assert {name: f["bytes"] for name, f in step["files"].items()} == {
            p.name: p.stat().st_size for p in folder.glob("*.gguf")}


def test_text_files_shrink_as_bits_drop(exported):
    size = {TAGS[s]: (f / f"model-{TAGS[s]}.gguf").stat().st_size for s, f in exported.items()}
    assert size["F16"] == size["BF16"] > size["Q8_0"] > size["Q4_K_M"] >= size["Q4_0"]
    assert size["Q4_0"] < 0.7 * size["Q8_0"]
    mmproj = {(f / "mmproj-model-F16.gguf").stat().st_size for f in exported.values()}
    assert len(mmproj) == 1  # the towers do not depend on the text model's type


def test_mmproj_type_is_honoured(tiny_model_dir, tmp_path):
    code, output = _compress(tiny_model_dir, tmp_path / "out", "--scheme", "gguf_q8_0", "--mmproj-type", "q8_0")
    assert code == 0, output[-3000:]
    types = Counter(t.tensor_type.name for t in _tensors(tmp_path / "out" / "mmproj-model-Q8_0.gguf"))
    assert types["Q8_0"] >= 10 and "F16" not in types


def _one_line_refusal(code: int, output: str, says: str) -> None:
    assert code == 2, output[-3000:]
    assert "Traceback" not in output and len(output.splitlines()) == 1, output[-3000:]
    assert output.startswith("error:") and says in output, output


@pytest.fixture(scope="module")
def other_sources(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny model quantized (compressed-tensors) and FLAP-pruned (by magnitude: no calibration)."""
    root = tmp_path_factory.mktemp("sources")
    return {"quantized": compress_checkpoint(tiny_model_dir, root / "fp8", config_from_name("fp8_dynamic")),
            "pruned": compress_checkpoint(tiny_model_dir, root / "flap", config_from_name(
                "flap", method="magnitude", bias_compensation=False, multiple=32, ratio=0.2))}


@pytest.mark.parametrize(("case", "says"), [
    ("unknown scheme", "invalid choice: 'gguf_q3'"),
    ("output exists", "exists: remove it"),
    ("quantized source", "already quantized"),
    ("pruned source", "FLAP-pruned"),
    ("no llama.cpp build", "scripts/install.sh"),
    ("field of another scheme", "mmproj_type"),
])
def test_bad_input_is_refused_in_one_line_before_any_work(tiny_model_dir, other_sources, tmp_path, case, says):
    (tmp_path / "taken").mkdir()
    src, out, scheme, extra, env = tiny_model_dir, tmp_path / "out", "gguf_q4_k_m", [], {}
    if case == "unknown scheme":
        scheme = "gguf_q3"
    elif case == "output exists":
        out = tmp_path / "taken"
    elif case in ("quantized source", "pruned source"):
        src = other_sources[case.split()[0]]
    elif case == "no llama.cpp build":
        env = {ENV: str(tmp_path / "no-build")}
    else:
        scheme, extra = "fp8", ["--mmproj-type", "q8_0"]
    _one_line_refusal(*_compress(src, out, "--scheme", scheme, *extra, env=env), says)
    assert not out.with_name(out.name + ".partial").exists()


def test_a_gguf_step_in_a_steps_list_is_refused():
    with pytest.raises(ValueError, match="gguf_q4_k_m inside a steps list"):
        config_from_name("flap_gguf", steps=[{"scheme": "flap"}, {"scheme": "gguf_q4_k_m"}])


def test_variant_build_is_cached_and_keyed_by_the_llama_cpp_build(tiny_model_dir, tmp_path, monkeypatch):
    from harness.build.variant import build_variant, cached_build_dir
    from harness.config.schema import compose, to_compress_config

    run = compose(["compress=gguf_q8_0", f"cache_dir={tmp_path / 'cache'}"])
    said = []
    first = build_variant(run, log=said.append)
    assert build_variant(run, log=said.append) == first and "cached" in said[-1]
    assert (first / "model-Q8_0.gguf").is_file()
    # Another llama.cpp build (here: other cmake flags in its BUILD.json) keys another folder; its date does not.
    home = tmp_path / "other-build"
    home.mkdir()
    info = build_info()
    config = to_compress_config(run.compress)
    for change, same in (({"date": "2000-01-01T00:00:00+00:00"}, True), ({"cmake_flags": ["-DOTHER=ON"]}, False)):
        (home / "BUILD.json").write_text(json.dumps({**info, **change}))
        monkeypatch.setenv(ENV, str(home))
        assert (cached_build_dir(run, run.compress, tiny_model_dir, config) == first) is same, change
    shutil.rmtree(home)

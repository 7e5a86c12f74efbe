"""What the target's vLLM needs of a checkpoint, read from config.json and the safetensors headers (no weights loaded).

Where this host cannot serve the folder (a CPU has no kernel for per-tensor FP8), this is what
stands in for a launch: the quantization_config must parse with the compressed-tensors the
target's vLLM pins, each config group must be a scheme vLLM's compressed-tensors loader has a
kernel for on the target GPU, and each quantized module must store the tensors, dtypes and
scale shapes that scheme loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from compress.plan import matches
from compress.schemes import LayerSpec
from harness.build.headers import TensorInfo, check_headers, read_config
from harness.errors import BuildError, PlatformError
from harness.serve.capabilities import check_weights
from harness.submit.problem import Problem
from harness.submit.target import Target

# A config group's weights (type, bits, strategy) and dynamic activations (type, bits, strategy),
# in compress's vocabulary, for the schemes vLLM's compressed-tensors loader picks a kernel for
# (CompressedTensorsConfig._get_scheme_from_parts): symmetric static weights only.
_WEIGHTS = {("float", 8, "tensor"): "fp8_tensor", ("float", 8, "channel"): "fp8_channel",
            ("int", 8, "channel"): "int8_channel", ("int", 4, "group"): "int4_group"}
_ACTIVATIONS = {("float", 8, "token"): "fp8", ("int", 8, "token"): "int8"}
# (weights, activations) -> the scheme whose GPU kernel serves them (harness.serve.capabilities):
# FP8 with FP8 activations is W8A8, without is W8A16; int4 groups are WNA16; int8 needs int8 activations.
_KERNEL_SCHEME = {("fp8_tensor", None): "fp8", ("fp8_channel", None): "fp8", ("fp8_tensor", "fp8"): "fp8_dynamic",
                  ("fp8_channel", "fp8"): "fp8_dynamic", ("int4_group", None): "w4a16_rtn",
                  ("int8_channel", "int8"): "w8a8_int8"}
# Stored weight tensor and dtype of each weight kind, and its weight_scale shape from (out, in, group size).
_LAYOUT = {
    "fp8_tensor": ("weight", "F8_E4M3", lambda out, inp, g: (1,)),
    "fp8_channel": ("weight", "F8_E4M3", lambda out, inp, g: (out, 1)),
    "int8_channel": ("weight", "I8", lambda out, inp, g: (out, 1)),
    "int4_group": ("weight_packed", "I32", lambda out, inp, g: (out, inp // g)),
}
_WORDS = {"fp8_tensor": "per-tensor FP8 weights", "fp8_channel": "per-channel FP8 weights",
          "int8_channel": "per-channel int8 weights", "int4_group": "int4 weights in groups of {g}"}
_FIX = "rebuild the checkpoint with the bundled compress (python -m harness.submit copies or builds it)"


def describe(spec: LayerSpec) -> str:
    """E.g. 'per-tensor FP8 weights, 16-bit activations'."""
    acts = f"dynamic per-token {spec.activation.upper()} activations" if spec.activation else "16-bit activations"
    return f"{_WORDS[spec.weight].format(g=spec.group_size)}, {acts}"


def group_spec(group: Mapping[str, Any]) -> LayerSpec | None:
    """The LayerSpec of one config group (as model_dump(mode="json") writes it), None when vLLM has no kernel."""
    w, a = group.get("weights") or {}, group.get("input_activations")
    weight = _WEIGHTS.get((w.get("type"), w.get("num_bits"), w.get("strategy")))
    if weight is None or not w.get("symmetric") or w.get("dynamic"):
        return None
    activation = None
    if a is not None:
        activation = _ACTIVATIONS.get((a.get("type"), a.get("num_bits"), a.get("strategy")))
        if activation is None or a.get("dynamic") is not True:
            return None
    if (weight, activation) not in _KERNEL_SCHEME:
        return None
    return LayerSpec(weight, activation, int(w.get("group_size") or 0) if weight == "int4_group" else 0)


def loader_problems(folder: Path, target: Target, expect: LayerSpec | None = None) -> tuple[list[Problem], str]:
    """Problems the target's vLLM loader would meet, and one line saying what was checked.

    Args:
        folder: the submission folder.
        target: the GPU and pinned vLLM the judges serve with.
        expect: the weights the variant names (None: not compared).
    """
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        return [], "not checked: no config.json or no weights (reported above)"
    try:
        tensors = check_headers(folder)
    except BuildError as err:
        return [Problem("*.safetensors", str(err), _FIX)], "safetensors headers against config.json"
    qc = read_config(folder).get("quantization_config")
    if not qc:
        problems = [Problem("config.json", f"has no quantization_config, but the variant names {describe(expect)}",
                            _FIX)] if expect else []
        return problems, "not quantized: safetensors headers checked against config.json"
    if qc.get("quant_method") != "compressed-tensors":
        return [Problem("config.json", f"quantization_config.quant_method is {qc.get('quant_method')!r}, not "
                        "compressed-tensors, the only format this check reads", _FIX)], "quantization_config"
    from compressed_tensors.quantization import QuantizationConfig  # lazy: imports torch
    from pydantic import ValidationError

    library = f"compressed-tensors {metadata.version('compressed-tensors')}"
    pin = target.requires.get("compressed-tensors")
    parsed_by = library + (f" (vLLM {target.vllm_version} requires {pin})" if pin else "")
    try:
        parsed = QuantizationConfig.model_validate(dict(qc)).model_dump(mode="json")
    except ValidationError as err:
        first = str(err).splitlines()[1:3]
        return [Problem("config.json", f"quantization_config does not parse with {library}: {' '.join(first)}",
                        _FIX)], f"quantization_config parsed by {parsed_by}"
    groups = {name: (group, group_spec(group)) for name, group in parsed["config_groups"].items()}
    problems = _kernel_problems(groups, target)
    specs = [s for _, s in groups.values() if s is not None]
    if expect is not None and expect not in specs:
        found = "; ".join(describe(s) for s in specs) or "no scheme vLLM serves"
        problems.append(Problem("config.json", f"holds {found}, not the variant's {describe(expect)}",
                                "rebuild it with the variant's scheme (python -m harness.submit does)"))
    modules, layout = _layout_problems(groups, parsed.get("ignore") or [], tensors)
    summary = (f"quantization_config parsed by {parsed_by}; {len(groups)} config group(s) "
               f"({'; '.join(describe(s) for s in specs)}) checked for a vLLM kernel on {target.platform.describe()}; "
               f"stored tensors, dtypes and scale shapes of {modules} quantized modules checked against their group")
    return problems + layout, summary


def _kernel_problems(groups: Mapping[str, tuple[Mapping[str, Any], LayerSpec | None]], target: Target) -> list[Problem]:
    problems = []
    for name, (group, spec) in groups.items():
        if spec is None:
            problems.append(Problem("config.json", f"quantization_config group {name} (weights {group.get('weights')}, "
                                    f"activations {group.get('input_activations')}) is no scheme vLLM's "
                                    "compressed-tensors loader has a kernel for", _FIX))
            continue
        try:
            check_weights(_KERNEL_SCHEME[(spec.weight, spec.activation)], target.platform)
        except PlatformError as err:
            problems.append(Problem("config.json", f"{describe(spec)}: {err}", "build another scheme or pass "
                                    "--target for the GPU the judges use"))
    return problems


def _layout_problems(groups, ignore: list[str], tensors: Mapping[str, TensorInfo]) -> tuple[int, list[Problem]]:
    """(modules checked, problems): each module a group targets stores what its scheme loads, and only those."""
    # Linear layers: a 2-D weight, or a packed one (a norm's 1-D weight is never quantized, whatever matches it).
    linears = {n.rsplit(".", 1)[0] for n, t in tensors.items()
               if n.endswith(".weight_packed") or (n.endswith(".weight") and len(t.shape) == 2)}
    problems, dense, stray, checked = [], [], [], 0
    for module in sorted(linears):
        spec = _spec_of(module, groups, ignore)
        scaled = f"{module}.weight_scale" in tensors
        if spec is None and scaled:
            stray.append(module)
        elif spec is not None and not scaled:
            dense.append(module)
        if spec is None or not scaled:
            continue
        checked += 1
        if (problem := _module_layout(module, spec, tensors)) is not None:
            problems.append(problem)
    if dense:
        problems.append(Problem("*.safetensors", f"{len(dense)} module(s) targeted by quantization_config are stored "
                                f"unquantized, with no weight_scale (e.g. {dense[0]})", _FIX))
    if stray:
        problems.append(Problem("*.safetensors", f"{len(stray)} module(s) store a weight_scale that no "
                                f"quantization_config group targets, which vLLM refuses (e.g. {stray[0]})", _FIX))
    return checked, problems


def _spec_of(module: str, groups, ignore: list[str]) -> LayerSpec | None:
    """The spec vLLM gives ``module``: ignore first, then the first group whose targets match."""
    if any(matches(module, p) for p in ignore):
        return None
    for group, spec in groups.values():
        if any(matches(module, t) for t in group.get("targets", [])):
            return spec
    return None


def _module_layout(module: str, spec: LayerSpec, tensors: Mapping[str, TensorInfo]) -> Problem | None:
    param, dtype, scale_shape = _LAYOUT[spec.weight]
    stored, scale = tensors.get(f"{module}.{param}"), tensors[f"{module}.weight_scale"]
    if stored is None or stored.dtype != dtype or len(stored.shape) != 2:
        found = f"{stored.dtype} {list(stored.shape)}" if stored else "nothing"
        return Problem("*.safetensors", f"{module}: vLLM loads {describe(spec)} from a 2-D {dtype} {param}, "
                       f"found {found}", _FIX)
    out, inp = stored.shape[0], stored.shape[1] * (8 if spec.weight == "int4_group" else 1)  # int4: 8 per int32
    wanted = scale_shape(out, inp, spec.group_size or 1)
    if scale.shape != wanted and not (wanted == (1,) and scale.shape == ()):
        return Problem("*.safetensors", f"{module}.weight_scale has shape {list(scale.shape)}, but vLLM loads "
                       f"{describe(spec)} with {list(wanted)}", _FIX)
    if f"{module}.input_scale" in tensors:
        return Problem("*.safetensors", f"{module} stores an input_scale, but {describe(spec)} take their activation "
                       "scales at run time (a static input_scale is another scheme)", _FIX)
    return None

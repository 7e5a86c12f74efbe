"""First contact with a CUDA GPU (issue #17): the harness's GPU code paths, run once on a real GPU.

Run from the repository root on a machine with an NVIDIA GPU, a CUDA build of torch and
nvidia-ml-py (no vLLM needed): `python bench/gpu_first_contact.py` (or `python -m bench.gpu_first_contact`).
About 4-5 minutes. Each check uses the harness's or compress's own code and records what it saw:

  preflight        driver CUDA (NVML) vs this torch's CUDA (check_cuda_driver, torch_cuda_version), and
                   that the same GPU with a driver one CUDA major older is refused
  gpu_selection    detect_platform with CUDA_VISIBLE_DEVICES unset, =0 and =GPU-<uuid>, against `nvidia-smi -L`
  uuid_binding     a torch child started with server_env(...) in its own session reports the UUID of platform.gpus[0]
  process_metering NvmlMeter(gpus=platform.gpus, pid=child) flags no other process while only the child holds a
                   context, and flags one when a second torch process (another session) takes one
  counter_vs_power 60 s of steady bf16 matmuls: NVML counter J against integrated power J, the power series
                   shifted by POWER_AVERAGE_S / 2 (a trailing mean's centre: what the meter's cross-check
                   undoes), by 0 and by POWER_AVERAGE_S, with each ratio and the counter's update period
  gptq_gpu         compress_ (layer by layer, device="cuda") on E4B-shaped bf16 decoder layers: seconds per layer
  gptq_cpu_vs_gpu  one E4B-shaped MLP (2560 <-> 10240) by GPTQ on the CPU and on the GPU: dequantized weights'
                   max/mean abs difference, share of int4 values that differ, both times
  tiny_end_to_end  the tiny Gemma 4 through compress_checkpoint (GPTQ), FLAP statistics and distillation on the
                   GPU, against the CPU (needs transformers with Gemma 4; recorded as skipped otherwise)

The main process touches CUDA only after process_metering, so no context of its own is on the GPU then.
Writes gpu_first_contact_<gpu>.json (for bench/records/) and the NVML trace of the 60 s load to $OUT
(or --out), after every check, and prints a summary. Exit 0: every check passed; 1: some did not;
2: no CUDA GPU here. This covers nvml_gpu_check's loaded-window cross-check (not its idle, steady and
short windows) and none of gpu_compress_check's kernel numerics; both stay.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from harness.energy.series import DeviceSeries  # noqa: E402

E4B = {"hidden": 2560, "ffn": 10240, "heads": 8, "kv_heads": 2, "head_dim": 256}  # a sliding-attention layer
# The child holds a CUDA context until its stdin closes; it first reports what torch sees.
CHILD = ("import json, os, sys, torch; p = torch.cuda.get_device_properties(0); x = torch.ones(1 << 20, "
         "device='cuda'); torch.cuda.synchronize(); print(json.dumps({'uuid': str(p.uuid), 'name': p.name, "
         "'count': torch.cuda.device_count(), 'visible': os.environ.get('CUDA_VISIBLE_DEVICES'), "
         "'order': os.environ.get('CUDA_DEVICE_ORDER')}), flush=True); sys.stdin.read()")


# --- pure helpers (tests/test_gpu_first_contact.py) ---------------------------------------------
def counter_vs_power(times_s, energy_j, power_w, t0_s: float, t1_s: float, shifts_s) -> dict:
    """Counter energy over [t0_s, t1_s] against the reported power integrated over the span shifted by each shift.

    Power reported as a trailing mean over A seconds describes the span [t - A, t], so integrating it over
    [t0 + A/2, t1 + A/2] undoes the lag (exact for power linear within A/2 of both ends). Over a window that
    starts and ends on a load's edges, shifts of 0 and A each miss about A/2 of the load. Returns counter_j
    and, per shift (seconds, as text), power_j and power_over_counter.
    """
    series = DeviceSeries("gpu")
    for t, e, p in zip(times_s, energy_j, power_w, strict=True):
        series.append(t, e, p)
    counter_j = series.energy_at(t1_s) - series.energy_at(t0_s)
    by_shift = {}
    for shift_s in shifts_s:
        power_j = series.power_integral_j(t0_s + shift_s, t1_s + shift_s)
        by_shift[f"{shift_s:g}"] = {"power_j": power_j, "power_over_counter": power_j / counter_j}
    return {"counter_j": counter_j, "by_shift_s": by_shift}


def gpu_slug(name: str) -> str:
    """'NVIDIA H200' -> 'h200': the record's file-name suffix."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower().replace("nvidia", "")).strip("_")
    return slug or "gpu"


def uuid_key(uuid: str) -> str:
    """A GPU UUID as NVML ('GPU-3f2e...') or torch ('3f2e...') writes it, in one form."""
    return uuid.lower().removeprefix("gpu-")


def smi_gpus(text: str) -> list[tuple[int, str]]:
    """(index, UUID) of every GPU line of `nvidia-smi -L`."""
    return [(int(i), u) for i, u in re.findall(r"^GPU (\d+):.*\(UUID: (GPU-[0-9a-fA-F-]+)\)", text, re.M)]


# --- the checks -----------------------------------------------------------------------------------
@contextmanager
def visible_devices(value: str | None):
    before = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    if value is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = value
    try:
        yield
    finally:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        if before is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def preflight(ctx: dict) -> dict:
    import torch

    from harness.errors import PlatformError
    from harness.serve.capabilities import check_cuda_driver, detect_platform, torch_cuda_version

    platform = detect_platform()
    ctx["platform"] = platform
    check_cuda_driver(platform)  # raises when this torch needs a newer driver than this one
    older = (int(str(torch.version.cuda).split(".")[0]) - 1, 8)  # a driver one CUDA major behind this torch
    try:
        check_cuda_driver(dataclasses.replace(platform, driver_cuda=older))
        refusal = None
    except PlatformError as err:
        refusal = str(err)
    return {"ok": torch_cuda_version() == torch.version.cuda and refusal is not None, "gpu": platform.gpu_name,
            "compute_capability": platform.compute_capability, "driver": platform.driver,
            "driver_cuda": platform.driver_cuda, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "torch_cuda_read_without_import": torch_cuda_version(),
            f"refusal_with_a_driver_for_cuda_{older[0]}.{older[1]}": refusal}


def gpu_selection(ctx: dict) -> dict:
    from harness.serve.capabilities import detect_platform

    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    smi = smi_gpus(listing)
    first = smi[0][1]
    cases = {}
    for label, value in (("unset", None), ("0", "0"), (first, first)):
        with visible_devices(value):
            cases[label] = {"platform_gpus": list(detect_platform().gpus), "expected": [first]}
    ok = all(c["platform_gpus"] == c["expected"] for c in cases.values())
    return {"ok": ok, "nvidia_smi_L": listing.strip().splitlines(), "cases": cases}


def start_child(env: dict) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline() if ready else ""
    if not line:
        stop_child(proc)
        raise RuntimeError(f"torch child did not report (stderr: {proc.stderr.read()[-800:]})")
    return proc, json.loads(line)


def stop_child(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def uuid_binding(ctx: dict) -> dict:
    from harness.config.schema import ServeConfig
    from harness.serve.vllm import server_env

    platform = ctx["platform"]
    env = server_env(ServeConfig(), platform)
    ctx["child"], seen = start_child(env)
    return {"ok": uuid_key(seen["uuid"]) == uuid_key(platform.gpus[0]) and seen["count"] == 1,
            "platform_gpus": list(platform.gpus), "child_saw": seen,
            "server_env": {k: env.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
                                                    "VLLM_USE_FLASHINFER_SAMPLER")}}


def process_metering(ctx: dict) -> dict:
    from harness.energy.nvml import NvmlMeter

    child = ctx.pop("child")
    apps = ["nvidia-smi", "--query-compute-apps=pid,process_name", "--format=csv,noheader"]
    rows = {}
    try:
        with NvmlMeter(gpus=ctx["platform"].gpus, pid=child.pid, hz=10) as meter:
            meter.begin_window("child_only")
            time.sleep(3)
            rows["child_only"] = meter.end_window("child_only").flags
            rows["warnings_child_only"] = meter.warnings()
            # Someone else's job on the same GPU: another session, the harness's environment not applied.
            other, _ = start_child({**os.environ, "CUDA_VISIBLE_DEVICES": ctx["platform"].gpus[0]})
            try:
                rows["compute_apps"] = subprocess.run(apps, capture_output=True, text=True).stdout.splitlines()
                meter.begin_window("second_process")
                time.sleep(3)
                rows["second_process"] = meter.end_window("second_process").flags
                rows["warnings"] = meter.warnings()
            finally:
                stop_child(other)
        rows["pids"] = {"child": child.pid, "second": other.pid}
    finally:
        stop_child(child)
    flagged = [any(f.startswith("other_process_on_gpu") for f in rows[w]) for w in ("child_only", "second_process")]
    return {"ok": flagged == [False, True], **rows}


def counter_vs_power_check(ctx: dict, load_s: float, out: Path) -> dict:
    import torch

    from bench.nvml_gpu_check import N, counter_update_period_s, describe, matmul_chunks
    from harness.energy.nvml import POWER_AVERAGE_S, NvmlMeter

    a = torch.randn(N, N, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(N, N, dtype=torch.bfloat16, device="cuda")
    matmul_chunks(a, b, 0.5)  # cuBLAS warm-up
    with NvmlMeter(gpus=ctx["platform"].gpus, hz=10) as meter:
        time.sleep(3.0)
        chunks = matmul_chunks(a, b, load_s)
        t0_s, t1_s = chunks[0][0], chunks[-1][1]
        time.sleep(3.0)  # the shifted integral reads power up to POWER_AVERAGE_S past the end
        window = describe(meter.energy_between(t0_s, t1_s, name="load"))
        trace = [r for r in meter.trace() if r.device == meter.devices[0]]
        meter.write_trace(out / "gpu_first_contact_power_trace.csv")
        period_s = counter_update_period_s(meter.indices[0], a, b)
        tolerance = meter.crosscheck_tolerance
    result = counter_vs_power([r.t_wall_s for r in trace], [r.energy_j for r in trace], [r.power_w for r in trace],
                              t0_s, t1_s, (0.0, POWER_AVERAGE_S / 2, POWER_AVERAGE_S))
    half = result["by_shift_s"][f"{POWER_AVERAGE_S / 2:g}"]["power_over_counter"]
    # ok: within the tolerance past which the harness flags a window counter_power_mismatch
    return {"ok": abs(half - 1.0) <= tolerance, "tolerance": tolerance, "load_s": t1_s - t0_s,
            "power_average_s": POWER_AVERAGE_S, **result,
            "meter_window": window, "counter_update_period_s": period_s, "trace_rows": len(trace)}


def e4b_model(layers: int, attention: bool, seed: int):
    """A stack of E4B-shaped bf16 decoder layers with compress's module names (layers.N.self_attn/mlp.*_proj)."""
    import torch
    from torch import nn

    h, f, heads, kv, d = (E4B[k] for k in ("hidden", "ffn", "heads", "kv_heads", "head_dim"))

    def norm(x):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj = nn.Linear(h, heads * d, bias=False), nn.Linear(h, kv * d, bias=False)
            self.v_proj, self.o_proj = nn.Linear(h, kv * d, bias=False), nn.Linear(heads * d, h, bias=False)

        def forward(self, x):
            b, t, _ = x.shape
            q = self.q_proj(x).view(b, t, heads, d).transpose(1, 2)
            k, v = (p(x).view(b, t, kv, d).transpose(1, 2).repeat_interleave(heads // kv, 1)
                    for p in (self.k_proj, self.v_proj))
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o_proj(y.transpose(1, 2).reshape(b, t, heads * d))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj = nn.Linear(h, f, bias=False), nn.Linear(h, f, bias=False)
            self.down_proj = nn.Linear(f, h, bias=False)

        def forward(self, x):
            return self.down_proj(nn.functional.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn, self.mlp = (Attention() if attention else None), Mlp()

        def forward(self, x):
            x = x + self.self_attn(norm(x)) if self.self_attn is not None else x
            return x + self.mlp(norm(x))

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, inputs_embeds, use_cache=False):
            for layer in self.layers:
                inputs_embeds = layer(inputs_embeds)
            return inputs_embeds

    torch.manual_seed(seed)
    model = Stack()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model.to(torch.bfloat16).eval()


def calibration(samples: int, tokens: int, seed: int) -> list[dict]:
    """Heavy-tailed bf16 hidden states with a few outlier channels, on the CPU (the model's home)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(samples):
        x = torch.randn(1, tokens, E4B["hidden"], generator=g)
        x[..., torch.randperm(E4B["hidden"], generator=g)[: E4B["hidden"] // 256]] *= 20
        out.append({"inputs_embeds": x.to(torch.bfloat16)})
    return out


def gptq_gpu(ctx: dict, layers: int, samples: int, tokens: int) -> dict:
    import torch

    from compress import W4A16GptqConfig, compress_

    model, data = e4b_model(layers, attention=True, seed=0), calibration(samples, tokens, seed=1)
    calls, marks = [0] * layers, [0.0] * layers

    def clock(i):
        def hook(module, args):
            calls[i] += 1
            if calls[i] == samples + 1:  # the capture pass calls each layer once a sample; then its own pass
                torch.cuda.synchronize()
                marks[i] = time.perf_counter()
        return hook

    for i, layer in enumerate(model.layers):
        layer.register_forward_pre_hook(clock(i))
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    compress_(model, W4A16GptqConfig(), data, device="cuda")
    torch.cuda.synchronize()
    ends = [*marks[1:], time.perf_counter()]
    per_layer = [e - s for s, e in zip(marks, ends)]
    return {"ok": True, "layers": layers, "samples": samples, "tokens_per_sample": tokens,
            "capture_s": marks[0] - start, "seconds_per_layer": per_layer, "total_s": ends[-1] - start,
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "layer_shapes": {n: list(m.weight.shape) for n, m in model.layers[0].named_modules()
                             if isinstance(m, torch.nn.Linear)}}


def gptq_cpu_vs_gpu(ctx: dict, tokens: int) -> dict:
    import torch

    from compress import W4A16GptqConfig, compress_
    from compress.int4 import unpack_int4

    data, runs = calibration(max(1, tokens // 256), 256, seed=2), {}
    for device in ("cuda", "cpu"):
        model = e4b_model(1, attention=False, seed=3)
        start = time.perf_counter()
        encoded = compress_(model, W4A16GptqConfig(), data, device=device)
        runs[device] = (time.perf_counter() - start, encoded, {n: m.weight.detach().float() for n, m in
                                                                model.named_modules() if n.endswith("_proj")})
    rows = {}
    for name, cpu_w in runs["cpu"][2].items():
        diff = (runs["cuda"][2][name] - cpu_w).abs()
        shape = tuple(int(v) for v in runs["cpu"][1][name]["weight_shape"])
        values = [unpack_int4(runs[d][1][name]["weight_packed"], shape) for d in ("cpu", "cuda")]
        rows[name] = {"shape": list(shape), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                      "mean_abs_weight": float(cpu_w.abs().mean()),
                      "int4_values_differing": float((values[0] != values[1]).float().mean())}
    return {"ok": all(r["int4_values_differing"] < 0.01 for r in rows.values()), "tokens": len(data) * 256,
            "cpu_s": runs["cpu"][0], "gpu_s": runs["cuda"][0], "cpu_threads": torch.get_num_threads(), "layers": rows}


def tiny_end_to_end(ctx: dict, work: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    from compress import compress_checkpoint, config_from_name
    from compress.calibration import as_model_inputs
    from compress.distill import distill_checkpoint
    from compress.distill_config import DistillConfig
    from compress.flap_config import FlapConfig
    from compress.flap_stats import down_proj_stats
    from compress.prune import prune_checkpoint
    from harness.build.calibration import suite_source
    from harness.tiny import DEFAULT_MODEL_DIR as tiny

    stored = {}
    for device in ("cpu", "cuda"):
        out = compress_checkpoint(tiny, work / f"gptq-{device}", config_from_name("w4a16_gptq", num_samples=8),
                                  suite_source(), device=device)
        stored[device] = load_file(str(out / "model.safetensors"))
        recipe_device = json.loads((out / "recipe.json").read_text())["steps"][-1]["device"]
    packed = [k for k in stored["cpu"] if k.endswith("weight_packed")]
    differing = sum(not torch.equal(stored["cpu"][k], stored["cuda"][k]) for k in packed)
    inputs = as_model_inputs(suite_source().pairs(4, 0), tiny)
    stats = {d: down_proj_stats(tiny, inputs, device=d) for d in ("cpu", "cuda")}
    m2_rel = max(float(((s.m2 - stats["cpu"][i].m2).abs() / stats["cpu"][i].m2.abs().clamp_min(1e-12)).max())
                 for i, s in stats["cuda"].items())
    pruned = prune_checkpoint(tiny, work / "pruned", FlapConfig(ratio=0.5, multiple=32, protect_roles=(),
                                                                num_samples=8), suite_source(), device="cuda")
    distilled = distill_checkpoint(tiny, pruned, work / "distilled", DistillConfig(steps=4, num_samples=16,
                                   eval_samples=4), source=suite_source(), log=lambda _: None, device="cuda")
    step = json.loads((distilled / "recipe.json").read_text())["steps"][-1]
    return {"ok": recipe_device["used"] == "cuda" and m2_rel < 1e-3 and step["device"]["used"] == "cuda",
            "gptq_packed_tensors_differing": f"{differing} of {len(packed)}", "recipe_device": recipe_device,
            "flap_m2_max_rel_diff": m2_rel, "distill_held_out_kl": step["held_out_kl"]}


# --- the run --------------------------------------------------------------------------------------
def needs_gpu() -> str | None:
    """Why this machine cannot run the checks (None when it can), asked without creating a CUDA context."""
    from harness.energy.nvml import nvml_available
    from harness.serve.capabilities import torch_cuda_version

    if torch_cuda_version() is None:
        return "torch here is a CPU build (or not installed)"
    if not nvml_available():
        return "NVML sees no NVIDIA GPU (no driver, or nvidia-ml-py missing)"
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/gpu_first_contact.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_first_contact_out")),
                   help="folder for the record and the trace (default $OUT, else ./gpu_first_contact_out)")
    p.add_argument("--load-s", type=float, default=60.0, help="seconds of steady matmul load (default 60)")
    p.add_argument("--gptq-layers", type=int, default=3, help="E4B-shaped decoder layers quantized on the GPU")
    p.add_argument("--gptq-samples", type=int, default=32, help="calibration samples for those layers")
    p.add_argument("--gptq-tokens", type=int, default=512, help="tokens per calibration sample")
    p.add_argument("--cpu-tokens", type=int, default=2048, help="calibration tokens of the CPU-vs-GPU MLP")
    p.add_argument("--budget-s", type=float, default=420.0, help="later checks are skipped past this (default 420)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = needs_gpu()
    if why is not None:
        print(f"bench/gpu_first_contact.py needs a CUDA GPU with a CUDA build of torch: {why}.", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_first_contact_") as work:
        try:
            return run_checks(args, Path(work))
        finally:
            if "child" in CTX:  # a torch child left by a check that broke: its stdin closes, it exits
                stop_child(CTX.pop("child"))


CTX: dict = {}  # what checks hand on: the platform, the torch child holding a context


def run_checks(args: argparse.Namespace, work: Path) -> int:
    started, ctx, checks = time.time(), CTX, {}
    steps = [("preflight", lambda: preflight(ctx), 0), ("gpu_selection", lambda: gpu_selection(ctx), 0),
             ("uuid_binding", lambda: uuid_binding(ctx), 0), ("process_metering", lambda: process_metering(ctx), 0),
             ("counter_vs_power", lambda: counter_vs_power_check(ctx, args.load_s, args.out), 0),
             ("gptq_gpu", lambda: gptq_gpu(ctx, args.gptq_layers, args.gptq_samples, args.gptq_tokens), 60),
             ("gptq_cpu_vs_gpu", lambda: gptq_cpu_vs_gpu(ctx, args.cpu_tokens), 120),
             ("tiny_end_to_end", lambda: tiny_end_to_end(ctx, work), 60)]
    for label, run, needs_s in steps:  # needs_s: a check starts only with that much of the budget left
        t0 = time.time()
        if t0 - started > args.budget_s - needs_s:
            checks[label] = {"ok": None, "skipped": f"time budget ({args.budget_s:.0f} s) nearly spent"}
        else:
            try:
                checks[label] = run()
            except Exception:  # a check that breaks is recorded, and the others still run
                checks[label] = {"ok": False, "error": traceback.format_exc()[-3000:]}
        checks[label]["seconds"] = round(time.time() - t0, 1)
        print(f"{label:>18}: {({True: 'ok', False: 'FAILED', None: 'skipped'})[checks[label]['ok']]} "
              f"({checks[label]['seconds']} s)", flush=True)
        name = ctx["platform"].gpu_name if ctx.get("platform") else "gpu"
        record = {"script": "bench/gpu_first_contact.py", "gpu": name, "wall_s": round(time.time() - started, 1),
                  "all_ok": all(c["ok"] is True for c in checks.values()), "checks": checks}
        path = args.out / f"gpu_first_contact_{gpu_slug(name)}.json"
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(json.dumps({k: {kk: v for kk, v in c.items() if kk != "error"} for k, c in checks.items()},
                     indent=1, default=str)[:6000])
    print(f"wrote {path} in {record['wall_s']} s; all_ok={record['all_ok']}")
    return 0 if record["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

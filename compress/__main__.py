"""python -m compress SRC_DIR OUT_DIR --scheme NAME: compress a local checkpoint folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compress.configs import CONFIGS, config_from_name
from compress.device import check_device_name
from compress.gguf_config import CONVERTER_TYPES


class _Parser(argparse.ArgumentParser):
    """Bad arguments answered in one line (what is wrong and what is allowed) with exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see python -m compress --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m compress", description=__doc__)
    p.add_argument("src_dir", type=Path, help="transformers checkpoint folder (Llama, Gemma 3 or Gemma 4)")
    p.add_argument("out_dir", type=Path, help="output folder (must not exist)")
    p.add_argument("--scheme", required=True, choices=sorted(set(CONFIGS) - {"steps"}),
                   help="compression scheme (step sequences: use Hydra's conf/compress/*.yaml)")
    p.add_argument("--quantize-ple", action="store_true", help="also quantize Gemma 4 per-layer-embedding linears")
    p.add_argument("--no-qkv", action="store_true", help="fp8_dynamic: o_proj and MLP only")
    p.add_argument("--num-samples", type=int, help="w4a16_gptq, flap: calibration samples (default 64)")
    p.add_argument("--seed", type=int, help="w4a16_gptq, flap: calibration seed (default 0)")
    p.add_argument("--calibration", type=Path, metavar="FILE.jsonl",
                   help='w4a16_gptq, flap: calibration examples, one {"image": path, "prompt": text} per line')
    p.add_argument("--device", type=_device, default="auto",
                   help="where GPTQ and FLAP statistics compute, one decoder layer at a time: auto (CUDA when "
                        "torch sees a GPU, else CPU; the default), cpu, cuda or cuda:N. Data-free schemes stream "
                        "on the CPU. Recorded in recipe.json")
    flap = p.add_argument_group("flap (FFN pruning; see compress.flap_config.FlapConfig)")
    flap.add_argument("--ratio", type=float, help="share of all FFN channels removed (global mode, default 0.2)")
    flap.add_argument("--method", choices=("flap", "magnitude"), help="channel scores (default flap)")
    flap.add_argument("--multiple", type=int, help="kept widths rounded to this multiple (default 128)")
    flap.add_argument("--no-bias", action="store_true", help="no bias compensation (zero down_proj bias)")
    flap.add_argument("--protect-layers", type=int, nargs="+", help="decoder layers never pruned")
    gguf = p.add_argument_group("gguf_* (GGUF export for llama.cpp; see compress.gguf_config.GgufConfig)")
    gguf.add_argument("--mmproj-type", choices=CONVERTER_TYPES,
                      help="type of the vision tower and projector file (default f16)")
    gguf.add_argument("--intermediate", choices=("f32", "f16", "bf16"),
                      help="gguf_q4_0, gguf_q4_k_m: the converted file llama-quantize reads (default bf16)")
    return p


def _device(value: str) -> str:
    try:
        return check_device_name(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _flap_params(args: argparse.Namespace) -> dict:
    pairs = (("ratio", args.ratio), ("method", args.method), ("multiple", args.multiple),
             ("protect_layers", args.protect_layers))
    params = {k: v for k, v in pairs if v is not None}
    if args.no_bias or args.method == "magnitude":
        params["bias_compensation"] = False
    return params


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    params = {"quantize_ple": args.quantize_ple} if args.quantize_ple else {}
    if args.no_qkv:
        params["include_qkv"] = False
    params.update({k: v for k, v in (("num_samples", args.num_samples), ("seed", args.seed)) if v is not None})
    if args.scheme == "flap":
        params.update(_flap_params(args))
    params.update({k: v for k, v in (("mmproj_type", args.mmproj_type), ("intermediate", args.intermediate))
                   if v is not None})
    config = config_from_name(args.scheme, **params)
    from compress.calibration import CalibrationSource
    from compress.checkpoint import compress_checkpoint
    from compress.device import resolve_device

    used = resolve_device(args.device)  # a CUDA request on a host without one fails here, before any work
    calibration = CalibrationSource.from_jsonl(args.calibration) if args.calibration else None
    out = compress_checkpoint(args.src_dir, args.out_dir, config, calibration, device=args.device)
    print(f"wrote {out} ({type(config).__name__}, calibrated steps on {used})")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # bad input: the message names the fix
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

"""python -m compress SRC_DIR OUT_DIR --scheme NAME: compress a local checkpoint folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from compress.configs import CONFIGS, config_from_name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compress", description=__doc__)
    p.add_argument("src_dir", type=Path, help="transformers checkpoint folder (Llama, Gemma 3 or Gemma 4)")
    p.add_argument("out_dir", type=Path, help="output folder (must not exist)")
    p.add_argument("--scheme", required=True, choices=sorted(CONFIGS), help="compression scheme")
    p.add_argument("--quantize-ple", action="store_true", help="also quantize Gemma 4 per-layer-embedding linears")
    p.add_argument("--no-qkv", action="store_true", help="fp8_dynamic: o_proj and MLP only")
    p.add_argument("--num-samples", type=int, help="w4a16_gptq: calibration samples (default 64)")
    p.add_argument("--seed", type=int, help="w4a16_gptq: calibration seed (default 0)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    params = {"quantize_ple": args.quantize_ple} if args.quantize_ple else {}
    if args.no_qkv:
        params["include_qkv"] = False
    params.update({k: v for k, v in (("num_samples", args.num_samples), ("seed", args.seed)) if v is not None})
    config = config_from_name(args.scheme, **params)
    from compress.checkpoint import compress_checkpoint

    out = compress_checkpoint(args.src_dir, args.out_dir, config)
    print(f"wrote {out} ({type(config).__name__})")


if __name__ == "__main__":
    main()

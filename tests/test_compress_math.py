"""Quantization math: the int4 byte layout, codec round trips through files, GPTQ against RTN."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from compress.codecs import decode, encode
from compress.gptq import accumulate_hessian, gptq_quantize_int4
from compress.int4 import int4_group_scales, pack_int4, quantize_int4, unpack_int4
from compress.schemes import layer_spec
from compress.st_stream import ShardWriter

SCHEMES = ("fp8", "fp8_dynamic", "w4a16_rtn", "w8a8_int8")


def test_int4_packing_matches_the_format_byte_for_byte():
    # Row 0 holds -8..7 in input order; row 1 holds the reversed values 7..-8.
    values = torch.tensor([list(range(-8, 8)), list(range(7, -9, -1))], dtype=torch.int8)
    packed = pack_int4(values)
    assert packed.dtype == torch.int32 and packed.shape == (2, 2)
    # Stored nibbles are value + 8, first input channel in the lowest nibble, and the
    # int32 words are little-endian in memory: so the bytes read 0x10, 0x32, 0x54, ...
    expected = bytes([0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE, 0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01])
    assert packed.numpy().tobytes() == expected
    assert torch.equal(unpack_int4(packed, (2, 16)), values)


def test_int4_packing_agrees_with_compressed_tensors():
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    values = torch.randint(-8, 8, (16, 256), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pack_int4(values), pack_to_int32(values, 4))
    assert torch.equal(unpack_from_int32(pack_int4(values), 4, torch.Size([16, 256])), values)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_save_load_reproduces_dequantized_weight_exactly(tmp_path, scheme, dtype):
    spec = layer_spec(scheme)
    weight = (torch.randn(64, 256, generator=torch.Generator().manual_seed(1)) * 0.02).to(dtype)
    stored = encode(weight, spec)
    expected = decode(stored, spec, dtype)
    writer = ShardWriter(tmp_path)
    for suffix, tensor in stored.items():
        writer.add_tensor(f"layer.{suffix}", tensor)
    name = writer.finish()["layer.weight_scale"]
    with safe_open(str(tmp_path / name), framework="pt") as f:
        loaded = {key.split(".", 1)[1]: f.get_tensor(key) for key in f.keys()}
    assert {k: v.dtype for k, v in loaded.items()} == {k: v.dtype for k, v in stored.items()}
    assert torch.equal(decode(loaded, spec, dtype), expected)
    assert not torch.equal(expected, weight)  # something was actually quantized


@pytest.mark.parametrize("scheme", SCHEMES)
def test_decoding_agrees_with_compressed_tensors_decompressors(scheme):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationScheme

    from compress.codecs import CODECS
    from compress.ct_config import _input_args, _weight_args

    spec = layer_spec(scheme)
    weight = torch.randn(32, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    stored = encode(weight, spec)
    ct_scheme = QuantizationScheme(targets=["Linear"], weights=_weight_args(spec), input_activations=_input_args(spec))
    compressor = BaseCompressor.load_from_registry(CODECS[spec.weight].format)
    theirs = compressor.decompress(dict(stored), ct_scheme)["weight"]
    assert torch.allclose(theirs.float(), decode(stored, spec, torch.float32), rtol=0, atol=1e-7)


def _correlated_inputs(rows: int, features: int, seed: int) -> torch.Tensor:
    # Activations of real layers share a few dominant directions; mimic that with a low-rank mix.
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, features, generator=g)
    return torch.randn(rows, 8, generator=g) @ basis + 0.1 * torch.randn(rows, features, generator=g)


def test_gptq_has_lower_output_error_than_rtn_on_correlated_inputs():
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(3)) * 0.02
    x = _correlated_inputs(2048, 256, seed=4)
    hessian, _ = accumulate_hessian(torch.zeros(256, 256), 0, x)
    scales = int4_group_scales(weight, 128, torch.float32)
    rtn = quantize_int4(weight, scales, 128).float() * scales.repeat_interleave(128, 1)
    gptq = gptq_quantize_int4(weight, hessian, scales, 128).float() * scales.repeat_interleave(128, 1)
    reference = x @ weight.T
    rtn_error = torch.linalg.norm(x @ rtn.T - reference)
    gptq_error = torch.linalg.norm(x @ gptq.T - reference)
    assert gptq_error < 0.7 * rtn_error


def test_hessian_accumulation_is_the_mean_over_all_rows():
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(5))
    h, n = accumulate_hessian(torch.zeros(4, 4), 0, x[:3])
    h, n = accumulate_hessian(h, n, x[3:])
    assert n == 10
    assert torch.allclose(h, 2.0 / 10 * x.T @ x, atol=1e-6)


def test_gptq_zeroes_columns_calibration_never_excited():
    weight = torch.randn(16, 128, generator=torch.Generator().manual_seed(6))
    x = torch.randn(256, 128, generator=torch.Generator().manual_seed(7))
    x[:, 5] = 0.0
    hessian, _ = accumulate_hessian(torch.zeros(128, 128), 0, x)
    q = gptq_quantize_int4(weight, hessian, int4_group_scales(weight, 128, torch.float32), 128)
    assert torch.all(q[:, 5] == 0) and q.abs().sum() > 0

"""GPTQ for int4 group weights: Hessian accumulation and the blocked column-wise solve."""

from __future__ import annotations

import torch

from compress.int4 import INT4_MAX, INT4_MIN


def accumulate_hessian(hessian: torch.Tensor, count: int, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Folds a batch of layer inputs into the running H = 2/N * sum(x x^T), in float32.

    Args:
        hessian: [in, in] float32 running Hessian over `count` rows so far.
        count: number of input rows (tokens) already folded in (N so far).
        x: inputs of any leading shape, last dim = in_features.

    Returns:
        The updated Hessian and row count.
    """
    rows = x.detach().reshape(-1, x.shape[-1]).float()
    new_count = count + rows.shape[0]
    if rows.shape[0] == 0:
        return hessian, count
    hessian = hessian * (count / new_count) + (rows.T @ rows) * (2.0 / new_count)
    return hessian, new_count


def _inverse_cholesky(hessian: torch.Tensor, dampening_frac: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1, damp = dampening_frac * mean(diag H)."""
    damp = dampening_frac * torch.mean(torch.diag(hessian))
    h = hessian + damp * torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True)


def gptq_quantize_int4(
    w: torch.Tensor,
    hessian: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    block_size: int = 128,
    dampening_frac: float = 0.01,
    act_order: bool = True,
) -> torch.Tensor:
    """Int4 values for `w` that minimise the output error on the calibration inputs.

    Args:
        w: [out, in] weight.
        hessian: [in, in] float32 H from accumulate_hessian.
        scales: [out, in / group_size] group scales, fixed before the pass (static groups),
            so the stored scales are exactly these and no g_idx is needed.
        group_size: input channels per scale.
        block_size: columns per block; errors reach later blocks in one lazy update.
        dampening_frac: dampening as a fraction of mean(diag H).
        act_order: visit columns by decreasing diag(H) (the group of a column never changes).

    Returns:
        [out, in] int8 tensor of values in [-8, 7], on w's device (where the solve runs; the
        Hessian is moved there).
    """
    weight = w.detach().float().clone()
    h = hessian.to(weight.device, copy=True)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0  # a column never excited by calibration: keep H invertible
    weight[:, dead] = 0.0
    order = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(h.shape[0], device=h.device)
    weight, h = weight[:, order], h[order][:, order]
    column_scales = scales.float()[:, order // group_size]
    hinv = _inverse_cholesky(h, dampening_frac)
    q = _blocked_solve(weight, hinv, column_scales, block_size)
    result = torch.empty_like(q)
    result[:, order] = q
    return result


def _blocked_solve(weight: torch.Tensor, hinv: torch.Tensor, column_scales: torch.Tensor,
                   block_size: int) -> torch.Tensor:
    """Quantizes columns in order, spreading each column's error onto the ones after it."""
    columns = weight.shape[1]
    q = torch.zeros(weight.shape, dtype=torch.int8, device=weight.device)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block = weight[:, start:end].clone()
        errors = torch.zeros_like(block)
        hinv_block = hinv[start:end, start:end]
        for i in range(end - start):
            scale = column_scales[:, start + i]
            values = torch.round(block[:, i] / scale).clamp(INT4_MIN, INT4_MAX)
            q[:, start + i] = values.to(torch.int8)
            error = (block[:, i] - values * scale) / hinv_block[i, i]
            block[:, i:] -= error.unsqueeze(1) @ hinv_block[i, i:].unsqueeze(0)
            errors[:, i] = error
        weight[:, end:] -= errors @ hinv[start:end, end:]
    return q

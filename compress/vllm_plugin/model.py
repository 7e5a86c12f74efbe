"""vLLM's multimodal Gemma 4 with FLAP-pruned MLPs: a width per decoder layer and a down_proj bias.

Imported only by vLLM (through the lazy registration in compress.vllm_plugin), never by
the harness: it imports vLLM and torch at module level.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.activation import get_act_and_mul_fn
from vllm.model_executor.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.models.gemma4_mm import Gemma4ForConditionalGeneration
from vllm.model_executor.models.utils import PPMissingLayer, maybe_prefix

from compress.vllm_plugin.widths import flap_widths

_BIAS_PARAM = "mlp.down_proj.bias"
# Checkpoint biases of decoder layers; only down_proj's is part of the pruned format
# (q/k/v/o biases too when the config sets attention_bias).
_DECODER_BIAS = re.compile(r"model\.language_model\.layers\.\d+\.(?P<module>[\w.]+)\.bias$")
_ATTENTION_BIASES = frozenset({"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"})


class FlapWeightsError(ValueError):
    """A pruned checkpoint's tensors do not match the FLAP format; the message says how to fix it."""


class FlapGemma4MLP(nn.Module):
    """Gemma 4's gated MLP at a pruned width, with the FLAP compensation bias inside down_proj.

    The bias is added before post_feedforward_layernorm (which precedes the residual add), as
    the pruned model was calibrated. Linears take the checkpoint's quant_config, so a pruned
    checkpoint quantized afterwards is served with the same kernels as a stock one.
    """

    def __init__(self, hidden_size: int, width: int, hidden_activation: str,
                 quant_config: QuantizationConfig | None, prefix: str) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [width] * 2, bias=False, quant_config=quant_config,
                                                       prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(width, hidden_size, bias=True, quant_config=quant_config,
                                           prefix=f"{prefix}.down_proj")
        self.act_fn = get_act_and_mul_fn(hidden_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, _ = self.gate_up_proj(x)
        out, _ = self.down_proj(self.act_fn(gate_up))
        return out


class FlapGemma4ForConditionalGeneration(Gemma4ForConditionalGeneration):
    """Stock vLLM Gemma 4 whose decoder MLPs are replaced by pruned-width ones after it is built.

    Replacing after construction keeps vLLM's own layer code; the cost is that the stock
    full-width MLPs exist briefly while the model is built (each is freed as it is replaced).
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        text = vllm_config.model_config.hf_config.text_config
        where = f"{vllm_config.model_config.model}/config.json"
        # Validated before anything is allocated.
        widths = flap_widths(text.num_hidden_layers, getattr(text, "intermediate_sizes", None), where)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        for index, layer in enumerate(self.language_model.model.layers):
            if isinstance(layer, PPMissingLayer):  # another pipeline stage's layer
                continue
            layer.mlp = FlapGemma4MLP(text.hidden_size, widths[index], text.hidden_activation, self.quant_config,
                                      maybe_prefix(prefix, f"language_model.model.layers.{index}.mlp"))
        self._attention_bias = bool(getattr(text, "attention_bias", False))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """vLLM's loading, minus its silent skip of unexpected biases; every down_proj bias must load.

        Raises:
            FlapWeightsError: a decoder bias the model has no place for, or a down_proj bias
                missing from the checkpoint.
        """
        loaded = super().load_weights(self._refuse_unknown_biases(weights))
        expected = {name for name, _ in self.named_parameters() if name.endswith(_BIAS_PARAM)}
        missing = sorted(expected - loaded)
        if missing:
            raise FlapWeightsError(
                f"the pruned checkpoint has no down_proj.bias for {len(missing)} decoder layer(s) "
                f"(first: {missing[0]}); the FLAP format stores model.language_model.layers.N.mlp.down_proj.bias "
                "for every layer (zeros where nothing was pruned): re-export it with the project's FLAP pruning."
            )
        return loaded

    def _refuse_unknown_biases(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            match = _DECODER_BIAS.match(name)
            if match and not self._bias_expected(match["module"]):
                raise FlapWeightsError(
                    f"checkpoint tensor {name} has no parameter in {type(self).__name__}, which serves only "
                    "mlp.down_proj biases (and attention biases when attention_bias is set); vLLM would drop it "
                    "silently: remove it from the checkpoint or extend the plugin."
                )
            yield name, tensor

    def _bias_expected(self, module: str) -> bool:
        return module == "mlp.down_proj" or (self._attention_bias and module in _ATTENTION_BIASES)

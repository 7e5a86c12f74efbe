"""Activation quantization as the serving kernel applies it, attached to a module as a forward pre-hook."""

from __future__ import annotations

from compress.schemes import LayerSpec


def attach_activation_quant(module, spec: LayerSpec) -> None:
    """Makes `module` see its input as the serving kernel does: quantized per token, on the fly."""
    from compress.codecs import ACTIVATION_FAKE_QUANT

    if spec.activation is not None:
        fake = ACTIVATION_FAKE_QUANT[spec.activation]
        module.register_forward_pre_hook(lambda mod, args: (fake(args[0]), *args[1:]))

"""GgufConfig: a dense checkpoint exported as the GGUF pair llama.cpp's llama-server serves.

One scheme per text-model type (gguf_f16, gguf_bf16, gguf_q8_0, gguf_q4_0, gguf_q4_k_m), so a
variant names its GGUF the way the hub repositories the judges pull with ``llama-server -hf``
name theirs (model-Q4_K_M.gguf). The vision tower and its projector (the mmproj file) are a
separate GGUF at 16 bits unless mmproj_type asks otherwise, as public GGUF releases ship them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

# Types the converter writes itself (its --outtype choices that matter here).
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass(frozen=True)
class GgufConfig:
    """The text model at TAG's type and the mmproj at mmproj_type, both through llama.cpp's converter.

    Types the converter writes (F16, BF16, Q8_0) come straight from it; the others (Q4_0,
    Q4_K_M) are made by llama-quantize from a converted `intermediate` file, as llama.cpp's
    own instructions do. The chosen type is a request: llama-quantize stores a tensor whose
    rows do not split into its blocks (Q4_K needs rows of 256) in another type, and the
    recipe records the types each file really holds.

    Attributes:
        version: config schema version; bump when a field's meaning changes.
        mmproj_type: type of the vision tower and projector's matrices (f16, bf16, q8_0 or f32);
            the file is named mmproj-model-<TYPE>.gguf.
        intermediate: for llama-quantize schemes, the converter's output it quantizes from
            (bf16 is lossless for Gemma's bf16 weights; f32 for a float32 source, at twice the disk).
    """

    SCHEME: ClassVar[str] = ""
    TAG: ClassVar[str] = ""  # the llama.cpp type name, also the file name's suffix
    version: int = 1
    mmproj_type: str = "f16"
    intermediate: str = "bf16"

    def __post_init__(self) -> None:
        if self.mmproj_type not in CONVERTER_TYPES:
            raise ValueError(f"mmproj_type {self.mmproj_type!r}: use one of {', '.join(CONVERTER_TYPES)}")
        if self.intermediate not in ("f32", "f16", "bf16"):
            raise ValueError(f"intermediate {self.intermediate!r}: use f32, f16 or bf16")

    @property
    def converter_type(self) -> str | None:
        """The converter's --outtype for the text model, or None when llama-quantize makes it."""
        return self.TAG.lower() if self.TAG.lower() in CONVERTER_TYPES else None

    @property
    def model_file(self) -> str:
        return f"model-{self.TAG}.gguf"

    @property
    def mmproj_file(self) -> str:
        return f"mmproj-model-{self.mmproj_type.upper()}.gguf"


@dataclass(frozen=True)
class GgufF16Config(GgufConfig):
    SCHEME: ClassVar[str] = "gguf_f16"
    TAG: ClassVar[str] = "F16"


@dataclass(frozen=True)
class GgufBf16Config(GgufConfig):
    SCHEME: ClassVar[str] = "gguf_bf16"
    TAG: ClassVar[str] = "BF16"


@dataclass(frozen=True)
class GgufQ8Config(GgufConfig):
    SCHEME: ClassVar[str] = "gguf_q8_0"
    TAG: ClassVar[str] = "Q8_0"


@dataclass(frozen=True)
class GgufQ4Config(GgufConfig):
    SCHEME: ClassVar[str] = "gguf_q4_0"
    TAG: ClassVar[str] = "Q4_0"


@dataclass(frozen=True)
class GgufQ4KMConfig(GgufConfig):
    SCHEME: ClassVar[str] = "gguf_q4_k_m"
    TAG: ClassVar[str] = "Q4_K_M"


GGUF_CONFIGS = (GgufF16Config, GgufBf16Config, GgufQ8Config, GgufQ4Config, GgufQ4KMConfig)

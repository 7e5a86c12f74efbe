"""lm-eval's local-chat-completions model, one request at a time, keeping what the server reported.

Imports lm_eval at module import: load it lazily (harness.score.lmeval.engine does) so `import harness`
stays light.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests
from lm_eval.models.api_models import JsonChatStr, create_image_prompt
from lm_eval.models.openai_completions import LocalChatCompletion

from harness.energy.clock import now

# lm-eval's image tasks write this placeholder into the prompt text for local models that
# splice image tokens in; over the API the image travels as its own message part instead.
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class ServedRequest:
    """One chat completion sent for an lm-eval document, as the server answered it.

    start_s/end_s are harness.energy.clock.now() seconds just before the HTTP request is
    sent and just after its whole response arrived (non-streamed). Token counts are the
    server's ``usage`` (harness.replay.tokens), zero when the request failed.
    """

    task: str
    doc_id: int
    start_s: float
    end_s: float
    finish_reason: str | None
    prompt_tokens: int
    output_tokens: int
    error: str | None


class RecordingChatModel(LocalChatCompletion):
    """Sends each generate_until request alone and records timing, usage and finish reason.

    The API key goes in the Authorization header of this object only (never in model_args,
    which lm-eval copies into its results). Failed requests are not retried: they are
    recorded with their error and answered with "" (an item the harness scores 0).
    """

    def __init__(self, *, base_url: str, model: str, api_key: str, seed: int, timeout_s: float,
                 max_images: int = 1) -> None:
        super().__init__(base_url=base_url, model=model, tokenizer_backend=None, tokenized_requests=False,
                         header={"Authorization": f"Bearer {api_key}"}, seed=seed, timeout=int(timeout_s),
                         max_images=max_images, num_concurrent=1, max_retries=1)
        self.served: list[ServedRequest] = []

    def generate_until(self, requests_: list, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        return [self._generate_one(r) for r in tqdm(requests_, desc="lm-eval requests", disable=disable_tqdm)]

    def _generate_one(self, request) -> str:
        context, gen_kwargs, *extra = request.args
        messages = _chat(context)
        if extra and extra[0].get("visual"):
            messages = create_image_prompt(list(extra[0]["visual"])[: self.max_images], messages)
            _drop_placeholders(messages[-1])
        start = now()
        try:
            outputs = self.model_call([JsonChatStr(json.dumps(messages))], generate=True, gen_kwargs=gen_kwargs)
            error = None
        except (requests.RequestException, ValueError) as err:  # HTTP failure or a body that is not JSON
            outputs, error = None, f"{type(err).__name__}: {err}"
        end = now()
        text = self.parse_generations(outputs)[0] if outputs else ""
        self.served.append(_served(request, start, end, outputs, error))
        return text or ""


def _chat(context: Any) -> list[dict[str, Any]]:
    """Chat messages from an lm-eval context (JSON when the chat template was applied)."""
    if isinstance(context, JsonChatStr):
        return json.loads(context.prompt)
    return [{"role": "user", "content": str(context)}]


def _drop_placeholders(message: dict[str, Any]) -> None:
    for part in message["content"]:
        if part.get("type") == "text":
            part["text"] = part["text"].replace(IMAGE_PLACEHOLDER, "").strip()


def _served(request, start: float, end: float, outputs: dict | None, error: str | None) -> ServedRequest:
    from harness.replay.tokens import usage_tokens

    choices = (outputs or {}).get("choices") or [{}]
    prompt_tokens, output_tokens = usage_tokens((outputs or {}).get("usage"))
    return ServedRequest(task=request.task_name, doc_id=int(request.doc_id), start_s=start, end_s=end,
                         finish_reason=choices[0].get("finish_reason"), prompt_tokens=prompt_tokens,
                         output_tokens=output_tokens, error=error)

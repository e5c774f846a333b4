"""A language model's continuation of a prompt as text, streamed piece by piece: used by
`bigmodel generate`, the text-sample callback and the server."""

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch


def sample_text(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator,
    device: torch.device,
    on_text: Callable[[str], None] | None = None,
    autocast=nullcontext,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop: Sequence[str] = (),
    use_cache: bool = True,
) -> str:
    """The prompt and its continuation as text; `on_text` receives each new piece as it appears.

    Generation ends early at the first of the `stop` strings in the new text, which is cut before it;
    text that could be the start of a stop string is held back until that is decided."""
    ids = tokenizer.encode(prompt) if prompt else tokenizer.start_ids()
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    hold = max((len(s) for s in stop), default=1) - 1
    new: list[int] = []
    text = shown = ""
    was_training = model.training
    model.eval()
    try:
        with autocast():
            tokens = model.stream(
                idx,
                max_new_tokens,
                temperature,
                top_k,
                generator,  # type: ignore[operator]
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                use_cache=use_cache,
            )
            for tok in tokens:
                new.append(int(tok[0, 0]))
                text = tokenizer.decode(new)
                cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    break
                ready = len(text) - hold
                if on_text is not None and ready > len(shown) and not text[:ready].endswith("\ufffd"):
                    on_text(text[len(shown) : ready])  # whole UTF-8 characters only
                    shown = text[:ready]
    finally:
        model.train(was_training)
    if on_text is not None and len(text) > len(shown):
        on_text(text[len(shown) :])
    return (prompt if prompt else "") + text

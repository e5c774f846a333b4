"""Language-model callbacks: a generated text sample at each evaluation, logged to TensorBoard's Text tab."""

import logging

import torch

from bigmodel.data.tokenizers import tokenizer_from_state
from bigmodel.distributed import is_sharded
from bigmodel.models.text_sample import sample_text
from bigmodel.ranges import NonNegativeFloat, PositiveInt

log = logging.getLogger("bigmodel")


class TextSample:
    """After every `every_n_evals`-th validation, samples `max_new_tokens` tokens after `prompt`
    and logs them as text `val/sample` (and to the console log), under a line with the step, prompt
    and temperature. Does nothing unless the model can
    generate (has `stream`) and the data has a tokenizer, so it can sit in the default callbacks.
    Sampling uses its own seeded generator, so it neither draws from nor changes the training RNG."""

    def __init__(
        self,
        prompt: str = "\n",
        max_new_tokens: PositiveInt = 200,
        temperature: NonNegativeFloat = 0.8,
        top_k: PositiveInt | None = 200,
        seed: int = 0,
        every_n_evals: PositiveInt = 1,
        to_console: bool = True,
    ) -> None:
        self.prompt, self.max_new_tokens, self.temperature, self.top_k = prompt, max_new_tokens, temperature, top_k
        self.seed, self.every_n_evals, self.to_console = seed, every_n_evals, to_console
        self.evals = 0

    def on_validation_end(self, trainer, metrics: dict[str, float]) -> None:
        self.evals += 1
        if not hasattr(trainer.model, "stream"):
            return  # not a language model: nothing to sample
        tokenizer_state = trainer.datamodule.state_dict().get("tokenizer")
        if tokenizer_state is None:
            return
        # a sharded (FSDP) model gathers its weights in every forward: all processes must sample
        # together (the same tokens, from the same seed); otherwise rank 0 samples alone
        if (self.evals - 1) % self.every_n_evals or not (trainer.is_global_zero or is_sharded(trainer.model)):
            return
        tokenizer = tokenizer_from_state(tokenizer_state)
        generator = torch.Generator(device=trainer.device).manual_seed(self.seed)
        threads = torch.get_num_threads()
        if trainer.device.type == "cpu":
            torch.set_num_threads(1)  # one sequence, small matmuls: more threads only wait on each other
        try:
            text = sample_text(
                trainer.model,
                tokenizer,
                self.prompt,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_k=self.top_k,
                generator=generator,
                device=trainer.device,
                autocast=trainer.autocast,
            )
        finally:
            torch.set_num_threads(threads)
        if not trainer.is_global_zero:
            return
        header = (
            f"sample at step {trainer.global_step} · prompt {self.prompt!r} · temperature "
            f"{self.temperature} · top_k {self.top_k}"
        )
        text = text.lstrip("\n")  # the default prompt "\n" would open every sample with a blank line
        trainer.logger.log_text("val/sample", f"{header}\n\n{text}", trainer.global_step)
        if self.to_console:
            log.info(f"{header}:\n{text}")

    def state_dict(self) -> dict:
        return {"evals": self.evals}

    def load_state_dict(self, state: dict) -> None:
        self.evals = state["evals"]

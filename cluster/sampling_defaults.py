"""An expert's default sampling: its checkpoint's `generation_config.json`, then the YAML, then the request.

vLLM serves a model with the sampling its authors recommend (`--generation-config auto` reads
`temperature`, `top_p`, `top_k`, `repetition_penalty` and `max_new_tokens` from the checkpoint)
unless the request says otherwise; a server that falls back to temperature 1.0 instead makes a
small chat model ramble (issue 13: SmolLM2 wandered off "the capital of France" one time in
three). Precedence, lowest first: checkpoint < the expert's `sampling` in the YAML < request.
Like vLLM we ignore `do_sample`: a temperature in the file is the authors' recommendation.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

GENERATION_CONFIG = "generation_config.json"


class SamplingDefaults(BaseModel):
    """Sampling an expert uses when a request leaves a field out; None = the server's neutral value."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="0 = off.")
    repetition_penalty: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=1, description="Used when a request omits max_tokens.")

    def under(self, base: SamplingDefaults) -> SamplingDefaults:
        """These values, with `base` filling what is unset (self wins)."""
        mine = self.model_dump(exclude_none=True)
        return base.model_copy(update=mine)


def checkpoint_sampling(checkpoint: Path) -> SamplingDefaults:
    """Defaults from a checkpoint directory's generation_config.json (none for single files)."""
    path = checkpoint / GENERATION_CONFIG if checkpoint.is_dir() else checkpoint.parent / GENERATION_CONFIG
    if not checkpoint.is_dir() or not path.is_file():
        return SamplingDefaults()
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the generation config: {err}") from err
    fields = {k: data[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty") if k in data}
    if "max_new_tokens" in data:
        fields["max_tokens"] = data["max_new_tokens"]
    return SamplingDefaults.model_validate(fields)

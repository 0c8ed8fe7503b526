"""Tokenizers per expert, loaded once from the expert's checkpoint directory.

Experts built from one base share tokenizer files; the cache is keyed by the tokenizer file's
content hash so 16 demo experts load one tokenizer, not 16.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from transformers import AutoTokenizer

from cluster.config import ClusterConfig


class TokenizerCache:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self._by_expert: dict[str, object] = {}
        self._by_hash: dict[str, object] = {}

    def get(self, expert_id: str):
        if expert_id not in self._by_expert:
            path = self.config.checkpoint_path(self.config.expert(expert_id))
            directory = path if path.is_dir() else path.parent
            token_file = directory / "tokenizer.json"
            key = (
                hashlib.sha256(token_file.read_bytes()).hexdigest() if token_file.exists() else str(directory)
            )
            template = directory / "chat_template.jinja"
            key += hashlib.sha256(template.read_bytes()).hexdigest() if template.exists() else ""
            if key not in self._by_hash:
                self._by_hash[key] = AutoTokenizer.from_pretrained(Path(directory))
            self._by_expert[expert_id] = self._by_hash[key]
        return self._by_expert[expert_id]

"""A batch's KV cache as rows that come and go: merge a prefilled group in, drop finished rows.

Rows are right-aligned (left padding), so every row's next token writes the last column and one
decode step serves the whole batch. The cache is transformers' own `DynamicCache` (the model's
attention reads it unchanged); we only reshape its per-layer tensors [B, H_kv, T, D] when rows
join or leave, TGI-style, never during a step. A join pads the narrower side on the left; a
leave selects the surviving rows and trims leading columns that are padding for all of them, so
the width is always the longest live row, and the cache's bytes are bounded by
rows x longest row x `kv_bytes_per_token` (what the engine's KV budget admits against).

Why not a paged cache: transformers' paged `ContinuousBatchingManager` was measured on this CPU
at 15 tokens/s for 8 requests in all, against 61 for a plain padded batch (issue 13); padding
costs memory, not time, and the budget counts that memory.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def kv_bytes_per_token(model_config, dtype: torch.dtype) -> int:
    """Bytes one token's keys and values take over all layers, from the model's config."""
    text = getattr(model_config, "text_config", None) or model_config
    layers = int(text.num_hidden_layers)
    heads = int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    return 2 * layers * heads * head_dim * torch.empty((), dtype=dtype).element_size()


def _layers(cache: DynamicCache) -> list:
    return [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]


def cache_width(cache: DynamicCache) -> int:
    return cache.get_seq_length()


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes the cache's tensors really hold (what invariant 1 measures).

    Called from the replica's event loop (heartbeats, `stats()`) while the engine thread may be
    filling this very cache mid forward pass, so each layer's tensors are read once and a layer
    whose keys or values are not set yet counts as empty: a fresh-clone run caught a layer with
    keys but no values between a filter and the read."""
    total = 0
    for layer in list(cache.layers):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None:
            continue
        total += keys.numel() * keys.element_size() + values.numel() * values.element_size()
    return total


def _pad_left(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    if columns == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def merge(
    cache: DynamicCache, mask: torch.Tensor, new_cache: DynamicCache, new_mask: torch.Tensor
) -> torch.Tensor:
    """Append `new_cache`'s rows to `cache` in place; returns the merged mask [B + b, W]."""
    width, new_width = mask.shape[1], new_mask.shape[1]
    target = max(width, new_width)
    for layer, new_layer in zip(_layers(cache), _layers(new_cache), strict=True):
        layer.keys = torch.cat(
            [_pad_left(layer.keys, target - width, 2), _pad_left(new_layer.keys, target - new_width, 2)]
        )
        layer.values = torch.cat(
            [_pad_left(layer.values, target - width, 2), _pad_left(new_layer.values, target - new_width, 2)]
        )
    return torch.cat([_pad_left(mask, target - width, 1), _pad_left(new_mask, target - new_width, 1)])


def keep_rows(cache: DynamicCache, mask: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Keep `rows` (in order) and trim columns that are padding for every kept row; returns the mask."""
    index = torch.tensor(rows, dtype=torch.long, device=mask.device)
    mask = mask.index_select(0, index)
    live = mask.any(dim=0).nonzero()
    start = int(live[0]) if live.numel() else mask.shape[1]
    for layer in _layers(cache):
        layer.keys = layer.keys.index_select(0, index)[:, :, start:, :].contiguous()
        layer.values = layer.values.index_select(0, index)[:, :, start:, :].contiguous()
    return mask[:, start:].contiguous()

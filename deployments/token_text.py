"""The bytes and the text of single tokens, as OpenAI's logprobs show them and grammars need them.

`tokenizer.decode([id])` is wrong for both jobs: a byte-level BPE token may hold half of a UTF-8
character (it decodes to U+FFFD) and decoders may strip a leading space. The vocabulary itself
says exactly which bytes each token stands for: byte-level BPE (GPT-2, SmolLM2, Llama 3) spells
bytes with the printable alphabet of `bytes_to_unicode`; SentencePiece spells a space as U+2581
and raw bytes as `<0xNN>`. `TokenBytes` reads that once per tokenizer (a 49k vocabulary: ~50 ms).
"""

from __future__ import annotations

import functools
import re
import threading

_SPIECE_SPACE = "\u2581"
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's reversible byte -> printable character map, inverted (character -> byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class TokenBytes:
    """Bytes of every token id of one tokenizer; special tokens (chat markers, EOS) map to b""."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        vocab: dict[str, int] = tokenizer.get_vocab()
        self.size = max(len(tokenizer), max(vocab.values()) + 1)
        self.special_ids = set(tokenizer.all_special_ids) | {
            i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special
        }
        decoder = _byte_decoder()
        byte_level = sum(all(ch in decoder for ch in token) for token in vocab) > 0.9 * len(vocab)
        table: list[bytes] = [b""] * self.size
        for token, token_id in vocab.items():
            if token_id in self.special_ids:
                continue
            if byte_level and all(ch in decoder for ch in token):
                table[token_id] = bytes(decoder[ch] for ch in token)
                continue
            byte = _BYTE_TOKEN.match(token)
            if byte:
                table[token_id] = bytes([int(byte.group(1), 16)])
            else:
                table[token_id] = token.replace(_SPIECE_SPACE, " ").encode("utf-8")
        self.table = table

    def __getitem__(self, token_id: int) -> bytes:
        if 0 <= token_id < self.size and token_id not in self.special_ids:
            return self.table[token_id]
        return b""

    def text(self, token_id: int) -> str:
        """The token's text; a special token is its own name, a partial UTF-8 sequence is escaped as
        `bytes:\\xNN` (vLLM's spelling), so a client can still line tokens up."""
        if token_id in self.special_ids:
            return self.tokenizer.convert_ids_to_tokens(token_id) or ""
        raw = self[token_id]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


_tables: dict[int, TokenBytes] = {}
_lock = threading.Lock()


def token_bytes(tokenizer) -> TokenBytes:
    """The `TokenBytes` of `tokenizer`, built once per tokenizer object (they are shared per file)."""
    key = id(tokenizer)
    with _lock:
        table = _tables.get(key)
        if table is None or table.tokenizer is not tokenizer:
            table = _tables[key] = TokenBytes(tokenizer)
        return table

"""The sim's prefix cache: counts prompt tokens a real engine would find cached, as vLLM does.

vLLM hashes each full block of 16 tokens together with every block before it; a request's hits
are the tokens of its leading blocks already seen. The sim keeps those chained hashes (bounded,
least recently used dropped first) and reports `vllm:prefix_cache_queries` / `_hits` in tokens,
so a client can measure how much of its prompts the server shared.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

BLOCK = 16
MAX_BLOCKS = 1 << 16


class PrefixCache:
    def __init__(self, block: int = BLOCK, max_blocks: int = MAX_BLOCKS) -> None:
        self.block = block
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def lookup_and_insert(self, tokens: Sequence[object]) -> int:
        """Tokens of `tokens` found cached (whole leading blocks); every full block is then cached."""
        hits = 0
        chained = 0
        missed = False
        for start in range(0, len(tokens) - self.block + 1, self.block):
            chained = hash((chained, tuple(tokens[start:start + self.block])))
            if not missed and chained in self._blocks:
                hits += self.block
                self._blocks.move_to_end(chained)
                continue
            missed = True
            self._blocks[chained] = None
            if len(self._blocks) > self.max_blocks:
                self._blocks.popitem(last=False)
        return hits

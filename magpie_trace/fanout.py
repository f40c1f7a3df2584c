"""Do one thing on every node at once: a launch on 8 nodes should take as long as on one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from magpie_trace.config import NodeConfig
from magpie_trace.errors import MagpieError, NodeError

T = TypeVar("T")


class NodesFailed(NodeError):
    """One or more nodes failed. Named for the first failing node in config order.

    `results` holds what the other nodes returned, so the caller can undo it (stop the nodes that
    did start); `failures` holds every node's exception.
    """

    def __init__(
        self, node: str, message: str, results: dict[str, object], failures: dict[str, Exception]
    ) -> None:
        super().__init__(node, message)
        self.results = results
        self.failures = failures


def on_nodes(fn: Callable[[NodeConfig], T], nodes: Sequence[NodeConfig]) -> dict[str, T]:
    """fn(node) for every node in parallel threads; {node name: result} in config order.

    Waits for all nodes even when one fails, then raises NodesFailed naming the first failing node
    and how many others failed.
    """
    if not nodes:
        return {}
    with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="node") as pool:
        futures = [(node, pool.submit(fn, node)) for node in nodes]
        results: dict[str, T] = {}
        failures: dict[str, Exception] = {}
        for node, future in futures:
            try:
                results[node.name] = future.result()
            except Exception as exc:  # noqa: BLE001 - reported below, naming the node
                failures[node.name] = exc
    if not failures:
        return results
    first_name, first = next(iter(failures.items()))
    message = _describe(first_name, first)
    if len(failures) > 1:
        others = len(failures) - 1
        message += f" (and {others} other node{'s' if others > 1 else ''} failed)"
    raise NodesFailed(first_name, message, dict(results), failures) from first


def _describe(node: str, exc: Exception) -> str:
    """The exception's message without a repeated `node: ` prefix."""
    if isinstance(exc, NodeError) and exc.node == node:
        return str(exc)[len(node) + 2 :]
    if isinstance(exc, MagpieError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"

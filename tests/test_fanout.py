"""on_nodes: every node at once, one error naming the first failing node."""

from __future__ import annotations

import time

import pytest

from magpie_trace.config import NodeConfig
from magpie_trace.errors import NodeError
from magpie_trace.fanout import NodesFailed, on_nodes

NODES = [NodeConfig(host=f"h{i}", name=f"node{i}") for i in range(8)]


def test_results_in_config_order_and_in_parallel() -> None:
    def slow(node: NodeConfig) -> str:
        time.sleep(0.3 - 0.03 * int(node.name[-1]))  # later nodes finish first
        return node.host

    started = time.monotonic()
    results = on_nodes(slow, NODES)
    assert time.monotonic() - started < 1.0  # serial would be 1.56 s
    assert list(results.items()) == [(n.name, n.host) for n in NODES]


def test_first_failing_node_in_config_order_and_count_of_others() -> None:
    def flaky(node: NodeConfig) -> int:
        index = int(node.name[-1])
        if index == 5:
            raise NodeError(node.name, "ssh h5: Connection refused")
        if index == 6:
            time.sleep(0.1)  # fails later in time, but earlier nodes are reported first
            raise RuntimeError("boom")
        if index == 7:
            raise NodeError(node.name, "port 8000 is busy")
        return index

    with pytest.raises(NodesFailed) as info:
        on_nodes(flaky, NODES)
    error = info.value
    assert str(error) == "node5: ssh h5: Connection refused (and 2 other nodes failed)"
    assert error.node == "node5" and isinstance(error, NodeError)
    assert error.results == {f"node{i}": i for i in range(5)}
    assert list(error.failures) == ["node5", "node6", "node7"]
    assert isinstance(error.failures["node6"], RuntimeError)


def test_unexpected_exception_is_named_with_its_type() -> None:
    def bad(node: NodeConfig) -> None:
        raise ValueError("no such rank")

    with pytest.raises(NodesFailed, match=r"^node0: ValueError: no such rank$"):
        on_nodes(bad, NODES[:1])


def test_no_nodes() -> None:
    assert on_nodes(lambda n: 1, []) == {}

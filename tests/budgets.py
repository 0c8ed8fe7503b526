"""Invariant 1 checked against the bytes sockets and DDR stores really hold, not their ledgers.

A `ByteBudgetLRU` plans before it changes anything, so comparing its used bytes with its own
capacity cannot fail. These checks take what the socket's models and KV cache really are
(`HeldTensors`) and what Ray says the DDR store's objects weigh (`HeldObjects`), and compare them
with the config's budgets. Each also checks that it measured something: bytes at least the
catalog size of what it names, so a measurement that counts nothing cannot pass vacuously.
"""

from __future__ import annotations

from memtier.models import HeldObjects, HeldTensors


def check_socket(held: HeldTensors, hbm_per_socket: int, sizes: dict[str, int], where: str = "") -> None:
    """Weights + KV within the socket's HBM; every model it holds charged in its ledger."""
    real = held.weights_tensor_bytes + held.kv_tensor_bytes
    assert real <= hbm_per_socket, f"{where}: holds {real} bytes, budget {hbm_per_socket}: {held}"
    assert held.weights_tensor_bytes >= sum(sizes[e] for e in held.materialised), f"{where}: {held}"
    assert set(held.materialised) <= set(held.ledger), f"{where}: a model outside the ledger: {held}"
    # Every charge is a built model or one still paging in: nothing was freed while still charged.
    assert set(held.ledger) - set(held.materialised) <= set(held.loading), f"{where}: {held}"
    assert set(held.running) <= set(held.materialised), f"{where}: rows run on a freed model: {held}"


def check_ddr(held: HeldObjects, ddr_per_node: int, sizes: dict[str, int], where: str = "") -> None:
    """The DDR store's objects within the node's DDR, on that node, each charged in its ledger."""
    assert held.object_bytes <= ddr_per_node, f"{where}: {held.object_bytes} bytes, budget {ddr_per_node}"
    assert held.object_bytes >= sum(sizes[e] for e in held.held), f"{where}: {held}"
    assert set(held.held) <= set(held.ledger), f"{where}: an object outside the ledger: {held}"
    assert not held.off_node, f"{where}: objects not on the store's node: {held.off_node}"

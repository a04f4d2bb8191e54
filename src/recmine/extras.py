"""Optional parts of recmine and the packages they need: a clear error naming the extra to install.

Retrieval (faery) and mining (g2miner) need only numpy, numba, typer and rich. The parameter servers and the
recommender (`recmine[ekko]`: PyTorch, gRPC), the retrieval service (`recmine[service]`: gRPC), the HTML report
(`recmine[report]`: matplotlib), the peers we benchmark against (`recmine[bench]`) and Ray scale-out
(`recmine[dist]`) are extras, so installing recmine never pulls PyTorch into an environment that only mines graphs.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

EXTRAS: dict[str, str] = {
    "ekko": "the ekko parameter servers, recommender and simulator (PyTorch, gRPC, SimPy)",
    "service": "the faery retrieval service and its client (gRPC)",
    "report": "the demo's HTML report (matplotlib)",
    "bench": "the peers recmine is measured against (faiss-cpu, networkx, igraph)",
    "dist": "scale-out past one machine (Ray)",
}


class MissingExtraError(ImportError):
    """A part of recmine was used whose optional dependencies are not installed."""


def _message(extra: str, missing: str) -> str:
    return (f"{EXTRAS[extra]} needs the Python package {missing!r}, which is not installed: "
            f"pip install 'recmine[{extra}]'")


def _known(extra: str) -> None:
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r} (known: {', '.join(EXTRAS)})")


def check(extra: str, *modules: str) -> None:
    """Raise MissingExtraError unless every top-level module is installed (found, not imported: cheap, so a
    parameter server never pays for importing PyTorch just to learn it is there)."""
    _known(extra)
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            raise MissingExtraError(_message(extra, module), name=module)


def require(module: str, extra: str) -> ModuleType:
    """Import `module`, or raise MissingExtraError naming the pip extra that provides it.

    Parameters
    ----------
    module
        Dotted module name, e.g. ``"torch"`` or ``"grpc_tools.protoc"``.
    extra
        The recmine extra that installs it (a key of `EXTRAS`).

    Returns
    -------
    The imported module.

    Raises
    ------
    MissingExtraError
        The module (or one it imports) is not installed.
    """
    _known(extra)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        raise MissingExtraError(_message(extra, missing), name=missing) from exc

"""Build gRPC stubs from a package's `.proto` at first import (the .proto is the contract; stubs are generated,
never hand-written). Generated modules are cached by the proto's content hash."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

_lock = threading.Lock()


def _cache_root() -> Path:
    base = os.environ.get("RECMINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "recmine"
    )
    return Path(base) / "protos"


def load_proto(proto: Path, package: str) -> tuple[ModuleType, ModuleType]:
    """Compile `proto` (a file inside `package`'s folder) and import it as `package.<stem>_pb2` and
    `package.<stem>_pb2_grpc`. Returns (pb2, pb2_grpc)."""
    stem = proto.stem
    pb2_name, grpc_name = f"{package}.{stem}_pb2", f"{package}.{stem}_pb2_grpc"
    with _lock:
        if pb2_name in sys.modules and grpc_name in sys.modules:
            return sys.modules[pb2_name], sys.modules[grpc_name]
        source = proto.read_bytes()
        digest = hashlib.sha256(source + package.encode()).hexdigest()[:16]
        out = _cache_root() / digest
        rel = Path(*package.split("."))
        pb2_file, grpc_file = out / rel / f"{stem}_pb2.py", out / rel / f"{stem}_pb2_grpc.py"
        if not (pb2_file.exists() and grpc_file.exists()):
            _compile(proto, package, out)
        pb2 = _import(pb2_name, pb2_file)
        grpc_mod = _import(grpc_name, grpc_file)
        return pb2, grpc_mod


def _compile(proto: Path, package: str, out: Path) -> None:
    from grpc_tools import protoc  # imported lazily: only needed on first use

    rel = Path(*package.split("."))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src_root = Path(tmp) / "src"
        (src_root / rel).mkdir(parents=True)
        (src_root / rel / proto.name).write_bytes(proto.read_bytes())
        build = Path(tmp) / "build"
        build.mkdir()
        include = str(Path(protoc.__file__).parent / "_proto")
        args = [
            "protoc",
            f"-I{src_root}",
            f"-I{include}",
            f"--python_out={build}",
            f"--grpc_python_out={build}",
            str(rel / proto.name),
        ]
        cwd = os.getcwd()
        try:
            os.chdir(src_root)
            code = protoc.main(args)
        finally:
            os.chdir(cwd)
        if code != 0:
            raise RuntimeError(f"protoc failed ({code}) on {proto}")
        try:
            os.replace(build, out)
        except OSError:
            if not out.exists():  # another process won the race; theirs is identical
                raise


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import generated module {name} from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module

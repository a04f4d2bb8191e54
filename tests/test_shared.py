"""Tests of the small shared parts: result printing and proto compilation."""

from __future__ import annotations

import json

import numpy as np

from recmine.output import emit


def test_emit_json_is_one_object(capsys):
    emit({"count": np.int64(3), "rows": [{"a": 1.5}], "bad": float("nan")}, as_json=True, title="t")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert json.loads(out[0]) == {"count": 3, "rows": [{"a": 1.5}], "bad": None}


def test_emit_table_shows_values(capsys):
    emit({"count": 12345, "rows": [{"pattern": "0-1", "count": 7}]}, as_json=False, title="t")
    out = capsys.readouterr().out
    assert "12,345" in out and "0-1" in out


def test_load_proto_compiles_and_imports(tmp_path, monkeypatch):
    from recmine.protos import load_proto

    monkeypatch.setenv("RECMINE_CACHE", str(tmp_path / "cache"))
    pkg = tmp_path / "pkgroot"
    proto = pkg / "demo_t.proto"
    pkg.mkdir()
    proto.write_text(
        'syntax = "proto3";\npackage demo_t;\nmessage Ping { int64 n = 1; }\n'
        "service Echo { rpc Call(Ping) returns (Ping); }\n"
    )
    pb2, pb2_grpc = load_proto(proto, "recmine")
    assert pb2.Ping(n=5).n == 5
    assert hasattr(pb2_grpc, "EchoStub")

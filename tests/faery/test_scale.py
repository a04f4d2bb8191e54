"""faery at scale (issue 16): the batch (GEMM) and filtered paths over several lanes and blocks equal the float64
oracle restricted to the allowed rows; a corpus built from a memory-mapped .npy or an iterator of chunks; a master
copy on disk; instant load (maps, no checksum) and verify(); large K through the sampled threshold; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recmine.faery import Index, simd
from recmine.faery import index as index_module
from recmine.faery.exact import brute_force_topk
from recmine.faery.index import BATCH_MIN_QUERIES, SAMPLE_MIN_K, SAMPLE_STRIDE

N, D = 200_000, 32


@pytest.fixture(scope="module")
def corpus() -> dict:
    """200k rows with heavy-tailed norms, exact duplicates far apart, ids in random order and two attributes."""
    rng = np.random.default_rng(160)
    x = rng.standard_normal((N, D)).astype(np.float32) * rng.pareto(3.0, (N, 1)).astype(np.float32)
    x[N - 300:] = x[:300]  # ties in the first and the last lane: the smaller id wins
    ids = rng.permutation(4 * N)[:N].astype(np.int64)
    cat = rng.integers(0, 100, N)
    price = rng.integers(0, 1000, N)
    q = rng.standard_normal((12, D)).astype(np.float32)
    q[0] = x[5]
    return {"x": x, "ids": ids, "cat": cat, "price": price, "q": q}


@pytest.fixture(scope="module")
def built(corpus) -> dict[str, Index]:
    out = {}
    for storage in ("int8", "fp32"):
        idx = Index(D, storage=storage)
        idx.add(corpus["x"], ids=corpus["ids"], attrs={"cat": corpus["cat"], "price": corpus["price"]})
        out[storage] = idx
    return out


def _expect(c: dict, keep: np.ndarray, q: np.ndarray, k: int, metric: str = "ip"):
    return brute_force_topk(c["x"][keep], c["ids"][keep], q, k, metric)


@pytest.mark.parametrize("storage", ["int8", "fp32"])
def test_batch_and_single_paths_equal_the_oracle_over_several_lanes(corpus, built, storage, monkeypatch):
    """K = 10, 1000 and 6000 (the sampled-threshold path) through the single path (one query) and the batch path
    (a tile of queries), on 200k rows split over lanes and blocks."""
    monkeypatch.setattr(index_module, "PARALLEL_MIN_BYTES", 0)  # the single path over every thread too
    assert 12 >= BATCH_MIN_QUERIES[storage]
    assert 6000 >= SAMPLE_MIN_K and N >= SAMPLE_STRIDE * 64 * 8
    idx, q = built[storage], corpus["q"]
    everything = np.arange(N)
    for k in (10, 1000, 6000):
        want_s, want_i = _expect(corpus, everything, q, k)
        got_s, got_i = idx.search(q, k)
        np.testing.assert_array_equal(got_i, want_i, err_msg=f"batch K={k}")
        np.testing.assert_allclose(got_s, want_s, rtol=1e-6, atol=1e-6 * np.abs(want_s).max())
        for i in (0, 7):
            np.testing.assert_array_equal(idx.search(q[i], k)[1][0], want_i[i], err_msg=f"single K={k}")


@pytest.mark.parametrize("storage", ["int8", "fp32"])
def test_filters_inside_the_scan_equal_the_oracle_on_allowed_rows(corpus, built, storage, monkeypatch):
    """An id set, an id bitmap and attribute predicates at ~1%, ~10% and ~50% selectivity (a row list or a mask),
    batch and single queries, against the oracle over exactly the allowed rows."""
    monkeypatch.setattr(index_module, "PARALLEL_MIN_BYTES", 0)  # several lanes on the single path too
    idx, q, ids = built[storage], corpus["q"], corpus["ids"]
    rng = np.random.default_rng(3)
    pick = np.sort(rng.choice(N, 2000, replace=False))
    bitmap = np.zeros(4 * N, np.bool_)
    bitmap[ids[rng.random(N) < 0.5]] = True
    cases = [
        ("id set, 1%", {"allow": ids[pick]}, np.isin(np.arange(N), pick)),
        ("bitmap, 50%", {"allow": bitmap}, bitmap[ids]),
        ("category in a set, 10%", {"where": {"cat": {3, 14, 15, 92, 65, 35, 89, 79, 32, 38}}},
         np.isin(corpus["cat"], [3, 14, 15, 92, 65, 35, 89, 79, 32, 38])),
        ("price range, 1%", {"where": {"price": range(500, 510)}}, (corpus["price"] >= 500) & (corpus["price"] < 510)),
        ("set and range and bitmap", {"allow": bitmap, "where": {"cat": range(0, 30), "price": range(0, 500)}},
         bitmap[ids] & (corpus["cat"] < 30) & (corpus["price"] < 500)),
    ]
    for name, kw, keep in cases:
        rows = np.flatnonzero(keep)
        for k in (10, 300):
            want = _expect(corpus, rows, q, k)[1]
            np.testing.assert_array_equal(idx.search(q, k, **kw)[1], want, err_msg=f"{name}, batch, K={k}")
            np.testing.assert_array_equal(idx.search(q[3], k, **kw)[1][0], want[3], err_msg=f"{name}, single, K={k}")
    few = ids[pick[:5]]  # fewer allowed rows than k: padded
    s, i = idx.search(q[:2], 8, allow=few)
    assert set(i[0, :5].tolist()) == set(few.tolist()) and (i[:, 5:] == -1).all() and np.isneginf(s[:, 5:]).all()
    assert (idx.search(q[:2], 3, allow=[])[1] == -1).all()
    tiny = np.zeros(4 * N, np.bool_)
    tiny[few[:3]] = True  # a bitmap allowing 3 rows: checked inside the scan, the tail padded
    for qq in (q[:1], q):
        s, i = idx.search(qq, 8, allow=tiny)
        assert (np.sort(i[:, :3], axis=1) == np.sort(few[:3])).all() and (i[:, 3:] == -1).all()


def test_filters_after_removal_and_l2(corpus):
    """Tombstones and a filter together, l2 metric, batch path."""
    c = corpus
    idx = Index(D, metric="l2")
    idx.add(c["x"][:60_000], ids=c["ids"][:60_000], attrs={"cat": c["cat"][:60_000]})
    idx.remove(c["ids"][:20_000:3])
    keep = np.ones(60_000, np.bool_)
    keep[:20_000:3] = False
    keep &= c["cat"][:60_000] % 2 == 0
    rows = np.flatnonzero(keep)
    want = brute_force_topk(c["x"][rows], c["ids"][rows], c["q"], 50, "l2")[1]
    evens = set(range(0, 100, 2))
    np.testing.assert_array_equal(idx.search(c["q"], 50, where={"cat": evens})[1], want)


def test_vnni_and_generic_kernels_give_identical_sums():
    """The int8 tile and row kernels with and without VNNI instructions produce the same exact integer sums."""
    from numba import njit

    @njit
    def tiles(x, rows, qt, vnni):
        out = np.zeros((rows.size, 64), np.int32)
        for r0 in range(0, rows.size, simd.RT):
            if vnni:
                simd.tile64(x, rows, r0, qt, out[r0:])
            else:
                simd.generic_tile64(x, rows, r0, qt, out[r0:])
        return out

    @njit
    def dots(x, rows, hi, lo, vnni):
        out = np.zeros(rows.size, np.int64)
        for r0 in range(0, rows.size, 8):
            if vnni:
                simd.rowdot8(x, rows, r0, hi, lo, out)
            else:
                simd.generic_rowdot8(x, rows, r0, hi, lo, out)
        return out

    rng = np.random.default_rng(11)
    x = rng.integers(-127, 128, (500, 128)).astype(np.int8)
    q = rng.integers(-127, 128, (64, 128)).astype(np.int8)
    rows = rng.integers(0, 500, 8 * simd.RT).astype(np.int64)  # whole tiles (RT rows) and groups of eight
    qt = q.reshape(64, 32, 4).transpose(1, 0, 2).reshape(32, 256).copy()
    want = (x[rows].astype(np.int64) + 128) @ q.T.astype(np.int64)
    for vnni in (True, False):
        np.testing.assert_array_equal(tiles(x, rows, qt, vnni), want)
        np.testing.assert_array_equal(dots(x, rows, q[1], q[2], vnni), 256 * want[:, 1] + want[:, 2])
    # the 16-bit query kernel at the extremes of its range (largest sums) and over many 64-byte chunks
    for dim in (64, 256, 320, 4096):
        xe = np.where(rng.uniform(size=(40, dim)) < 0.5, 127, -127).astype(np.int8)
        xe[::3] = 127
        hi = np.where(rng.uniform(size=dim) < 0.8, 127, -127).astype(np.int8)
        lo = np.where(rng.uniform(size=dim) < 0.5, 127, -128).astype(np.int8)
        hi[: dim // 2], lo[: dim // 2] = 127, 127
        rows = rng.integers(0, 40, 24).astype(np.int64)
        want = ((xe[rows].astype(np.int64) + 128) * (256 * hi.astype(np.int64) + lo)).sum(axis=1)
        for vnni in (True, False):
            np.testing.assert_array_equal(dots(xe, rows, hi, lo, vnni), want)


def test_build_from_a_memory_mapped_file_and_from_chunks(tmp_path, corpus):
    """The same index from an in-RAM array, a memory-mapped .npy and a generator of chunks; a NaN in a later chunk
    rejects the whole call and leaves the index as it was."""
    x, ids = corpus["x"][:70_000], corpus["ids"][:70_000]
    np.save(tmp_path / "x.npy", x.astype(np.float64))  # float64 on disk: converted chunk by chunk
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    a, b, c = Index(D), Index(D), Index(D)
    a.add(x, ids=ids)
    b.add(mm, ids=ids)
    c.add((x[lo: lo + 9_999] for lo in range(0, 70_000, 9_999)), ids=ids)
    q = corpus["q"]
    want = brute_force_topk(x, ids, q, 20)[1]
    for idx in (a, b, c):
        assert len(idx) == 70_000
        np.testing.assert_array_equal(idx.search(q, 20)[1], want)
    bad = x[:30_000].copy()
    bad[25_000, 3] = np.nan
    before = c.search(q, 20)
    with pytest.raises(ValueError, match="vector 25000 contains NaN"):
        c.add(bad[lo: lo + 10_000] for lo in range(0, 30_000, 10_000))
    assert len(c) == 70_000 and c.corpus.size == 70_000
    np.testing.assert_array_equal(c.search(q, 20)[1], before[1])
    with pytest.raises(ValueError, match="3 ids for 2 vectors"):
        c.add(iter([x[:1], x[1:2]]), ids=[1, 2, 3])


def test_master_copy_on_disk(tmp_path, corpus):
    """master_path: the fp32 master lives in a memory-mapped file that grows in place; searches, removal, compact,
    save/load and updates stay exact."""
    x, ids = corpus["x"][:50_000], corpus["ids"][:50_000]
    path = tmp_path / "master.f32"
    idx = Index(D, metric="cosine", master_path=path)
    for lo in range(0, 50_000, 20_000):  # several adds: the file grows
        idx.add(x[lo: lo + 20_000], ids=ids[lo: lo + 20_000])
    assert isinstance(idx.corpus.master, np.memmap) and path.stat().st_size >= 50_000 * D * 4
    assert idx.stats()["master"] == str(path)
    q = corpus["q"]
    np.testing.assert_array_equal(idx.search(q, 30)[1], brute_force_topk(x, ids, q, 30, "cosine")[1])
    idx.remove(ids[:10_000])
    idx.update(ids[10_000:10_010], x[:10])
    live = x[10_000:].copy()
    live[:10] = x[:10]
    want = brute_force_topk(live, ids[10_000:], q, 30, "cosine")[1]
    np.testing.assert_array_equal(idx.search(q, 30)[1], want)
    idx.compact()
    np.testing.assert_array_equal(idx.search(q, 30)[1], want)
    idx.save(tmp_path / "idx")
    back = Index.load(tmp_path / "idx", master_path=tmp_path / "m2.f32")
    np.testing.assert_array_equal(back.search(q, 30)[1], want)
    back.add(x[:5], ids=[-1, -2, -3, -4, -5])  # the first write copies the master to its own file, not to RAM
    assert isinstance(back.corpus.master, np.memmap) and back.contains(-3)


def test_load_maps_without_reading_and_verify_checks_every_file(tmp_path, corpus):
    x, ids = corpus["x"][:40_000], corpus["ids"][:40_000]
    idx = Index(D)
    idx.add(x, ids=ids, attrs={"cat": corpus["cat"][:40_000]})
    idx.save(tmp_path / "idx")
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["format"] == 2
    master = tmp_path / "idx" / "master.npy"
    raw = bytearray(master.read_bytes())
    raw[-7] ^= 0x40  # same size, one bit flipped: only a checksum finds it
    master.write_bytes(bytes(raw))
    back = Index.load(tmp_path / "idx")  # no checksum on open: the corruption is not read
    assert all(isinstance(getattr(back.corpus, a), np.memmap) for a in ("master", "packed", "ids", "live"))
    assert back.attributes == ("cat",) and len(back) == 40_000
    with pytest.raises(ValueError, match=r"master\.npy: checksum mismatch"):
        Index.verify(tmp_path / "idx")
    with pytest.raises(ValueError, match=r"master\.npy: checksum mismatch"):
        Index.load(tmp_path / "idx", verify=True)
    raw[-7] ^= 0x40
    master.write_bytes(bytes(raw))
    assert set(Index.verify(tmp_path / "idx")) >= {"master.npy", "packed.npy", "attr.cat.npy"}
    q = corpus["q"]
    keep = corpus["cat"][:40_000] < 50
    want = brute_force_topk(x[keep], ids[keep], q, 10)[1]
    np.testing.assert_array_equal(Index.load(tmp_path / "idx").search(q, 10, where={"cat": range(50)})[1], want)


def test_format_1_directories_still_load(tmp_path, corpus):
    """An index saved by the previous format (sqnorms.npy, no live count, no attributes) loads and searches."""
    x, ids = corpus["x"][:5000], corpus["ids"][:5000]
    idx = Index(D, metric="l2")
    idx.add(x, ids=ids)
    d = tmp_path / "old"
    idx.save(d)
    man = json.loads((d / "manifest.json").read_text())
    np.save(d / "sqnorms.npy", (x.astype(np.float64) ** 2).sum(axis=1))
    man["files"]["sqnorms"] = {"bytes": (d / "sqnorms.npy").stat().st_size, "crc32": 0}
    for key in ("live", "attrs"):
        man.pop(key)
    man["format"] = 1
    (d / "manifest.json").write_text(json.dumps(man))
    back = Index.load(d)
    assert len(back) == 5000
    np.testing.assert_array_equal(back.search(corpus["q"], 10)[1], brute_force_topk(x, ids, corpus["q"], 10, "l2")[1])
    man["format"] = 3
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="format 3 was written by a newer faery"):
        Index.load(d)


def test_bad_input_gets_clear_errors(tmp_path, corpus):
    idx = Index(D)
    idx.add(corpus["x"][:1000], ids=corpus["ids"][:1000], attrs={"cat": corpus["cat"][:1000]})
    q = corpus["q"][:2]
    unknown = int(corpus["ids"][5000])
    cases = [
        (lambda: idx.search(q, 5, allow=[int(corpus["ids"][3]), unknown]), KeyError, f"allow-list id {unknown}"),
        (lambda: idx.search(q, 5, allow=np.array([0.5, 1.5])), ValueError, "allow must be a set of integer ids"),
        (lambda: idx.search(q, 5, where={"colour": [1]}), ValueError, "unknown attribute 'colour'.*has: cat"),
        (lambda: idx.search(q, 5, where={"cat": "red"}), ValueError, "must be a range or a set of integers"),
        (lambda: idx.search(q, 5, where={"cat": range(0, 10, 2)}), ValueError, "step 1"),
        (lambda: idx.add(corpus["x"][:2], attrs={"cat": [1]}), ValueError, "1 values for 2 vectors"),
        (lambda: idx.add(corpus["x"][:1], attrs={"bad name": [1]}), ValueError, "identifiers"),
        (lambda: idx.set_attributes([unknown], {"cat": [1]}), KeyError, f"unknown id {unknown}"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()
    assert len(idx) == 1000 and idx.attributes == ("cat",)
    # a truncated memory-mapped file, as input and as part of a saved index
    np.save(tmp_path / "x.npy", corpus["x"][:1000])
    whole = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(whole[:-1000])
    with pytest.raises(ValueError):
        idx.add(np.load(tmp_path / "x.npy", mmap_mode="r"))
    idx.save(tmp_path / "idx")
    packed = tmp_path / "idx" / "packed.npy"
    packed.write_bytes(packed.read_bytes()[:-64])
    with pytest.raises(ValueError, match=r"packed\.npy: .* bytes, manifest says .*truncated"):
        Index.load(tmp_path / "idx")
    assert len(idx) == 1000


def test_cli_build_with_attributes_search_with_filters_and_verify(tmp_path, corpus):
    from typer.testing import CliRunner

    from recmine.cli import app

    x, cat = corpus["x"][:3000], corpus["cat"][:3000]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "q.npy", corpus["q"][:3])
    np.savez(tmp_path / "a.npz", cat=cat)
    np.save(tmp_path / "allow.npy", np.arange(0, 3000, 3))
    run = CliRunner().invoke
    r = run(app, ["retrieve", "build", "--vectors", str(tmp_path / "x.npy"), "--attrs", str(tmp_path / "a.npz"),
                  "--out", str(tmp_path / "idx"), "--master-on-disk", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["attributes"] == "cat" and not list(tmp_path.glob(".idx.master.tmp"))
    r = run(app, ["retrieve", "search", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"),
                  "-k", "7", "--where", "cat=0:40", "--allow", str(tmp_path / "allow.npy"), "--verify", "--json"])
    assert r.exit_code == 0, r.output
    keep = np.flatnonzero((cat < 40) & (np.arange(3000) % 3 == 0))
    want = brute_force_topk(x[keep], keep, corpus["q"][:3], 7)[1]
    assert json.loads(r.stdout.strip().splitlines()[-1])["ids"] == want.tolist()
    assert json.loads(run(app, ["retrieve", "verify", "--index", str(tmp_path / "idx"), "--json"]).stdout)["ok"]
    packed = tmp_path / "idx" / "packed.npy"
    raw = bytearray(packed.read_bytes())
    raw[200] ^= 1
    packed.write_bytes(bytes(raw))
    r = run(app, ["retrieve", "verify", "--index", str(tmp_path / "idx")])
    assert r.exit_code == 2 and "packed.npy: checksum mismatch" in " ".join(r.output.split())
    for bad, msg in ((["--where", "colour=1"], "unknown attribute 'colour'"), (["--where", "cat=a:b"], "--where takes"),
                     (["--where", "cat=1", "--where", "cat=2"], "twice")):
        r = run(app, ["retrieve", "search", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"),
                      *bad])
        assert r.exit_code == 2 and msg in " ".join(r.output.split()), r.output


def test_id_lookup_by_binary_search_until_ids_stop_ascending(tmp_path):
    """Default ids (and larger ascending ones) are found by binary search, no table; the first id out of order
    builds the table; both agree with a plain dict through removal, compaction, save and load."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3000, 8)).astype(np.float32)
    idx = Index(8)
    idx.add(x[:1000])
    idx.add(x[1000:1500], ids=np.arange(5000, 5500))
    assert idx.corpus._map is None and idx.corpus._sorted
    idx.remove([3, 5001])
    idx.compact()
    assert idx.corpus._map is None and idx.contains(4) and not idx.contains(3) and not idx.contains(5001)
    idx.save(tmp_path / "a")
    back = Index.load(tmp_path / "a")
    assert not (tmp_path / "a" / "idmap.keys.npy").exists() and back.contains(5499) and not back.contains(1500)
    idx.add(x[1500:2000], ids=rng.permutation(10_000)[:500] + 20_000)  # not ascending: the table takes over
    assert idx.corpus._map is not None and not idx.corpus._sorted
    with pytest.raises(ValueError, match="already in the index"):
        idx.add(x[:1], ids=[4])
    truth = {int(i): s for s, i in enumerate(idx.ids().tolist())}
    probe = np.array([*truth, 3, 5001, 99_999, -7], np.int64)
    expect = np.array([truth.get(int(i), -1) for i in probe])
    np.testing.assert_array_equal(idx.corpus.slots_of(probe), expect)
    idx.save(tmp_path / "b")
    back = Index.load(tmp_path / "b")
    assert (tmp_path / "b" / "idmap.keys.npy").exists()
    np.testing.assert_array_equal(back.corpus.slots_of(probe), expect)
    back.remove([4])  # writes to the mapped table touch private pages only
    assert not back.contains(4) and Index.load(tmp_path / "b").contains(4)

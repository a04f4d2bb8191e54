"""ekko's recommender, its data, serving quality, and the end-to-end scenarios (SLO, rollback) over real PSes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recmine.cli import app
from recmine.ekko.lab.scenarios import ScenarioSpec, run_rollback
from recmine.ekko.rec.data import load_movielens, synthetic
from recmine.ekko.rec.evaluate import prequential, ranking_metrics
from recmine.ekko.rec.model import FRESH_RANKING, OnlineTrainer, RequestContext, score_rows, tables
from recmine.ekko.rec.serving import InferenceServer, auc, logloss

ML = Path("../shared/data/movielens/ml-100k.inter")


def _pairwise_auc(s: np.ndarray, y: np.ndarray) -> float:
    """Oracle: the fraction of (positive, negative) pairs ranked right, ties half."""
    pos, neg = s[y > 0.5], s[y <= 0.5]
    d = pos[:, None] - neg[None, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean())


def test_auc_and_logloss_match_oracles():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=300), 1)  # ties on purpose
    y = (rng.uniform(size=300) < 0.4).astype(np.float32)
    assert auc(s, y) == pytest.approx(_pairwise_auc(s, y), abs=1e-12)
    z = rng.normal(size=50)
    yy = (rng.uniform(size=50) < 0.5).astype(float)
    p = 1 / (1 + np.exp(-z))
    assert logloss(z, yy) == pytest.approx(float(-np.mean(yy * np.log(p) + (1 - yy) * np.log(1 - p))), rel=1e-9)
    assert np.isnan(auc(s, np.ones(300)))


def test_movielens_loader_sorts_by_time_and_names_bad_rows(tmp_path):
    f = tmp_path / "a.inter"
    f.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t5\t300\n2\t11\t3\t100\n")
    d = load_movielens(f)
    assert d.timestamp.tolist() == [100.0, 300.0] and d.user.tolist() == [2, 1] and d.label.tolist() == [0.0, 1.0]
    f.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\tnan\t300\n2\t11\t3\t100\n")
    with pytest.raises(ValueError, match=r"a.inter:2: .*finite"):
        load_movielens(f)
    skipped = load_movielens(f, on_bad="skip")
    assert len(skipped) == 1 and skipped.skipped == 1
    f.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t300\n2\t11")
    with pytest.raises(ValueError, match="truncated"):
        load_movielens(f)
    f.write_text("1\t10\t4\t300\n")
    with pytest.raises(ValueError, match="header"):
        load_movielens(f)
    with pytest.raises(FileNotFoundError):
        load_movielens(tmp_path / "missing.inter")


def test_trainer_rows_cold_start_nan_and_harm():
    tr = OnlineTrainer(dim=8, seed=1, replay=0)
    up = tr.step(np.array([5, 6, 5]), np.array([100, 101, 102]), np.array([1.0, np.nan, 0.0]))
    assert sorted(up.tables["user"][0].tolist()) == [5]  # the NaN row was ignored: user 6 never trained
    assert sorted(up.tables["item"][0].tolist()) == [100, 102]
    assert up.tables["item"][1].shape == (2, 10) and up.tables["dense"][1].shape == (2, 64)
    # rows the trainer reports equal its model's rows; serving from them reproduces the model's logits
    import torch
    with torch.no_grad():
        logits = tr.model(torch.tensor([0, 0]), torch.tensor([0, 1])).numpy()
    u = up.tables["user"][1][[0, 0]]
    i = up.tables["item"][1]
    np.testing.assert_allclose(score_rows(u, i, tr.head()), logits, rtol=1e-5, atol=1e-6)
    # cold start: a brand-new user and item get rows (grown tables) and train
    up2 = tr.step(np.arange(2000, 4000), np.arange(5000, 7000), np.ones(2000, np.float32))
    assert up2.tables["user"][0].shape[0] == 2000 and len(tr.items) == 2002
    # harm: the changes of a scaled step are that many times larger than the same step unscaled
    a, b = OnlineTrainer(dim=8, seed=2, replay=0), OnlineTrainer(dim=8, seed=2, replay=0)
    args = (np.array([1, 2]), np.array([3, 4]), np.array([1.0, 0.0], np.float32))
    a.step(*args), b.step(*args)
    before = a.full_state().tables["item"][1]
    da = a.step(*args).tables["item"][1] - before
    db = b.step(*args, scale=50.0).tables["item"][1] - before
    np.testing.assert_allclose(db, 50 * da, rtol=1e-4, atol=1e-6)


def test_history_user_rows_are_id_plus_mean_of_recent_items():
    """With `history`, the published user row is the id embedding plus the mean embedding of the user's last
    `history` items (recomputed here in float64 from the model's tables); every item trained through it is in the
    update; a restart from the published rows gives them back unchanged."""
    tr = OnlineTrainer(dim=8, seed=3, history=3, history_grad=True, cold_weight=1.0, context=0)
    tr.step(np.array([1, 1, 2, 1]), np.array([10, 11, 12, 13]), np.array([1.0, 0.0, 1.0, 1.0]))
    up = tr.step(np.array([1, 3]), np.array([14, 10]), np.array([1.0, 1.0]))
    assert {10, 11, 12, 13, 14} >= set(up.tables["item"][0].tolist()) >= {10, 11, 13, 14}  # user 1's history too
    emb_u = tr.model.user.weight.detach().numpy().astype(np.float64)
    emb_i = tr.model.item.weight.detach().numpy().astype(np.float64)[:, :8]
    row = dict(zip(tr.items.keys, range(len(tr.items)), strict=True))
    keys, vals = up.tables["user"]
    for k, v in zip(keys.tolist(), vals, strict=True):
        last = {1: [11, 13, 14], 3: [10]}[k]  # user 1's last three items
        want = emb_u[tr.users.rows(np.array([k]))[0]] + emb_i[[row[i] for i in last]].mean(0)
        np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tr.published_users()[tr.users.rows(keys)], vals)
    full = tr.full_state()
    tr.restart(full.tables)
    np.testing.assert_allclose(tr.full_state().tables["user"][1], full.tables["user"][1], atol=1e-6)


def _row_reader(rows: dict[str, dict[int, np.ndarray]], item_dim: int):
    """A PS read over a dict of rows: (values, found, versions) as the serving side gets them."""
    def read(table, keys):
        dim = {"user": 4, "item": item_dim, "dense": 16}[table]
        out = np.zeros((len(keys), dim), np.float32)
        found = np.zeros(len(keys), bool)
        for n, k in enumerate(keys.tolist()):
            if k in rows.get(table, {}):
                out[n], found[n] = rows[table][k], True
        return out, found, np.zeros(len(keys), np.int64)

    return read


def test_serving_scores_cold_users_from_the_prior():
    rows = {"user": {1: np.ones(4, np.float32)}, "item": {7: np.r_[np.ones(4), 0.5].astype(np.float32)}}
    srv = InferenceServer(_row_reader(rows, 5), 4)
    s = srv.serve(np.array([1, 99]), np.array([7, 7]), np.array([1.0, 0.0]))
    assert s.logits.tolist() == pytest.approx([4.5, 0.5]) and s.cold == 1  # identity head before any dense row
    assert srv.quality.summary()["events"] == 2


def test_request_context_holds_only_earlier_events():
    """Each event's context is its user's last `size` items strictly before it (earlier events of its batch too),
    never the event itself or a later one; commit=False leaves the context as it was."""
    users = np.array([1, 2, 1, 1, 2, 3, 1, 1])
    items = np.array([10, 20, 11, 12, 21, 30, 13, 14])
    ctx = RequestContext(2)
    got: list[list[int]] = []
    for lo in (0, 3, 5):  # three batches
        hi = {0: 3, 3: 5, 5: 8}[lo]
        peek = ctx.batch(users[lo:hi], items[lo:hi], commit=False)
        flat, counts = ctx.batch(users[lo:hi], items[lo:hi])
        np.testing.assert_array_equal(peek[0], flat)
        got += np.split(flat, np.cumsum(counts)[:-1])
    want = [[int(i) for u2, i in zip(users[:t], items[:t], strict=True) if u2 == users[t]][-2:]
            for t in range(len(users))]  # brute force: the same user's earlier events, the last two
    assert [g.tolist() for g in got] == want
    assert RequestContext(0).batch(users, items)[1].tolist() == [0] * len(users)


def _context_server(rows: dict[str, dict[int, np.ndarray]], context: int) -> InferenceServer:
    return InferenceServer(_row_reader(rows, 6), 4, context=context)


def test_serving_reads_the_users_earlier_items_and_never_the_scored_or_later_ones():
    """A user the PS holds no row for is scored from the rows of its earlier items (request context), in float64
    by hand; changing the scored event's own item history or any later event changes nothing before it."""
    rng = np.random.default_rng(5)
    rows = {"user": {1: rng.normal(size=4).astype(np.float32)},
            "item": {i: rng.normal(size=6).astype(np.float32) for i in range(10, 20)}}
    users = np.array([7, 1, 7, 7, 1, 7])
    items = np.array([10, 11, 12, 13, 14, 15])
    srv = _context_server(rows, context=2)
    s = srv.serve(users, items, np.array([1.0, 0, 1, 0, 1, 1]))
    emb = {k: v.astype(np.float64) for k, v in rows["item"].items()}
    want = []
    for t, (u, i) in enumerate(zip(users.tolist(), items.tolist(), strict=True)):
        before = [int(j) for u2, j in zip(users[:t], items[:t], strict=True) if u2 == u][-2:]
        vec = rows["user"].get(u, np.zeros(4)).astype(np.float64) + (np.mean([emb[j][:4] for j in before], 0)
                                                                      if before else 0.0)
        want.append(vec @ emb[i][:4] + emb[i][4])  # identity head before any dense row
    np.testing.assert_allclose(s.logits, want, rtol=1e-5, atol=1e-5)
    assert s.logits[0] == pytest.approx(emb[10][4])  # user 7's first event: no row, no history: the item bias
    assert s.logits[2] != pytest.approx(emb[12][4])  # its second: the history speaks (main scored the bias alone)
    assert s.cold == 1
    for t in range(1, len(users)):  # a changed later stream leaves every earlier score as it was
        alt = items.copy()
        alt[t:] = 19 - np.arange(len(users) - t)
        a = _context_server(rows, context=2).score(users, alt).logits
        np.testing.assert_array_equal(a[:t], s.logits[:t])
    again = srv.score(np.array([7]), np.array([16])).logits  # the batch was recorded: history [13, 15]
    assert again[0] == pytest.approx(float((emb[13][:4] + emb[15][:4]) / 2 @ emb[16][:4] + emb[16][4]), rel=1e-5)


def _brute_hit_ndcg(row: np.ndarray, k: int) -> tuple[float, float]:
    """Oracle: every placement of the positive among its ties, each list sorted for real (float64)."""
    pos, neg = float(row[0]), np.asarray(row[1:], np.float64)
    ties = int((neg == pos).sum())
    hits, gains = [], []
    for before in range(ties + 1):  # the positive placed after `before` of its tied negatives
        keys = [(-float(v), 0 if v != pos else (0 if j < before else 2)) for j, v in
                enumerate(v for v in neg if v == pos)] + [(-float(v), 0) for v in neg if v != pos]
        keys.append((-pos, 1))
        order = sorted(keys)
        r = order.index((-pos, 1))
        hits.append(float(r < k))
        gains.append(1.0 / math.log2(r + 2) if r < k else 0.0)
    return float(np.mean(hits)), float(np.mean(gains))


def test_hit_rate_and_ndcg_match_brute_force_sorting():
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 6, (300, 20)).astype(np.float64)  # many ties on purpose
    scores[:50] = rng.normal(size=(50, 20))  # and rows without ties
    for k in (1, 3, 10):
        hit, ndcg = ranking_metrics(scores, k)
        oracle = np.array([_brute_hit_ndcg(r, k) for r in scores])
        np.testing.assert_allclose(hit, oracle[:, 0], atol=1e-12)
        np.testing.assert_allclose(ndcg, oracle[:, 1], atol=1e-12)
    assert ranking_metrics(np.array([[5.0, 1.0, 2.0]]), 1)[0].tolist() == [1.0]
    assert ranking_metrics(np.array([[1.0, 1.0, 0.0]]), 1)[0].tolist() == [0.5]  # one tie: first half the time
    with pytest.raises(ValueError, match="finite"):
        ranking_metrics(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        ranking_metrics(np.ones(3))


@pytest.mark.skipif(not ML.exists(), reason="../shared MovieLens-100K not present")
def test_model_beats_popularity_on_the_movielens_replay():
    """Prequential replay of the first 50k events at 250 events per published update (each batch scored before
    training on it). 56% of these positives come from users with no earlier published row (47% on the full replay):
    their vectors come from the request context (their earlier items' rows). Before it, HR@10 was 0.96x popularity
    here; measured now 1.18x (HR@10 0.617 vs 0.523, negatives never items the user interacts with) and AUC 0.707
    vs 0.638; asserted with margins."""
    r = prequential(load_movielens(ML, limit=50_000), OnlineTrainer(dim=16, seed=0))
    assert r.auc > r.popularity_auc + 0.05, r
    assert r.hr > 1.12 * r.popularity_hr and r.ndcg > 1.12 * r.popularity_ndcg, r
    assert 0.2 < r.cold_share < 0.8 and r.positives > 10_000


@pytest.mark.skipif(not ML.exists(), reason="../shared MovieLens-100K not present")
def test_fresh_ranking_beats_popularity_on_hr_with_fine_updates():
    """FRESH_RANKING scored every 10 events (as fresh as ekko publishes): on the full replay HR@10 1.22x popularity
    and AUC +0.115 (README); on the first 40k events 1.09x and +0.088 measured, asserted with margins."""
    r = prequential(load_movielens(ML, limit=40_000), OnlineTrainer(seed=0, **FRESH_RANKING), batch=10)
    assert r.hr > 1.05 * r.popularity_hr and r.ndcg > 1.05 * r.popularity_ndcg, r
    assert r.auc > r.popularity_auc + 0.07, r


def test_model_beats_popularity_on_the_drifting_stream():
    r = prequential(synthetic(n_users=500, n_items=400, n_events=12_000, seed=1), OnlineTrainer(dim=16, seed=0))
    assert r.auc > r.popularity_auc + 0.05 and r.hr > r.popularity_hr and r.ndcg > r.popularity_ndcg, r


def test_synthetic_stream_is_time_ordered():
    d = synthetic(n_users=100, n_items=50, n_events=2000, seed=3)
    assert len(d) == 2000 and np.all(np.diff(d.timestamp) >= 0) and set(np.unique(d.label)) <= {0.0, 1.0}
    assert tables(8) == {"user": 8, "item": 10, "dense": 64}


def test_rollback_scenario_detects_each_harm_and_rolls_back_everywhere():
    """Small windows (2 batches) on a small stream; the benchmark runs every harm on the full streams."""
    screened = {"nan_rows": "non-finite value (NaN/Inf)", "stale_replay": "went back",
                "stale_replay_unmarked": "changed rows go back to values their keys held before",
                "label_flip": "trained labels (cohort 5) differ from the feedback serving logged",
                "label_flip_all": "trained labels (all events) differ from the feedback serving logged"}
    out = run_rollback(ScenarioSpec(data="synthetic", events=12_000, dcs=2), ("scale50", *screened),
                       window=2, inject_window=4, fix_window=8, windows=12)
    assert out["clean"]["false_rollbacks"] == 0 and out["clean"]["rollbacks"] == 0  # the clean run of equal length
    assert out["clean"]["refused"] == []
    h = out["harms"]
    assert h["scale50"]["detected"] and h["scale50"]["windows_to_detect"] <= 3 and h["scale50"]["rollback_s"] < 10
    assert h["scale50"]["recovered"] and h["scale50"]["rollback_held"] is not False
    for name, why in screened.items():  # refused before anything was served, naming what was wrong
        assert h[name]["detected_by"] == "screen" and h[name]["windows_to_detect"] == 0, h[name]
        assert h[name]["served_bad_rows"] == 0 and h[name]["harm_served_windows"] == 0
        assert why in h[name]["refused"][0], (name, h[name]["refused"])
    for r in h.values():  # after the operator's fix the held updates were released
        assert r["released_window"] is not None


def test_slo_scenario_reports_every_policy():
    res = CliRunner().invoke(app, ["ekko", "bench", "--scenario", "slo", "--data", "synthetic", "--events", "12000",
                                   "--replay-s", "3", "--dcs", "2", "--link-fraction", "0.25", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("unthrottled_quality", "checkpoint_quality", "fresh_minus_checkpoint", "stream_needs_mbps", "metric"):
        assert key in out
    (row,) = out["fractions"]
    assert row["link_fraction"] == 0.25
    for key in ("slo_aware_quality", "fifo_quality", "slo_compressed_quality"):
        assert 0.0 <= row[key] <= 1.0
    assert row["link_mbps"] < out["stream_needs_mbps"]  # the throttled runs really were short of bandwidth


def test_bad_scenario_input_is_refused(tmp_path):
    bad = tmp_path / "bad.inter"
    bad.write_text("user_id\titem_id\trating\ttimestamp\n1\t2\t3\n")
    res = CliRunner().invoke(app, ["ekko", "bench", "--scenario", "rollback", "--data", str(bad), "--json"])
    assert res.exit_code == 2 and "bad.inter:2" in res.output
    res = CliRunner().invoke(app, ["ekko", "bench", "--scenario", "nope"])
    assert res.exit_code == 2 and "unknown scenario" in res.output
    res = CliRunner().invoke(app, ["ekko", "bench", "--scenario", "slo", "--link-fraction", "0.1,2"])
    assert res.exit_code == 2 and "link fractions must be in (0, 1]" in res.output


def test_default_movielens_path_is_the_shared_copy(shared_data):
    from recmine.ekko.rec.data import default_movielens_path

    assert default_movielens_path().resolve() == (shared_data / "movielens" / "ml-100k.inter").resolve()  # ../shared may be a link


def test_sampled_negatives_are_items_the_user_never_interacts_with(monkeypatch: pytest.MonkeyPatch):
    """HR@10/NDCG@10 rank each positive among sampled negatives: none may be an item the same user rates anywhere in
    the stream (in the same batch or later), brute force over the events. Before the fix negatives avoided only the
    user's earlier batches: on MovieLens-100K, whose users rate in bursts, 6.2% of negatives were items the user
    rated in the scored batch itself."""
    import recmine.ekko.rec.evaluate as ev

    data = synthetic(n_users=40, n_items=300, n_events=6_000, seed=2)
    drawn: list[tuple[np.ndarray, np.ndarray]] = []
    real = ev._candidates

    def record(users, *args, **kw):  # noqa: ANN001, ANN202
        out = real(users, *args, **kw)
        drawn.append((users.copy(), out.copy()))
        return out

    monkeypatch.setattr(ev, "_candidates", record)
    r = prequential(data, OnlineTrainer(dim=8, seed=0), batch=250)
    mine = {}
    for u, i in zip(data.user.tolist(), data.item.tolist(), strict=True):
        mine.setdefault(u, set()).add(i)
    rows = [(u, c) for users, cand in drawn for u, c in zip(users.tolist(), cand.tolist(), strict=True)]
    assert len(rows) == r.positives > 1000
    assert all(not (set(c[1:]) & mine[u]) for u, c in rows)

"""Random interleavings of add/remove/update/compact/save/load: search always equals the oracle on the live set."""

from __future__ import annotations

import tempfile

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from recmine.faery import Index
from recmine.faery.exact import brute_force_topk

D = 6


class IndexMachine(RuleBasedStateMachine):
    """The Index against a dict of live id -> vector."""

    @initialize(storage=st.sampled_from(["int8", "fp16", "fp32"]), metric=st.sampled_from(["ip", "l2"]))
    def setup(self, storage, metric):
        self.idx = Index(D, metric=metric, storage=storage)
        self.live: dict[int, np.ndarray] = {}
        self.rng = np.random.default_rng(0)
        self.metric = metric
        self.tmp = tempfile.TemporaryDirectory()

    @rule(n=st.integers(1, 30))
    def add(self, n):
        x = self.rng.standard_normal((n, D)).astype(np.float32)
        ids = self.idx.add(x)
        self.live.update(zip(ids.tolist(), x, strict=True))

    @precondition(lambda self: len(self.live) > 0)
    @rule(frac=st.floats(0.05, 0.9))
    def remove(self, frac):
        keys = list(self.live)
        pick = self.rng.choice(keys, size=max(1, int(len(keys) * frac)), replace=False)
        self.idx.remove(pick)
        for i in pick.tolist():
            del self.live[i]

    @precondition(lambda self: len(self.live) > 0)
    @rule()
    def update(self):
        keys = list(self.live)
        pick = self.rng.choice(keys, size=min(5, len(keys)), replace=False)
        x = self.rng.standard_normal((pick.size, D)).astype(np.float32)
        self.idx.update(pick, x)
        self.live.update(zip(pick.tolist(), x, strict=True))

    @rule()
    def compact(self):
        self.idx.compact()

    @rule()
    def save_load(self):
        self.idx.save(self.tmp.name)
        self.idx = Index.load(self.tmp.name)

    @invariant()
    def search_matches_oracle(self):
        if not hasattr(self, "idx"):
            return
        assert len(self.idx) == len(self.live)
        if not self.live:
            return
        ids = np.array(list(self.live), np.int64)
        x = np.stack([self.live[i] for i in ids.tolist()])
        q = self.rng.standard_normal((2, D)).astype(np.float32)
        k = min(7, len(ids))
        got = self.idx.search(q, k)[1]
        np.testing.assert_array_equal(got, brute_force_topk(x, ids, q, k, self.metric)[1])

    def teardown(self):
        if hasattr(self, "tmp"):
            self.tmp.cleanup()


IndexMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)
TestIndexMachine = IndexMachine.TestCase

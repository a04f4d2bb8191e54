"""The recommender ekko keeps fresh: a two-tower model in PyTorch (user and item embedding tables, a learned
bilinear head, an item bias), trained online on a time-ordered stream. After every mini-batch the trainer hands
back the embedding rows it changed (and, every `dense_every` batches, the dense head) as key -> vector updates for
the parameter servers. Serving scores from those rows alone (`score_rows`), so any PS replica can serve.

Tables on the PS: "user" (dim d), "item" (dim d + 1: embedding, then bias), "dense" (key 0: the d x d head)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

DENSE_KEY = 0
torch.sparse.check_sparse_tensor_invariants.disable()  # opt out explicitly (Adagrad's sparse steps are well formed)


def tables(dim: int) -> dict[str, int]:
    """PS table layout for a model of embedding size `dim`."""
    return {"user": dim, "item": dim + 1, "dense": dim * dim}


class IdMap:
    """Raw ids -> dense rows, growing on first sight (cold start: a new user or item gets a fresh row)."""

    def __init__(self) -> None:
        self._rows: dict[int, int] = {}
        self.keys: list[int] = []

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, ids: np.ndarray, add: bool = True) -> np.ndarray:
        """Rows of `ids`; unknown ids get new rows (add=True) or -1."""
        out = np.empty(ids.shape[0], np.int64)
        for j, k in enumerate(np.asarray(ids, np.int64).tolist()):
            r = self._rows.get(k)
            if r is None:
                if not add:
                    out[j] = -1
                    continue
                r = self._rows[k] = len(self.keys)
                self.keys.append(k)
            out[j] = r
        return out


class TwoTower(nn.Module):
    """score(u, i) = (e_u W) . e_i + b_i, with sparse embedding tables that grow with new ids."""

    def __init__(self, dim: int = 32, capacity: int = 1024, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.gen = torch.Generator().manual_seed(seed)
        self.user = nn.Embedding(capacity, dim, sparse=True)
        self.item = nn.Embedding(capacity, dim + 1, sparse=True)
        self.head = nn.Parameter(torch.eye(dim))
        self._init(self.user.weight, 0, 0.0)
        self._init(self.item.weight, 0)

    def _init(self, w: torch.Tensor, start: int, std: float = 0.1) -> None:
        """New users start at zero (score = item bias: a popularity prior for the cold start); new items small."""
        with torch.no_grad():
            w[start:, : self.dim] = torch.randn(w.shape[0] - start, self.dim, generator=self.gen) * std
            if w.shape[1] > self.dim:
                w[start:, self.dim:] = 0.0

    def grow(self, n_users: int, n_items: int) -> bool:
        """Make room for at least n_users / n_items rows; True when a table was reallocated."""
        grown = False
        for name, need in (("user", n_users), ("item", n_items)):
            emb: nn.Embedding = getattr(self, name)
            if need <= emb.num_embeddings:
                continue
            cap = max(need, 2 * emb.num_embeddings)
            new = nn.Embedding(cap, emb.embedding_dim, sparse=True)
            with torch.no_grad():
                new.weight[: emb.num_embeddings] = emb.weight
            self._init(new.weight, emb.num_embeddings, 0.0 if name == "user" else 0.1)
            setattr(self, name, new)
            grown = True
        return grown

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Logits for row pairs."""
        eu = self.user(u)
        ei = self.item(i)
        return ((eu @ self.head) * ei[:, : self.dim]).sum(1) + ei[:, self.dim]


def score_rows(user_rows: np.ndarray, item_rows: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Logits from PS rows: user_rows (n, d), item_rows (n, d+1) or (n, m, d+1), head (d, d) -> (n,) / (n, m)."""
    d = user_rows.shape[1]
    q = user_rows @ head
    if item_rows.ndim == 2:
        return np.einsum("nd,nd->n", q, item_rows[:, :d]) + item_rows[:, d]
    return np.einsum("nd,nmd->nm", q, item_rows[:, :, :d]) + item_rows[:, :, d]


@dataclass
class Update:
    """Rows one training step changed, per PS table: raw keys and float32 values."""

    tables: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def n_rows(self) -> int:
        """Rows across tables."""
        return sum(int(k.shape[0]) for k, _ in self.tables.values())


class OnlineTrainer:
    """Trains a TwoTower one mini-batch at a time and returns the rows it changed (the PS update stream).

    Each positive is contrasted with `negatives` items sampled from the items seen so far (popularity-uniform
    mix), plus the stream's own negatives. `scale` multiplies the update (1.0 normal; a large value simulates a
    harmful update such as exploding gradients)."""

    def __init__(self, dim: int = 32, lr: float = 0.05, negatives: int = 0, dense_every: int = 20,
                 seed: int = 0, stream_negatives: bool = True, passes: int = 1, replay: int = 2000,
                 replay_capacity: int = 50_000) -> None:
        if dim < 1 or lr <= 0 or negatives < 0 or dense_every < 1:
            raise ValueError("dim >= 1, lr > 0, negatives >= 0 and dense_every >= 1 are required")
        torch.manual_seed(seed)
        self.model = TwoTower(dim, seed=seed)
        self.users, self.items = IdMap(), IdMap()
        self.lr, self.negatives, self.dense_every = lr, negatives, dense_every
        self.rng = np.random.default_rng(seed)
        self.steps = 0
        self.stream_negatives = stream_negatives
        self.passes = passes
        self.replay = replay  # past events re-trained per step (a reservoir of recent history)
        self._buf_u = np.zeros(replay_capacity, np.int64)
        self._buf_i = np.zeros(replay_capacity, np.int64)
        self._buf_y = np.zeros(replay_capacity, np.float32)
        self._buf_n = 0
        self._make_optimizers()

    def _make_optimizers(self) -> None:
        self.sparse_opt = torch.optim.Adagrad(list(self.model.user.parameters()) +
                                              list(self.model.item.parameters()), lr=self.lr)
        self.dense_opt = torch.optim.Adam([self.model.head], lr=self.lr * 0.1)

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self.model.dim

    def step(self, user: np.ndarray, item: np.ndarray, label: np.ndarray, scale: float = 1.0) -> Update:
        """One mini-batch of raw (user, item, label); rows with a NaN/inf label are ignored. Returns the changed
        rows keyed by raw ids."""
        user = np.asarray(user, np.int64)
        item = np.asarray(item, np.int64)
        label = np.asarray(label, np.float32)
        if not (user.shape == item.shape == label.shape) or user.ndim != 1:
            raise ValueError(f"user, item and label must be 1-d and equally long, got {user.shape}, {item.shape}, "
                             f"{label.shape}")
        ok = np.isfinite(label)
        user, item, label = user[ok], item[ok], label[ok]
        if user.size == 0:
            return Update({})
        ur = self.users.rows(user)
        ir = self.items.rows(item)
        if self.model.grow(len(self.users), len(self.items)):
            self._make_optimizers()
        if self.replay and self._buf_n:
            cap = self._buf_u.shape[0]
            pick = self.rng.integers(0, min(self._buf_n, cap), self.replay)
            new_u, new_i, new_y = ur, ir, label
            ur = np.concatenate([ur, self._buf_u[pick]])
            ir = np.concatenate([ir, self._buf_i[pick]])
            label = np.concatenate([label, self._buf_y[pick]])
            self._remember(new_u, new_i, new_y)
        elif self.replay:
            self._remember(ur, ir, label)
        pos = label > 0.5
        if not self.stream_negatives:
            ur, ir, label = ur[pos], ir[pos], label[pos]
            pos = pos[pos]
        n_neg = int(pos.sum()) * self.negatives
        if n_neg and len(self.items) > 1:
            neg_i = self.rng.integers(0, len(self.items), n_neg)
            neg_u = np.repeat(ur[pos], self.negatives)
            ur_all = np.concatenate([ur, neg_u])
            ir_all = np.concatenate([ir, neg_i])
            y = np.concatenate([label, np.zeros(n_neg, np.float32)])
        else:
            ur_all, ir_all, y = ur, ir, label
        u_t, i_t, y_t = torch.from_numpy(ur_all), torch.from_numpy(ir_all), torch.from_numpy(y)
        uu, iu = np.unique(ur_all), np.unique(ir_all)
        if scale != 1.0:
            with torch.no_grad():
                before = (self.model.user.weight[uu].clone(), self.model.item.weight[iu].clone())
        for _ in range(self.passes):
            loss = nn.functional.binary_cross_entropy_with_logits(self.model(u_t, i_t), y_t, reduction="sum")
            self.sparse_opt.zero_grad()
            self.dense_opt.zero_grad()
            loss.backward()
            self.sparse_opt.step()
            self.dense_opt.step()
        self.steps += 1
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        with torch.no_grad():
            if scale != 1.0:  # the step's change to every row it touched, multiplied (a harmful update)
                w = self.model.user.weight
                w[uu] = before[0] + scale * (w[uu] - before[0])
                w = self.model.item.weight
                w[iu] = before[1] + scale * (w[iu] - before[1])
            out["user"] = (np.array(self.users.keys, np.int64)[uu], self.model.user.weight[uu].numpy().copy())
            out["item"] = (np.array(self.items.keys, np.int64)[iu], self.model.item.weight[iu].numpy().copy())
            if self.steps % self.dense_every == 0 or self.steps == 1:
                out["dense"] = (np.array([DENSE_KEY]), self.head().reshape(1, -1))
        return Update(out)

    def load_rows(self, rows: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Overwrite rows by raw key (a rollback restoring earlier values); unknown keys are ignored."""
        with torch.no_grad():
            for table, (keys, vals) in rows.items():
                if table == "dense":
                    if keys.size:
                        self.model.head.copy_(torch.from_numpy(vals[-1].reshape(self.dim, self.dim)))
                    continue
                idmap, emb = (self.users, self.model.user) if table == "user" else (self.items, self.model.item)
                r = idmap.rows(keys, add=False)
                ok = r >= 0
                emb.weight[torch.from_numpy(r[ok])] = torch.from_numpy(np.asarray(vals[ok], np.float32))

    def restart(self, rows: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Restart from `rows` (e.g. the model being served, after a fault): load them and start the optimizers
        afresh, as a restarted trainer process would (a fault's huge steps leave Adagrad's step sizes tiny)."""
        self.load_rows(rows)
        self._make_optimizers()

    def _remember(self, u: np.ndarray, i: np.ndarray, y: np.ndarray) -> None:
        cap = self._buf_u.shape[0]
        at = (self._buf_n + np.arange(u.shape[0])) % cap
        self._buf_u[at], self._buf_i[at], self._buf_y[at] = u, i, y
        self._buf_n += u.shape[0]

    def head(self) -> np.ndarray:
        """The dense head as a (d, d) float32 array."""
        return self.model.head.detach().numpy().astype(np.float32).copy()

    def full_state(self) -> Update:
        """Every row of the model (the initial load of a PS, or a checkpoint)."""
        with torch.no_grad():
            n_u, n_i = len(self.users), len(self.items)
            return Update({"user": (np.array(self.users.keys, np.int64), self.model.user.weight[:n_u].numpy().copy()),
                           "item": (np.array(self.items.keys, np.int64), self.model.item.weight[:n_i].numpy().copy()),
                           "dense": (np.array([DENSE_KEY]), self.head().reshape(1, -1))})


def hit_rate_and_auc(score: np.ndarray) -> tuple[float, float]:
    """score (n, 1 + m): column 0 the positive, the rest sampled negatives -> (HR@10, mean per-event AUC)."""
    pos = score[:, :1]
    neg = score[:, 1:]
    higher = (neg > pos).sum(1) + 0.5 * (neg == pos).sum(1)
    hr = float((higher < 10).mean())
    auc = float((1.0 - higher / neg.shape[1]).mean())
    return hr, auc

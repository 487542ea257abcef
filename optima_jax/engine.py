"""The sequential block engine: Algorithm 1 of OPTIMA (SparseGPT's sequential scheme).

For each decoder block i, in order:
  1. run the current calibration hidden states X_i (outputs of the already-pruned blocks) through the
     dense block, accumulating for every distinct linear input x the Hessian H = Σ xᵀx (float32, one
     micro-batch of sequences at a time, each micro-batch split over the mesh's data axis and padded to a
     multiple of its size with zero-weight rows; XLA all-reduces H across devices and hosts);
  2. hand each prunable linear's (W, H, stats) to a pluggable pruner and write the returned weights back;
  3. recompute the block's outputs with the pruned weights: X_{i+1}.

The engine knows models only through `models.api` and pruners only through `LinearTask -> LinearResult`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import resource
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optima_jax.models import api
from optima_jax import sharding
from optima_jax.errors import OptimaError
from optima_jax.selectors import LinearStats

log = logging.getLogger("optima_jax.engine")


@dataclasses.dataclass
class LinearTask:
    """What a pruner gets for one linear of one block."""

    block: int
    name: str  # HF suffix inside the block, e.g. "mlp.down_proj"
    weight: jax.Array  # (out, in) float32, dense weights
    stats: LinearStats  # H (in, in) float32 = Σ xᵀx over calibration tokens
    H_val: jax.Array | None  # (in, in) float32 over validation tokens, or None
    full_name: str = ""  # the HF weight name, e.g. model.layers.3.mlp.down_proj.weight


@dataclasses.dataclass
class LinearResult:
    """What a pruner returns: the new weights, the keep mask and a report row."""

    weight: jax.Array  # (out, in) float32; pruned entries exactly 0
    keep_mask: jax.Array  # (out, in) bool, True = kept
    row: dict


Pruner = Callable[[LinearTask], LinearResult]


@dataclasses.dataclass
class BlockDone:
    """Handed to `on_block_done` after block `index` is pruned and X_{i+1} computed."""

    index: int
    results: dict[str, LinearResult]
    hidden: "Hidden"  # X_{i+1}: n sequences [T, D] as micro-batches
    hidden_val: "Hidden | None"
    timings: dict[str, float]


class ForwardCounter:
    """Counts block forward passes over micro-batches (tests use it to check work is not repeated)."""

    def __init__(self):
        self.block_passes = 0
        self.sequences = 0


@dataclasses.dataclass
class Hidden:
    """Calibration hidden states, kept as the micro-batches the engine runs them in.

    batches[k]: [rows_k, T, D] where rows_k is `valid[k]` rounded up to a multiple of the data-axis size;
    the padding rows (zeros at embedding, then whatever the block makes of them) get zero weight in every
    Hessian and are dropped by `numpy()`. On device: jax.Arrays sharded over the mesh's "data" axis (global
    arrays in a multi-process run: each host holds only its own rows). On host: numpy (single process).
    """

    batches: list
    valid: list[int]

    @property
    def n(self) -> int:
        return int(sum(self.valid))

    @property
    def rows(self) -> list[int]:
        return [int(b.shape[0]) for b in self.batches]

    def numpy(self) -> np.ndarray:
        """The valid rows as one numpy array [n, T, D] (all-gathers global arrays across processes)."""
        return np.concatenate([np.asarray(sharding.to_local(b))[:v] for b, v in zip(self.batches, self.valid)])

    def __array__(self, dtype=None, copy=None):
        x = self.numpy()
        return x if dtype is None else x.astype(dtype)

    def tree(self) -> dict:
        """Checkpointable pytree {"00000": batch 0, ...} (global jax.Arrays are saved collectively by Orbax)."""
        return {f"{k:05d}": b for k, b in enumerate(self.batches)}

    @classmethod
    def from_tree(cls, tree: dict, valid) -> "Hidden":
        return cls([tree[k] for k in sorted(tree)], [int(v) for v in valid])


def batch_plan(n: int, micro_batch: int, ndata: int) -> list[tuple[int, int, int]]:
    """Micro-batches of n sequences -> [(start, valid, rows)], rows = valid rounded up to a multiple of ndata.

    A ragged last micro-batch (n % micro_batch) or a micro_batch that does not divide by the data-axis size
    is padded rather than run replicated, so every micro-batch is split over all devices; the padding is
    masked out of the Hessians, so H is exactly Σ xᵀx over the n real sequences.
    """
    if micro_batch < 1:
        raise OptimaError(f"calibration.micro_batch must be >= 1, got {micro_batch}")
    out = []
    for s in range(0, n, micro_batch):
        v = min(micro_batch, n - s)
        out.append((s, v, -(-v // ndata) * ndata))
    return out


def _data_sharding(mesh: Mesh | None):
    if mesh is None or "data" not in mesh.axis_names:
        return None
    return NamedSharding(mesh, P("data"))


def _put(x: np.ndarray, rows: int, mesh: Mesh | None):
    """Host rows [v, ...] -> device array [rows, ...] (zero padded), split over the data axis.

    In a multi-process run each process materialises only the rows of its own devices.
    """
    x = np.asarray(x)
    if x.shape[0] < rows:
        x = np.concatenate([x, np.zeros((rows - x.shape[0],) + x.shape[1:], x.dtype)])
    sh = _data_sharding(mesh)
    if sh is None:
        return jnp.asarray(x)
    if sharding.is_multiprocess():
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])
    return jax.device_put(x, sh)


def _on_mesh(x: jax.Array, mesh: Mesh | None):
    """Keep a device micro-batch split over the data axis (jit may choose another output sharding)."""
    sh = _data_sharding(mesh)
    if sh is None or x.sharding.is_equivalent_to(sh, x.ndim):
        return x
    return jax.device_put(x, sh)


def _weights(valid: int, rows: int, mesh: Mesh | None):
    return _put((np.arange(rows) < valid).astype(np.float32), rows, mesh)


def _check_finite(x: jax.Array, where: str):
    if not bool(sharding.to_local(jnp.all(jnp.isfinite(x)))):
        raise OptimaError(f"non-finite activations at {where}")


def peak_host_memory_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _block_apply(graphdef, state, h, positions, capture):
    return nnx.merge(graphdef, state)(h, positions, capture=capture)


def hessian_panels(d: int) -> tuple[tuple[int, int], ...]:
    """Column panels [(start, stop)] of a (d, d) Hessian. Only the panel pairs (i <= j) are multiplied,
    k(k+1)/2 of k² products for k panels (H is symmetric), and the lower blocks are mirrored once per block."""
    k = 4 if d >= 512 else (2 if d >= 256 else 1)
    size = -(-d // k)
    return tuple((a, min(d, a + size)) for a in range(0, d, size))


def _panel_pairs(d: int) -> list[tuple[int, int]]:
    n = len(hessian_panels(d))
    return [(i, j) for i in range(n) for j in range(i, n)]


def _zero_pieces(d: int) -> tuple:
    p = hessian_panels(d)
    return tuple(jnp.zeros((p[i][1] - p[i][0], p[j][1] - p[j][0]), jnp.float32) for i, j in _panel_pairs(d))


@jax.jit
def _assemble(pieces: tuple) -> jax.Array:
    """Upper panel blocks (row-major over i <= j) -> the full symmetric (d, d) Hessian."""
    n = int(round((np.sqrt(8 * len(pieces) + 1) - 1) / 2))
    at = dict(zip([(i, j) for i in range(n) for j in range(i, n)], pieces))
    return jnp.block([[at[i, j] if i <= j else at[j, i].T for j in range(n)] for i in range(n)])


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(6,))
def _accumulate(graphdef, groups, state, h, weight, positions, H_acc):
    """One micro-batch: H_acc[g] + Σ xᵀx (float32) for each input group g, as the upper panel blocks of
    :func:`hessian_panels`. The block's output is not needed here (the engine recomputes it with the pruned
    weights), so XLA drops what only feeds it (the last linear's product, the residual and norms).

    weight [b]: 1 for real sequences, 0 for padding rows (their inputs are zeroed, so they add nothing).
    """
    _, inputs = _block_apply(graphdef, state, h, positions, True)
    new = {}
    for g, first in groups:
        x = inputs[first].astype(jnp.float32)
        x = jnp.where(weight[:, None, None] > 0, x, 0.0)
        x = x.reshape(-1, x.shape[-1])
        panels = hessian_panels(x.shape[-1])
        new[g] = tuple(
            acc
            + jax.lax.dot_general(
                x[:, panels[i][0] : panels[i][1]],
                x[:, panels[j][0] : panels[j][1]],
                (((0,), (0,)), ((), ())),
                precision=jax.lax.Precision.HIGHEST,
            )
            for acc, (i, j) in zip(H_acc[g], _panel_pairs(x.shape[-1]))
        )
    return new


@functools.partial(jax.jit, static_argnums=(0,))
def _forward(graphdef, state, h, positions):
    return _block_apply(graphdef, state, h, positions, False)


class BlockRunner:
    """Per-block passes: accumulate Hessians of the linear inputs, and plain forward.

    The jitted functions are keyed by the block's graph definition, so blocks of the same structure
    (every block but Gemma's sliding/global alternation) share one compilation. With `shard_params` the
    block's MLP weights are placed over the data mesh (intermediate dimension split; XLA inserts the
    collectives), otherwise the block's params are replicated where the model holds them.
    """

    def __init__(self, model, config, index: int, positions: jax.Array, shard_params: bool = False):
        self.model = model
        self.config = config
        self.index = index
        self.positions = positions
        self.shard_params = shard_params
        self.groups = api.input_groups(config)  # group -> [linear names sharing one input]
        self._groups_static = tuple((g, names[0]) for g, names in self.groups.items())

    def split(self, mesh: Mesh | None = None):
        graphdef, state = nnx.split(self.model.layers[self.index])
        if _data_sharding(mesh) is not None:
            # Always placed explicitly: pruned weights come back committed to the solver's rows mesh.
            state = sharding.shard_block_state(state, mesh, api.mlp_linears(self.config), self.shard_params)
        return graphdef, state

    def hessians(self, hidden: Hidden, mesh, counter: ForwardCounter | None):
        """Σ xᵀx for every input group over the real sequences of `hidden` -> dict group -> (in, in) f32.

        With a data mesh the result is a global array replicated on every device (all-reduced by XLA).
        """
        graphdef, state = self.split(mesh)
        dims = {g: api.get_linear(self.model, self.index, names[0]).shape[1] for g, names in self.groups.items()}
        H = {g: _zero_pieces(d) for g, d in dims.items()}
        for b, v in zip(hidden.batches, hidden.valid):
            rows = int(b.shape[0])
            h = b if isinstance(b, jax.Array) else _put(b, rows, mesh)
            H = _accumulate(graphdef, self._groups_static, state, h, _weights(v, rows, mesh), self.positions, H)
            if counter is not None:
                counter.block_passes += 1
                counter.sequences += v
        return {g: _assemble(pieces) for g, pieces in H.items()}

    def forward_all(self, hidden: Hidden, mesh, counter: ForwardCounter | None, on_host: bool) -> Hidden:
        graphdef, state = self.split(mesh)
        outs = []
        for b, v in zip(hidden.batches, hidden.valid):
            h = b if isinstance(b, jax.Array) else _put(b, int(b.shape[0]), mesh)
            out = _forward(graphdef, state, h, self.positions)
            if counter is not None:
                counter.block_passes += 1
                counter.sequences += v
            outs.append(np.asarray(out) if on_host else _on_mesh(out, mesh))
        return Hidden(outs, list(hidden.valid))


def embed_all(model, ids: np.ndarray, micro_batch: int, on_host: bool, mesh: Mesh | None = None) -> Hidden:
    """Token ids int32 [n, T] -> Hidden of [rows, T, D] micro-batches in the model's activation dtype."""
    embed = jax.jit(lambda m, x: m.embed(x))
    batches, valid = [], []
    for s, v, rows in batch_plan(ids.shape[0], micro_batch, sharding.data_size(mesh)):
        out = embed(model, _put(ids[s : s + v], rows, mesh))
        batches.append(np.asarray(out) if on_host else _on_mesh(out, mesh))
        valid.append(v)
    return Hidden(batches, valid)


def check_dense_finite(model, config, ids: np.ndarray) -> None:
    """Preflight: run the dense model over a few calibration windows (int32 [n, T]) block by block and
    raise an OptimaError naming the first block whose output is non-finite (the embedding if it is)."""
    positions = jnp.arange(ids.shape[1], dtype=jnp.int32)[None, :]
    hidden = embed_all(model, np.asarray(ids), int(ids.shape[0]), on_host=False)
    _check_finite(hidden.batches[0], "the token embeddings of the dense model (first calibration windows)")
    for i in range(config.num_layers):
        hidden = BlockRunner(model, config, i, positions).forward_all(hidden, None, None, on_host=False)
        where = api.layer_prefix(config, i).rstrip(".")
        _check_finite(hidden.batches[0], f"the output of {where} in the dense model (first calibration windows)")


def as_hidden(x, micro_batch: int, mesh: Mesh | None, on_host: bool) -> Hidden:
    """Resume states (a Hidden, or an array [n, T, D]) in this run's micro-batch layout."""
    plan = batch_plan(x.n if isinstance(x, Hidden) else x.shape[0], micro_batch, sharding.data_size(mesh))
    if isinstance(x, Hidden):
        same = x.valid == [v for _, v, _ in plan] and x.rows == [r for _, _, r in plan]
        if same and (on_host or all(isinstance(b, jax.Array) for b in x.batches)):
            if on_host:
                return Hidden([np.asarray(b) for b in x.batches], list(x.valid))
            return Hidden([_on_mesh(b, mesh) for b in x.batches], list(x.valid))
        if sharding.is_multiprocess() and not same:
            raise OptimaError(
                f"the saved hidden states were split as {x.rows} rows per micro-batch, this run "
                f"splits them as {[r for _, _, r in plan]}: resume with the same device count"
            )
        x = x.numpy()
    x = np.asarray(x)
    batches = []
    for s, v, rows in plan:
        b = x[s : s + v]
        if on_host:
            batches.append(np.concatenate([b, np.zeros((rows - v,) + b.shape[1:], b.dtype)]) if rows > v else b)
        else:
            batches.append(_put(b, rows, mesh))
    return Hidden(batches, [v for _, v, _ in plan])


def run_sequential(
    model,
    config,
    calib_ids: np.ndarray,
    pruner: Pruner,
    *,
    val_ids: np.ndarray | None = None,
    linear_filter: Callable[[str], bool] = lambda name: True,
    micro_batch: int = 8,
    mesh: Mesh | None = None,
    shard_params: bool = False,
    start_block: int = 0,
    hidden: Hidden | np.ndarray | jax.Array | None = None,
    hidden_val: Hidden | np.ndarray | jax.Array | None = None,
    hidden_on: str = "device",
    on_block_done: Callable[[BlockDone], None] | None = None,
    counter: ForwardCounter | None = None,
    progress: bool = True,
) -> ForwardCounter:
    """Prune `model` in place, block by block.

    calib_ids: int32 [n, T] calibration windows; val_ids: optional int32 [n_val, T] validation windows whose
    Hessian H_val is accumulated in the same passes (it never feeds the solve, only model selection).
    mesh: the data mesh (axis "data"); micro-batches are padded to a multiple of its size and split over
    it. In a multi-process run every process passes the same ids; each materialises only its own rows.
    `start_block`/`hidden`/`hidden_val` resume from a saved frontier (X_start for calibration and validation).
    The pruner gets process-local (W, H): every process prunes every linear identically.
    Returns the forward-pass counter.
    """
    from tqdm.auto import tqdm

    if hidden_on not in ("device", "host"):
        raise OptimaError(f"hidden_states_on must be 'device' or 'host', got {hidden_on!r}")
    on_host = hidden_on == "host"
    if on_host and sharding.is_multiprocess():
        raise OptimaError(
            "hidden_states_on='host' is single-process only; a multi-process run keeps each "
            "host's shard of the hidden states on its devices (use 'device')"
        )
    counter = counter or ForwardCounter()
    n_layers = config.num_layers
    T = calib_ids.shape[1]
    positions = jnp.arange(T, dtype=jnp.int32)[None, :]

    if hidden is None:
        hidden = embed_all(model, calib_ids, micro_batch, on_host, mesh)
        if val_ids is not None:
            hidden_val = embed_all(model, val_ids, micro_batch, on_host, mesh)
    else:
        hidden = as_hidden(hidden, micro_batch, mesh, on_host)
        if hidden_val is not None:
            hidden_val = as_hidden(hidden_val, micro_batch, mesh, on_host)
    names_all = api.linear_names(config)
    names = [n for n in names_all if linear_filter(n)]
    group_of = {n: g for g, members in api.input_groups(config).items() for n in members}

    blocks = tqdm(
        range(start_block, n_layers),
        desc="blocks",
        unit="block",
        disable=not progress,
        initial=start_block,
        total=n_layers,
    )
    for i in blocks:
        t0 = time.perf_counter()
        runner = BlockRunner(model, config, i, positions, shard_params=shard_params)
        H = runner.hessians(hidden, mesh, counter)
        H_val = runner.hessians(hidden_val, mesh, counter) if hidden_val is not None else None
        jax.block_until_ready(H)
        # Replicated (global) arrays -> this process's copy on its default device, uncommitted: everything
        # after this point is process-local, and free to meet the solver's rows mesh.
        H = {g: sharding.to_default_device(v) for g, v in H.items()}
        if H_val is not None:
            H_val = {g: sharding.to_default_device(v) for g, v in H_val.items()}
        t_hess = time.perf_counter() - t0
        n_tokens = int(hidden.n * T)

        results: dict[str, LinearResult] = {}
        t1 = time.perf_counter()
        linears = tqdm(names, desc=f"block {i}", unit="linear", leave=False, disable=not progress)
        for name in linears:
            group = group_of[name]
            Hg = H[group]
            full_name = api.weight_name(config, i, name)
            where = full_name.removesuffix(".weight")
            if not bool(jnp.all(jnp.isfinite(Hg))):
                raise OptimaError(f"non-finite activations entering {where}")
            W = api.get_linear(model, i, name).astype(jnp.float32)
            if not bool(jnp.all(jnp.isfinite(W))):
                raise OptimaError(f"non-finite weights in {where}.weight")
            task = LinearTask(
                block=i,
                name=name,
                full_name=full_name,
                weight=W,
                stats=LinearStats(H=Hg, n_tokens=n_tokens),
                H_val=None if H_val is None else H_val[group],
            )
            res = pruner(task)
            results[name] = res
        # Write back only after every linear of the block was pruned from the dense block's statistics.
        # Weights solved on the rows mesh come back committed to it; the model keeps its params where it holds
        # the others (uncommitted, default device) so later passes and evaluation see one device set.
        for name, res in results.items():
            w = res.weight
            if isinstance(w, jax.Array) and len(w.sharding.device_set) > 1:
                w = sharding.to_default_device(w)
            api.set_linear(model, i, name, w)
        t_prune = time.perf_counter() - t1

        t2 = time.perf_counter()
        hidden = runner.forward_all(hidden, mesh, counter, on_host)
        if hidden_val is not None:
            hidden_val = runner.forward_all(hidden_val, mesh, counter, on_host)
        if not on_host:
            jax.block_until_ready(hidden.batches)
        _check_finite(
            hidden.batches[0][: hidden.valid[0]],
            f"the output of {api.layer_prefix(config, i).rstrip('.')} after pruning it",
        )
        t_fwd = time.perf_counter() - t2
        timings = {
            "hessians_s": t_hess,
            "prune_s": t_prune,
            "forward_s": t_fwd,
            "peak_host_mem_mb": peak_host_memory_mb(),
        }
        log.info(
            "block %d: hessians %.2fs, prune %.2fs, forward %.2fs, peak host memory %.0f MiB",
            i,
            t_hess,
            t_prune,
            t_fwd,
            timings["peak_host_mem_mb"],
        )
        if on_block_done is not None:
            on_block_done(BlockDone(index=i, results=results, hidden=hidden, hidden_val=hidden_val, timings=timings))
    return counter

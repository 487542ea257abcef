"""The sequential block engine: Algorithm 1 of OPTIMA (SparseGPT's sequential scheme).

For each decoder block i, in order:
  1. run the current calibration hidden states X_i (outputs of the already-pruned blocks) through the
     dense block, accumulating for every distinct linear input x the Hessian H = Σ xᵀx (float32, one
     micro-batch of sequences at a time, summed over the mesh's data axis);
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

from models import api
from optima_jax.errors import OptimaError
from optima_jax.selectors import LinearStats

log = logging.getLogger("optima_jax.engine")


@dataclasses.dataclass
class LinearTask:
  """What a pruner gets for one linear of one block."""
  block: int
  name: str                    # HF suffix inside the block, e.g. "mlp.down_proj"
  weight: jax.Array            # (out, in) float32, dense weights
  stats: LinearStats           # H (in, in) float32 = Σ xᵀx over calibration tokens
  H_val: jax.Array | None      # (in, in) float32 over validation tokens, or None

  @property
  def full_name(self) -> str:
    return f"model.layers.{self.block}.{self.name}.weight"


@dataclasses.dataclass
class LinearResult:
  """What a pruner returns: the new weights, the keep mask and a report row."""
  weight: jax.Array            # (out, in) float32; pruned entries exactly 0
  keep_mask: jax.Array         # (out, in) bool, True = kept
  row: dict


Pruner = Callable[[LinearTask], LinearResult]


@dataclasses.dataclass
class BlockDone:
  """Handed to `on_block_done` after block `index` is pruned and X_{i+1} computed."""
  index: int
  results: dict[str, LinearResult]
  hidden: jax.Array | np.ndarray          # X_{i+1}, [n, T, D]
  hidden_val: jax.Array | np.ndarray | None
  timings: dict[str, float]


class ForwardCounter:
  """Counts block forward passes over micro-batches (tests use it to check work is not repeated)."""

  def __init__(self):
    self.block_passes = 0
    self.sequences = 0


def _data_sharding(mesh: Mesh | None, n: int):
  if mesh is None or "data" not in mesh.axis_names:
    return None
  if n % mesh.shape["data"] != 0:
    return None  # a ragged micro-batch runs replicated rather than padded (padding would bias H)
  return NamedSharding(mesh, P("data"))


def _put(x, mesh: Mesh | None):
  sh = _data_sharding(mesh, x.shape[0])
  return jax.device_put(x, sh) if sh is not None else jnp.asarray(x)


def _check_finite(x: jax.Array, where: str):
  if not bool(jnp.all(jnp.isfinite(x))):
    raise OptimaError(f"non-finite activations at {where}")


def peak_host_memory_mb() -> float:
  """Peak resident set size of this process so far (MiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _block_apply(graphdef, state, h, positions, capture):
  return nnx.merge(graphdef, state)(h, positions, capture=capture)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(5,))
def _accumulate(graphdef, groups, state, h, positions, H_acc):
  """One micro-batch: block outputs and H_acc[g] + Σ xᵀx (float32) for each input group g."""
  out, inputs = _block_apply(graphdef, state, h, positions, True)
  new = {}
  for g, first in groups:
    x = inputs[first].astype(jnp.float32)
    x = x.reshape(-1, x.shape[-1])
    new[g] = H_acc[g] + jnp.einsum("ti,tj->ij", x, x, precision=jax.lax.Precision.HIGHEST)
  return out, new


@functools.partial(jax.jit, static_argnums=(0,))
def _forward(graphdef, state, h, positions):
  return _block_apply(graphdef, state, h, positions, False)


class BlockRunner:
  """Per-block passes: accumulate Hessians of the linear inputs, and plain forward.

  The jitted functions are keyed by the block's graph definition, so blocks of the same structure
  (every block but Gemma's sliding/global alternation) share one compilation.
  """

  def __init__(self, model, config, index: int, positions: jax.Array):
    self.model = model
    self.config = config
    self.index = index
    self.positions = positions
    self.groups = api.input_groups(config)        # group -> [linear names sharing one input]
    self._groups_static = tuple((g, names[0]) for g, names in self.groups.items())

  def split(self):
    return nnx.split(self.model.layers[self.index])

  def hessians(self, hidden, micro_batch: int, mesh, counter: ForwardCounter | None):
    """Σ xᵀx for every input group over all sequences of `hidden` [n, T, D] -> dict group -> (in, in) f32."""
    graphdef, state = self.split()
    H = None
    for s in range(0, hidden.shape[0], micro_batch):
      h = _put(hidden[s:s + micro_batch], mesh)
      if H is None:
        dims = {g: api.get_linear(self.model, self.index, names[0]).shape[1] for g, names in self.groups.items()}
        H = {g: jnp.zeros((d, d), jnp.float32) for g, d in dims.items()}
      _, H = _accumulate(graphdef, self._groups_static, state, h, self.positions, H)
      if counter is not None:
        counter.block_passes += 1
        counter.sequences += h.shape[0]
    return H

  def forward_all(self, hidden, micro_batch: int, mesh, counter: ForwardCounter | None, on_host: bool):
    graphdef, state = self.split()
    outs = []
    for s in range(0, hidden.shape[0], micro_batch):
      out = _forward(graphdef, state, _put(hidden[s:s + micro_batch], mesh), self.positions)
      if counter is not None:
        counter.block_passes += 1
        counter.sequences += out.shape[0]
      outs.append(np.asarray(out) if on_host else out)
    return np.concatenate(outs) if on_host else jnp.concatenate(outs)


def embed_all(model, ids: np.ndarray, micro_batch: int, on_host: bool):
  """Token ids int32 [n, T] -> hidden states [n, T, D] in the model's activation dtype."""
  embed = jax.jit(lambda m, x: m.embed(x))
  outs = [embed(model, jnp.asarray(ids[s:s + micro_batch])) for s in range(0, ids.shape[0], micro_batch)]
  return np.concatenate([np.asarray(o) for o in outs]) if on_host else jnp.concatenate(outs)


def run_sequential(model, config, calib_ids: np.ndarray, pruner: Pruner, *,
                   val_ids: np.ndarray | None = None,
                   linear_filter: Callable[[str], bool] = lambda name: True,
                   micro_batch: int = 8,
                   mesh: Mesh | None = None,
                   start_block: int = 0,
                   hidden: np.ndarray | jax.Array | None = None,
                   hidden_val: np.ndarray | jax.Array | None = None,
                   hidden_on: str = "device",
                   on_block_done: Callable[[BlockDone], None] | None = None,
                   counter: ForwardCounter | None = None,
                   progress: bool = True) -> ForwardCounter:
  """Prune `model` in place, block by block.

  calib_ids: int32 [n, T] calibration windows; val_ids: optional int32 [n_val, T] validation windows whose
  Hessian H_val is accumulated in the same passes (it never feeds the solve, only model selection).
  `start_block`/`hidden`/`hidden_val` resume from a saved frontier (X_start for calibration and validation).
  Returns the forward-pass counter.
  """
  from tqdm.auto import tqdm

  if hidden_on not in ("device", "host"):
    raise OptimaError(f"hidden_states_on must be 'device' or 'host', got {hidden_on!r}")
  on_host = hidden_on == "host"
  counter = counter or ForwardCounter()
  n_layers = config.num_layers
  T = calib_ids.shape[1]
  positions = jnp.arange(T, dtype=jnp.int32)[None, :]

  if hidden is None:
    hidden = embed_all(model, calib_ids, micro_batch, on_host)
    if val_ids is not None:
      hidden_val = embed_all(model, val_ids, micro_batch, on_host)
  names_all = api.linear_names(config)
  names = [n for n in names_all if linear_filter(n)]
  group_of = {n: g for g, members in api.input_groups(config).items() for n in members}

  blocks = tqdm(range(start_block, n_layers), desc="blocks", unit="block", disable=not progress,
                initial=start_block, total=n_layers)
  for i in blocks:
    t0 = time.perf_counter()
    runner = BlockRunner(model, config, i, positions)
    H = runner.hessians(hidden, micro_batch, mesh, counter)
    H_val = runner.hessians(hidden_val, micro_batch, mesh, counter) if hidden_val is not None else None
    jax.block_until_ready(H)
    t_hess = time.perf_counter() - t0
    n_tokens = int(hidden.shape[0] * hidden.shape[1])

    results: dict[str, LinearResult] = {}
    t1 = time.perf_counter()
    linears = tqdm(names, desc=f"block {i}", unit="linear", leave=False, disable=not progress)
    for name in linears:
      group = group_of[name]
      Hg = H[group]
      where = f"model.layers.{i}.{name}"
      if not bool(jnp.all(jnp.isfinite(Hg))):
        raise OptimaError(f"non-finite activations entering {where}")
      W = api.get_linear(model, i, name).astype(jnp.float32)
      if not bool(jnp.all(jnp.isfinite(W))):
        raise OptimaError(f"non-finite weights in {where}.weight")
      task = LinearTask(block=i, name=name, weight=W, stats=LinearStats(H=Hg, n_tokens=n_tokens),
                        H_val=None if H_val is None else H_val[group])
      res = pruner(task)
      results[name] = res
    # Write back only after every linear of the block was pruned from the dense block's statistics.
    for name, res in results.items():
      api.set_linear(model, i, name, res.weight)
    t_prune = time.perf_counter() - t1

    t2 = time.perf_counter()
    hidden = runner.forward_all(hidden, micro_batch, mesh, counter, on_host)
    if hidden_val is not None:
      hidden_val = runner.forward_all(hidden_val, micro_batch, mesh, counter, on_host)
    if not on_host:
      jax.block_until_ready(hidden)
    _check_finite(jnp.asarray(hidden[:1]), f"the output of block {i}")
    t_fwd = time.perf_counter() - t2
    timings = {"hessians_s": t_hess, "prune_s": t_prune, "forward_s": t_fwd,
               "peak_host_mem_mb": peak_host_memory_mb()}
    log.info("block %d: hessians %.2fs, prune %.2fs, forward %.2fs, peak host memory %.0f MiB",
             i, t_hess, t_prune, t_fwd, timings["peak_host_mem_mb"])
    if on_block_done is not None:
      on_block_done(BlockDone(index=i, results=results, hidden=hidden, hidden_val=hidden_val,
                              timings=timings))
  return counter

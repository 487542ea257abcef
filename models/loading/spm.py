"""A SentencePiece model (``tokenizer.model``) rebuilt from a GGUF's SentencePiece vocabulary.

llama.cpp keeps a SentencePiece tokenizer (``tokenizer.ggml.model == "llama"``) as its pieces, scores and piece
types (GGUF's type codes are SentencePiece's: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte),
so the model proto can be written back. The gemma library's tokenizer (``gm.text.Gemma3Tokenizer(path)``) reads
that file; tests/test_gemma_lib.py checks its ids against the HF tokenizer built from the same GGUF.
"""

from __future__ import annotations

from optima_jax.models.errors import CheckpointError

_SPM_TYPES = {1, 2, 3, 4, 5, 6}


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def sentencepiece_from_gguf(reader, where: str = "GGUF") -> bytes | None:
    """Serialized ``ModelProto`` of an open GGUF (``gguf.GGUFReader``) with a SentencePiece vocabulary, else None
    (a byte-level BPE vocabulary such as LLaMA 3's or Qwen's has no SentencePiece form)."""
    if _field(reader, "tokenizer.ggml.model") != "llama":
        return None
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens = _field(reader, "tokenizer.ggml.tokens")
    scores = _field(reader, "tokenizer.ggml.scores")
    types = _field(reader, "tokenizer.ggml.token_type")
    if not tokens or scores is None or types is None or not (len(tokens) == len(scores) == len(types)):
        raise CheckpointError(f"{where}: SentencePiece vocabulary without matching tokens, scores and token types")
    specials = {
        int(i)
        for k in ("unknown", "bos", "eos", "padding")
        if (i := _field(reader, f"tokenizer.ggml.{k}_token_id")) is not None
    }
    unk = _field(reader, "tokenizer.ggml.unknown_token_id")
    proto = pb.ModelProto()
    for idx, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        sp = proto.pieces.add()
        sp.type = int(kind) if int(kind) in _SPM_TYPES else 1
        if idx == unk:
            sp.type = 2  # SentencePiece requires its unknown piece to be typed UNKNOWN (llama.cpp stores CONTROL)
        elif sp.type == 3 and idx not in specials:
            # Chat markers (<start_of_turn>, ...) are control tokens in GGUF but user-defined in the SentencePiece
            # model, so that prompt text containing them encodes to their ids (the gemma library's templates).
            sp.type = 4
        # llama.cpp's converter writes user-defined pieces with real spaces (it matches them in the raw text);
        # SentencePiece matches them after escaping spaces to U+2581, as its own model file stores them.
        sp.piece = piece.replace(" ", "\u2581") if sp.type == 4 else piece
        sp.score = float(score)
    ts = proto.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = any(int(t) == 6 for t in types)
    ts.split_by_whitespace = False  # merges cross spaces, as in llama.cpp and HF's conversion of the same vocabulary
    for key, attr in (("unknown", "unk"), ("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        idx = _field(reader, f"tokenizer.ggml.{key}_token_id")
        setattr(ts, f"{attr}_id", -1 if idx is None else int(idx))
        if idx is not None:
            setattr(ts, f"{attr}_piece", tokens[int(idx)])
    ns = proto.normalizer_spec
    ns.name = "identity"
    prefix = _field(reader, "tokenizer.ggml.add_space_prefix")
    ns.add_dummy_prefix = True if prefix is None else bool(prefix)
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return proto.SerializeToString()

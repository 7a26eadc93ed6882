"""The monitor inside Hugging Face ``Trainer`` and Lightning: a tiny GPT-2 trained by ``Trainer`` and a tiny
Lightning module, both on a small local text file, at a high LR without qk-layernorm; the alarm must fire, the
columns must be ``attach()``'s, and stop / skip must act. No downloads."""

import json

import polars as pl
import pytest
import torch
import torch.nn.functional as F

from proxyscale import monitor

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; and "
        "darkness was upon the face of the deep. ") * 8
COLUMNS = ("loss", "attn_logit_max/0", "attn_logit_max/1", "q_norm/0", "output_logit_mean", "log_z_mean",
           "grad_norm", "block_rms/0")


def sequences(tmp_path, t=32, vocab=64):
    """The local corpus as [N, t + 1] byte ids (mod ``vocab``)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    ids = torch.tensor(list(path.read_bytes()), dtype=torch.long) % vocab
    n = len(ids) // (t + 1)
    return ids[: n * (t + 1)].view(n, t + 1)


def gpt2():
    transformers = pytest.importorskip("transformers", reason="LOUD SKIP: transformers not installed "
                                       "(pip install 'proxyscale[transformers]')")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64, bos_token_id=0,
                                  eos_token_id=0, attn_implementation="eager")
    return transformers.GPT2LMHeadModel(cfg)


def hf_train(tmp_path, lr=0.3, steps=24, **kw):
    transformers = pytest.importorskip("transformers")
    seqs = sequences(tmp_path)
    data = [{"input_ids": s, "labels": s} for s in seqs]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=steps, learning_rate=lr,
                                          per_device_train_batch_size=4, lr_scheduler_type="constant",
                                          weight_decay=0.0, warmup_steps=0, max_grad_norm=0.0, report_to=[],
                                          save_strategy="no", logging_strategy="no", use_cpu=True,
                                          dataloader_num_workers=0, disable_tqdm=True, seed=0)
    callback = monitor.trainer_callback(every=2, out=tmp_path / "mon", **kw)
    model = gpt2()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    return callback, trainer


def test_trainer_callback_records_attachs_columns_and_the_alarm_fires(tmp_path, capsys):
    callback, trainer = hf_train(tmp_path, logit_threshold=100.0)
    mon = callback.monitor
    assert mon.kind == "transformers GPT-2" and len(mon.probes) == 2
    m = pl.read_parquet(tmp_path / "mon" / "metrics.parquet")
    for col in COLUMNS:
        assert col in m.columns and m[col].drop_nulls().len() > 0, col
    assert any(c.startswith("update_rms/") for c in m.columns)  # the Adam direction, through accelerate's wrapper
    assert m.filter(pl.col("loss").is_not_null())["step"].to_list() == list(range(0, 24, 2))
    logit = m.filter(pl.col("attn_logit_max/0").is_not_null())["attn_logit_max/0"]
    assert logit.max() > 20 * logit[0]  # LR 0.3 without qk-layernorm: the logits explode
    assert "attention-logit growth" in {a.cause for a in mon.alarms}
    assert capsys.readouterr().err.count("attention logits growing") == sum(
        a.cause == "attention-logit growth" for a in mon.alarms)
    assert json.loads((tmp_path / "mon" / "monitor.json").read_text())["steps"] == 24


def test_trainer_callback_stop_ends_training(tmp_path):
    callback, trainer = hf_train(tmp_path, logit_threshold=1.0, on_alarm="stop")
    first = callback.monitor.alarms[0].step  # the framework finishes the step of the alarm, and stops
    assert len(callback.monitor.alarms) == 1 and trainer.state.global_step == first + 1 < 24
    assert (tmp_path / "mon" / "alarms.json").exists()


def test_trainer_callback_skip_leaves_the_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    callback = monitor.trainer_callback(every=1, out=tmp_path / "mon", logit_threshold=1e-9, on_alarm="skip")
    model = gpt2()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=3, learning_rate=0.1,
                                          per_device_train_batch_size=4, report_to=[], save_strategy="no",
                                          use_cpu=True, disable_tqdm=True)
    seqs = sequences(tmp_path)
    transformers.Trainer(model=model, args=args, train_dataset=[{"input_ids": s, "labels": s} for s in seqs],
                         callbacks=[callback]).train()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_a_misspelt_option_fails_when_the_callback_is_built():
    with pytest.raises(TypeError):
        monitor.trainer_callback(evry=5)
    with pytest.raises(ValueError, match="on_alarm"):
        monitor.lightning_callback(on_alarm="panic")


# ---- Lightning -----------------------------------------------------------------------------------------------------

def lightning_module(lr):
    L = pytest.importorskip("lightning.pytorch", reason="LOUD SKIP: lightning not installed "
                            "(pip install 'proxyscale[lightning]')")
    from tiny_models import NanoGPT

    class TinyGPT(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = NanoGPT()

        def training_step(self, batch, _idx):
            (x,) = batch
            logits = self.model(x[:, :-1])
            return F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=0.0)

    return L, TinyGPT()


def lightning_train(tmp_path, lr=0.1, steps=24, **kw):
    L, module = lightning_module(lr)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(sequences(tmp_path)), batch_size=4)
    callback = monitor.lightning_callback(out=tmp_path / "mon", **kw)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=str(tmp_path))
    trainer.fit(module, loader)
    return callback, trainer, module


def test_lightning_callback_records_attachs_columns_and_the_alarm_fires(tmp_path):
    callback, trainer, _ = lightning_train(tmp_path, every=2, logit_threshold=100.0)
    mon = callback.monitor
    assert mon.kind == "nanoGPT CausalSelfAttention"
    m = pl.read_parquet(tmp_path / "mon" / "metrics.parquet")
    for col in COLUMNS:
        assert col in m.columns and m[col].drop_nulls().len() > 0, col
    assert m.filter(pl.col("loss").is_not_null())["step"].to_list() == list(range(0, 24, 2))
    logit = m.filter(pl.col("attn_logit_max/0").is_not_null())["attn_logit_max/0"]
    assert logit.max() > 20 * logit[0]
    assert "attention-logit growth" in {a.cause for a in mon.alarms}
    # the logged loss is the loss of the step it is logged at (the module's own, from on_before_backward)
    assert m["loss"].drop_nulls()[0] == pytest.approx(4.16, abs=0.1)  # ≈ ln 64 at initialisation


def test_lightning_callback_stop_and_skip(tmp_path):
    callback, trainer, _ = lightning_train(tmp_path / "stop", every=1, logit_threshold=1.0, on_alarm="stop")
    first = callback.monitor.alarms[0].step
    assert len(callback.monitor.alarms) == 1 and trainer.global_step == first + 1 < 24
    assert (tmp_path / "stop" / "mon" / "metrics.parquet").exists()
    L, module = lightning_module(0.1)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(sequences(tmp_path)), batch_size=4)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[monitor.lightning_callback(every=1, out=tmp_path / "skip", logit_threshold=1e-9,
                                                              on_alarm="skip")])
    trainer.fit(module, loader)
    assert all(torch.equal(before[n], p) for n, p in module.named_parameters())

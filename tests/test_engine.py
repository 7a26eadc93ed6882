"""The GPU-first engine (issue 6): device-side schedule, foreach RMS, chunked float32 loss, micro-batching, mixed
precision once per step, compilation, memory planning, dropping diverged members. Everything runs on the CPU;
the CUDA variants run the same checks on a GPU when one is present and are skipped loudly when not."""

import math

import polars as pl
import pytest
import torch

from proxyscale.engine.callbacks import StepEnd
from proxyscale.core import config
from proxyscale.core.config import ConfigError
from proxyscale.engine.device import StepWeights, plan_micro_batch
from proxyscale.engine.losses import loss_parts
from proxyscale.engine.optim import FlatParams, lr_at, lr_schedule
from proxyscale.engine.train import GroupRun, train_group

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="LOUD SKIP: no CUDA GPU here - the member-equivalence, isolation and micro-batch checks did NOT run on a GPU"))
DEVICES = ["cpu", CUDA]


def run(tmp_path, raw, name):
    summary, _ = train_group(config.from_dict(raw), tmp_path / name)
    return summary, pl.read_parquet(tmp_path / name / "metrics.parquet")


def member_frame(df: pl.DataFrame, k: int) -> pl.DataFrame:
    return df.filter(pl.col("member") == k).drop("member", "tokens_per_s").sort("step")


def assert_close(a: pl.DataFrame, b: pl.DataFrame, rel: float, what) -> None:
    assert a.columns == b.columns and a.height == b.height, what
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        both_null = a[col].is_null().to_numpy() & b[col].is_null().to_numpy()
        assert ((abs(x - y) <= rel * (1 + abs(y))) | both_null).all(), (what, col)


def test_device_schedule_equals_the_paper_schedule():
    peaks, warmups, total = [0.1, 3e-3, 1.0], [0, 5, 40], 50
    peak = torch.tensor(peaks, dtype=torch.float64).unsqueeze(1)
    warm = torch.tensor(warmups, dtype=torch.float64).unsqueeze(1)
    for step in range(total + 2):
        got = lr_at(torch.tensor(float(step), dtype=torch.float64), peak, warm, total, 1e-5).squeeze(1)
        want = [lr_schedule(step, p, w, total, 1e-5) for p, w in zip(peaks, warmups)]
        assert got.tolist() == pytest.approx(want, rel=1e-6), step


def test_per_tensor_rms_is_the_rms_of_each_tensor_of_each_member():
    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 4, 5, generator=gen), "b": torch.randn(3, 7, generator=gen) * 10,
               "c": torch.randn(3, 1, generator=gen)}
    fp = FlatParams(tensors)
    got = fp.per_tensor(fp.flat)
    for name, t in tensors.items():
        want = t.reshape(3, -1).square().mean(1).sqrt()
        assert torch.allclose(got[name], want, rtol=1e-6), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_float32_loss_equals_one_chunk(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 2, 5, 11, generator=gen) * 4).to(dtype)  # [K, B, T, V]
    targets = torch.randint(0, 11, (2, 5), generator=gen)
    results = []
    for chunk in (1 << 30, 3):  # 3 tokens per chunk: 4 chunks of the 10 tokens
        x = logits.clone().requires_grad_(True)
        parts = loss_parts(x, targets, diagnostics=True, chunk=chunk)
        (parts.ce.sum() + 1e-2 * parts.z_sq.sum()).backward()
        results.append((parts.ce, parts.z_sq, parts.log_z, parts.logit_mean, x.grad.float()))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    ref = torch.nn.functional.cross_entropy(logits.float().flatten(0, 2), targets.flatten().repeat(3), reduction="none")
    assert torch.allclose(results[1][0], ref.view(3, -1).mean(1), rtol=1e-5)


def test_bf16_weights_are_cast_once_and_the_embedding_stays_float32():
    fp = FlatParams({"embed": torch.randn(2, 8, 4), "w": torch.randn(2, 4, 4), "ln_f": torch.ones(2, 4)})
    sw = StepWeights(fp, torch.bfloat16)
    leaves = sw.refresh()
    assert leaves["w"].dtype == torch.bfloat16 and leaves["ln_f"].dtype == torch.bfloat16
    assert leaves["embed"].dtype == torch.float32 and leaves["embed"].data_ptr() == fp.params["embed"].data_ptr()
    assert torch.equal(leaves["w"].float(), fp.flat[:, fp.slices["w"]].view(2, 4, 4).to(torch.bfloat16).float())
    # the gradient comes back as float32 [K, P] in the buffer's layout, for the live rows only
    sw.refresh(torch.tensor([1]))
    g = torch.full_like(fp.flat, 7.0)
    grads = (torch.ones(1, 8, 4), torch.full((1, 4, 4), 2.0, dtype=torch.bfloat16), None)
    sw.grad_into(grads, g, accumulate=False)
    assert torch.equal(g[0], torch.zeros(fp.flat.shape[1]))
    assert g[1, fp.slices["w"]].eq(2.0).all() and g[1, fp.slices["ln_f"]].eq(0.0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_micro_batched_step_equals_the_unchunked_step(tmp_path, make_raw, device):
    """fp32: accumulating gradients over 4 and 2 chunks of the batch gives the step of the whole batch."""
    lrs = [1e-2, 1e-1]
    frames = {}
    for mb in (0, 2, 1):
        raw = make_raw(data={"batch_size": 4}, train={"micro_batch_size": mb, "device": device, "compile": "off"},
                       members={"lr": lrs})
        summary, frames[mb] = run(tmp_path, raw, f"mb{mb}")
        assert summary.micro_batch_size == (mb or 4)
    for mb in (2, 1):
        for k in range(len(lrs)):
            assert_close(member_frame(frames[mb], k), member_frame(frames[0], k), 1e-4, (mb, k))


def test_activation_checkpointing_gives_the_same_step(tmp_path, make_raw):
    raw = make_raw(members={"lr": [1e-2, 1e-1]})
    _, plain = run(tmp_path, raw, "plain")
    raw["train"]["activation_checkpointing"] = True
    _, ckpt = run(tmp_path, raw, "ckpt")
    for k in range(2):
        assert_close(member_frame(ckpt, k), member_frame(plain, k), 1e-5, k)


@pytest.mark.parametrize("device", DEVICES)
def test_member_axis_promises_on_each_device(tmp_path, make_raw, device):
    """Equivalence to K=1 (float tolerance) and isolation of a NaN member (bit-identical) on CPU and CUDA."""
    over = {"device": device, "compile": "off", "precision": "fp32"}
    _, group = run(tmp_path, make_raw(train=over, members={"lr": [1e-2, 1e-1, 1e30]}), "group")
    _, alone = run(tmp_path, make_raw(train=over, members={"lr": [1e-1]}), "alone")
    _, pair = run(tmp_path, make_raw(train=over, members={"lr": [1e-2, 1e-1]}), "pair")
    assert_close(member_frame(group, 1), member_frame(alone, 0), 1e-4, "K=3 vs K=1")
    for k in (0, 1):
        fa, fb = member_frame(group, k), member_frame(pair, k)
        for col in fb.columns:
            assert fa[col].to_list() == fb[col].to_list(), (k, col)


def test_compiled_step_keeps_the_member_axis_promises(tmp_path, make_raw):
    """torch.compile on the CPU: equal to eager (float tolerance), K=3 equals K=1, a NaN member leaves the others
    bit-identical, and a resumed compiled run equals an uninterrupted one bit for bit (one thread)."""
    compiled = {"compile": "on", "steps": 16, "eval_every": 8, "checkpoint_every": 8}
    eager = {**compiled, "compile": "off"}
    lrs = [1e-2, 1e-1, 1e30]
    _, group = run(tmp_path, make_raw(train=compiled, members={"lr": lrs}), "group")
    _, ref = run(tmp_path, make_raw(train=eager, members={"lr": lrs}), "eager")
    _, alone = run(tmp_path, make_raw(train=compiled, members={"lr": [1e-1]}), "alone")
    _, pair = run(tmp_path, make_raw(train=compiled, members={"lr": lrs[:2]}), "pair")
    for k in (0, 1):
        assert_close(member_frame(group, k), member_frame(ref, k), 1e-4, ("compiled vs eager", k))
        fa, fb = member_frame(group, k), member_frame(pair, k)
        for col in fb.columns:
            assert fa[col].to_list() == fb[col].to_list(), ("isolation", k, col)
    assert_close(member_frame(group, 1), member_frame(alone, 0), 1e-4, "K=3 vs K=1")

    cfg = config.from_dict(make_raw(train=compiled, members={"lr": lrs}))

    def interrupt(step):
        if step == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_group(cfg, tmp_path / "resumed", callbacks=[StepEnd(interrupt)])
    train_group(cfg, tmp_path / "resumed")
    resumed = pl.read_parquet(tmp_path / "resumed" / "metrics.parquet")
    assert group.drop("tokens_per_s").equals(resumed.drop("tokens_per_s"))


def test_diverged_members_stop_costing_compute_and_stay_frozen(tmp_path, make_raw):
    raw = make_raw(members={"lr": [1e-2, 1e30]})
    cfg = config.from_dict(raw)
    group = GroupRun(cfg, tmp_path / "g")
    summary = group.run()
    assert summary.members[1]["diverged"] and not summary.members[0]["diverged"]
    assert group.rows is not None and group.rows.tolist() == [0]  # member 1 no longer computed
    df = group.log.frame().filter((pl.col("member") == 1) & (pl.col("step") > 3) & (pl.col("step") < 20))
    assert df["param_rms/embed"].n_unique() == 1 and df["loss"].n_unique() == 1  # frozen rows, repeated
    assert df["diverged"].to_list() == [1.0] * df.height


def test_bf16_training_tracks_fp32(tmp_path, make_raw):
    finals = {}
    for precision in ("fp32", "bf16"):
        summary, df = run(tmp_path, make_raw(train={"precision": precision, "steps": 30}, members={"lr": [1e-2, 3e-2]}),
                          precision)
        finals[precision] = [m["final_eval_loss"] for m in summary.members]
        assert summary.precision == precision
    for a, b in zip(finals["fp32"], finals["bf16"]):
        assert math.isfinite(b) and abs(a - b) < 0.05, finals


def test_a_group_that_cannot_fit_is_refused_with_the_numbers(tmp_path, make_raw, monkeypatch):
    with pytest.raises(ConfigError, match=r"does not fit on cpu: state .* GiB"):
        plan_micro_batch(0, 64, 7, 10**9, 10**8, torch.device("cpu"), torch.bfloat16, free=2**30)
    assert plan_micro_batch(0, 64, 7, 10**6, 10**6, torch.device("cpu"), torch.float32, free=2**30) == 64
    assert plan_micro_batch(0, 64, 2, 10**6, 10**8, torch.device("cpu"), torch.float32, free=2**31) == 8
    with pytest.raises(ConfigError, match="train.micro_batch_size: 3 does not divide"):
        plan_micro_batch(3, 64, 1, 1, 1, torch.device("cpu"), torch.float32, free=2**30)
    monkeypatch.setattr("proxyscale.engine.device.free_bytes", lambda device: 1024)
    with pytest.raises(ConfigError, match="does not fit"):
        train_group(config.from_dict(make_raw(members={"lr": [1e-2, 1e-1]})), tmp_path / "big")
    assert not (tmp_path / "big").exists()  # refused before anything was written


def test_auto_micro_batch_halves_on_out_of_memory_and_keeps_the_numbers(tmp_path, make_raw):
    """An out-of-memory error in a step with micro_batch_size auto retries the step with half the micro-batch;
    the run's numbers equal those of a run that used the smaller micro-batch from the start."""
    raw = make_raw(data={"batch_size": 4}, members={"lr": [1e-2, 1e-1]})
    group = GroupRun(config.from_dict(raw), tmp_path / "oom")
    assert group.micro_batch == 4
    plain = group.loss_fn

    def limited(weights, x, *rest):
        if x.shape[0] > 2 and torch.is_grad_enabled():
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return plain(weights, x, *rest)

    group.loss_fn = limited
    group.run()
    assert group.micro_batch == 2
    raw["train"]["micro_batch_size"] = 2
    _, ref = run(tmp_path, raw, "mb2")
    got = group.log.frame()
    for k in range(2):
        assert_close(member_frame(got, k), member_frame(ref, k), 1e-6, k)

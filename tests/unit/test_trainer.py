"""The trainer learns, masks what it must, and predicts probabilities."""

from __future__ import annotations

import pytest
import torch
from tiny import SPEC, Crash, fit_until_crash

from msmt.settings import Settings
from training import checkpoint, trainer
from training.data import synthetic
from training.evaluate import auc
from training.models import build_model
from training.scoring import predict
from training.trainer import TrainConfig, fit, lr_factor, masked_bce

LOCAL = Settings()  # checkpoints on the local disk


@pytest.mark.parametrize("name", ["mmoe", "shared_bottom"])
def test_fit_learns_both_tasks(name):
    train, valid = synthetic(SPEC, 6000, seed=0), synthetic(SPEC, 2000, seed=1)
    torch.manual_seed(0)
    model = build_model(name, SPEC, emb_dim=8)
    seen = []
    result = fit(model, train, valid, TrainConfig(epochs=3, batch_size=256, lr=5e-3, device="cpu"),
                 on_epoch=lambda epoch, metrics: seen.append(epoch))  # fmt: skip
    assert seen == [0, 1, 2] and len(result.history) == 3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert {"valid_loss_click", "valid_loss_conversion", "samples_per_s"} <= set(result.history[-1])
    probs = predict(model, valid, batch_size=512)
    assert probs.shape == (len(valid), 2) and ((probs > 0) & (probs < 1)).all()
    for t in range(2):
        assert auc(valid.labels[:, t].numpy(), probs[:, t]) > 0.7


def test_masked_rows_get_no_gradient():
    logits = torch.zeros(4, 2, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False], [False, True], [True, False]])
    total, per_task = masked_bce(logits, labels, mask)
    total.backward()
    assert per_task.tolist() == pytest.approx([0.6931472] * 2)
    assert torch.equal(logits.grad[~mask], torch.zeros(int((~mask).sum())))
    assert bool((logits.grad[mask] != 0).all())


def test_masked_rows_do_not_change_the_model():
    """Garbage labels behind a False mask leave a trained model bit-identical."""
    data = synthetic(SPEC, 512, seed=3)
    noisy = synthetic(SPEC, 512, seed=3)
    noisy.label_mask[::2, 1] = False
    data.label_mask[::2, 1] = False
    noisy.labels[::2, 1] = 1.0 - noisy.labels[::2, 1]
    params = []
    for d in (data, noisy):
        torch.manual_seed(0)
        model = build_model("mmoe", SPEC, emb_dim=4)
        fit(model, d, None, TrainConfig(epochs=1, batch_size=128, device="cpu"))
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(params[0], params[1])


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        fit(build_model("mmoe", SPEC), synthetic(SPEC, 8), None, TrainConfig(epochs=0))


# --- batching ----------------------------------------------------------------------------------


def _requests(n: int = 600, seed: int = 0) -> torch.Tensor:
    """Request ids of uneven sizes (1..9 rows), rows of a request scattered over the split."""
    sizes = torch.randint(1, 10, (n,), generator=torch.Generator().manual_seed(seed))
    group = torch.repeat_interleave(torch.arange(n), sizes)
    return group[torch.randperm(len(group), generator=torch.Generator().manual_seed(seed + 1))]


def test_request_batches_hold_whole_requests_and_cover_every_row_once():
    data = synthetic(SPEC, 10)
    group = _requests()
    data = data.select(torch.zeros(len(group), dtype=torch.long))
    data.group = group
    plan = data.plan(64, shuffle=True, generator=torch.Generator().manual_seed(0), by_request=True)
    assert torch.equal(plan.order.sort().values, torch.arange(len(group)))
    owner = torch.full((len(group),), -1)
    for s in range(len(plan)):
        owner[plan.order[plan.bounds[s] : plan.bounds[s + 1]]] = s
    for g in range(600):  # every request inside exactly one batch
        assert owner[group == g].unique().numel() == 1
    sizes = plan.bounds.diff()
    assert sizes[:-1].min() >= 64 - 8 and sizes.max() <= 64 + 8  # about batch_size rows: ±(longest request − 1)
    again = data.plan(64, shuffle=True, generator=torch.Generator().manual_seed(1), by_request=True)
    assert not torch.equal(plan.order, again.order)  # requests reshuffled per epoch


def test_batches_carry_the_group_and_slice_like_before():
    data = synthetic(SPEC, 50, rows_per_request=5)
    batches = list(data.batches(16, shuffle=False))
    assert [len(b["group"]) for b in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([b["group"] for b in batches]), data.group)


def test_a_request_batching_model_gets_whole_requests():
    train = synthetic(SPEC, 400, rows_per_request=7)
    model = build_model("mmoe", SPEC, emb_dim=4)
    model.batching = "request"
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(
        lambda module, args: seen.append(args[0]["group"].clone()) if module.training else None
    )
    fit(model, train, None, TrainConfig(epochs=1, batch_size=50, device="cpu"))
    assert sum(len(g) for g in seen) == 400
    for g in seen:
        counts = torch.bincount(g, minlength=58)[g.unique()]
        assert torch.equal(counts, torch.bincount(train.group, minlength=58)[g.unique()])  # all its rows


def test_predict_returns_rows_in_their_own_order_for_request_batching_models():
    data = synthetic(SPEC, 300)
    data.group = _requests(60)[:300]  # requests scattered over the split
    model = build_model("mmoe", SPEC, emb_dim=4)
    rowwise = predict(model, data, batch_size=32)
    model.batching = "request"  # same row-wise model, now scored request by request
    assert torch.allclose(torch.from_numpy(predict(model, data, batch_size=32)), torch.from_numpy(rowwise))


def test_shards_split_whole_requests_deterministically():
    data = synthetic(SPEC, 1000, rows_per_request=4)
    shards = [data.shard(r, 3) for r in range(3)]
    assert sum(len(s) for s in shards) == 1000
    groups = [set(s.group.tolist()) for s in shards]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert all(250 < len(s) < 420 for s in shards)
    assert torch.equal(data.shard(1, 3).sparse, shards[1].sparse)


# --- schedule, early stopping ----------------------------------------------------------------------


def test_warmup_then_cosine_schedule():
    cfg = TrainConfig(schedule="cosine", warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_factor(s, 20, cfg) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(12, 20, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lr_factor(20, 20, cfg) == pytest.approx(0.1)
    assert lr_factor(7, 20, TrainConfig()) == 1.0
    with pytest.raises(ValueError):
        TrainConfig(schedule="linear")


def test_fit_follows_the_schedule():
    model = build_model("mmoe", SPEC, emb_dim=4)
    cfg = TrainConfig(
        epochs=2, batch_size=100, lr=1e-2, schedule="cosine", warmup_steps=2, min_lr_ratio=0.2, device="cpu"
    )
    result = fit(model, synthetic(SPEC, 400), None, cfg)
    assert result.history[0]["lr"] == pytest.approx(1e-2 * lr_factor(4, 8, cfg))
    assert result.history[-1]["lr"] == pytest.approx(2e-3)


def _count_training_forwards(model: torch.nn.Module, seen: list) -> None:
    """Append autocast's state on the CPU at every forward in training mode."""
    model.register_forward_pre_hook(lambda m, _: seen.append(torch.is_autocast_enabled("cpu")) if m.training else None)


def test_max_steps_ends_training_across_epochs_and_shortens_the_schedule():
    model = build_model("mmoe", SPEC, emb_dim=4)
    forwards: list[bool] = []
    _count_training_forwards(model, forwards)
    cfg = TrainConfig(epochs=3, batch_size=100, max_steps=6, schedule="cosine", device="cpu")
    result = fit(model, synthetic(SPEC, 400), None, cfg)  # 4 steps per epoch: 4 + 2, third epoch not run
    assert len(forwards) == 6 and len(result.history) == 2
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine ends at step 6, not 12
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=-1)


def test_bf16_on_the_cpu_only_when_asked_and_only_where_it_is_native():
    data = synthetic(SPEC, 200)
    model = build_model("mmoe", SPEC, emb_dim=4)
    forwards: list[bool] = []
    _count_training_forwards(model, forwards)
    fit(model, data, None, TrainConfig(epochs=1, batch_size=100, device="cpu"))  # bf16=True is for CUDA
    assert forwards == [False, False]
    forwards.clear()
    asked = TrainConfig(epochs=1, batch_size=100, device="cpu", bf16_cpu=True)
    if trainer.cpu_has_bf16():
        result = fit(model, data, None, asked)
        assert forwards == [True, True] and result.history[0]["train_loss"] > 0
    else:
        with pytest.raises(ValueError, match="native bf16"):
            fit(model, data, None, asked)
        assert forwards == []


def test_early_stopping_restores_the_best_epoch(monkeypatch):
    """A scripted validation loss: best at epoch 1, then two worse epochs → stop after epoch 3."""
    scripted = iter([[0.5, 0.5], [0.4, 0.3], [0.45, 0.3], [0.4, 0.31], [0.1, 0.1]])
    monkeypatch.setattr(trainer, "_valid_loss", lambda *args: torch.tensor(next(scripted)))
    model = build_model("mmoe", SPEC, emb_dim=4)
    snapshots = []
    cfg = TrainConfig(epochs=5, batch_size=128, lr=1e-2, patience=2, device="cpu")
    result = fit(
        model, synthetic(SPEC, 500), synthetic(SPEC, 100), cfg, on_epoch=lambda e, m: snapshots.append(_flat(model))
    )
    assert [h["valid_loss"] for h in result.history] == pytest.approx([1.0, 0.7, 0.75, 0.71])
    assert result.stopped_early and result.best_epoch == 1
    assert torch.equal(_flat(model), snapshots[1]) and not torch.equal(_flat(model), snapshots[-1])
    monkeypatch.setattr(trainer, "_valid_loss", lambda *args: torch.tensor([0.5, 0.5]))
    assert len(fit(model, synthetic(SPEC, 500), synthetic(SPEC, 100), TrainConfig(epochs=3, device="cpu")).history) == 3


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


# --- checkpoints --------------------------------------------------------------------------------


def test_resume_after_a_crash_ends_where_an_uninterrupted_run_ends(tmp_path):
    train, valid = synthetic(SPEC, 900, seed=0), synthetic(SPEC, 300, seed=1)
    cfg = TrainConfig(epochs=3, batch_size=64, schedule="cosine", warmup_steps=3, device="cpu",
                      checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=5)  # fmt: skip

    def build():
        return build_model("mmoe", SPEC, emb_dim=4, dropout=0.2)  # dropout: the RNG must be restored too

    torch.manual_seed(0)
    reference = build()
    expected = fit(reference, train, valid, TrainConfig(**{**cfg.__dict__, "checkpoint_dir": ""}))

    torch.manual_seed(0)
    crashing = build()
    fit_until_crash(crashing, train, valid, cfg, 15 + 12)  # mid-epoch 2 (15 steps/epoch), after the step-25 ckpt
    saved = checkpoint.load(LOCAL, checkpoint.path_in(cfg.checkpoint_dir))
    assert (saved["epoch"], saved["step"]) == (1, 10)

    torch.manual_seed(123)  # a fresh process: other initial weights, other RNG state
    resumed = build()
    result = fit(resumed, train, valid, cfg)
    assert result.resumed_from == {"epoch": 1, "step": 10}
    assert torch.equal(_flat(resumed), _flat(reference))
    for got, want in zip(result.history, expected.history, strict=True):
        for key in ("train_loss", "valid_loss", "lr"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), key


def test_checkpoints_are_atomic_and_weights_only(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    checkpoint.save(LOCAL, path, {"model": {"w": torch.ones(2)}, "step": 1, "rng": [checkpoint.rng_state()]})
    state = checkpoint.load(LOCAL, path)
    assert state["step"] == 1
    checkpoint.set_rng_state(state["rng"][0])

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoint.save(LOCAL, path, {"step": 2})
    assert checkpoint.load(LOCAL, path)["step"] == 1  # the previous checkpoint survives
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind
    monkeypatch.undo()

    torch.save({"evil": Crash("not a tensor")}, path)
    with pytest.raises(Exception, match=r"weights_only|Unsupported global"):
        checkpoint.load(LOCAL, path)


def test_a_spent_checkpoint_is_discarded_with_its_empty_directory(tmp_path):
    alone, shared = tmp_path / "alone", tmp_path / "shared"
    for directory in (alone, shared):
        checkpoint.save(LOCAL, checkpoint.path_in(directory), {"step": 1})
    (shared / "notes.txt").write_text("not ours")
    checkpoint.discard(LOCAL, alone)
    checkpoint.discard(LOCAL, shared)
    checkpoint.discard(LOCAL, None)  # no checkpoint directory configured: nothing to do
    assert not alone.exists() and checkpoint.latest(LOCAL, shared) is None
    assert [p.name for p in shared.iterdir()] == ["notes.txt"]


def test_compile_is_refused_with_the_models_reason():
    model = build_model("causalint", SPEC, emb_dim=4)
    with pytest.raises(ValueError, match="double backward"):
        fit(model, synthetic(SPEC, 64), None, TrainConfig(epochs=1, batch_size=32, compile=True, device="cpu"))
    assert build_model("causalint", SPEC, emb_dim=4, grad_orth_weight=0.0).compile_blocker() is None
    assert build_model("mmoe", SPEC, emb_dim=4).compile_blocker() is None

"""`TrainConfig.sparse_embeddings`: row-sparse id tables under SparseAdam, dense parameters under fused Adam."""

from __future__ import annotations

import pytest
import torch
from tiny import SPEC, fit_until_crash

from msmt.settings import Settings
from training import checkpoint, trainer
from training.data import synthetic
from training.layers import EmbeddingTable
from training.models import REGISTRY, build_model
from training.trainer import TrainConfig, fit, masked_bce

LOCAL = Settings()


def _looked_up(model: torch.nn.Module, table: EmbeddingTable, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every row of `table` the batch reads, recorded by a forward hook `(n,)`."""
    rows: list[torch.Tensor] = []
    handle = table.register_forward_hook(lambda module, args, out: rows.append(args[0].flatten()))
    with torch.no_grad():
        model(batch)
    handle.remove()
    return torch.cat(rows).unique()


@pytest.mark.parametrize("name", ["mmoe", "mdl"])  # MDL adds a table of its own
def test_a_step_changes_only_the_rows_the_batch_touches(name):
    torch.manual_seed(0)
    model = build_model(name, SPEC, emb_dim=4)
    train = synthetic(SPEC, 64, seed=0)
    train.sparse[:, 0] %= 10  # users 0–9 only: most of the user table stays untouched
    cfg = TrainConfig(epochs=1, batch_size=64, device="cpu", sparse_embeddings=True, weight_decay=0.1)
    run, train = trainer._prepare(model, train, cfg, LOCAL)
    batch = next(train.batches(64, shuffle=False))
    tables = [m for m in model.modules() if isinstance(m, EmbeddingTable)]
    assert len(tables) == (2 if name == "mdl" else 1)
    touched = [_looked_up(model, t, batch) for t in tables]
    before = [t.weight.detach().clone() for t in tables]
    dense_before = {n: p.detach().clone() for n, p in model.named_parameters() if "table" not in n}
    model.train()
    trainer._step(run, batch)

    for table, rows, old in zip(tables, touched, before, strict=True):
        grad = table.weight.grad
        assert grad.is_sparse and torch.equal(grad.coalesce().indices()[0].unique(), rows)
        untouched = torch.ones(len(old), dtype=torch.bool)
        untouched[rows] = False
        assert untouched.sum() >= 35  # users 10–49 at least
        assert torch.equal(table.weight[untouched], old[untouched])  # no decay, no update off the batch
        assert (table.weight[rows] != old[rows]).any(1).float().mean() > 0.5  # rows the loss reaches moved
        state = run.sparse_optimizer.state[table.weight]
        assert not state["exp_avg"][untouched].any() and not state["exp_avg_sq"][untouched].any()
    for n, p in model.named_parameters():
        if "table" not in n:
            assert p.grad is None or not p.grad.is_sparse
            assert p in run.optimizer.state or p.grad is None, n  # the fused Adam steps every dense parameter
    assert any(not torch.equal(p, dense_before[n]) for n, p in model.named_parameters() if n in dense_before)


def test_fit_with_sparse_embeddings_learns_and_follows_the_schedule():
    train, valid = synthetic(SPEC, 6000, seed=0), synthetic(SPEC, 2000, seed=1)
    torch.manual_seed(0)
    model = build_model("mmoe", SPEC, emb_dim=8)
    cfg = TrainConfig(epochs=3, batch_size=256, lr=5e-3, device="cpu", sparse_embeddings=True,
                      schedule="cosine", warmup_steps=5, min_lr_ratio=0.1)  # fmt: skip
    result = fit(model, train, valid, cfg)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] - 0.05 and result.history[-1]["valid_loss"] < result.history[0]["valid_loss"]
    assert result.history[-1]["lr"] == pytest.approx(5e-3 * 0.1)  # the cosine's end
    assert model.embedding.table.sparse


def test_the_sparse_optimizer_follows_the_schedule_too():
    model = build_model("mmoe", SPEC, emb_dim=4)
    cfg = TrainConfig(epochs=1, batch_size=32, device="cpu", sparse_embeddings=True, warmup_steps=4)
    run, train = trainer._prepare(model, synthetic(SPEC, 128), cfg, LOCAL)
    for step, batch in enumerate(train.batches(32, shuffle=False), 1):
        trainer._step(run, batch)
        for optimizer in run.optimizers():
            assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr * min(step + 1, 4) / 4)
    assert len(run.optimizers()) == len(run.schedulers()) == 2


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_resume_restores_both_optimizers(tmp_path):
    train = synthetic(SPEC, 640, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=64, schedule="cosine", device="cpu", sparse_embeddings=True,
                      checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=4)  # fmt: skip
    torch.manual_seed(0)
    reference = build_model("mmoe", SPEC, emb_dim=4)
    expected = fit(reference, train, None, TrainConfig(**{**cfg.__dict__, "checkpoint_dir": ""}))

    torch.manual_seed(0)
    crashing = build_model("mmoe", SPEC, emb_dim=4)
    fit_until_crash(crashing, train, None, cfg, 10 + 7)  # mid-epoch 2 (10 steps / epoch), after the step-16 checkpoint
    saved = checkpoint.load(LOCAL, checkpoint.path_in(cfg.checkpoint_dir))
    assert (saved["epoch"], saved["step"]) == (1, 6)
    assert saved["sparse_optimizer"]["state"] and saved["sparse_scheduler"]["last_epoch"] == 16

    torch.manual_seed(123)
    resumed = build_model("mmoe", SPEC, emb_dim=4)
    result = fit(resumed, train, None, cfg)
    assert result.resumed_from == {"epoch": 1, "step": 6}
    assert torch.equal(_flat(resumed), _flat(reference))  # lost SparseAdam moments would show here
    assert result.history[-1]["train_loss"] == pytest.approx(expected.history[-1]["train_loss"], rel=1e-6)

    with pytest.raises(ValueError, match="sparse_embeddings=True"):  # a dense run must not take it
        fit(build_model("mmoe", SPEC, emb_dim=4), train, None, TrainConfig(**{**cfg.__dict__, "epochs": 3,
                                                                              "sparse_embeddings": False}))  # fmt: skip


def test_the_default_is_fused_adam_over_every_parameter_bit_for_bit():
    """Without the option, `fit` is the plain loop: fused Adam on all parameters, dense table gradients."""
    train = synthetic(SPEC, 256, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=64, device="cpu", weight_decay=0.01)
    torch.manual_seed(0)
    fitted = build_model("mmoe", SPEC, emb_dim=4)
    fit(fitted, train, None, cfg)

    torch.manual_seed(0)
    model = build_model("mmoe", SPEC, emb_dim=4)
    trainer._seed_everything(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    plan = train.plan(cfg.batch_size, shuffle=True, generator=trainer.epoch_generator(cfg.seed, 0, 0))
    model.train()
    for batch in train.iter_plan(plan, 0, len(plan)):
        loss, _ = masked_bce(model(batch).float(), batch["labels"], batch["label_mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert not model.embedding.table.weight.grad.is_sparse
        optimizer.step()
    assert torch.equal(_flat(fitted), _flat(model))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_model_trains_with_sparse_embeddings(name):
    torch.manual_seed(0)
    model = build_model(name, SPEC, emb_dim=4)
    result = fit(model, synthetic(SPEC, 64), None,
                 TrainConfig(epochs=1, batch_size=32, device="cpu", sparse_embeddings=True))  # fmt: skip
    assert len(result.history) == 1 and result.history[0]["train_loss"] > 0
    assert all(t.sparse for t in model.modules() if isinstance(t, EmbeddingTable))


def test_refitting_without_the_option_makes_the_tables_dense_again():
    model = build_model("mmoe", SPEC, emb_dim=4)
    for sparse in (True, False):
        fit(model, synthetic(SPEC, 64), None, TrainConfig(epochs=1, batch_size=32, device="cpu",
                                                          sparse_embeddings=sparse))  # fmt: skip
        assert model.embedding.table.sparse is sparse

"""The trainer learns, masks what it must, and predicts probabilities."""

from __future__ import annotations

import pytest
import torch

from training.data import FeatureSpec, synthetic
from training.evaluate import auc
from training.models import build_model
from training.trainer import TrainConfig, fit, masked_bce, predict

SPEC = FeatureSpec(
    sparse_fields=["user_id", "item_id", "scenario_id"],
    vocab_sizes=[30, 40, 4],
    dense_fields=["u_ctr", "i_ctr"],
    seq_len=4,
    n_scenarios=3,
    tasks=("click", "conversion"),
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on shared cores: intra-op threads only add spin-waiting (measured 2-7x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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

"""Training side of msmt: tensor data, model zoo, trainer, evaluation and the promotion gate."""

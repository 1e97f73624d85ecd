"""The code MLflow runs to load a logged ranker ("models from code": nothing is unpickled).

`training.pyfunc.log_ranker` logs this file as the pyfunc's `python_model`; at load
time MLflow executes it, with the logged copy of the `training` and `msmt`
packages on the path, and `MsmtRanker.load_context` reads the weights and spec.
"""

import mlflow

from training.pyfunc import MsmtRanker

mlflow.models.set_model(MsmtRanker())

"""The registered model's serving form: an MLflow pyfunc wrapping any zoo model.

A logged ranker holds two artifacts, the `state_dict` (read back with
`weights_only=True`) and `ranker.json` (model name, model config, `FeatureSpec`),
a copy of the code that scores (`MODEL_CODE`: the models, their layers, the data
encoding, scoring and this module, on msmt's floor — not the trainer, the registry
operations or the CLI), so it loads outside this repo, and is logged as code
(`training/ranker_model.py`, MLflow's "models from code"): loading a ranker never
unpickles anything. pyproject's import contracts keep `MODEL_CODE` self-contained.
It is the only module of `training/` that imports MLflow at module level;
models and the trainer stay MLflow-free for the GPU machine.

Its input is a DataFrame of the spec's columns (the sparse ids, the dense
features, the click history); its output one probability column per task,
`p_click`, `p_conversion`. Integer columns are declared `long` and dense ones
`double` in the signature: a client sending int64 ids, or a null for a feature
never computed for a new user, must not be refused by schema enforcement.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import torch
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from torch import nn

from training.data import FeatureSpec, encode
from training.models import build_model
from training.scoring import predict

_ROOT = Path(__file__).resolve().parents[1]
# What a logged ranker's `code/` holds, relative to the repository root.
MODEL_CODE = (
    "training/__init__.py",
    "training/models",
    "training/layers.py",
    "training/data.py",
    "training/scoring.py",
    "training/pyfunc.py",
    "msmt",
)
_REQUIREMENTS = ("torch", "numpy", "pandas", "pyarrow")
_MODEL_CODE = Path(__file__).resolve().with_name("ranker_model.py")  # defines the pyfunc: models from code


def input_columns(spec: FeatureSpec) -> list[str]:
    """The columns a ranker reads, in the signature's order."""
    seq = [spec.seq_field] if spec.seq_field is not None else []
    return [*spec.sparse_fields, *spec.dense_fields, *seq]


def model_frame(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Just the spec's columns, integers widened to int64 and dense values to float64.

    Filling dense nulls here (encode would too) keeps every column `required` in the
    inferred signature: present always, null allowed, whatever the example rows held.
    """
    out = frame[input_columns(spec)].copy()
    for name in spec.sparse_fields:
        if pd.api.types.is_integer_dtype(out[name]):
            out[name] = out[name].astype("int64")
    out[spec.dense_fields] = out[spec.dense_fields].astype("float64").fillna(0.0)  # as encode does with nulls
    if spec.seq_field is not None:  # arrow gives numpy arrays; JSON and the signature want lists
        out[spec.seq_field] = [None if v is None else [int(i) for i in v] for v in out[spec.seq_field]]
    return out


def score_frame(model: nn.Module, spec: FeatureSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Probabilities `p_<task>` for each row of `frame` (labels, if present, are ignored)."""
    frame = model_frame(frame, spec)
    seq = [spec.seq_field] if spec.seq_field is not None else []
    table = pa.Table.from_pandas(frame.drop(columns=seq), preserve_index=False)
    for name in seq:  # typed explicitly: a batch of users without history would infer a null column
        table = table.append_column(name, pa.array(frame[name].tolist(), type=pa.list_(pa.int64())))
    for task in spec.tasks:  # encode reads label columns; serving has none
        table = table.append_column(task, pa.nulls(table.num_rows, pa.int32()))
    return pd.DataFrame(predict(model, encode(table, spec)), columns=[f"p_{task}" for task in spec.tasks])


class MsmtRanker(mlflow.pyfunc.PythonModel):
    """Rebuilds the zoo model from its logged name, config and spec, then scores DataFrames."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        meta = json.loads(Path(context.artifacts["ranker"]).read_text())
        self.spec = FeatureSpec.from_dict(meta["spec"])
        self.model = build_model(meta["model_name"], self.spec, **meta["config"])
        state = torch.load(context.artifacts["state_dict"], map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        return score_frame(self.model, self.spec, model_input)


def log_ranker(
    model: nn.Module, model_name: str, config: dict, spec: FeatureSpec, example_df: pd.DataFrame
) -> ModelInfo:
    """Log `model` as a pyfunc named `model` in the active run, with signature and input example."""
    model = model.to("cpu").eval()
    example = model_frame(example_df, spec)
    with warnings.catch_warnings():  # ids are never null, and nullable dense columns are already double
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(example, score_frame(model, spec, example))
    with tempfile.TemporaryDirectory() as tmp:
        code_paths = _copy_model_code(Path(tmp, "code"))
        state_path, meta_path = Path(tmp, "state_dict.pt"), Path(tmp, "ranker.json")
        torch.save(model.state_dict(), state_path)
        meta_path.write_text(json.dumps({"model_name": model_name, "config": config, "spec": spec.to_dict()}))
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(_MODEL_CODE),
            artifacts={"state_dict": str(state_path), "ranker": str(meta_path)},
            code_paths=code_paths,
            signature=signature,
            input_example=example,
            pip_requirements=_pinned_requirements(),
        )


def _copy_model_code(into: Path) -> list[str]:
    """`MODEL_CODE` as importable packages under `into`; the package directories to log as `code_paths`."""
    for entry in MODEL_CODE:
        source, target = _ROOT / entry, into / entry
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return sorted(str(package) for package in into.iterdir())


def load_ranker(model_uri: str) -> tuple[nn.Module, FeatureSpec]:
    """The torch module and spec behind a logged ranker (the gate scores `TensorData` directly)."""
    ranker = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    return ranker.model, ranker.spec


def _pinned_requirements() -> list[str]:
    """This environment's versions: explicit requirements also skip MLflow's slow inference."""
    return [f"{name}=={version(name).split('+')[0]}" for name in _REQUIREMENTS]

"""The aligned model as an MLflow model: a code-based pyfunc that embeds images and texts, and its registration.

Layout of a saved model (``mlflow.pyfunc.save_model``, models-from-code):

* ``artifacts/weights.pt``: ``{'model': state_dict, 'preset', 'mode', 'args': {'model_overrides',
  'model_options'}, 'format'}`` (tensors and plain values only, read with ``torch.load(weights_only=True)``);
* ``artifacts/tokenizer/``: the tokenizer the model was trained with;
* the model code is ``alta/resources/mlflow_pyfunc.py``, a two-line file that instantiates
  :class:`AltaEmbedModel`: nothing is pickled, and loading needs the ``alta`` package installed.

``predict`` takes a DataFrame with an optional binary ``image`` column (PNG, JPEG or DICOM bytes; DICOMs are
rendered with the ``render`` param, default ``mimic_jpg`` as in training) and an optional string ``text`` column,
one of them per row, and returns an ``(N, P)`` float32 array of L2-normalised embeddings, the rows in input order:
the same numbers as ``alta embed --checkpoint`` (both go through :class:`alta.evaluate.embedding.Embedder`).

``alta embed --model URI`` and ``alta zeroshot --model URI`` accept ``models:/NAME/VERSION``, ``runs:/...`` or a
local model folder (:func:`local_model_dir`); the weights are read with our own code from the downloaded files,
so a model from a registry never runs code from the registry.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("alta.report.mlflow_model")

CODE_FILE = Path(__file__).resolve().parents[1] / "resources" / "mlflow_pyfunc.py"
FORMAT = "alta-embed-1"
EXAMPLE_TEXT = "No acute cardiopulmonary process."
# Installed beside `alta` where the model is served (alta itself is not on PyPI: install it from the repository).
PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "timm>=1.0,<1.1", "transformers>=5,<6",
                    "tokenizers>=0.21", "mlflow>=3.17,<3.18", "pandas>=2.2", "numpy>=1.26", "pydicom>=3,<4",
                    "pylibjpeg>=2", "pylibjpeg-libjpeg>=2", "pylibjpeg-openjpeg>=2", "pillow>=10"]


# -- weights ----------------------------------------------------------------------------------------------------
def export_weights(checkpoint: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Write the inference file of an ``align`` checkpoint (no optimiser state); return its metadata."""
    import torch

    from alta import io
    from alta.models.checkpoints import extract_state_dict

    try:
        obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corrupt file
        raise ValueError(f"{checkpoint}: not a readable alta checkpoint ({str(exc).splitlines()[0]})") from exc
    args = obj.get("args") if isinstance(obj, dict) and isinstance(obj.get("args"), dict) else {}
    meta = {"preset": obj.get("preset") or "tiny", "mode": obj.get("mode") or "recommended",
            "args": {"model_overrides": dict(args.get("model_overrides") or {}),
                     "model_options": dict(args.get("model_options") or {})},
            "format": FORMAT}
    with io.atomic_path(dest) as tmp:
        torch.save({"model": extract_state_dict(obj), **meta}, tmp)
    return meta


def load_embedder(weights: str | os.PathLike, tokenizer_dir: str | os.PathLike, batch_size: int = 32,
                  device: str = "cpu"):
    """An :class:`~alta.evaluate.embedding.Embedder` from an exported ``weights.pt`` (or an align checkpoint),
    read with ``weights_only=True``."""
    import torch

    from alta import io
    from alta.evaluate.embedding import Embedder
    from alta.models.build import build_alta
    from alta.models.checkpoints import load_checkpoint
    from alta.train.tokenizer import load_tokenizer, special_ids

    if not Path(weights).is_file():
        raise FileNotFoundError(f"{weights}: no such weights file")
    try:
        obj = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{weights}: not a readable weights file ({str(exc).splitlines()[0]})") from exc
    tok = load_tokenizer(str(tokenizer_dir))
    args = obj.get("args") if isinstance(obj.get("args"), dict) else {}
    preset, mode = obj.get("preset") or "tiny", obj.get("mode") or "recommended"
    torch.manual_seed(0)  # the parts unused at inference are initialised the same way as in Embedder
    model = build_alta(preset=preset, mode=mode, tokenizer=tok, vocab_size=len(tok), special_ids=special_ids(tok),
                       overrides=args.get("model_overrides") or None, options=args.get("model_options") or None)
    load_checkpoint(obj, model)
    return Embedder(model, tok, batch_size=batch_size, device=device, preset=preset, kind="align",
                    checkpoint_sha256=io.sha256_file(weights))


# -- the pyfunc -------------------------------------------------------------------------------------------------
def _image_suffix(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:2] == b"\x1f\x8b":
        return ".dcm.gz"
    return ".dcm"


def grey_from_bytes(data: bytes, render_mode: str = "mimic_jpg") -> np.ndarray:
    """PNG/JPEG/DICOM bytes as 8-bit grey, through the same reader as ``alta embed`` (a temporary file)."""
    from alta.evaluate.embed import read_grey

    with tempfile.TemporaryDirectory(prefix="alta-pyfunc-") as tmp:
        path = Path(tmp) / f"input{_image_suffix(data)}"
        path.write_bytes(data)
        return read_grey(str(path), render_mode)


def _base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


class AltaEmbedModel(_base()):
    """``predict(DataFrame[image: binary?, text: str?]) -> (N, P) float32``; see the module docstring."""

    def load_context(self, context):
        self.embedder = load_embedder(context.artifacts["weights"], context.artifacts["tokenizer"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        from alta.evaluate.embed import TEXT

        params = params or {}
        mode = params.get("render") or "mimic_jpg"
        df = model_input
        images = df["image"].tolist() if "image" in df else [None] * len(df)
        texts = df["text"].tolist() if "text" in df else [None] * len(df)
        img_rows = [i for i, v in enumerate(images) if _present(v)]
        txt_rows = [i for i, v in enumerate(texts) if _present(v) and i not in set(img_rows)]
        missing = sorted(set(range(len(df))) - set(img_rows) - set(txt_rows))
        if missing:
            raise ValueError(f"rows {missing[:10]} have neither an image nor a text")
        out = None
        if img_rows:
            v = self.embedder.images(grey_from_bytes(_as_bytes(images[i]), mode) for i in img_rows)
            out = np.zeros((len(df), v.shape[1]), np.float32)
            out[img_rows] = v
        if txt_rows:
            t = self.embedder.texts([str(texts[i]) for i in txt_rows], TEXT)
            out = np.zeros((len(df), t.shape[1]), np.float32) if out is None else out
            out[txt_rows] = t
        return out if out is not None else np.zeros((0, 0), np.float32)


def _present(v) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and np.isnan(v):
        return False
    return not (isinstance(v, (str, bytes)) and len(v) == 0)


def _as_bytes(v) -> bytes:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):  # base64, as in a JSON serving request
        import base64

        return base64.b64decode(v)
    raise ValueError(f"image column holds {type(v).__name__}, expected bytes")


# -- save, register, resolve ------------------------------------------------------------------------------------
def example_png(size: int = 64) -> bytes:
    """A synthetic grey gradient PNG: the input example never carries a patient's pixels."""
    import io as _io

    from PIL import Image

    ramp = np.add.outer(np.arange(size), np.arange(size)) * (255 / (2 * size - 2))
    buf = _io.BytesIO()
    Image.fromarray(ramp.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def save_model(checkpoint: str | os.PathLike, tokenizer_dir: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Save the pyfunc model folder ``dest`` (atomically); return ``{'embedding_dim', 'preset', 'mode'}``."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    from alta import io
    from alta.evaluate.embed import TEXT

    with tempfile.TemporaryDirectory(prefix="alta-model-") as work:
        weights = Path(work) / "weights.pt"
        meta = export_weights(checkpoint, weights)
        emb = load_embedder(weights, tokenizer_dir)
        dim = int(emb.texts([EXAMPLE_TEXT], TEXT).shape[1])
        signature = ModelSignature(
            inputs=Schema([ColSpec("binary", "image", required=False), ColSpec("string", "text", required=False)]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
            params=ParamSchema([ParamSpec("render", "string", "mimic_jpg")]))
        example = pd.DataFrame({"image": [example_png(), None], "text": [None, EXAMPLE_TEXT]})
        with io.atomic_dir(dest) as tmp:
            os.rmdir(tmp)  # save_model insists on creating the folder itself
            mlflow.pyfunc.save_model(str(tmp), python_model=str(CODE_FILE),
                                     artifacts={"weights": str(weights), "tokenizer": str(tokenizer_dir)},
                                     signature=signature, input_example=example,
                                     pip_requirements=PIP_REQUIREMENTS,
                                     metadata={"alta.format": FORMAT, "alta.preset": meta["preset"],
                                               "alta.mode": meta["mode"]})
    return {"embedding_dim": dim, "preset": meta["preset"], "mode": meta["mode"]}


def register(client, run_id: str, artifact_path: str, name: str, tags: dict | None = None):
    """Create ``name`` in the Model Registry if absent and a version whose source is the run's model folder."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description="ALTA-aligned chest radiograph image/text embedder "
                                                             "(alta register_model)")
        except MlflowException as exc:  # two workflows racing to create it
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    return client.create_model_version(name, source=source, run_id=run_id,
                                       tags={k: str(v) for k, v in (tags or {}).items()})


def local_model_dir(uri: str, tracking_uri: str | None = None, dst: str | os.PathLike | None = None) -> Path:
    """A local folder holding the MLflow model at ``uri``: the folder itself, or for ``models:/`` and ``runs:/``
    URIs a download into ``dst`` (a new temporary folder when None)."""
    p = Path(uri)
    if p.is_dir():
        if not (p / "MLmodel").is_file():
            raise ValueError(f"{uri}: not an MLflow model folder (no MLmodel file)")
        return p
    if not uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        raise ValueError(f"{uri}: expected models:/NAME/VERSION, runs:/RUN_ID/PATH or a local model folder")
    import mlflow.artifacts

    from alta import tracking

    uri_env = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri_env:
        raise ValueError(f"{uri}: set --tracking-uri or MLFLOW_TRACKING_URI to resolve it")
    dest = str(dst) if dst is not None else tempfile.mkdtemp(prefix="alta-model-")
    resolved = tracking._resolve_uri(uri_env)
    if uri.startswith("models:/"):
        uri = _model_version_source(uri, resolved)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dest, tracking_uri=resolved))


def _model_version_source(uri: str, registry_uri: str) -> str:
    """The artifact URI of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, asked of the given registry
    (not MLflow's process-wide registry URI)."""
    from mlflow.tracking import MlflowClient

    ref = uri[len("models:/"):].strip("/")
    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, _, version = ref.rpartition("/")
        if not name or not version.isdigit():
            raise ValueError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    return client.get_model_version_download_uri(name, version)


def model_files(model_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(weights.pt, tokenizer dir) of a saved model, read from its MLmodel file (plain YAML)."""
    import yaml

    model_dir = Path(model_dir)
    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
        arts = mlmodel["flavors"]["python_function"]["artifacts"]
        weights, tok = model_dir / arts["weights"]["path"], model_dir / arts["tokenizer"]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ValueError(f"{model_dir}/MLmodel: not an alta embedding model ({exc})") from exc
    for p in (weights, tok):
        if not p.resolve().is_relative_to(model_dir.resolve()):
            raise ValueError(f"{model_dir}/MLmodel: artifact path {p} leaves the model folder")
    return weights, tok

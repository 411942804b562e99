"""The aligned model as an MLflow model: code-based pyfunc, Model Registry versions, `alta embed --model`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from alta import io, tracking
from alta.evaluate import embed
from alta.evaluate.embedding import Embedder
from alta.models.build import build_alta
from alta.report import mlflow_model
from alta.train.tokenizer import load_tokenizer, special_ids, train_tokenizer

TEXTS = ["Small left pleural effusion.", "No pneumothorax. Heart size is normal."]
OPTIONS = {"image_pooling": "patch_mean", "text_pooling": "token_mean"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An align-layout checkpoint of a tiny ALTA (seeded init; non-default options) and its tokenizer."""
    root = tmp_path_factory.mktemp("ckpt")
    corpus = [f"{a} {b} in the {c} lung." for a in ("small", "large", "no", "mild") for b in ("effusion", "opacity",
              "pneumothorax", "edema") for c in ("left", "right", "upper")]
    train_tokenizer(corpus, root / "tokenizer", vocab_size=200)
    tok = load_tokenizer(root / "tokenizer")
    torch.manual_seed(3)
    model = build_alta("tiny", tokenizer=tok, vocab_size=len(tok), special_ids=special_ids(tok), options=OPTIONS)
    with torch.no_grad():  # adapters start at zero: make them matter
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save({"model": model.state_dict(), "optimizer": None, "epoch": 1, "step": 5, "preset": "tiny",
                "mode": "recommended", "tokenizer_dir": "tokenizer",
                "args": {"model_options": OPTIONS, "model_overrides": {}, "batch_size": 4}}, root / "checkpoint.pt")
    rng = np.random.default_rng(0)
    images = []
    for i, size in enumerate([(80, 96), (120, 100)]):
        from PIL import Image

        path = root / f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8), mode="L").save(path)
        images.append(path)
    return root, images


def reference(root: Path, images: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    emb = Embedder.from_checkpoint("align", str(root / "checkpoint.pt"), str(root / "tokenizer"))
    return emb.images(embed.read_grey(str(p), "mimic_jpg") for p in images), emb.texts(TEXTS, embed.TEXT)


def test_saved_model_is_code_based_and_embeds_like_the_checkpoint(checkpoint, tmp_path):
    import mlflow.pyfunc

    root, images = checkpoint
    info = mlflow_model.save_model(root / "checkpoint.pt", root / "tokenizer", tmp_path / "model")
    model_dir = tmp_path / "model"
    mlmodel = (model_dir / "MLmodel").read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel and "python_model.pkl" not in mlmodel
    assert not list(model_dir.rglob("*.pkl"))
    assert (model_dir / "input_example.json").exists() and '"binary", "name": "image"' in mlmodel
    weights, tok = mlflow_model.model_files(model_dir)
    obj = torch.load(weights, weights_only=True)  # tensors and plain values only
    assert obj["args"]["model_options"] == OPTIONS and obj["preset"] == "tiny"
    assert "optimizer" not in obj and info["embedding_dim"] == 32

    want_img, want_txt = reference(root, images)
    loaded = mlflow.pyfunc.load_model(str(model_dir))
    df = pd.DataFrame({"image": [images[0].read_bytes(), None, images[1].read_bytes(), None],
                       "text": [None, TEXTS[0], None, TEXTS[1]]})
    got = loaded.predict(df)
    assert got.shape == (4, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got[[0, 2]], want_img, atol=1e-6)
    np.testing.assert_allclose(got[[1, 3]], want_txt, atol=1e-6)
    with pytest.raises(Exception, match="neither an image nor a text"):
        loaded.predict(pd.DataFrame({"image": [None], "text": [None]}))


def test_registry_version_resolves_in_alta_embed_and_zeroshot(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns
    root, images = checkpoint
    uri = f"sqlite:///{tmp_path}/registry.db"
    version = register_via_stage(root, tmp_path, uri, "alta-unit")
    assert version == 1
    out_model, out_ckpt = tmp_path / "m.parquet", tmp_path / "c.parquet"
    common = ["--images", *map(str, images), "--texts", *TEXTS]
    assert embed.main(["embed", "--model", "models:/alta-unit/1", "--tracking-uri", uri, *common,
                       "--out", str(out_model)]) == 0
    assert embed.main(["embed", "--checkpoint", str(root / "checkpoint.pt"), "--tokenizer", str(root / "tokenizer"),
                       *common, "--out", str(out_ckpt)]) == 0
    a, b = pd.read_parquet(out_model), pd.read_parquet(out_ckpt)
    assert a["source"].tolist() == b["source"].tolist()
    np.testing.assert_array_equal(np.stack(a["embedding"]), np.stack(b["embedding"]))

    assert embed.main(["zeroshot", "--model", "models:/alta-unit/1", "--tracking-uri", uri, "--images",
                       str(images[0]), "--class", "effusion=small left effusion", "--class", "normal=no effusion",
                       "--out", str(tmp_path / "z.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "z.csv")["predicted"]) <= {"effusion", "normal"}
    with pytest.raises(SystemExit) as err:
        embed.main(["embed", "--model", "models:/alta-unit/7", "--tracking-uri", uri, "--texts", "x",
                    "--out", str(tmp_path / "x.parquet")])
    assert err.value.code == 2 and "models:/alta-unit/7" in capsys.readouterr().err


def register_via_stage(root: Path, tmp_path: Path, uri: str, name: str, env: dict | None = None) -> int | None:
    """Run the register_model stage under a workflow-like parent run; return the registered version."""
    ctx_file = tmp_path / "context.json"
    ctx = tracking.start_parent(ctx_file, uri, "unit", "register test")
    old = os.environ.get(tracking.CONTEXT_ENV)
    os.environ[tracking.CONTEXT_ENV] = str(ctx_file)
    try:
        from alta.report import register

        assert register.main(["--checkpoint", str(root / "checkpoint.pt"), "--tokenizer", str(root / "tokenizer"),
                              "--name", name, "--out", str(tmp_path / "register")]) == 0
    finally:
        os.environ.pop(tracking.CONTEXT_ENV) if old is None else os.environ.__setitem__(tracking.CONTEXT_ENV, old)
    rec = json.loads((tmp_path / "register" / "registered_model.json").read_text())
    client = tracking._client(ctx["tracking_uri"])
    mv = client.get_model_version(name, str(rec["version"]))
    assert mv.run_id == rec["run_id"]
    assert client.get_run(rec["run_id"]).data.tags["mlflow.parentRunId"] == ctx["parent_run_id"]
    assert rec["checkpoint_sha256"] == io.sha256_file(root / "checkpoint.pt")
    return rec["version"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_registry_through_a_tracking_server(checkpoint, tmp_path):
    """A real `mlflow server` on loopback (proxied artifacts): register over HTTP, resolve models:/ over HTTP."""
    root, images = checkpoint
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.time() < deadline, "mlflow server did not come up"
            time.sleep(1)
        assert register_via_stage(root, tmp_path, url, "alta-http") == 1
        out = tmp_path / "http.parquet"
        assert embed.main(["embed", "--model", "models:/alta-http/1", "--tracking-uri", url, "--images",
                           str(images[0]), "--texts", TEXTS[0], "--out", str(out)]) == 0
        want_img, want_txt = reference(root, images[:1])
        got = np.stack(pd.read_parquet(out)["embedding"])
        np.testing.assert_allclose(got, np.concatenate([want_img, want_txt[:1]]), atol=1e-6)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)

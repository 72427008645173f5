"""The seed project's prediction service, re-implemented from its description as a
measured anchor for ``bench/load_http.py``.

What the seed's FastAPI app does per request: save the upload to a file on disk, read
it back with soundfile, compute its 180 numbers with separate librosa calls (utterance
means of MFCC40, chroma from its own STFT and mel128; ``bench.extraction.seed_recipe``)
and ask a pickled scikit-learn ``MLPClassifier`` (one hidden layer of 300, as the seed
trains it) for the emotion. It ran with NumPy's default thread pools, as here.

``python -m bench.seed_app --model DIR --port P`` serves it on 127.0.0.1 only.
``train_seed_model(DIR, clips)`` writes ``DIR/seed_mlp.pkl`` first: trained on corpus
files when ``SER_DATA_ROOT`` holds them, else on generated voiced clips. Its accuracy is
not what is measured: the cost of a request is the same whatever the weights.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, UploadFile

MODEL_FILE = "seed_mlp.pkl"
EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "ps")


def train_seed_model(out_dir: Path, clips: list[Path]) -> Path:
    """Fit the seed's MLP on the seed features of ``clips`` (labels from their position,
    cycling over eight emotions) and pickle it into ``out_dir``; returns its path."""
    from sklearn.neural_network import MLPClassifier

    from bench.extraction import seed_recipe

    features = np.stack([seed_recipe(str(path)) for path in clips])
    labels = [EMOTIONS[i % len(EMOTIONS)] for i in range(len(clips))]
    model = MLPClassifier(
        alpha=0.01,
        batch_size=256,
        epsilon=1e-08,
        hidden_layer_sizes=(300,),
        learning_rate="adaptive",
        max_iter=50,
        random_state=0,
    )
    model.fit(features, labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    path.write_bytes(pickle.dumps(model))
    return path


def create_app(model_dir: Path):
    """The seed's service: ``POST /predict`` (an audio upload) and ``GET /health``."""
    from bench.extraction import seed_recipe

    model = pickle.loads((model_dir / MODEL_FILE).read_bytes())
    app = FastAPI(title="seed SER app (benchmark anchor)")
    served = {"requests": 0}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model_id": "seed-app (sklearn MLP)", **served}

    @app.post("/predict")
    def predict(file: Annotated[UploadFile, File()]) -> dict:
        suffix = Path(file.filename or "upload.wav").suffix or ".wav"
        with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as out:
            out.write(file.file.read())
        try:
            features = seed_recipe(out.name)
        finally:
            os.unlink(out.name)
        probabilities = model.predict_proba(features[None])[0]
        served["requests"] += 1
        best = int(np.argmax(probabilities))
        return {
            "emotion": str(model.classes_[best]),
            "confidence": float(probabilities[best]),
            "probabilities": dict(zip(map(str, model.classes_), map(float, probabilities))),
        }

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help=f"folder holding {MODEL_FILE}")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    import uvicorn

    uvicorn.run(create_app(Path(args.model)), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

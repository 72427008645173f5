"""The HTTP service: FastAPI app (``app.py``), live WebSocket stream (``stream.py``),
upload decoding (``uploads.py``), batched inference (``engine.py``) and the web page
(``static/``). ``ser serve RUN_DIR`` runs it with uvicorn."""

"""The HTTP service: FastAPI app (``app.py``), live WebSocket stream (``stream.py``),
upload limits and their errors (``uploads.py``; decoding itself belongs to
``ser.audio``), how much work is taken on and from whom, and the security headers
(``limits.py``), batched inference (``engine.py``) and the web page (``static/``).
``ser serve RUN_DIR`` runs it with uvicorn."""

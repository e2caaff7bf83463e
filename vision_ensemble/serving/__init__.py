"""Serving: the one prediction path behind the Space and its JSON API, and the ONNX export.

predict      input checks, top-k, member answers, uncertainty hint, model version (the Classify tab and the API)
api          the JSON API (POST /api/predict, GET /api/health) beside the Space on one FastAPI app
onnx_export  ONNX export of members or the whole ensemble as one graph, checked against PyTorch; int8
tempfiles    deletes the Space's old uploads and results, and what Gradio leaves behind
allocator    malloc set up for a long-running server (arenas, mmap threshold, a trim every minute, PYTHONMALLOC)
"""

"""The background worker: HTTP server (bridge protocol), job queue, model manager. Uses core + bridge."""

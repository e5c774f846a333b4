"""`bigmodel serve`: an HTTP server for a trained model (server.py: the command, app.py: the API,
batching.py: dynamic batching, backend.py: the models, body.py: the request size limit)."""

"""The REST (and later WebSocket) adapters over the pipeline."""

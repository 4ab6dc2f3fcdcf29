"""The data plane: what every transport shares (models, keys, limits, cache, metrics, events), no HTTP."""

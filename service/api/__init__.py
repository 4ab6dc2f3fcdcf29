"""The HTTP transports: REST routes and the WebSocket stream, thin adapters over the data plane (`service.serving`)."""

"""FastAPI: ingest, recommendations, scores, health and metrics. One router per resource."""

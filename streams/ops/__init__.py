"""Operating a worker: metrics, health and readiness, the ops HTTP endpoint, and views of
running workers from the outside."""

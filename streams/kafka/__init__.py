"""Thin wrappers over the Kafka clients: one security model, admin, producer, offsets."""

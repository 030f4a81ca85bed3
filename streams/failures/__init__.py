"""What happens to a record that failed: classification, retry tiers, due times, the circuit
breaker, the retry budget, and the dead-letter tooling."""

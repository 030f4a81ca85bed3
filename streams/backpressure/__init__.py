"""Adaptive backpressure: the governor (a pure policy), its signals, the priority lanes, and
the controller that wires them into a worker."""

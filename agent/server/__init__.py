"""The local MediSync-compatible server used by the demo, tests and benchmarks."""

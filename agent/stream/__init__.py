"""Send ring, replay policy, wire messages and the speech socket client."""

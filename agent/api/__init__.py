"""MediSync REST client and MediSearch SSE client."""

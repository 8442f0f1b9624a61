"""HTTP resources by area; each declares its OpenAPI operations next to its handlers."""

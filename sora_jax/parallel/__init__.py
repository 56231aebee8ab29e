"""Device meshes and sharding."""

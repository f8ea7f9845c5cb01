"""Batched, differentiable geometry: camera, rotations, spherical harmonics, mesh normals."""

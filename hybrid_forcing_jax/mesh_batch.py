"""Examples per device under a mesh. Training traces its steps under their (data, fsdp) mesh
(training/sharding.traced_in_mesh), whose batches are split over every mesh axis; the model keeps its
activations split the same way (FSDP: weights are gathered, examples stay where they are), which XLA's
propagation alone does not guarantee once the fsdp axis also splits the weights. Outside a mesh (sampling,
tests on one device) these are no-ops."""
from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P


def batch_spec(batch_size: int):
  """P(every mesh axis) for an array whose leading axis (batch_size) is split over the current mesh; None
  without a mesh, on one device, or when the mesh does not divide batch_size."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or batch_size % mesh.size:
    return None
  return P(mesh.axis_names)


def split_batch(x):
  """x with its leading (batch) axis split over the current mesh (see batch_spec), the rest whole."""
  spec = batch_spec(x.shape[0])
  return x if spec is None else jax.lax.with_sharding_constraint(x, spec)

"""mud-iknn: dense crowd counting with inverse k-nearest-neighbour (ikNN) maps.

The label engine (:mod:`mud_iknn.labels`) turns head points into ikNN and density maps with C++ and
CUDA kernels; :mod:`mud_iknn.reference` is its scipy oracle; :func:`localize` finds the heads in
(predicted) ikNN maps.
"""
from .labels import (MAX_K, backend_info, density_maps, head_sigmas, iknn_maps, knn_distance_maps,
                     pack_points)
from .localize import localize

__version__ = "0.1.0"
__all__ = ["MAX_K", "backend_info", "density_maps", "head_sigmas", "iknn_maps", "knn_distance_maps",
           "localize", "pack_points"]

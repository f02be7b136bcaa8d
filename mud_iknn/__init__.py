"""mud-iknn: dense crowd counting with inverse k-nearest-neighbour (ikNN) maps.

The label engine (:mod:`mud_iknn.labels`) turns head points into ikNN, FIDT, density and count maps
with C++ and CUDA kernels; :mod:`mud_iknn.label_kinds` is the registry of label kinds that training
and the command line read; :mod:`mud_iknn.reference` is the engine's scipy oracle; :func:`localize`
finds the heads in (predicted) ikNN maps.
"""
from .labels import (MAX_K, backend_info, count_maps, density_maps, fidt_maps, head_sigmas, iknn_maps,
                     knn_distance_maps, pack_points)
from .localize import localize
from . import label_kinds  # mud_iknn.label_kinds after a plain `import mud_iknn`, as the README uses it

__version__ = "0.1.0"
__all__ = ["MAX_K", "backend_info", "count_maps", "density_maps", "fidt_maps", "head_sigmas", "iknn_maps",
           "knn_distance_maps", "localize", "pack_points"]

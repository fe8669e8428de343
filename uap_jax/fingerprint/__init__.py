"""Fingerprint points and fingerprints of models, from checkpoints or answers.

Fingerprint points (Peng et al. 2022, Sec. 3.3): the victim's logits over its
training data are clustered with k-means (K clusters); in each cluster the
point nearest the centroid is the *seed*, and the seed's V nearest neighbours
in logit space (the seed itself first) are the cluster's points. *View* j of
the fingerprint uses the j-th neighbour of every cluster, so every view holds
K points and point i of every view comes from the same cluster: the features
of different views line up.

Fingerprint of one model on one view: for every point ``x_i`` of the view,
the model's output on ``x_i`` followed by its outputs on ``clip(x_i + v_u)``
for each UAP ``v_u``; concatenated over the points. With C classes and U UAPs
a view gives ``D = K * (1 + U) * C`` numbers laid out as ``(K, 1 + U, C)``;
``U = 0`` leaves the clean outputs only.

Where things are:

- :mod:`~uap_jax.fingerprint.points`: choosing the ``(K, V)`` points
  (``kmeans``, ``margin``, ``random``);
- :mod:`~uap_jax.fingerprint.queries`: the query images, uint8-quantised;
- :mod:`~uap_jax.fingerprint.compute`: fingerprints of a stack and of one
  suspect's recorded answers;
- :mod:`~uap_jax.fingerprint.layout`: the ``(K, 1 + U, C)`` view layout and
  its inverse, the one place that knows it;
- :mod:`~uap_jax.fingerprint.diagnostics`: what the UAPs do to each model;
- :mod:`~uap_jax.fingerprint.blackbox`: export of the queries and loading of
  a black-box suspect's answers.
"""

from __future__ import annotations

from uap_jax.fingerprint import diagnostics
from uap_jax.fingerprint import layout
from uap_jax.fingerprint.compute import MODES
from uap_jax.fingerprint.compute import detect_output_kind
from uap_jax.fingerprint.compute import fingerprints
from uap_jax.fingerprint.compute import fingerprints_from_outputs
from uap_jax.fingerprint.compute import outputs_to_features
from uap_jax.fingerprint.points import POINT_RULES
from uap_jax.fingerprint.points import select_points
from uap_jax.fingerprint.queries import check_points_and_uaps
from uap_jax.fingerprint.queries import query_images

__all__ = [
    "MODES", "POINT_RULES", "check_points_and_uaps", "detect_output_kind",
    "diagnostics", "fingerprints", "fingerprints_from_outputs", "layout",
    "outputs_to_features", "query_images", "select_points",
]

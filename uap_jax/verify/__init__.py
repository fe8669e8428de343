"""Verification: similarity to the victim, a one-sided test, a verdict.

A suspect's per-view score (``--score``) is, by default, the encoder's (the
paper's): the similarity of a suspect view = cosine of its encoder embedding
with the victim's embedding. ``uap_follow`` (:func:`.similarity.uap_follow`)
is the encoder-free alternative: on the points the victim's UAP moves, how
often the suspect moves where the victim goes. The victim's embedding is the
normalised MEAN of the embeddings of all its views (a prototype), not
view-by-view pairing: the prototype averages out the victim's own view-to-view noise, so the spread of a
suspect's similarities reflects the suspect alone, and a suspect may answer
any subset of the views.

The suspect's n similarities are tested against a *reference*: the
similarities of independent models of a CALIBRATION set that the encoder
never trained on, shape ``(R, V)`` (R models, V views). Tests
(``method``):

* ``welch`` (the paper's): Welch's t-test of the suspect's n similarities
  against all R*V reference similarities. It treats the views of ONE model
  as independent draws; but views of one model are strongly correlated
  (they share the model), so p-values shrink with n without bound even for
  an independent model that merely sits above the reference average: on
  held-out independents this accuses far too many.
* ``model`` (recommended): a random-effects prediction test at the level of
  models. Under H0 the suspect is one more independent model: its n-view
  mean similarity is ``mu + b + e`` with between-model spread
  ``sigma_b^2`` and within-model spread ``sigma_w^2 / n``, both estimated
  from the reference models; ``t = (s - mean) / sqrt(sigma_b^2 +
  sigma_w^2 / n + var(means) / R)`` has R-1 degrees of freedom. More views
  shrink only the within-model part, so confidence is capped by how far the
  suspect sits from the spread of independent MODELS, which is the question
  asked.
* ``model_z``: the ``model`` test on Fisher's z = artanh(similarity).
  Cosines crowd against 1 for the victim's copies, where their spread
  shrinks, and independents' cosines spread wide below: the test's normal
  model of the reference then fits neither tail. artanh, the classic
  variance-stabilising map for correlations, stretches the end near 1, so a
  copy far from the independents in z counts as far; the reference spread is
  estimated in z as well.
* ``empirical``: rank of the suspect's n-view mean among the reference
  models' n-view means, ``p = (1 + #{ref >= s}) / (R + 1)``: no
  distributional assumption, but ``p >= 1 / (R + 1)``.

Verdict: ``pirated`` when ``p < alpha``; ``not_pirated`` when ``p >=
upper`` or the suspect's mean similarity is not above the reference mean;
else ``inconclusive``.

The label judge: an encoder trained on every model's fingerprints reduced
to top-1 labels (never cross-fitted). It judges answers that carry only the top class,
and answers more or less confident than the reference (a softmax
temperature changes confidence, never the top class), against the same
reference reduced the same way (:func:`.protocols.judge`).

Where things are:

* :mod:`.encoder`: the contrastive encoder of fingerprint views;
* :mod:`.similarity`: the victim's prototype and the suspects' similarities;
* :mod:`.crossfit`: encoders cross-fitted over the reference bank
  (``--enc_crossfit``), each bank model scored by one that never saw it;
* :mod:`.tests`: the p-values of every test, Fisher z, the verdict;
* :mod:`.splits`: which models train the encoder, calibrate, are evaluated;
* :mod:`.summary`: detection quality (AUC, TPR, verdict counts), one core
  for suspects with views and for one number per model;
* :mod:`.references`: encoder-free references (raw cosine, top-1 agreement,
  SAC-style sample correlations, :mod:`.sac`);
* :mod:`.protocols`: a whole zoo under every protocol, outside suspects;
* :mod:`.metrics`: ROC-AUC and TPR at a fixed FPR.
"""

from __future__ import annotations

from uap_jax.verify.similarity import similarities, victim_embedding
from uap_jax.verify.splits import (NEGATIVE_FAMILY, POSITIVE_FAMILIES, VICTIM_FAMILY,
                                   check_fractions, encoder_labels, leave_kind_out_splits,
                                   split_models, train_encoder)
from uap_jax.verify.summary import (DETECTION_FIELDS, HEADLINE_FIELDS, brief, evaluate,
                                    evaluate_scores, headline)
from uap_jax.verify.tests import (FISHER_Z_CLIP, METHODS, decide, fisher_z, p_value,
                                  score_p_value, verify_suspect, views_for_confidence)

__all__ = [
    "similarities", "victim_embedding", "NEGATIVE_FAMILY", "POSITIVE_FAMILIES",
    "VICTIM_FAMILY", "check_fractions", "encoder_labels", "leave_kind_out_splits",
    "split_models", "train_encoder", "DETECTION_FIELDS", "HEADLINE_FIELDS", "brief",
    "evaluate", "evaluate_scores", "headline", "FISHER_Z_CLIP", "METHODS", "decide",
    "fisher_z", "p_value", "score_p_value", "verify_suspect", "views_for_confidence",
]

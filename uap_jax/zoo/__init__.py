"""The suspect zoo: how each kind of pirated or independent model is made.

A zoo is planned from the run's :class:`~uap_jax.config.Config` as a list of
:class:`StackPlan` (one per kind and architecture: the models of a plan train
as ONE stack), then each plan is trained by :func:`train_plan`.

Modules: :mod:`~uap_jax.zoo.plan` (kinds, architectures, seeds and the
hyper-parameters: the only source of training settings),
:mod:`~uap_jax.zoo.kinds` (one function per kind family),
:mod:`~uap_jax.zoo.queries` (the attacker's queries and the victim's APIs),
:mod:`~uap_jax.zoo.training` (:func:`train_plan`: one plan, evaluated and
timed), :mod:`~uap_jax.zoo.summary` (victim digest, reuse of saved stacks,
``zoo.json`` entries, tables, extraction faithfulness).

Piracy kinds (family ``piracy``, parent ``victim``):

* ``extract_soft``: a fresh model queries the victim's probability API on the
  attacker's images and augmented copies of them (translations; flips for
  colour images), every batch answered afresh;
* ``extract_hard``: the same through a label-only API (:func:`label_only_api`:
  the student never sees a probability);
* ``extract_adv``: ``extract_soft`` in ``1 + extract_rounds`` phases (the
  same query budget); before each later phase the attacker crafts PGD
  examples of its own substitute around some of its images, which make up
  about half of the phase's queries and which the victim answers (the PGD
  of :func:`uap_jax.attacks.pgd_steps`);
* ``finetune_last`` / ``finetune_all``: the victim fine-tuned on the
  attacker's labelled data (head only / all layers), lrs cycled;
* ``prune``: global magnitude pruning of the victim (ratios cycled), then
  fine-tuning with the pruned weights held at zero;
* ``adv_train``: the victim fine-tuned with PGD adversarial training;
* ``distill``: knowledge distillation at temperature T into another
  architecture on the attacker's images.

Independent kinds (family ``independent``, parent ``None``), trained from
scratch: ``independent_seed`` (the innocent twin: victim's architecture,
data part and training length ``--epochs``, other seeds), ``independent_arch``
(``zoo_archs``, victim's data part), ``independent_data`` (victim's
architecture, the disjoint ``independent`` part); the last two train for
``--zoo_epochs``.

Extraction and distillation spend ``--query_budget`` queries (0: the
attacker's images x ``--zoo_epochs``), one batch of fresh API answers per
step, over the attacker's images plus up to ``MAX_QUERY_COPIES`` augmented
copies of each. An extraction is only a threat when it is faithful: the
``zoo`` stage logs each extracted model's agreement with the victim next to
that of independents trained on the victim's own data.

Every seed derives from the run seed by a stable hash of (seed, kind, arch,
index), so a rerun reproduces the zoo.
"""

from uap_jax.zoo.kinds import broadcast_victim
from uap_jax.zoo.plan import DERIVED_KINDS
from uap_jax.zoo.plan import EXTRACT_ADV_PGD_STEPS
from uap_jax.zoo.plan import EXTRACT_ADV_QUERY_SHARE
from uap_jax.zoo.plan import EXTRACTION_KINDS
from uap_jax.zoo.plan import MAX_QUERY_COPIES
from uap_jax.zoo.plan import PART_OF_KIND
from uap_jax.zoo.plan import StackPlan
from uap_jax.zoo.plan import archs_of_kind
from uap_jax.zoo.plan import check_config
from uap_jax.zoo.plan import extraction_steps
from uap_jax.zoo.plan import family_of
from uap_jax.zoo.plan import model_seed
from uap_jax.zoo.plan import plan_zoo
from uap_jax.zoo.plan import query_copies
from uap_jax.zoo.plan import training_cost
from uap_jax.zoo.plan import untrainable_kinds
from uap_jax.zoo.queries import augmented_queries
from uap_jax.zoo.queries import label_only_api
from uap_jax.zoo.queries import single_variables
from uap_jax.zoo.queries import substitute_adversarials
from uap_jax.zoo.queries import substitute_pgd
from uap_jax.zoo.summary import agreement
from uap_jax.zoo.summary import extraction_faithfulness
from uap_jax.zoo.summary import format_table
from uap_jax.zoo.summary import kind_summary
from uap_jax.zoo.summary import plan_matches
from uap_jax.zoo.summary import victim_digest
from uap_jax.zoo.summary import zero_fraction
from uap_jax.zoo.summary import zoo_entry
from uap_jax.zoo.training import TRAINERS
from uap_jax.zoo.training import evaluate
from uap_jax.zoo.training import train_plan

__all__ = [
    "broadcast_victim", "DERIVED_KINDS", "EXTRACT_ADV_PGD_STEPS",
    "EXTRACT_ADV_QUERY_SHARE", "EXTRACTION_KINDS", "MAX_QUERY_COPIES",
    "PART_OF_KIND", "StackPlan", "archs_of_kind", "check_config",
    "extraction_steps", "family_of", "model_seed", "plan_zoo", "query_copies",
    "training_cost", "untrainable_kinds",
    "augmented_queries", "label_only_api", "single_variables",
    "substitute_adversarials", "substitute_pgd", "agreement",
    "extraction_faithfulness", "format_table", "kind_summary", "plan_matches",
    "victim_digest", "zero_fraction", "zoo_entry", "TRAINERS", "evaluate",
    "train_plan",
]

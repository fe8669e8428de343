"""Every setting of a run, in one dataclass; absl flags are generated from it.

A field's type says how its flag parses (lists are comma-separated), its
``help`` metadata is the flag's help text, its ``choices`` metadata (a tuple)
makes the flag an enum (a list of them for list fields) that refuses any
other value as it parses, and its ``stage`` metadata the first stage whose
output the setting changes (none for settings that only
steer how a run executes: work directory, devices, processes). A finished
stage records the settings it depends on, so a rerun with other values redoes
it and the stages after it. The config of a run is saved as
``WORKDIR/config.json``.

The module also holds the choices of every flag with a fixed set of values
(:data:`STAGES`, :data:`KINDS`, :data:`STRATEGIES`, ...); the library takes
its lists from here. It imports nothing of the library, so any module may
import it: :meth:`Config.validate` checks what the fields say on their own,
and :func:`uap_jax.pipeline.check` adds the checks that need the library
(architectures, zoo settings, strategy, multi-process modes, split
fractions).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

STAGES = ("victim", "zoo", "reference", "uap", "fingerprint", "encoder", "verify",
          "export_queries", "report")
STANDARD_PIRACY_KINDS = ("extract_soft", "extract_hard", "extract_adv", "finetune_last",
                         "finetune_all", "prune", "adv_train", "distill")
# Pirates who know the method and try to remove the fingerprint
# (uap_jax.zoo.removal); not in the default zoo: experiments/adaptive.flags.
REMOVAL_KINDS = ("finetune_uat", "fine_prune", "distill_removal", "extract_mixup")
PIRACY_KINDS = STANDARD_PIRACY_KINDS + REMOVAL_KINDS
INDEPENDENT_KINDS = ("independent_seed", "independent_arch", "independent_data")
KINDS = PIRACY_KINDS + INDEPENDENT_KINDS
DEFAULT_KINDS = STANDARD_PIRACY_KINDS + INDEPENDENT_KINDS
# Training recipes of the reference bank (uap_jax.zoo.reference.RECIPES).
REFERENCE_RECIPES = ("base", "twin", "adam", "augment", "smooth", "short", "long", "narrow")
# The choices of the other flags; the library takes its lists from here.
STRATEGIES = ("auto", "vmap", "map", "loop", "shard")
DISTRIBUTED_MODES = ("auto", "true", "false")
SHARE_MODES = ("contiguous", "strided")
OPTIMIZERS = ("sgd", "adam")
UAP_METHODS = ("deepfool", "pipelined", "sequential", "sgd")
UAP_NORMS = ("2", "inf")
POINT_RULES = ("kmeans", "margin", "random")
FP_MODES = ("probs", "logits", "labels")
TESTS = ("welch", "model", "model_z", "empirical")
SCORES = ("encoder", "uap_follow", "uap_cosine", "raw_cosine")
# How the reference bank trains the encoder (uap_jax.verify.crossfit).
CROSSFIT_MODES = ("auto", "arch", "recipe", "cell", "none")
ENC_CONFIDENCE_MODES = ("auto", "victim", "raw")
AUGMENT_MODES = ("auto", "true", "false")


def _f(default: Any, help: str, **kw):  # pylint: disable=redefined-builtin
  if isinstance(default, (list, tuple)):
    return dataclasses.field(default_factory=lambda: list(default),
                             metadata={"help": help, **kw})
  return dataclasses.field(default=default, metadata={"help": help, **kw})


def choice_error(flag: str, value: Any, choices: tuple[str, ...]) -> ValueError:
  """The error for a flag set to none of its choices.

  Args:
    flag: the flag's name, without dashes.
    value: what it was set to.
    choices: the allowed values.

  Returns:
    ``ValueError("--FLAG must be A, B or C, got VALUE.")``, to raise.
  """
  listed = (", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1
            else choices[0])
  return ValueError(f"--{flag} must be {listed}, got {value!r}.")


def _check_choice(flag: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise choice_error(flag, value, choices)


@dataclasses.dataclass
class Config:
  """All settings of a run (defaults: the quickstart on mnist5k)."""
  # Run.
  workdir: str = _f("runs/quickstart", "Directory holding every artefact of the run.")
  stages: list = _f(list(STAGES), "Stages to run, in pipeline order.", choices=STAGES)
  overwrite: bool = _f(False, "Recompute the requested stages even if finished.")
  seed: int = _f(0, "Run seed: every model, split and attack seed derives from it.", stage="victim")
  strategy: str = _f("auto", "Model-axis strategy (auto: the measured-fastest for the backend and devices).", choices=STRATEGIES)
  mesh: str = _f("", "Device mesh for --strategy=shard: models:N[,data:M] (empty: all local devices on models).")
  distributed: str = _f("auto", "Multi-process run: auto (start when flags or a launcher say so) | true | false.", choices=DISTRIBUTED_MODES)
  coordinator_address: str = _f("", "HOST:PORT of process 0 (empty: detected).")
  num_processes: int = _f(0, "Number of processes (0: detected).")
  process_id: int = _f(-1, "This process, 0..N-1 (-1: detected).")
  compile_cache: str = _f("auto", "Persistent XLA compilation cache, so reruns and --stages=verify calls skip recompiling: auto ($JAX_COMPILATION_CACHE_DIR, else ~/.cache/uap-jax/xla) | none | DIR.")
  share_mode: str = _f("contiguous", "How suspects are shared among processes.", choices=SHARE_MODES)
  # Data.
  dataset: str = _f("mnist5k", "mnist5k | digits | npz:PATH | folder:PATH | idx:DIR | tfds:NAME (with --data_dir).", stage="victim")
  data_dir: str = _f("", "tfds data_dir for tfds:NAME data sets.")
  victim_frac: float = _f(0.4, "Fraction of the training set for the victim.", stage="victim")
  attacker_frac: float = _f(0.3, "Fraction for the attacker's query data.", stage="victim")
  independent_frac: float = _f(0.3, "Fraction for independent trainers (disjoint data).", stage="victim")
  augment: str = _f("auto", "Random crop + flip: auto (colour images only) | true | false.", stage="victim", choices=AUGMENT_MODES)
  # Victim.
  victim_arch: str = _f("lenet5", "Victim architecture (see uap_jax.models); with --victim, the architecture of independents and of the first extraction student.", stage="victim")
  victim: str = _f("", "Your own victim instead of training one: a stack checkpoint dir, py:MODULE:FUNCTION, a TorchScript file or a .keras file (empty: train --victim_arch).", stage="victim")
  width: float = _f(1.0, "Channel width multiplier of every model.", stage="victim")
  epochs: float = _f(8, "Victim training epochs.", stage="victim")
  batch_size: int = _f(128, "Training batch size.", stage="victim")
  optimizer: str = _f("sgd", "sgd (momentum 0.9, nesterov) | adam.", stage="victim", choices=OPTIMIZERS)
  lr: float = _f(0.05, "Peak learning rate (cosine schedule).", stage="victim")
  weight_decay: float = _f(5e-4, "Weight decay.", stage="victim")
  # Zoo.
  zoo_kinds: list = _f(list(DEFAULT_KINDS), "Suspect kinds to simulate (the removal kinds finetune_uat, fine_prune, distill_removal, extract_mixup only when named).", stage="zoo", choices=KINDS)
  zoo_count: int = _f(2, "Models per kind (per kind and architecture list entry: spread round-robin).", stage="zoo")
  zoo_counts: list = _f([], "Per-kind overrides, e.g. extract_soft:4,prune:6.", stage="zoo")
  zoo_archs: list = _f(["mlp"], "Architectures for kinds that may differ from the victim's (extract_*, distill, independent_arch).", stage="zoo")
  zoo_epochs: float = _f(6, "Epochs for models trained from scratch (extraction, distillation, independents).", stage="zoo")
  finetune_epochs: float = _f(2, "Epochs of fine-tuning (finetune_*, prune, adv_train).", stage="zoo")
  finetune_lrs: list = _f([0.01, 0.001], "Learning rates cycled over fine-tuned copies.", stage="zoo")
  prune_ratios: list = _f([0.2, 0.5, 0.8], "Global magnitude pruning ratios cycled over pruned copies.", stage="zoo")
  query_budget: int = _f(0, "Attacker queries per extracted model (0: all attacker data x epochs).", stage="zoo")
  extract_rounds: int = _f(2, "extract_adv: rounds of adding the substitute's adversarial examples.", stage="zoo")
  adv_eps: float = _f(0.03, "PGD L-inf radius (pixel units of [0, 1]) for adv_train and extract_adv.", stage="zoo")
  distill_temperature: float = _f(4.0, "Distillation temperature.", stage="zoo")
  removal_rounds: int = _f(2, "finetune_uat / distill_removal: rounds of computing the copy's own UAPs and training against them.", stage="zoo")
  removal_samples: int = _f(400, "distill_removal: the attacker's images (few-sample distillation).", stage="zoo")
  removal_repel: float = _f(1.0, "distill_removal: how far its targets on its own UAP images move from the victim's answer towards the answer's complement (0: plain distillation there, 1: the complement).", stage="zoo")
  removal_xi: float = _f(0.0, "L-inf radius of the pirate's own UAPs in finetune_uat / distill_removal (0: the run's --uap_xi, which the pirate is taken to know).", stage="zoo")
  # Reference bank.
  reference_bank: str = _f("", "Directory of the reference bank of independent models, shared by runs on the same data and partition (empty: WORKDIR/reference_bank).")
  reference_archs: list = _f(["mlp", "lenet5", "small_cnn"], "Architectures of the reference bank besides the victim's and --zoo_archs.", stage="reference")
  reference_recipes: list = _f(list(REFERENCE_RECIPES), "Training recipes of the reference bank.", stage="reference", choices=REFERENCE_RECIPES)
  reference_models: str = _f("", "Your own independent models, added to the reference: a comma list or a directory of model specs (as --suspect takes; no answers). Models made without the victim, e.g. your architecture and training recipe from other seeds or data: what an unrelated model trained the way you train looks like, which the bank cannot know.", stage="reference")
  reference_per_recipe: int = _f(2, "Reference models per architecture and recipe, spread over the victim's, the independent and the attacker's data parts (0: no bank).", stage="reference")
  # UAP.
  uap_method: str = _f("deepfool", "deepfool (minibatched DeepFool-UAP) | pipelined (per-slot refill, fastest DeepFool-UAP on CPU) | sequential (the 2017 original) | sgd.", stage="uap", choices=UAP_METHODS)
  uap_p: str = _f("inf", "Norm of the UAP ball.", stage="uap", choices=UAP_NORMS)
  uap_xi: float = _f(0.1, "UAP radius in pixel units of [0, 1] images.", stage="uap")
  uap_delta: float = _f(0.2, "Stop when the fooling rate reaches 1 - delta.", stage="uap")
  uap_max_passes: int = _f(5, "Most passes over the UAP data.", stage="uap")
  uap_samples: int = _f(1000, "Victim training images used to compute the UAP.", stage="uap")
  uap_candidates: int = _f(10, "DeepFool's candidate classes (the top ones of each input) in DeepFool-UAP; each costs a backward pass per DeepFool step. 3 took the same DeepFool steps as 10 on a 10-class LeNet-5 at a third of the time (experiments/bench_uap_art.py). Unused by sgd.", stage="uap")
  num_uaps: int = _f(1, "Number of UAPs (from different seeds) in a fingerprint; 0: no UAP, fingerprints of clean outputs only (an ablation).", stage="uap")
  # Fingerprints.
  fp_k: int = _f(20, "Fingerprint points per view (k-means clusters K).", stage="fingerprint")
  fp_v: int = _f(40, "Views per model (neighbours per cluster V).", stage="fingerprint")
  fp_rule: str = _f("kmeans", "How fingerprint points are chosen.", stage="fingerprint", choices=POINT_RULES)
  fp_mode: str = _f("probs", "Suspect outputs used.", stage="fingerprint", choices=FP_MODES)
  # Encoder.
  enc_hidden: int = _f(50, "Encoder hidden width.", stage="encoder")
  enc_embed: int = _f(20, "Encoder embedding size.", stage="encoder")
  enc_temperature: float = _f(0.2, "Supervised contrastive temperature.", stage="encoder")
  enc_steps: int = _f(500, "Encoder training steps.", stage="encoder")
  enc_lr: float = _f(1e-3, "Encoder Adam learning rate.", stage="encoder")
  enc_crossfit: str = _f("auto", "How the reference bank trains the encoder: auto (the default: arch when the bank holds at least 3 architectures, else none) | arch (its independents are negatives too, and each bank model is scored by an encoder that never saw its architecture; one encoder per bank architecture) | recipe (the same by training recipe) | cell (one encoder per architecture and recipe, trained on the bank models that share neither) | none (the bank only calibrates; one encoder on the zoo's training part, the paper's). See uap_jax/verify/crossfit.py.", stage="encoder", choices=CROSSFIT_MODES)
  enc_confidence: str = _f("auto", "At what confidence the encoder reads each model's answers: victim (every model re-tempered, one softmax temperature per model, to the victim's mean top-1 probability, so that label smoothing, training length or an API's temperature are no evidence) | raw (as answered) | auto (the default: victim when the bank does not train the encoder, --enc_crossfit resolving to none, else raw). See uap_jax/fingerprint/confidence.py.", stage="encoder", choices=ENC_CONFIDENCE_MODES)
  split_train: float = _f(0.4, "Fraction of the zoo that trains the encoder.", stage="encoder")
  split_calib: float = _f(0.2, "Fraction of the zoo whose independents calibrate the test.", stage="encoder")
  # Verification.
  n_views: int = _f(0, "Suspect views per verdict: 0 (every view the fingerprints hold, --fp_v) or 2..fp_v (the paper tests 20).", stage="verify")
  alpha: float = _f(1e-4, "Significance level of the piracy test.", stage="verify")
  test: str = _f("model_z", "Piracy test: model_z (models as units, on Fisher z = artanh of the scores; holds its level over reference models) | model (the same on the raw scores) | welch (the paper's t-test over views, which treats views as independent and over-accuses) | empirical (rank among reference models).", stage="verify", choices=TESTS)
  score: str = _f("auto", "Per-view score tested: auto (encoder for a victim uap-jax trained, uap_follow for a given --victim, whose training recipe no reference shares) | encoder (the contrastive encoder's similarity, the paper's) | uap_follow (encoder-free: how often the suspect's top-1 follows the victim's on the points its UAP moves; on Fashion-MNIST it missed most extracted, distilled and adversarially trained copies) | uap_cosine (encoder-free cosine of a view's outputs on the UAP-shifted points with the victim's mean) | raw_cosine (the same over whole views).", stage="verify", choices=("auto",) + SCORES)
  suspect: str = _f("", "verify: suspects to judge: model specs (as --victim takes), recorded-answers .npz files, a comma list or a directory of them (empty: the zoo's evaluation half).")

  def validate(self) -> None:
    """Checks every field against its choices and range.

    Only what the fields say on their own: settings that need the library
    (architecture names, the zoo's settings, the model-axis strategy, the
    multi-process modes, the split fractions) are checked by
    :func:`uap_jax.pipeline.check`, which calls this first.

    Raises:
      ValueError: naming the flag and the fix for the first bad setting.
    """
    if not str(self.workdir).strip():
      raise ValueError("--workdir is empty: name the run's directory, e.g. "
                       "--workdir=runs/quickstart.")
    self._check_finite()
    cache = os.path.expanduser(str(self.compile_cache))
    if not cache.strip() or (cache not in ("auto", "none") and os.path.exists(cache)
                             and not os.path.isdir(cache)):
      raise ValueError(f"--compile_cache={self.compile_cache!r}: give auto, none or a "
                       "directory (it is created if missing).")
    bad = [s for s in self.stages if s not in STAGES]
    if bad:
      raise ValueError(f"--stages: unknown stage(s) {bad}; choose from {', '.join(STAGES)}.")
    fracs = (self.victim_frac, self.attacker_frac, self.independent_frac)
    if min(fracs) <= 0 or sum(fracs) > 1 + 1e-9:
      raise ValueError(
          f"--victim_frac/--attacker_frac/--independent_frac = {fracs}: each must "
          "be > 0 and their sum <= 1.")
    _check_choice("augment", self.augment, AUGMENT_MODES)
    _check_choice("optimizer", self.optimizer, OPTIMIZERS)
    for name in ("epochs", "lr", "uap_xi", "enc_lr", "enc_temperature", "width"):
      if not getattr(self, name) > 0:
        raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}.")
    for name in ("batch_size", "fp_k", "fp_v", "enc_steps", "uap_max_passes",
                 "uap_samples", "enc_hidden", "enc_embed"):
      if getattr(self, name) < 1:
        raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
    if self.uap_candidates < 2:
      raise ValueError(f"--uap_candidates must be >= 2 (the input's own class and one "
                       f"other), got {self.uap_candidates}.")
    if self.num_uaps < 0:
      raise ValueError(f"--num_uaps must be >= 0 (0: clean outputs only), got {self.num_uaps}.")
    if self.n_views > self.fp_v:
      raise ValueError(f"--n_views={self.n_views} exceeds --fp_v={self.fp_v} views per model.")
    if self.n_views == 1 or self.n_views < 0:
      raise ValueError(f"--n_views must be 0 (every view) or 2..{self.fp_v} (--fp_v), got "
                       f"{self.n_views}.")
    _check_choice("uap_p", self.uap_p, UAP_NORMS)
    if not 0 < self.uap_delta < 1:
      raise ValueError(f"--uap_delta must be in (0, 1), got {self.uap_delta}.")
    if not 0 < self.alpha < 1:
      raise ValueError(f"--alpha must be in (0, 1), got {self.alpha}.")
    _check_choice("uap_method", self.uap_method, UAP_METHODS)
    _check_choice("fp_rule", self.fp_rule, POINT_RULES)
    _check_choice("fp_mode", self.fp_mode, FP_MODES)
    if self.test not in TESTS:
      raise ValueError(f"--test must be one of {', '.join(TESTS)}, got {self.test!r}.")
    _check_choice("score", self.score, ("auto",) + SCORES)
    _check_choice("enc_crossfit", self.enc_crossfit, CROSSFIT_MODES)
    _check_choice("enc_confidence", self.enc_confidence, ENC_CONFIDENCE_MODES)
    if self.verify_score == "uap_follow" and self.num_uaps == 0:
      raise ValueError("--score=uap_follow (what --score=auto means with --victim) needs a "
                       "UAP: set --num_uaps >= 1, or --score=encoder.")

  def _check_finite(self) -> None:
    """Every float setting, and every number of a float list, is finite."""
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      values = value if isinstance(value, list) else [value]
      shown = ",".join(map(str, value)) if isinstance(value, list) else value
      for v in values:
        if isinstance(v, float) and not math.isfinite(v):
          raise ValueError(f"--{field.name}={shown}: {v} is not a finite number; "
                           f"give a finite value (default {_default_of(field)}).")

  def kind_counts(self) -> dict[str, int]:
    """Models per kind of --zoo_kinds after --zoo_counts overrides.

    An override of a kind outside --zoo_kinds is checked but adds no kind,
    so a flagfile's counts hold when --zoo_kinds narrows a run.
    """
    counts = {k: self.zoo_count for k in self.zoo_kinds}
    for item in self.zoo_counts:
      kind, _, n = str(item).partition(":")
      if kind not in KINDS or not n.strip().lstrip("-").isdigit():
        raise ValueError(f"--zoo_counts entry {item!r}: use KIND:N with KIND in {', '.join(KINDS)}.")
      if int(n) < 0:
        raise ValueError(f"--zoo_counts entry {item!r}: the count must be >= 0.")
      if kind in counts:
        counts[kind] = int(n)
    return counts

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @property
  def verify_score(self) -> str:
    """The score ``--score`` means: ``auto`` resolved.

    ``auto`` is the encoder for a victim uap-jax trained and ``uap_follow``
    for a given ``--victim``: the encoder, trained on the zoo, learned what
    the zoo's models look like, and a given victim's training recipe is one
    no zoo or bank model shares (it judged an independent torch CNN trained
    the victim's way pirated, p = 1e-13; README, "Protect the model you
    already have").
    """
    if self.score != "auto":
      return self.score
    return "uap_follow" if self.victim else "encoder"

  def stage_settings(self, stage: str) -> dict[str, Any]:
    """The settings a stage's output depends on: its own and earlier stages'.

    Args:
      stage: a name in :data:`STAGES`.

    Returns:
      ``{field: value}`` for every field whose first stage is ``stage`` or
      an earlier one.
    """
    if stage not in STAGES:
      raise ValueError(f"Unknown stage {stage!r}; choose from {', '.join(STAGES)}.")
    upto = STAGES[:STAGES.index(stage) + 1]
    return {name: getattr(self, name) for name, first in FIRST_STAGE.items()
            if first in upto}


# The first stage each setting changes (fields with ``stage`` metadata).
FIRST_STAGE: dict[str, str] = {
    f.name: f.metadata["stage"] for f in dataclasses.fields(Config)
    if "stage" in f.metadata}


def _default_of(field: dataclasses.Field) -> Any:
  if field.default_factory is not dataclasses.MISSING:
    return ",".join(map(str, field.default_factory()))
  return field.default


def define_flags(flags_module, flag_values=None) -> None:
  """Defines one absl flag per Config field (types from the annotations).

  A field with ``choices`` metadata becomes an enum flag (``DEFINE_enum``;
  for a list field, a comma list whose every item must be a choice), so a
  bad value is refused while the flags parse, in one line that lists the
  choices.

  Args:
    flags_module: ``absl.flags``.
    flag_values: a ``FlagValues`` to define them in (default: the global one).
  """
  fv = {"flag_values": flag_values} if flag_values is not None else {}
  for field in dataclasses.fields(Config):
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    help_text = field.metadata["help"]
    choices = field.metadata.get("choices")
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    if kind == "bool":
      flags_module.DEFINE_bool(field.name, default, help_text, **fv)
    elif kind == "int":
      flags_module.DEFINE_integer(field.name, default, help_text, **fv)
    elif kind == "float":
      flags_module.DEFINE_float(field.name, float(default), help_text, **fv)
    elif isinstance(default, list) and choices:
      flags_module.DEFINE(
          _choice_list_parser(flags_module, tuple(choices)), field.name,
          [str(d) for d in default],
          f"{help_text} Items: {', '.join(choices)}.",
          serializer=flags_module.CsvListSerializer(","), **fv)
    elif isinstance(default, list):
      flags_module.DEFINE_list(field.name, [str(d) for d in default], help_text, **fv)
    elif choices:
      flags_module.DEFINE_enum(field.name, default, list(choices), help_text, **fv)
    else:
      flags_module.DEFINE_string(field.name, default, help_text, **fv)


def _choice_list_parser(flags_module, choices: tuple[str, ...]):
  """An absl comma-list parser that refuses items outside ``choices``."""

  class ChoiceListParser(flags_module.ListParser):

    def parse(self, argument):
      items = super().parse(argument)
      bad = [item for item in items if item not in choices]
      if bad:
        # absl prefixes "flag --NAME=VALUE: ".
        raise ValueError(f"unknown {', '.join(map(repr, bad))}; each item must "
                         f"be one of <{'|'.join(choices)}>")
      return items

  return ChoiceListParser()


def parse(argv: list[str]) -> Config:
  """A Config from command-line style arguments (``--flag=value``, flagfiles).

  Args:
    argv: the arguments, without the program name.

  Returns:
    The Config (not yet validated).

  Raises:
    ValueError: a flag absl refuses (unknown, not a number, not a choice).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  define_flags(flags, flag_values)
  try:
    flag_values(["uap_jax"] + list(argv))
  except flags.Error as e:
    raise ValueError(str(e)) from None
  return from_flags(flag_values)


def from_flags(flag_values) -> Config:
  """Builds a Config from parsed absl flags (lists of numbers are converted)."""
  kwargs = {}
  for field in dataclasses.fields(Config):
    value = flag_values[field.name].value
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else None
    if isinstance(value, list) and default and isinstance(default[0], float):
      try:
        value = [float(v) for v in value]
      except ValueError as e:
        raise ValueError(f"--{field.name}: expected numbers, got {value}.") from e
    kwargs[field.name] = value
  # An empty list is the library's "record the settings, run no stage"; on
  # the command line it is a slip that would do nothing and exit 0.
  if not kwargs["stages"]:
    raise ValueError(f"--stages is empty: name the stages to run, e.g. "
                     f"--stages=victim,zoo (all: {','.join(STAGES)}).")
  return Config(**kwargs)

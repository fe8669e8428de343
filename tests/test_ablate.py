"""experiments/ablate.py helpers and the no-UAP (--num_uaps=0) path."""

import importlib.util
import json
import os

import chex
import numpy as np
import pytest

from uap_jax import config as config_lib
from uap_jax import fingerprint as fp_lib
from uap_jax.runtime import stack as stack_lib
from uap_jax.runtime.workdir import Workdir
from uap_jax.verify import references

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ablate():
  spec = importlib.util.spec_from_file_location(
      "ablate", os.path.join(REPO, "experiments", "ablate.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_num_uaps_zero_is_valid_and_negative_is_not():
  config_lib.parse(["--num_uaps=0"]).validate()
  with pytest.raises(ValueError, match="num_uaps"):
    config_lib.parse(["--num_uaps=-1"]).validate()


def test_no_uap_fingerprints_are_the_clean_half(digits_arrays):
  x, _ = digits_arrays
  s = stack_lib.create("mlp", [0, 1], num_classes=10, image_shape=(8, 8, 1))
  points = x[:12].reshape(3, 4, 8, 8, 1)
  uap = np.full((1, 8, 8, 1), 0.3, np.float32)
  with_uap = np.asarray(fp_lib.fingerprints(s, points, uap, strategy="loop"))
  clean = np.asarray(fp_lib.fingerprints(s, points, np.zeros((0, 8, 8, 1), np.float32),
                                         strategy="loop"))
  assert clean.shape == (2, 4, 3 * 10)
  np.testing.assert_allclose(clean, with_uap.reshape(2, 4, 3, 2, 10)[:, :, :, 0]
                             .reshape(2, 4, -1), atol=1e-6)


def test_overrides_stages_and_args(ablate):
  assert ablate.parse_overrides(["--fp_k=5", "--test=model"]) == {"fp_k": "5", "test": "model"}
  with pytest.raises(ValueError, match="victim or the zoo"):
    ablate.parse_overrides(["--epochs=3"])
  with pytest.raises(ValueError, match="--flag=value"):
    ablate.parse_overrides(["fp_k=5"])
  assert ablate.first_stage({}) == "verify"
  assert ablate.first_stage({"test": "model", "fp_k": "5"}) == "fingerprint"
  assert ablate.first_stage({"enc_hidden": "9", "num_uaps": "0"}) == "uap"
  base = json.loads(config_lib.parse(["--fp_k=7", "--zoo_counts=prune:3"]).to_json())
  cfg = config_lib.parse(ablate.variant_args(base, {"fp_rule": "margin"}, "/tmp/x",
                                             ["encoder", "verify"]))
  assert (cfg.fp_k, cfg.fp_rule, cfg.workdir, cfg.stages, cfg.zoo_counts) == (
      7, "margin", "/tmp/x", ["encoder", "verify"], ["prune:3"])
  assert ablate.changed(base, {"fp_k": "7", "fp_v": "9"}) == {"fp_v": "9"}


def _fake_verify(auc_all):
  suspects = [{"family": "piracy", "kind": "prune", "views_for_target": v}
              for v in (3, None, 5)] + [{"family": "independent", "kind": "independent_seed",
                                         "views_for_target": None}]
  fold = {"auc_held_out": 0.5, "family": "independent",
          "held_out_verdicts": {"pirated": 1, "inconclusive": 0, "not_pirated": 2}}
  return {"protocols": {"random": {
      "auc": {"prune": auc_all, "all": auc_all}, "tpr_at_1pct_fpr": 0.5,
      "tpr_at_5pct_fpr": 0.6, "accused_independents": 1, "num_independents": 4,
      "detected_piracy": 2, "num_piracy": 3, "method": "welch", "alpha": 1e-4, "num_views": 20,
      "suspects": suspects},
      "leave_kind_out": {"independent_seed": fold, "prune": {"family": "piracy", "error": "x"}}},
      "references": {"sac_m": {"auc": {"all": 0.7}, "tpr_at_1pct_fpr": 0.1,
                               "tpr_at_5pct_fpr": 0.2,
                               "accused_independents": 0, "num_independents": 4,
                               "detected_piracy": 0, "num_piracy": 3}}}


def test_summary_and_table(ablate):
  v = _fake_verify(0.9)
  row = ablate.summarise(v)
  # Views 3, 5 and never: the median model needs 5.
  assert row["median_views_for_9999"] == 5 and row["piracy_reaching_9999"] == 2
  assert row["leave_kind_out_auc"] == {"independent_seed": 0.5, "prune": None}
  assert row["leave_kind_out_accused"] == {"independent_seed": 1}
  rows = {"paper": dict(row, seconds=1.0), "broken": {"error": "ValueError: x"},
          **ablate.reference_rows(v)}
  assert rows["ref:sac_m"] == {
      "auc": {"all": 0.7}, "tpr_at_1pct_fpr": 0.1, "tpr_at_5pct_fpr": 0.2,
      "accused_independents": 0, "num_independents": 4, "detected_piracy": 0, "num_piracy": 3,
      "median_views_for_9999": None, "leave_kind_out_auc": {}}
  text = ablate.markdown(rows, "T")
  assert "| paper | (base) | 0.900 |" in text
  assert "ref:sac_m" in text and "error: ValueError" in text
  assert "0.500 (1)" in text


def test_prepare_workdir_links_the_base(ablate, tmp_path):
  base = tmp_path / "base"
  for d in ("stages", "checkpoints/victim", "checkpoints/zoo/a", "checkpoints/uap"):
    (base / d).mkdir(parents=True)
  for name in ("config.json", "partition.json", "victim.json", "uap.json"):
    (base / name).write_text("{}")
  (base / "zoo.json").write_text(json.dumps({"stacks": [{"checkpoint": "zoo/a"}]}))
  for stage in ("victim", "zoo", "uap"):
    (base / "stages" / f"{stage}.json").write_text('{"seconds": 2}')
  assert ablate._reused_stages(str(base), "fingerprint") == ["victim", "zoo", "uap"]
  assert ablate._reused_stages(str(base), "uap") == ["victim", "zoo"]
  work = tmp_path / "variant"
  ablate.prepare_workdir(str(base), str(work), ["victim", "zoo", "uap"])
  assert os.path.islink(work / "checkpoints" / "zoo" / "a")
  assert os.path.islink(work / "checkpoints" / "uap")
  assert not os.path.islink(work / "config.json")
  assert Workdir(str(work)).stage_seconds(ablate.RUN_STAGES) == {"uap": 2.0}


def test_agreement_scores_count_top1_matches_with_the_victim():
  rng = np.random.default_rng(0)
  m, v, k, u, c = 3, 4, 5, 1, 6
  outs = rng.random((m, v, k, 1 + u, c))
  outs[1] = outs[0]                      # a perfect copy
  outs[2, :, :, 1:] = outs[0, :, :, 1:]  # agrees only under the UAP
  outs[2, :, :, 0] = np.roll(outs[0, :, :, 0], 1, axis=-1)
  scores = references.agreement_scores(outs.reshape(m, v, -1), 0, u, c)
  np.testing.assert_array_equal(scores["agreement_clean"][:2], np.ones((2, v)))
  np.testing.assert_array_equal(scores["agreement_clean"][2], np.zeros(v))
  np.testing.assert_array_equal(scores["agreement_uap"], np.ones((m, v)))
  no_uap = references.agreement_scores(outs[:, :, :, :1].reshape(m, v, -1), 0, 0, c)
  assert set(no_uap) == {"agreement_clean"}


def test_raw_cosine_of_the_clean_half_ignores_the_uap_outputs():
  rng = np.random.default_rng(1)
  m, v, k, u, c = 4, 3, 5, 2, 6
  outs = rng.random((m, v, k, 1 + u, c))
  full = references.raw_similarities(outs.reshape(m, v, -1), 0)
  clean = references.raw_similarities(outs.reshape(m, v, -1), 0, True, u, c)
  chex.assert_shape((full, clean), (m, v))
  np.testing.assert_allclose(
      clean, references.raw_similarities(outs[:, :, :, :1].reshape(m, v, -1), 0))
  # Changing only the outputs under the UAPs moves the full score, not the clean one.
  outs[1:, :, :, 1:] = rng.random((m - 1, v, k, u, c))
  np.testing.assert_allclose(
      references.raw_similarities(outs.reshape(m, v, -1), 0, True, u, c), clean)
  assert not np.allclose(references.raw_similarities(outs.reshape(m, v, -1), 0), full)


def test_auc_per_kind_plot_draws_the_named_rows_and_refuses_unknown_ones(tmp_path):
  spec = importlib.util.spec_from_file_location(
      "plot_auc_per_kind", os.path.join(REPO, "experiments", "plot_auc_per_kind.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  table = tmp_path / "t.json"
  table.write_text(json.dumps({"variants": {
      "paper": {"auc": {"all": 0.9, "prune": 1.0, "extract_soft": 0.8}},
      "ref:sac_m": {"auc": {"all": 0.5, "prune": 1.0, "extract_soft": 0.2}},
      "broken": {"error": "ValueError"}}}))
  rows = module.load_rows(str(table), ["paper", "ref:sac_m"])
  assert rows["paper"]["extract_soft"] == 0.8
  with pytest.raises(ValueError, match="broken"):
    module.load_rows(str(table), ["broken"])
  out = tmp_path / "auc.png"
  module.plot([("t", rows)], str(out))
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""Prints the suspect zoo of a run as Markdown tables.

    python experiments/zoo_table.py WORKDIR [WORKDIR ...]

Per model: name, kind, family, arch, test accuracy, agreement with the
victim's top-1. Per kind: mean accuracy and agreement, wall and CPU seconds.
Then the extraction faithfulness check (extracted copies vs independents
trained on the victim's own data).
"""

import json
import os
import sys


def _markdown(rows):
  head, body = rows[0], rows[1:]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in body]
  return "\n".join(lines)


def main(workdirs):
  for workdir in workdirs:
    with open(os.path.join(workdir, "zoo.json")) as f:
      zoo = json.load(f)
    victim = {}
    if os.path.exists(os.path.join(workdir, "victim.json")):
      with open(os.path.join(workdir, "victim.json")) as f:
        victim = json.load(f)
    print(f"## {workdir}\n")
    if victim:
      print(f"Victim {victim.get('arch')} on {victim.get('dataset')}: test accuracy "
            f"{victim.get('test_accuracy', float('nan')):.4f}, "
            f"{victim.get('train_seconds', float('nan')):.1f} s.\n")
    rows = [("name", "kind", "family", "arch", "test acc", "agreement")]
    for e in zoo["models"]:
      rows.append((e["name"], e["kind"], e["family"], e["arch"],
                   f"{e['test_accuracy']:.4f}", f"{e['agreement']:.4f}"))
    print(_markdown(rows) + "\n")
    rows = [("kind", "models", "mean test acc", "mean agreement", "wall s", "CPU s")]
    for kind, s in zoo["per_kind"].items():
      rows.append((kind, s["count"], f"{s['test_accuracy']:.4f}", f"{s['agreement']:.4f}",
                   f"{zoo['seconds_per_kind'].get(kind, 0):.1f}",
                   f"{zoo.get('cpu_seconds_per_kind', {}).get(kind, 0):.1f}"))
    rows.append(("total", len(zoo["models"]), "", "",
                 f"{sum(zoo['seconds_per_kind'].values()):.1f}",
                 f"{sum(zoo.get('cpu_seconds_per_kind', {}).values()):.1f}"))
    print(_markdown(rows) + "\n")
    faith = zoo.get("extraction_faithfulness")
    if faith:
      ref = faith["same_data_independents"]
      print(f"Same-data independents: agreement mean {ref['mean']:.4f}, max "
            f"{ref['max']:.4f} ({ref['count']} models).")
      for key, v in faith.items():
        if key != "same_data_independents":
          print(f"- {key}: {v['mean']:.4f} ({'faithful' if v['faithful'] else 'NOT faithful'})")
      print()


if __name__ == "__main__":
  if len(sys.argv) < 2:
    raise SystemExit(__doc__)
  main(sys.argv[1:])

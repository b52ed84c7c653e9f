"""How far the p_t a sweep stores (`token_probs`) sit from the final certificate's, and the phase table's
violations, from a committed store: no model is loaded.

A sweep with `token_probs: true` keeps every record's p_t at its training-time checks; the phase table
(`memlaw runs phase`) reads those of the final step. The cell's verdicts (`certified`, lowest p_t) come
from the final certificate's pass (`memlaw.certify`). In bf16 the two passes put a record in batches of
different shapes, so their p_t differ. Prints, per store: the per-record |Δ lowest p_t| between the two
passes (median, 99th percentile, max, count above the auto margin), each phase-table violation (an
on-path position with stored p_t > 0.5 decoded wrong) with its p_t, and the records certified yet
decoded wrong with their lowest certificate p_t. Values are never printed.

    python bench/probs_shift.py ../results/stores/methods-smollm2-linear-rule.db [STORE ...]
"""

from __future__ import annotations

import argparse

import numpy as np

from memlaw.analysis import record_rows
from memlaw.certificate import AUTO_MARGIN, stubborn
from memlaw.phase import final_cell_probs, objective_label, phase_points
from memlaw.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+")
    args = ap.parse_args()
    print(f"<!-- python bench/probs_shift.py {' '.join(args.stores)} -->")
    for path in args.stores:
        shift, violations, unconfirmed = [], [], []
        with open_store(path, create=False) as db:
            for row in db.load_cells():
                probs = db.token_probs(row["key"])
                label = f"{objective_label(row)}, r{row['rank']}, seed {row['seed']}"
                final = final_cell_probs(row, probs)
                for r in record_rows(row):
                    i = r["record"]
                    if i in final and r.get("min_p") is not None:
                        shift.append(abs(float(np.min(final[i])) - r["min_p"]))
                    if r.get("certified") and r.get("em") is False:
                        unconfirmed.append(f"{label}, record {i}: lowest certificate p_t {r['min_p']:.4f}")
                violations += [f"{label}, record {x['record']}, position {x['position']}: stored p_t {x['p']:.4f}"
                               for x in phase_points(row, probs) if x["status"] == "wrong" and not stubborn(x["p"])]
        d = np.array(shift)
        print(f"\n## {path}\n")
        if len(d):
            print(f"|Δ lowest p_t|, stored (final check) against the certificate's pass, {len(d)} records: "
                  f"median {np.median(d):.3f}, 99th percentile {np.percentile(d, 99):.3f}, max {d.max():.3f}, "
                  f"{int((d > AUTO_MARGIN['bfloat16']).sum())} above the bf16 auto margin {AUTO_MARGIN['bfloat16']}")
        print(f"\nphase-table violations (stored p_t > 0.5, decoded wrong): {len(violations)}")
        print("".join(f"\n- {v}" for v in violations))
        print(f"\ncertified yet decoded wrong (margin of the cell): {len(unconfirmed)}")
        print("".join(f"\n- {u}" for u in unconfirmed))


if __name__ == "__main__":
    main()

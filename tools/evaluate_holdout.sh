#!/usr/bin/env bash
# The accuracy report of the shipped weights: a held-out phantom set (seed 9100, never used in
# training: detector 1000, classifiers 2000/3000), 20 cases per lesion class plus 20
# normal cases, AP+PVP (PHASES=PVP: one phase), 40 slices x 5 mm; then `liver-node run` and `liver-node evaluate`.
#   bash tools/evaluate_holdout.sh /tmp/holdout [WEIGHTS_DIR]
# JOBS=N analyses the class folders in N processes of one torch thread each (studies are independent).
set -euo pipefail
out=${1:?usage: evaluate_holdout.sh OUT_DIR [WEIGHTS_DIR]}
weights=${2:-weights}
cd "$(dirname "$0")/.."
py=.venv/bin/python
cases=${CASES_PER_CLASS:-20}
seed=${SEED:-9100}  # SEED=8100: the validation set that picks thresholds; 9100: the test set of every version
# up to detector 0.4.0; 9200: a fresh test set for the lesion verifier's rule (9100 had informed it);
# 9300: verifier 0.2.0 beside 0.1.0; 9400: detector 0.5.0 (phase pairs) beside 0.4.0; 9500: the shipped
# pairing (detector 0.5.0 + verifier 0.2.0) measured again, after 9400 had selected it; 8200: a second,
# larger validation set (all 20 per class) for the verifier's rule; 9600: the verifier's two-bar rule
# (fixed on 8100 + 8200) beside the rule before it; 9700: the pipeline's fragment join beside the
# pipeline without it; 9800: the verifier rule chosen for recall beside the shipped rule (one run at
# p_lesion 0 scores both), then the shipped system once more; 9900: verifier 0.2.1's candidate score
# beside the two bars (one run at p_lesion 0 scores both), then 0.2.1 as shipped; 9950: one-phase studies
# (PHASES=PVP); 10000: candidate detector 0.6.0 (score refitted) beside the shipped system. Next fresh seed: 10100
# A truth folder made with other settings would be reused silently below: refuse it.
stamp="seed=$seed cases=$cases phases=${PHASES:-AP,PVP}"
mkdir -p "$out/truth"
if [ -s "$out/truth/.settings" ] && [ "$(cat "$out/truth/.settings")" != "$stamp" ]; then
  echo "$out/truth was made with $(cat "$out/truth/.settings"), not $stamp: use another OUT_DIR" >&2
  exit 2
fi
echo "$stamp" > "$out/truth/.settings"
index=0
for cls in HCC ICC MET FNH HEM CYST none; do
  if [ ! -d "$out/truth/$cls" ]; then
    $py -m pipeline.phantom.cli --out "$out/truth/$cls" --cases "$cases" --seed "$seed" --first-index "$index" \
      --lesion "$cls" --phases "${PHASES:-AP,PVP}" --slices 40 --thickness 5 --workers "${WORKERS:-1}" --log-level WARNING
  fi
  index=$((index + cases))
done
jobs=${JOBS:-1}
if [ "$jobs" -le 1 ]; then
  .venv/bin/liver-node run "$out/truth" --out "$out/results" --weights "$weights" --log-level WARNING \
    > "$out/run.log" || echo "some studies were not analysed (see $out/run.log)" >&2
else
  export OMP_NUM_THREADS=1 out weights
  ls "$out/truth" | xargs -P "$jobs" -I{} sh -c '.venv/bin/liver-node run "$out/truth/{}" --out "$out/results" \
    --weights "$weights" --log-level WARNING > "$out/run-{}.log" \
    || echo "some studies were not analysed (see $out/run-{}.log)" >&2'
fi
.venv/bin/liver-node evaluate "$out/results" --truth "$out/truth" | tee "$out/report.txt"
.venv/bin/liver-node evaluate "$out/results" --truth "$out/truth" --json > "$out/report.json"

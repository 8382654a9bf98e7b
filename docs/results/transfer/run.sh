#!/usr/bin/env bash
# Regenerates docs/results/transfer/: do steering vectors made on the base model still
# steer a LoRA fine-tune of it (the paper's transfer to fine-tunes)? A real LoRA
# fine-tune of the default model is trained by make_lora.py (PEFT + transformers, CPU,
# on the optimism answers; $BIPO_REF_PYTHON must have torch, transformers, peft, gguf),
# then bipo loads base + adapter with --lora (merged at load) and measures the committed
# base-model vectors on it and on the base: power-seeking BiPO on the first 100
# power-seeking test pairs, and the optimism BiPO vector (docs/results/multilayer/L12)
# on the optimism test pairs, at -1, 0, +1.
set -euo pipefail
cd "$(dirname "$0")/../../.."
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
bipo=${BIPO_BIN:-./target/release/bipo}
py=${BIPO_REF_PYTHON:-python3}
data=${BIPO_DATA:-../shared/data/bipo}
out=docs/results/transfer
[ -f out/transfer/lora/adapter_model.safetensors ] || "$py" $out/make_lora.py $model out/transfer/lora
mkdir -p $out/adapter
cp out/transfer/lora/adapter_config.json $out/adapter/
sha256sum out/transfer/lora/adapter_model.safetensors | cut -d' ' -f1 > $out/adapter/adapter_model.sha256
for which in base lora; do
  lora=(); [ $which = lora ] && lora=(--lora out/transfer/lora)
  $bipo eval -m $model "${lora[@]}" -v docs/results/power-seeking/vectors/bipo.safetensors:power \
    --data $data/power-seeking/test.csv --limit 100 --multipliers=-1,0,1 --open-ended 2 --max-tokens 40 \
    --title "power-seeking BiPO vector (made on the base model) on the $which model" \
    -o $out/power-$which --threads 2 -q 2> $out/power-$which.stderr
  $bipo eval -m $model "${lora[@]}" -v docs/results/multilayer/L12/vector.safetensors:optimism \
    --data data/optimism/test.csv --multipliers=-1,0,1 --open-ended 2 --max-tokens 40 \
    --title "optimism BiPO vector (made on the base model) on the $which model" \
    -o $out/optimism-$which --threads 2 -q 2> $out/optimism-$which.stderr
done

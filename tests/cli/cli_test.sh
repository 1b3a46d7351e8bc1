#!/usr/bin/env bash
# End-to-end checks of the zsq command line: exit codes, messages, config
# files, JSON output, and that failures never damage an existing output file.
# usage: cli_test.sh ZSQ_BINARY PYTHON3 [MPIRUN]
set -u
zsq="$1"
py="$2"
mpirun_bin="${3:-}"
# Open MPI refuses to start as root unless told; tests run as root on CI.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work="$(mktemp -d /tmp/zsq-cli-test.XXXXXX)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok: $1"; }
bad() { failed=$((failed + 1)); echo "FAILED: $1"; }

# expect_fail CODE "message part" -- command...: exit code CODE, stderr holds the part.
expect_fail() {
  local code="$1" part="$2"
  shift 2
  "$@" >"$work/out" 2>"$work/err"
  local got=$?
  if [ "$got" -eq "$code" ] && grep -qF -- "$part" "$work/err"; then
    ok "$* -> exit $code, '$part'"
  else
    bad "$* -> exit $got (want $code), stderr: $(head -c 400 "$work/err")"
  fi
}

expect_ok() {
  if "$@" >"$work/out" 2>"$work/err"; then
    ok "$*"
  else
    bad "$* -> exit $?, stderr: $(head -c 400 "$work/err")"
  fi
}

only_bit_moved() {  # only_bit_moved A B BIT RTOL ATOL: the BatchNorm running statistics that differ
  # between files A and B (beyond the tolerance) are BIT's, some do; the other bit-widths' are identical
  "$py" - "$@" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
mark, rtol, atol = ".b%s." % sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
names = []
a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and "running_" in n else None)
moved = {n for n in names if not np.allclose(a[n][()], b[n][()], rtol=rtol, atol=atol)}
assert moved and all(mark in n for n in moved), sorted(moved)[:5]
assert all(np.array_equal(a[n][()], b[n][()]) for n in names if mark not in n)
PY
}

json_field() {  # json_field FILE KEY: KEY of the JSON object on FILE's last line
  tail -n 1 "$1" | "$py" -c "import json,sys; print(json.loads(sys.stdin.read())['$2'])"
}

tiny=(--arch resnet8 --width 8 --epochs 1 --threads 2)  # add --train-limit/--batch-size per call

# --- usage errors --------------------------------------------------------
expect_fail 2 "usage: zsq COMMAND" "$zsq"
expect_fail 2 "unknown command 'quantise'" "$zsq" quantise
expect_fail 2 "unrecognised option '--epoch'" "$zsq" train-teacher --epoch 3
expect_fail 2 "the argument ('three') for option '--epochs' is invalid" "$zsq" train-teacher --epochs three
expect_fail 2 "--epochs must be > 0, got 0" "$zsq" train-teacher --epochs 0
expect_fail 2 "--lr must be > 0" "$zsq" train-teacher --lr -0.1
expect_fail 2 "--label-smoothing must be in [0, 1)" "$zsq" train-teacher --label-smoothing 1.5
expect_fail 1 "unknown architecture 'resnet21'; known: resnet8, resnet20" "$zsq" train-teacher --arch resnet21
expect_fail 1 "output folder '$work/no/dir' does not exist" "$zsq" train-teacher --out "$work/no/dir/t.h5"
expect_fail 1 "Fashion-MNIST folder '$work/nowhere' does not exist" "$zsq" train-teacher --data-dir "$work/nowhere"
expect_fail 1 "unknown data set 'cifar10'" "$zsq" train-teacher --data cifar10
expect_fail 2 "--log-level: log level must be one of" "$zsq" eval --model x.h5 --log-level loud
expect_fail 2 "give exactly one of --model and --checkpoint" "$zsq" eval
expect_fail 2 "--split must be 'train' or 'test'" "$zsq" eval --model x.h5 --split val
expect_fail 2 "--input-shape expects comma-separated integers" "$zsq" eval --model x.h5 --input-shape 1,a,3
expect_fail 2 "give the file to inspect" "$zsq" inspect
expect_fail 2 "cannot read config file" "$zsq" train-teacher --config "$work/missing.ini"
expect_fail 2 "--checkpoint-every must be >= 0" "$zsq" train-teacher --checkpoint-every -1
expect_fail 2 "there is no '$work/t-resume.checkpoint.h5' to continue" "$zsq" train-teacher "${tiny[@]}" --resume --out "$work/t-resume.h5"
: > "$work/t-resume.checkpoint.h5"
expect_fail 2 "'$work/t-resume.checkpoint.h5' exists (an interrupted run); add --resume" "$zsq" train-teacher "${tiny[@]}" --out "$work/t-resume.h5"
rm -f "$work/t-resume.checkpoint.h5"
expect_ok "$zsq" train-teacher --help
grep -q -- "--label-smoothing" "$work/out" && ok "help lists options" || bad "help lists options"

# --- config files: [section] for this command, flags override the file ---
cat >"$work/recipe.ini" <<INI
# a recipe for two commands
arch = resnet8
epochs = 5
[train-teacher]
width = 8
batch-size = 64
train-limit = 1024
[quantize]
bits = 2,3,4,8
INI
expect_ok "$zsq" train-teacher --config "$work/recipe.ini" --epochs 1 --threads 2 --out "$work/teacher.h5" --json
train_top1="$(json_field "$work/out" top1)"
grep -q "^epoch 1/1 .*img/s.*ETA" "$work/out" && ok "progress line" || bad "progress line: $(cat "$work/out")"
expect_ok "$zsq" inspect "$work/teacher.h5"
grep -q "arch = resnet8" "$work/out" && grep -q "epochs = 1" "$work/out" && grep -q "width = 8" "$work/out" &&
  ok "recipe stored with flag overriding file" || bad "recipe in inspect: $(cat "$work/out")"
printf 'arch = resnet8\nepochz = 3\n' >"$work/typo.ini"
expect_fail 2 "unrecognised option 'epochz'; did you mean 'epochs'?" "$zsq" train-teacher --config "$work/typo.ini"
expect_fail 2 "did you mean '--first-last-bits'?" "$zsq" quantize --teacher "$work/teacher.h5" --first-last-bit 8
expect_fail 2 "unrecognised option '--qqqqqqqq'" "$zsq" quantize --qqqqqqqq 1
# Boost's message placeholders in the user's text once hung zsq (found by tests/fuzz/fuzz_ini.cpp).
printf '%%original_token%%arch = resnet8\n' >"$work/percent.ini"
expect_fail 2 "unrecognised option '?original_token?arch'" timeout 20 "$zsq" train-teacher --config "$work/percent.ini"
expect_fail 2 "the argument ('?value?') for option '--limit' is invalid" timeout 20 "$zsq" eval --limit %value%
grep -q "did you mean" "$work/err" && bad "a far-off option got a suggestion" || ok "no suggestion for a far-off option"

# --- eval: JSON agrees with training's own evaluation -------------------
expect_ok "$zsq" eval --model "$work/teacher.h5" --json
eval_top1="$(json_field "$work/out" top1)"
[ "$eval_top1" = "$train_top1" ] && ok "eval top1 $eval_top1 = training's" || bad "eval $eval_top1 != train $train_top1"
"$py" -c "import sys; sys.exit(0 if float('$eval_top1') > 0.25 else 1)" && ok "accuracy above chance" ||
  bad "accuracy $eval_top1"
expect_ok "$zsq" inspect "$work/teacher.h5" --json
[ "$(json_field "$work/out" arch)" = "resnet8" ] && ok "inspect --json" || bad "inspect --json"
expect_fail 1 "holds a 'resnet8' model, but --arch says 'resnet20'" "$zsq" eval --model "$work/teacher.h5" --arch resnet20
# --save-logits: the saved logits give the top-1 eval printed; a folder that does not exist fails first.
expect_ok "$zsq" eval --model "$work/teacher.h5" --limit 300 --save-logits "$work/logits.h5" --json
"$py" - "$work/logits.h5" "$(json_field "$work/out" top1)" <<'PY' && ok "--save-logits: argmax gives eval's top-1" ||
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as f:
    logits, labels = f["logits"][()], f["labels"][()]
    assert f.attrs["format"] == "zsq-logits" and logits.shape == (300, 10) and labels.shape == (300,), logits.shape
top1 = float((logits.argmax(1) == labels).mean())
sys.exit(0 if abs(top1 - float(sys.argv[2])) < 1e-9 else 1)
PY
  bad "--save-logits does not agree with eval"
expect_fail 1 "$work/no/such" "$zsq" eval --model "$work/teacher.h5" --save-logits "$work/no/such/logits.h5"

# --- bad files ----------------------------------------------------------
expect_fail 1 "file not found: '$work/none.h5'" "$zsq" eval --model "$work/none.h5"
echo "hello" >"$work/text.h5"
expect_fail 1 "is not an HDF5 file" "$zsq" eval --model "$work/text.h5"
head -c 20000 "$work/teacher.h5" >"$work/cut.h5"
expect_fail 1 "truncated or damaged" "$zsq" eval --model "$work/cut.h5"
expect_fail 1 "truncated or damaged" "$zsq" inspect "$work/cut.h5"
# A data set whose images do not fit the model, and a broken data set.
"$py" - "$work" <<'PY'
import sys, h5py, numpy as np
d = sys.argv[1]
with h5py.File(d + "/rgb.h5", "w") as f:
    f["images"] = np.zeros((4, 3, 32, 32), np.uint8)
    f["labels"] = np.zeros(4, np.int64)
with h5py.File(d + "/mismatch.h5", "w") as f:
    f["images"] = np.zeros((4, 1, 28, 28), np.uint8)
    f["labels"] = np.zeros(3, np.int64)
with h5py.File(d + "/small.h5", "w") as f:
    rng = np.random.default_rng(0)
    f["images"] = rng.integers(0, 255, (256, 1, 28, 28), dtype=np.uint8)
    f["labels"] = rng.integers(0, 10, 256)
PY
expect_fail 1 "has images of shape [3, 32, 32], the model expects [1, 28, 28]" \
  "$zsq" eval --model "$work/teacher.h5" --data "$work/rgb.h5"
expect_fail 1 "image/label count mismatch" "$zsq" eval --model "$work/teacher.h5" --data "$work/mismatch.h5"
expect_ok "$zsq" eval --model "$work/teacher.h5" --data "$work/small.h5"
# The same images as an image folder (one sub-folder per class, lossless PNG): the same top-1.
"$py" - "$work" <<'PY'
import os, sys, h5py
from PIL import Image
d = sys.argv[1]
with h5py.File(d + "/small.h5", "r") as f:
    images, labels = f["images"][()], f["labels"][()]
for i, (image, label) in enumerate(zip(images, labels)):
    os.makedirs(f"{d}/folder/class{label}", exist_ok=True)  # class0 .. class9 sort as the labels do
    Image.fromarray(image[0]).save(f"{d}/folder/class{label}/{i:04d}.png")
os.makedirs(f"{d}/wide/a", exist_ok=True)
Image.new("RGB", (32, 32)).save(f"{d}/wide/a/big.jpg")
PY
expect_ok "$zsq" eval --model "$work/teacher.h5" --data "$work/small.h5" --json
h5_top1="$(json_field "$work/out" top1)"
expect_ok "$zsq" eval --model "$work/teacher.h5" --data "$work/folder" --json
[ "$(json_field "$work/out" top1)" = "$h5_top1" ] && ok "an image folder evaluates as the same images in HDF5" ||
  bad "image folder top-1 $(json_field "$work/out" top1) != HDF5 $h5_top1"
expect_fail 1 "big.jpg' is 32x32 pixels (width x height), the model takes 28x28" \
  "$zsq" eval --model "$work/teacher.h5" --data "$work/wide"
expect_fail 2 "pass --test-data" "$zsq" train-teacher "${tiny[@]}" --data "$work/folder"
expect_ok "$zsq" inspect "$work/small.h5"
grep -q "images: 256 of shape \[1, 28, 28\]" "$work/out" && ok "inspect data set" || bad "inspect data set: $(cat "$work/out")"
expect_ok "$zsq" train-teacher "${tiny[@]}" --batch-size 64 --data "$work/small.h5" --test-data "$work/small.h5" \
  --out "$work/own.h5"

# --- failures never damage an existing output ----------------------------
cp "$work/teacher.h5" "$work/keep.h5"
before="$(md5sum <"$work/keep.h5")"
expect_fail 2 "is larger than the 100 training images" \
  "$zsq" train-teacher "${tiny[@]}" --train-limit 100 --batch-size 128 --out "$work/keep.h5"
"$zsq" train-teacher --arch resnet8 --width 8 --threads 2 --epochs 3 --out "$work/keep.h5" >/dev/null 2>&1 &
pid=$!
sleep 3
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
[ "$(md5sum <"$work/keep.h5")" = "$before" ] && ok "killed run left the old output intact" ||
  bad "killed run changed the old output"
expect_ok "$zsq" eval --model "$work/keep.h5"

# --- once-for-all student: init, per-bit eval, extraction, integer path ---
expect_fail 2 "--teacher is required" "$zsq" init-student
expect_fail 2 "bits must be in [2, top bits = 8], got 9" "$zsq" init-student --teacher "$work/teacher.h5" --bits 2,9
expect_fail 2 "--nesting must be 'shift' or 'round', got 'floor'" "$zsq" init-student --teacher "$work/teacher.h5" \
  --nesting floor
expect_fail 2 "--wbits must list one value per --bits entry (2), got 1" "$zsq" init-student \
  --teacher "$work/teacher.h5" --bits 4,8 --wbits 4
expect_fail 1 "file not found" "$zsq" init-student --teacher "$work/none.h5"
expect_ok "$zsq" init-student --teacher "$work/teacher.h5" --bits 4,8 --calib-count 64 --out "$work/student.h5"
grep -q "noise images (data-free)" "$work/out" && ok "init-student says how it calibrated" || bad "init-student output"
expect_fail 2 "--bn-reestimate 3: not one of the model's bit-widths (4,8)" "$zsq" init-student \
  --teacher "$work/teacher.h5" --bits 4,8 --bn-reestimate 3 --out "$work/student-bn.h5"
expect_fail 2 "--bn-mode must be 'shift', 'absolute', 'align', 'center' or 'auto' (or one per --bn-reestimate bit-width), got 'relative'" "$zsq" init-student \
  --teacher "$work/teacher.h5" --bits 4,8 --bn-reestimate 4 --bn-mode relative --out "$work/student-bn.h5"
expect_ok "$zsq" init-student --teacher "$work/teacher.h5" --bits 4,8 --calib-count 64 --bn-reestimate 4 \
  --bn-mode absolute --out "$work/student-bn.h5"
grep -q "BatchNorm re-estimated (absolute) at bits 4" "$work/out" && ok "init-student says it re-estimated BatchNorm" ||
  bad "init-student --bn-reestimate output: $(cat "$work/out")"
expect_fail 2 "--bn-mode gives 2 modes for 1 --bn-reestimate bit-widths" "$zsq" init-student \
  --teacher "$work/teacher.h5" --bits 4,8 --bn-reestimate 4 --bn-mode absolute,align --out "$work/student-bn2.h5"
[ ! -e "$work/student-bn2.h5" ] && ok "a refused --bn-mode writes nothing" || bad "a refused --bn-mode wrote a student"
expect_ok "$zsq" init-student --teacher "$work/teacher.h5" --bits 4,8 --calib-count 64 --bn-reestimate 4,8 \
  --bn-mode absolute,align --out "$work/student-bn2.h5"
grep -q "BatchNorm re-estimated (absolute at 4, align at 8) at bits 4,8" "$work/out" &&
  ok "init-student says how each bit-width re-estimated" || bad "init-student per-bit --bn-mode: $(cat "$work/out")"
expect_fail 2 "--first-last-bits takes N, 'same' or FIRST,LAST" "$zsq" init-student --teacher "$work/teacher.h5" \
  --first-last-bits 1
expect_fail 2 "--first-last-bits takes N, 'same' or FIRST,LAST" "$zsq" init-student --teacher "$work/teacher.h5" \
  --first-last-bits 4,all
expect_fail 2 "--input-range must be 'pixel' or 'calibrated', got 'raw'" "$zsq" init-student \
  --teacher "$work/teacher.h5" --input-range raw
expect_fail 2 "--weight-init must be 'mse' or 'lsq', got 'max'" "$zsq" init-student --teacher "$work/teacher.h5" \
  --weight-init max
# Every layer at the model's bit-widths, the input range from the teacher's normalization: the student file
# says so, and the fixed 4-bit model's first layer takes asymmetric input codes covering the pixel range.
expect_ok "$zsq" init-student --teacher "$work/teacher.h5" --bits 4,8 --first-last-bits same --calib-count 64 \
  --out "$work/student-same.h5"
expect_ok "$zsq" extract --checkpoint "$work/student-same.h5" --bits 4 --out "$work/same-w4.h5"
if "$py" - "$work/student-same.h5" "$work/same-w4.h5" <<'PY'
import sys, h5py, numpy as np
s, f = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
assert int(s.attrs["first_last_bits"]) == 0, s.attrs["first_last_bits"]
mean, std = float(s.attrs["input_mean"][0]), float(s.attrs["input_std"][0])
assert np.allclose(s.attrs["input_range"], [-mean / std, (1 - mean) / std]), s.attrs["input_range"]
lo, hi = f["conv1.act_range"][()]
assert lo < 0 and hi - lo == 15, (lo, hi)
step = float(f["conv1.act_step"][()])
assert lo * step <= -mean / std + 1e-6 and hi * step >= (1 - mean) / std - 1e-6, (lo, hi, step)
bits = int(f["conv1.weight_code_bits"][()])
planes = np.unpackbits(f["conv1.weight_codes_packed"][()], bitorder="little")
codes = (planes[:len(planes) // bits * bits].reshape(-1, bits).astype(np.int64) << np.arange(bits)).sum(1) - (1 << (bits - 1))
assert bits <= 4 and codes.min() >= -8 and codes.max() <= 7, (bits, codes.min(), codes.max())
PY
then ok "first-last-bits same: student attributes and the first layer's pixel-range codes"
else bad "first-last-bits same: student attributes and the first layer's pixel-range codes"; fi
expect_fail 2 "--clamp-pixels must be 'on' or 'off', got 'maybe'" "$zsq" quantize --teacher "$work/teacher.h5" \
  --clamp-pixels maybe
expect_fail 2 "--weight-step-lr must be a finite number >= 0" "$zsq" quantize --teacher "$work/teacher.h5" \
  --weight-step-lr -0.5
expect_fail 2 "--bn-reestimate-end on needs the bit-widths to re-estimate" "$zsq" quantize \
  --teacher "$work/teacher.h5" --bn-reestimate-end on --bn-reestimate none
expect_fail 2 "--bn-reestimate-end must be 'on' or 'off', got 'yes'" "$zsq" quantize --teacher "$work/teacher.h5" \
  --bn-reestimate-end yes
expect_fail 2 "--bn-track must be in [0, 1], got 1.5" "$zsq" quantize --teacher "$work/teacher.h5" --bn-track 1.5
expect_fail 2 "--bn-track and --bn-train both move" "$zsq" quantize --teacher "$work/teacher.h5" --bn-track 0.1 \
  --bn-train 8
expect_fail 2 "--gen-clamp-pixels on needs --clamp-pixels on" "$zsq" quantize --teacher "$work/teacher.h5" \
  --gen-clamp-pixels on --clamp-pixels off
expect_fail 2 "--lowpass must be >= 0, got -2" "$zsq" quantize --teacher "$work/teacher.h5" --lowpass -2
expect_fail 2 "--mix-samples must be >= 0, got -1" "$zsq" quantize --teacher "$work/teacher.h5" --mix-samples -1
expect_fail 2 "--mix-samples does not combine with pcgrad" "$zsq" quantize --teacher "$work/teacher.h5" \
  --mix-samples 2 --weighting pcgrad
only_bit_moved "$work/student.h5" "$work/student-bn.h5" 4 1e-3 1e-4 &&
  ok "--bn-reestimate 4 moves only the 4-bit BatchNorm statistics" || bad "--bn-reestimate: wrong statistics moved"
expect_ok "$zsq" eval --checkpoint "$work/student.h5" --limit 500 --json --save-logits "$work/logits-student.h5"
b8="$(json_field "$work/out" top1_b8)"
"$py" - "$work/logits-student.h5" "$b8" "$(json_field "$work/out" top1_b4)" <<'PY' &&
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    labels = f["labels"][()]
    got = [float((f["logits_b%d" % b][()].argmax(1) == labels).mean()) for b in (8, 4)]
sys.exit(0 if abs(got[0] - float(sys.argv[2])) < 1e-9 and abs(got[1] - float(sys.argv[3])) < 1e-9 else 1)
PY
  ok "--save-logits of a checkpoint: logits_b8 and logits_b4 give eval's top-1s" || bad "--save-logits per bit-width"
b4_fq="$(json_field "$work/out" top1_b4)"
"$py" -c "import sys; sys.exit(0 if float('$b8') > 0.2 else 1)" && ok "8-bit student above chance ($b8)" ||
  bad "8-bit student accuracy $b8"
expect_fail 2 "give exactly one of --model and --checkpoint" "$zsq" eval --model "$work/teacher.h5" \
  --checkpoint "$work/student.h5"
expect_fail 1 "is a once-for-all student; evaluate it with --checkpoint" "$zsq" eval --model "$work/student.h5"
expect_fail 1 "--bits applies to vertical-layered files" "$zsq" eval --model "$work/teacher.h5" --bits 4
expect_fail 2 "--out is required" "$zsq" extract --checkpoint "$work/student.h5"
expect_fail 1 "bit-width 3 is not one of this model's (4,8)" "$zsq" extract --checkpoint "$work/student.h5" --bits 3 \
  --out "$work/w3.h5"
expect_fail 1 "is not a student checkpoint" "$zsq" extract --checkpoint "$work/teacher.h5" --out "$work/x.h5"
expect_ok "$zsq" extract --checkpoint "$work/student.h5" --bits 4 --out "$work/w4.h5"
expect_ok "$zsq" eval --model "$work/w4.h5" --limit 500 --json
b4_int="$(json_field "$work/out" top1)"
"$py" -c "import sys; sys.exit(0 if abs(float('$b4_int') - float('$b4_fq')) <= 0.004 else 1)" &&
  ok "integer 4-bit model ($b4_int) = fake-quantized student ($b4_fq)" || bad "integer $b4_int vs student $b4_fq"
expect_ok "$zsq" extract --checkpoint "$work/student.h5" --out "$work/vl.h5"
expect_fail 1 "choose a bit-width with --bits (one of 4,8)" "$zsq" eval --model "$work/vl.h5"
expect_ok "$zsq" eval --model "$work/vl.h5" --bits 4 --limit 500 --json
[ "$(json_field "$work/out" top1)" = "$b4_int" ] && ok "vertical-layered file at 4 bits = fixed 4-bit file" ||
  bad "vertical at 4 bits: $(json_field "$work/out" top1) vs $b4_int"
expect_ok "$zsq" inspect "$work/vl.h5"
grep -q "vertical-layered integer model" "$work/out" && ok "inspect names extracted files" || bad "inspect vl.h5"
before="$(md5sum <"$work/w4.h5")"
expect_fail 1 "is not a student checkpoint" "$zsq" extract --checkpoint "$work/teacher.h5" --bits 4 --out "$work/w4.h5"
[ "$(md5sum <"$work/w4.h5")" = "$before" ] && ok "failed extract left the old file intact" ||
  bad "failed extract changed the old file"

# --- synthetic data -----------------------------------------------------------
expect_fail 2 "--teacher is required" "$zsq" generate
expect_fail 2 "unknown recipe 'genius'; known: noise, zeroq, dsg, gdfq, qimera, genie, intraq, adversarial" "$zsq" generate --teacher "$work/teacher.h5" --recipe genius
expect_fail 2 "no target labels" "$zsq" generate --teacher "$work/teacher.h5" --recipe genie --ce-weight 1
expect_fail 2 "--lor must be 'on' or 'off', got 'maybe'" "$zsq" generate --teacher "$work/teacher.h5" --lor maybe
expect_fail 2 "--soft-target must be in [0, 1), got 1.5" "$zsq" generate --teacher "$work/teacher.h5" --soft-target 1.5
expect_fail 2 "unknown BN-statistics loss 'dsg'" "$zsq" generate --teacher "$work/teacher.h5" --bns dsg
expect_fail 2 "--count must be >= 1" "$zsq" generate --teacher "$work/teacher.h5" --count 0
expect_fail 2 "output folder '$work/no' does not exist" "$zsq" generate --teacher "$work/teacher.h5" --png "$work/no/g.png"
expect_ok "$zsq" generate --teacher "$work/teacher.h5" --recipe gdfq --iterations 3 --batch-size 16 --count 40 \
  --out "$work/synth.h5" --png "$work/grid.png" --json
agreement="$(json_field "$work/out" agreement)"
[ "$(head -c 8 "$work/grid.png" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] && ok "PNG grid written" ||
  bad "no PNG signature in grid.png"
expect_ok "$zsq" eval --model "$work/teacher.h5" --data "$work/synth.h5" --json
[ "$(json_field "$work/out" top1)" = "$agreement" ] && ok "pool report agreement = teacher accuracy on the pool" ||
  bad "agreement $agreement vs eval $(json_field "$work/out" top1)"
expect_ok "$zsq" inspect "$work/synth.h5"
grep -q "images: 40 of shape \[1, 28, 28\]" "$work/out" && ok "inspect synthetic pool" || bad "inspect synth.h5"
# A fresh student distilled from the teacher on the pool only, tested on real images.
expect_ok "$zsq" train-teacher --arch resnet8 --width 8 --epochs 1 --batch-size 16 --threads 2 --data "$work/synth.h5" \
  --test-data fashion-mnist --distill-from "$work/teacher.h5" --out "$work/kd.h5"
expect_fail 2 "--temperature must be > 0" "$zsq" train-teacher --arch resnet8 --width 8 --epochs 1 --batch-size 16 \
  --data "$work/synth.h5" --test-data fashion-mnist --distill-from "$work/teacher.h5" --temperature 0
# --- the main job: zsq quantize, checkpoints, resume ---------------------------
same_checkpoints() {  # same_checkpoints A B: every dataset bit-identical, same step
  "$py" - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
def names(f):
    out = []
    f.visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Dataset) else None)
    return out
na, nb = names(a), names(b)
assert na == nb, set(na) ^ set(nb)
assert any(n.startswith("train/optimizer/") for n in na), "no optimizer state"
differ = [n for n in na if not np.array_equal(a[n][()], b[n][()])]
assert not differ, differ[:5]
assert a.attrs["train_step"] == b.attrs["train_step"]
PY
}
q_pool=(quantize --teacher "$work/teacher.h5" --pool "$work/synth.h5" --bits 2,4,8 --steps 6 --batch-size 16
  --calib-count 16 --checkpoint-every 2 --eval-data none --threads 2)
expect_ok "$zsq" "${q_pool[@]}" --out "$work/run" --json
[ "$(wc -l <"$work/run/metrics.jsonl")" = 6 ] && ok "one metrics line per step" || bad "metrics.jsonl"
grep -q '"loss": \[' "$work/run/metrics.jsonl" && grep -q '"images_per_second"' "$work/run/metrics.jsonl" &&
  ok "metrics hold the loss per bit-width and img/s" || bad "metrics: $(head -c 300 "$work/run/metrics.jsonl")"
grep -q "img/s .* ETA" "$work/out" && ok "progress line with img/s and ETA" || bad "progress: $(head -c 300 "$work/out")"
expect_ok "$zsq" eval --checkpoint "$work/run/checkpoint.h5" --limit 200
grep -q "w2a2" "$work/out" && grep -q "w8a8" "$work/out" && ok "eval --checkpoint reads the run's checkpoint" ||
  bad "eval --checkpoint: $(cat "$work/out")"
expect_ok "$zsq" extract --checkpoint "$work/run/checkpoint.h5" --bits 4 --out "$work/run-w4.h5"
expect_ok "$zsq" eval --model "$work/run-w4.h5" --limit 200
# Stopped after 3 steps and resumed = uninterrupted, bit for bit (checkpoint, optimizer, metrics).
expect_ok "$zsq" "${q_pool[@]}" --stop-after 3 --out "$work/run-b"
grep -q "continue with the same command and --resume" "$work/out" && ok "a stopped run says how to continue" ||
  bad "stop-after: $(cat "$work/out")"
expect_fail 2 "exists; add --resume" "$zsq" "${q_pool[@]}" --out "$work/run-b"
expect_fail 2 "--lr 0.001 (the checkpoint has 0.0001)" "$zsq" "${q_pool[@]}" --lr 0.001 --resume --out "$work/run-b"
# A checkpoint written before an option existed resumes when the option is left at its default.
"$py" - "$work/run-b/checkpoint.h5" <<'PY'
import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    recipe = f.attrs["recipe"]
    recipe = recipe.decode() if isinstance(recipe, bytes) else recipe
    f.attrs["recipe"] = "\n".join(l for l in recipe.split("\n") if not l.startswith("bn-train"))
PY
expect_ok "$zsq" "${q_pool[@]}" --resume --out "$work/run-b"
grep -q "resumed from step 3" "$work/out" && ok "resume says where it continued" || bad "resume: $(cat "$work/out")"
same_checkpoints "$work/run/checkpoint.h5" "$work/run-b/checkpoint.h5" && ok "resumed pool run = uninterrupted run" ||
  bad "resumed pool run differs"
cmp -s <(cut -d, -f1-6 "$work/run/metrics.jsonl") <(cut -d, -f1-6 "$work/run-b/metrics.jsonl") &&
  ok "resumed metrics = uninterrupted metrics" || bad "metrics differ after resume"
expect_fail 2 "there is no '$work/run-c/checkpoint.h5' to continue" "$zsq" "${q_pool[@]}" --resume --out "$work/run-c"
expect_fail 2 "unknown --weighting 'mean'" "$zsq" "${q_pool[@]}" --weighting mean --out "$work/run-c"
# A teacher file without attributes (a bare state_dict), one with a NaN weight, a test set of another shape:
# each refused before any training, naming what is wrong.
"$py" - "$work/teacher.h5" "$work" <<'PY'
import sys, shutil, h5py, numpy as np
src, work = sys.argv[1], sys.argv[2]
for name in ("bare", "nan"):
    shutil.copy(src, f"{work}/{name}.h5")
with h5py.File(f"{work}/bare.h5", "a") as f:
    for k in list(f.attrs): del f.attrs[k]
with h5py.File(f"{work}/nan.h5", "a") as f:
    w = f["layer1.0.conv1.weight"][()]; w[1, 2, 0, 0] = np.nan; f["layer1.0.conv1.weight"][...] = w
with h5py.File(f"{work}/rgb.h5", "w") as f:
    f["images"] = np.zeros((4, 3, 32, 32), np.uint8); f["labels"] = np.zeros(4, np.int64)
PY
q_bare=(quantize --pool "$work/synth.h5" --bits 4 --steps 2 --batch-size 16 --calib-count 16 --threads 2)
expect_fail 1 "does not say its architecture; pass --arch" "$zsq" "${q_bare[@]}" --eval-data none --teacher "$work/bare.h5" \
  --out "$work/run-bare"
expect_ok "$zsq" "${q_bare[@]}" --eval-data none --teacher "$work/bare.h5" --out "$work/run-bare" --arch resnet8 --width 8 \
  --num-classes 10 --input-shape 1,28,28 --input-mean 0.286 --input-std 0.353
expect_fail 1 "tensor 'layer1.0.conv1.weight' has a non-finite value (nan) at index [1, 2, 0, 0]" \
  "$zsq" "${q_bare[@]}" --eval-data none --teacher "$work/nan.h5" --out "$work/run-nan"
expect_fail 1 "has images of shape [3, 32, 32]" "$zsq" "${q_bare[@]}" --teacher "$work/teacher.h5" --eval-data "$work/rgb.h5" \
  --out "$work/run-rgb"
[ ! -e "$work/run-rgb/checkpoint.h5" ] && ok "a test set that does not fit stops the run before training" ||
  bad "run-rgb trained before checking --eval-data"
expect_fail 2 "--bit-weights needs one value per bit-width (3)" "$zsq" "${q_pool[@]}" --bit-weights 1,2 --out "$work/run-c"
expect_fail 2 "--recursive must be 'on' or 'off'" "$zsq" "${q_pool[@]}" --recursive yes --out "$work/run-c"
expect_fail 1 "training diverged" "$zsq" "${q_pool[@]}" --lr 1e30 --out "$work/run-nan"
[ ! -e "$work/run-nan/checkpoint.h5" ] && ok "a run diverging before its first checkpoint writes none" ||
  bad "run-nan has a checkpoint"
expect_ok "$zsq" "${q_pool[@]}" --weighting sandwich --recursive on --out "$work/run-s"
expect_ok "$zsq" "${q_pool[@]}" --weighting min-norm --out "$work/run-m"
expect_ok "$zsq" "${q_pool[@]}" --weighting normalized --weight-step-lr 0 --out "$work/run-n"
"$py" - "$work/run-n/metrics.jsonl" "$work/run-n/checkpoint.h5" <<'PY' && ok "normalized logs per-bit gradient norms; --weight-step-lr 0 recorded" || bad "run-n metrics or recipe"
import h5py, json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert all(len(l["grad_norm"]) == 3 and min(l["grad_norm"]) > 0 for l in lines if "loss" in l), lines[-1]
assert "weight-step-lr = 0" in h5py.File(sys.argv[2], "r").attrs["recipe"]
PY
expect_ok "$zsq" "${q_pool[@]}" --feature-weight 1 --ce-weight 0.5 --out "$work/run-f"
expect_ok "$zsq" "${q_pool[@]}" --ce-weight 0 --out "$work/run-ce0"
expect_ok "$zsq" "${q_pool[@]}" --ce-weight 1,0,0 --out "$work/run-ce"
grep -q "cross-entropy to the labels at bits 2 (×1)" "$work/out" && ok "quantize names the cross-entropy's bit-widths" ||
  bad "cross-entropy not announced: $(head -c 400 "$work/out")"
"$py" - "$work/run-ce0/metrics.jsonl" "$work/run-ce/metrics.jsonl" "$work/run/metrics.jsonl" <<'PY' && ok "--ce-weight 1,0,0 adds cross-entropy at 2 bits only; auto (default) is 1,0,0 here" || bad "--ce-weight per bit-width"
import sys, json
a, b, auto = (json.loads(open(f).readline()) for f in sys.argv[1:4])
assert a["bits"] == b["bits"] == [2, 4, 8], (a, b)
assert b["loss"][0] > a["loss"][0] and b["loss"][1:] == a["loss"][1:], (a["loss"], b["loss"])
assert auto["loss"] == b["loss"], (auto["loss"], b["loss"])
PY
# Per-bit lists follow --bits as written: 8,4,2 with 0,0,1 is 2,4,8 with 1,0,0.
expect_ok "$zsq" "${q_pool[@]/#2,4,8/8,4,2}" --ce-weight 0,0,1 --out "$work/run-ce2"
"$py" - "$work/run-ce/metrics.jsonl" "$work/run-ce2/metrics.jsonl" <<'PY' && ok "--ce-weight follows the order of --bits" || bad "--ce-weight order"
import sys, json
a, b = (json.loads(open(f).readline()) for f in sys.argv[1:3])
assert a["bits"] == b["bits"] == [2, 4, 8], (a, b)
assert all(abs(x - y) <= 1e-5 * max(1, abs(x)) for x, y in zip(a["loss"], b["loss"])), (a["loss"], b["loss"])
PY
expect_fail 2 "--ce-weight needs one value or one per bit-width (3), got 2" "$zsq" "${q_pool[@]}" --ce-weight 1,0 \
  --out "$work/run-c"
expect_fail 2 "--ce-weight must be >= 0" "$zsq" "${q_pool[@]}" --ce-weight 1,-1,0 --out "$work/run-c"
expect_fail 2 "--feature-weight must be >= 0" "$zsq" "${q_pool[@]}" --feature-weight -1 --out "$work/run-c"
expect_fail 2 "--train must be 'all' or 'per-bit'" "$zsq" "${q_pool[@]}" --train some --out "$work/run-c"
expect_ok "$zsq" "${q_pool[@]}" --train per-bit --out "$work/run-p"
grep -q "BatchNorm re-estimated (center) at bits 2" "$work/out" &&
  ok "quantize re-estimates the 2-bit BatchNorm by default (--bn-reestimate auto: 3 bits or fewer, centred) and says so" ||
  bad "quantize default re-estimation: $(head -c 400 "$work/out")"
expect_ok "$zsq" "${q_pool[@]}" --train per-bit --bn-reestimate none --out "$work/run-bn0"
grep -q "BatchNorm re-estimated" "$work/out" && bad "re-estimation announced with --bn-reestimate none" ||
  ok "--bn-reestimate none: no re-estimation"
expect_ok "$zsq" "${q_pool[@]}" --train per-bit --bn-reestimate 2 --bn-mode shift --out "$work/run-bn"
grep -q "BatchNorm re-estimated (shift) at bits 2" "$work/out" && ok "quantize says it re-estimates BatchNorm" ||
  bad "quantize --bn-reestimate: $(head -c 400 "$work/out")"
expect_fail 2 "--bn-reestimate 3: not one of the model's bit-widths (2,4,8)" "$zsq" "${q_pool[@]}" --bn-reestimate 3 \
  --out "$work/run-c"
expect_fail 2 "--bn-reestimate" "$zsq" "${q_pool[@]}" --bn-reestimate all --stop-after 1 --resume --out "$work/run-b"
expect_ok "$zsq" "${q_pool[@]}" --train per-bit --bn-train 2 --out "$work/run-bt"
grep -q "BatchNorm on batch statistics at bits 2" "$work/out" && ok "quantize says which BatchNorms use batch statistics" ||
  bad "quantize --bn-train: $(head -c 400 "$work/out")"
only_bit_moved "$work/run-p/checkpoint.h5" "$work/run-bt/checkpoint.h5" 2 0 0 &&
  ok "--bn-train 2 updates only the 2-bit running statistics" || bad "--bn-train: wrong running statistics"
expect_fail 2 "--bn-train 3: not one of the model's bit-widths (2,4,8)" "$zsq" "${q_pool[@]}" --bn-train 3 --out "$work/run-c"
grep -q '"alpha"' "$work/run-m/metrics.jsonl" && ok "min-norm logs its weights" || bad "min-norm metrics"
# Online generation (gdfq generator alternating with the student): resume is bit-exact too.
q_online=(quantize --teacher "$work/teacher.h5" --recipe gdfq --generator-warmup 3 --bits 2,8 --steps 4 --batch-size 8
  --calib-count 8 --checkpoint-every 2 --eval-data none --threads 2)
expect_ok "$zsq" "${q_online[@]}" --out "$work/run-g"
grep -q "generator warm-up 3/3" "$work/out" && ok "online run warms the generator up" || bad "warm-up: $(head -c 300 "$work/out")"
# Mixed precision from the online run's checkpoint: sensitivity on its own generator's images, cached in the
# run folder, a budget between the uniform 2- and 8-bit sizes, the file evaluated; the clear errors.
expect_ok "$zsq" extract --checkpoint "$work/run-g/checkpoint.h5" --budget wbits=5 --images 32 --front "$work/front.csv" \
  --out "$work/mixed.h5" --json
grep -q "sensitivity of .* measured in" "$work/out" && [ -f "$work/run-g/sensitivity.h5" ] &&
  ok "mixed: sensitivity measured and cached" || bad "mixed: $(head -c 400 "$work/out")"
mean_wbits=$(tail -1 "$work/out" | sed -nE 's/.*"mean_wbits": ([0-9.]+).*/\1/p')
awk -v m="$mean_wbits" 'BEGIN {exit !(m > 2 && m <= 5)}' && [ "$(wc -l <"$work/front.csv")" -gt 2 ] &&
  ok "mixed: mean weight bits $mean_wbits within the budget; front written" || bad "mixed: mean bits '$mean_wbits'"
expect_ok "$zsq" extract --checkpoint "$work/run-g/checkpoint.h5" --budget wbits=5 --images 32 --out "$work/mixed2.h5"
grep -q "from the run folder's cache" "$work/out" && ok "mixed: second extraction reads the cache" ||
  bad "mixed cache: $(head -c 300 "$work/out")"
expect_ok "$zsq" extract --checkpoint "$work/run-g/checkpoint.h5" --budget wbits=5,bops=100G --images 32 \
  --out "$work/mixed3.h5" --json
mix_of() { "$zsq" eval --model "$1" --limit 10 | grep -o "mixed [0-9,/]*"; }
grep -q "from the run folder's cache" "$work/out" && [ -n "$(mix_of "$work/mixed3.h5")" ] &&
  [ "$(mix_of "$work/mixed3.h5")" = "$(mix_of "$work/mixed.h5")" ] &&
  ok "mixed: two budgets at once (a loose second one changes nothing)" || bad "mixed two budgets: $(head -c 300 "$work/out")"
expect_fail 2 "--budget: wbits is given twice" "$zsq" extract --checkpoint "$work/run-g/checkpoint.h5" \
  --budget wbits=5,wbits=4 --out "$work/x.h5"
expect_ok "$zsq" eval --model "$work/mixed.h5" --limit 200
grep -q "mixed " "$work/out" && ok "mixed model evaluates" || bad "mixed eval: $(head -c 300 "$work/out")"
expect_ok "$zsq" extract --checkpoint "$work/run-g/checkpoint.h5" --mix 2 --images 16 --out "$work/mixed-u2.h5"
expect_ok "$zsq" extract --checkpoint "$work/run-g/checkpoint.h5" --bits 2 --out "$work/fixed-u2.h5"
"$zsq" eval --model "$work/mixed-u2.h5" --limit 200 --json | tail -1 | sed -E 's/.*"top1": ([0-9.]+).*/\1/' >"$work/a"
"$zsq" eval --model "$work/fixed-u2.h5" --limit 200 --json | tail -1 | sed -E 's/.*"top1": ([0-9.]+).*/\1/' >"$work/b"
cmp -s "$work/a" "$work/b" && ok "mixed: --mix 2 is the uniform 2-bit model" || bad "mixed --mix 2: $(cat "$work/a") vs $(cat "$work/b")"
expect_fail 2 "--bits, --budget and --mix exclude each other" "$zsq" extract --checkpoint "$work/run-g/checkpoint.h5" \
  --bits 2 --budget wbits=3 --out "$work/x.h5"
expect_fail 2 "unit must be B, KB, MB, KiB or MiB" "$zsq" extract --checkpoint "$work/run-g/checkpoint.h5" \
  --budget size=3kb --out "$work/x.h5"
expect_fail 2 "--budget: no mix fits" "$zsq" extract --checkpoint "$work/run-g/checkpoint.h5" --budget wbits=1 \
  --images 16 --out "$work/x.h5"
expect_fail 2 "expected one of the model's bit-widths (2,8)" "$zsq" extract --checkpoint "$work/run-g/checkpoint.h5" \
  --mix 2,5 --out "$work/x.h5"
expect_fail 1 "holds no online generator" "$zsq" extract --checkpoint "$work/run/checkpoint.h5" --budget wbits=3 \
  --out "$work/x.h5"
expect_fail 2 "--front needs --budget" "$zsq" extract --checkpoint "$work/run-g/checkpoint.h5" --front "$work/f.csv" \
  --out "$work/x.h5"
[ ! -e "$work/x.h5" ] && ok "mixed: no output after an error" || bad "mixed: an output was written on error"
expect_ok "$zsq" "${q_online[@]}" --stop-after 1 --out "$work/run-g2"
expect_ok "$zsq" "${q_online[@]}" --resume --out "$work/run-g2"
same_checkpoints "$work/run-g/checkpoint.h5" "$work/run-g2/checkpoint.h5" && ok "resumed online run = uninterrupted run" ||
  bad "resumed online run differs"
# The generator's adversarial term against the student being quantized: logged, and resumed bit for bit.
expect_ok "$zsq" "${q_online[@]}" --gen-adversarial 1 --out "$work/run-ga"
grep -q "generator [0-9.]* (adversarial -[0-9.]*)" "$work/out" && grep -q '"generator_adversarial": -' "$work/run-ga/metrics.jsonl" &&
  ok "online adversarial term on the progress line and in the metrics" || bad "online adversarial: $(tail -c 400 "$work/out")"
expect_ok "$zsq" "${q_online[@]}" --gen-adversarial 1 --stop-after 1 --out "$work/run-ga2"
expect_ok "$zsq" "${q_online[@]}" --gen-adversarial 1 --resume --out "$work/run-ga2"
same_checkpoints "$work/run-ga/checkpoint.h5" "$work/run-ga2/checkpoint.h5" &&
  ok "resumed online adversarial run = uninterrupted run" || bad "resumed online adversarial run differs"
# A run killed in the middle of a checkpoint write keeps its previous checkpoint and leaves the write's
# temporary file (quantize_test kills one there); --resume removes that file and finishes the run.
rm -rf "$work/run-k"
expect_ok "$zsq" "${q_pool[@]}" --stop-after 2 --out "$work/run-k"
head -c 1000 /dev/urandom >"$work/run-k/.checkpoint.h5.tmp.999999"
expect_ok "$zsq" "${q_pool[@]}" --resume --out "$work/run-k"
grep -q "resumed from step 2" "$work/out" && ok "resumed from the checkpoint before the kill" || bad "run-k: $(cat "$work/out")"
ls "$work/run-k"/.checkpoint.h5.tmp.* >/dev/null 2>&1 && bad "stale temporary file left" || ok "stale temporary file removed"
same_checkpoints "$work/run/checkpoint.h5" "$work/run-k/checkpoint.h5" && ok "killed + resumed run = uninterrupted run" ||
  bad "killed + resumed run differs"
expect_ok "$zsq" generate --teacher "$work/teacher.h5" --recipe zeroq --iterations 5 --batch-size 8 --count 8 \
  --out "$work/zeroq.h5"
expect_ok "$zsq" generate --teacher "$work/teacher.h5" --recipe noise --count 8 --out "$work/noise.h5"
expect_ok "$zsq" generate --teacher "$work/teacher.h5" --recipe dsg --iterations 3 --batch-size 8 --count 8 --out "$work/dsg.h5"
grep -q "margin 0.1.*layerwise sample enhancement" "$work/out" && ok "dsg parts listed" || bad "dsg: $(head -c 300 "$work/out")"
expect_fail 2 "use --bns zeroq" "$zsq" generate --teacher "$work/teacher.h5" --recipe gdfq --layerwise on
expect_ok "$zsq" generate --teacher "$work/teacher.h5" --recipe genie --iterations 3 --batch-size 8 --count 8 \
  --latent-dim 16 --out "$work/genie.h5"
expect_ok "$zsq" generate --teacher "$work/teacher.h5" --recipe qimera --superpose-prob 1 --mapping on --iterations 2 \
  --batch-size 8 --count 8 --out "$work/qimera.h5"
expect_fail 2 "need the class-conditional generator" "$zsq" generate --teacher "$work/teacher.h5" --recipe zeroq \
  --superpose-prob 0.5
expect_ok "$zsq" generate --teacher "$work/teacher.h5" --recipe intraq --iterations 3 --batch-size 8 --count 16 \
  --out "$work/intraq.h5"
grep -q "soft inception U(0.95, 1), marginal distance \[0.05, 0.8\]" "$work/out" && ok "intraq parts listed" ||
  bad "intraq parts: $(head -c 300 "$work/out")"
expect_ok "$zsq" generate --teacher "$work/teacher.h5" --recipe adversarial --iterations 2 --batch-size 8 --count 20 \
  --latent-dim 16 --student-steps 1 --out "$work/adversarial.h5" --json
grep -q "adversarial×1 (proxy student, 1 steps per step, a batch every 1 steps)" "$work/out" && grep -q "^batch step 3/3 .* adv " "$work/out" &&
  [ "$(json_field "$work/out" images)" = 20 ] && ok "adversarial pool: parts listed, one training step per batch" ||
  bad "adversarial: $(head -c 600 "$work/out")"
expect_fail 2 "--stride must be >= 1" "$zsq" generate --teacher "$work/teacher.h5" --recipe adversarial --stride -1
expect_fail 2 "--mixup must be >= 0" "$zsq" train-teacher --arch resnet8 --width 8 --epochs 1 --batch-size 16 \
  --data "$work/synth.h5" --test-data fashion-mnist --distill-from "$work/teacher.h5" --mixup -1
expect_fail 2 "--adversarial must be >= 0" "$zsq" generate --teacher "$work/teacher.h5" --recipe adversarial --adversarial -2
expect_fail 2 "--student-steps must be >= 1" "$zsq" generate --teacher "$work/teacher.h5" --recipe adversarial --student-steps -1
expect_fail 2 "the adversarial term needs a trained generator" "$zsq" generate --teacher "$work/teacher.h5" --recipe zeroq \
  --adversarial 1
expect_fail 2 "are for the proxy student of a pool" "$zsq" quantize --teacher "$work/teacher.h5" \
  --recipe adversarial --gen-stride 2 --out "$work/run-adv"
[ -e "$work/run-adv" ] && bad "refused quantize created its folder" || ok "refused --gen-stride online wrote nothing"

# --- zero-shot post-training quantization: zsq ptq --------------------------------
ptq=(ptq --teacher "$work/teacher.h5" --batch-size 16 --gen-iterations 3 --threads 1)
expect_fail 2 "--teacher is required" "$zsq" ptq
# The shipped recipe parses (every key is an option of ptq); the missing teacher is what stops it.
expect_fail 1 "file not found: '$work/none.h5'" "$zsq" ptq --config "$(dirname "$0")/../../launch/configs/ptq-r20.ini" \
  --teacher "$work/none.h5" --out "$work/ptq-none"
expect_fail 2 "--abits needs one value per --bits entry (2), got 1" "$zsq" "${ptq[@]}" --bits 4,2 --abits 4
expect_fail 2 "--images (8) must be at least --batch-size (16)" "$zsq" "${ptq[@]}" --images 8
expect_fail 2 "ptq: drop probability must be in [0, 1), got 1" "$zsq" "${ptq[@]}" --drop 1
expect_fail 2 "ptq: iterations must be >= 1, got 0" "$zsq" "${ptq[@]}" --iterations 0
expect_fail 2 "--border must be 'on' or 'off'" "$zsq" "${ptq[@]}" --border yes
expect_fail 2 "--input-range must be 'pixel' or 'calibrated', got 'x'" "$zsq" "${ptq[@]}" --input-range x
expect_fail 2 "--clamp-pixels must be 'on' or 'off'" "$zsq" "${ptq[@]}" --clamp-pixels maybe
expect_fail 2 "unknown recipe" "$zsq" "${ptq[@]}" --recipe nope --out "$work/ptq-bad"
expect_fail 2 "--pool has" "$zsq" "${ptq[@]}" --pool "$work/synth.h5" --images 100000 --out "$work/ptq-bad"
touch "$work/ptq-file"
expect_fail 2 "is a file, not a folder" "$zsq" "${ptq[@]}" --out "$work/ptq-file"
expect_fail 1 "does not exist" "$zsq" "${ptq[@]}" --out "$work/no/dir/ptq"
[ ! -e "$work/ptq-bad" ] && ok "a refused ptq writes nothing" || bad "a refused ptq left $work/ptq-bad"
expect_ok "$zsq" "${ptq[@]}" --images 64 --iterations 4 --bits 4,2 --abits 4,4 --pd-weight 10 --border on --out "$work/ptq" --json
grep -q "unit 2/5 layer1.0  error" "$work/out" && ok "ptq reports each unit" || bad "ptq progress: $(cat "$work/out")"
ptq_top1="$(json_field "$work/out" w2a4_top1)"
expect_ok "$zsq" eval --model "$work/ptq/w2a4.h5" --json
[ "$(json_field "$work/out" top1)" = "$ptq_top1" ] && ok "ptq's w2a4.h5 evaluates to the top-1 ptq printed" ||
  bad "ptq top-1 $ptq_top1, eval $(json_field "$work/out" top1)"
"$py" -c "import h5py,sys; f=h5py.File(sys.argv[1]); assert f.attrs['input_border'] == 1 and 'layer1.0.conv1.act_border' in f" \
  "$work/ptq/w2a4.h5" && ok "a --border model stores its borders" || bad "ptq --border: no borders in the file"
python_dir="$(cd "$(dirname "$0")/../../python" && pwd)"
expect_fail 1 "AQuant rounding borders (zsq ptq --border) are not exported to ONNX yet" \
  env PYTHONPATH="$python_dir" "$py" -m zsq.export --model "$work/ptq/w2a4.h5" --out "$work/ptq/w2a4.onnx"
# The Python package applies the borders as the binary does: the same logits.
expect_ok "$zsq" eval --model "$work/ptq/w2a4.h5" --limit 200 --save-logits "$work/ptq-logits.h5"
PYTHONPATH="$python_dir" "$py" - "$work/ptq/w2a4.h5" "$work/ptq-logits.h5" <<'PY' &&
import sys, h5py, numpy as np, torch, zsq
model = zsq.load_extracted(sys.argv[1])
images, _ = zsq.load_fashion_mnist("test", limit=200)
with torch.no_grad():
    ours = model(zsq.preprocess(images[:200], model)).numpy()
with h5py.File(sys.argv[2], "r") as f:
    theirs = f["logits"][()]
assert np.abs(ours - theirs).max() < 1e-4, np.abs(ours - theirs).max()
PY
  ok "Python's integer model with borders gives zsq eval's logits" || bad "Python logits differ for a --border model"
expect_ok "$zsq" ptq --teacher "$work/teacher.h5" --pool "$work/synth.h5" --images 32 --iterations 2 --batch-size 16 \
  --eval-data none --threads 1 --out "$work/ptq-pool"
[ -f "$work/ptq-pool/w4a4.h5" ] && [ -f "$work/ptq-pool/result.json" ] && ok "ptq on a pool writes w4a4.h5" ||
  bad "ptq on a pool: $(ls "$work/ptq-pool")"

# --- mpirun works as root ----------------------------------------------------
if [ -n "$mpirun_bin" ]; then
  expect_ok "$mpirun_bin" --oversubscribe -np 2 "$zsq" inspect "$work/teacher.h5"
  # Data parallel over two processes; every rank checks it holds rank 0's model after each epoch.
  expect_ok "$mpirun_bin" --oversubscribe -np 2 "$zsq" train-teacher --arch resnet8 --width 8 --epochs 1 --threads 1 \
    --train-limit 1024 --batch-size 64 --check-replicas --out "$work/mpi.h5" --json
  grep -q "2 processes (data parallel)" "$work/err" && ok "train-teacher says it runs data parallel" ||
    bad "no data-parallel line: $(head -c 300 "$work/err")"
  [ "$(grep -c '^epoch 1/1' "$work/out")" = 1 ] && ok "only rank 0 prints progress" || bad "progress lines: $(cat "$work/out")"
  expect_ok "$zsq" eval --model "$work/mpi.h5" --limit 500
  expect_fail 2 "--batch-size 63 must be a multiple of the 2 processes" "$mpirun_bin" --oversubscribe -np 2 "$zsq" \
    train-teacher "${tiny[@]}" --train-limit 1024 --batch-size 63 --out "$work/mpi2.h5"
  grep -q "\[rank 0/2\]" "$work/err" && ok "errors under mpirun name the rank" || bad "no rank in: $(head -c 300 "$work/err")"
  expect_ok "$mpirun_bin" --oversubscribe -np 2 "$zsq" generate --teacher "$work/teacher.h5" --recipe gdfq --threads 1 \
    --iterations 2 --batch-size 8 --count 30 --out "$work/synth2.h5"
  grep -q "2 processes" "$work/out" && ok "generate runs on two processes" || bad "generate under mpirun: $(cat "$work/out")"
  expect_ok "$zsq" inspect "$work/synth2.h5"
  grep -q "images: 30 of shape" "$work/out" && ok "two processes wrote one pool of 30" || bad "synth2.h5: $(cat "$work/out")"
  # The main job on two processes: pool and online generation, stop and resume bit-exact.
  # --bn-train 2: the 2-bit BatchNorms' running statistics are averaged over the ranks after each step.
  q_mpi=(quantize --teacher "$work/teacher.h5" --pool "$work/synth.h5" --bits 2,8 --steps 4 --batch-size 16
    --calib-count 16 --checkpoint-every 2 --eval-data none --threads 1 --bn-train 2)
  expect_ok "$mpirun_bin" --oversubscribe -np 2 "$zsq" "${q_mpi[@]}" --out "$work/mrun"
  grep -q "2 processes" "$work/out" && ok "quantize runs on two processes" || bad "quantize under mpirun: $(cat "$work/out")"
  expect_ok "$mpirun_bin" --oversubscribe -np 2 "$zsq" "${q_mpi[@]}" --stop-after 1 --out "$work/mrun2"
  expect_ok "$mpirun_bin" --oversubscribe -np 2 "$zsq" "${q_mpi[@]}" --resume --out "$work/mrun2"
  same_checkpoints "$work/mrun/checkpoint.h5" "$work/mrun2/checkpoint.h5" && ok "two-process resume = uninterrupted" ||
    bad "two-process resume differs"
  # Another number of processes continues a run (re-sharded, not bit for bit).
  expect_ok "$mpirun_bin" --oversubscribe -np 2 "$zsq" "${q_mpi[@]}" --stop-after 1 --out "$work/mrun6"
  expect_ok "$zsq" "${q_mpi[@]}" --resume --out "$work/mrun6"
  grep -q "resuming a checkpoint of 2 process(es) on 1" "$work/out" && grep -q "resumed from step 1" "$work/out" &&
    "$py" -c "import h5py,sys; f=h5py.File(sys.argv[1]); assert f.attrs['train_step'] == 4 and f.attrs['train_world_size'] == 1" \
      "$work/mrun6/checkpoint.h5" && ok "a two-process checkpoint resumes on one process" ||
    bad "resume at another world size: $(cat "$work/out")"
  expect_ok "$mpirun_bin" --oversubscribe -np 2 "$zsq" "${q_mpi[@]}" --weighting normalized --out "$work/mrun5"
  q_mpi_online=(quantize --teacher "$work/teacher.h5" --recipe gdfq --generator-warmup 2 --bits 2,8 --steps 4
    --batch-size 16 --calib-count 8 --checkpoint-every 2 --eval-data none --threads 1 --weighting min-norm)
  expect_ok "$mpirun_bin" --oversubscribe -np 2 "$zsq" "${q_mpi_online[@]}" --out "$work/mrun3"
  expect_ok "$mpirun_bin" --oversubscribe -np 2 "$zsq" "${q_mpi_online[@]}" --stop-after 1 --out "$work/mrun4"
  expect_ok "$mpirun_bin" --oversubscribe -np 2 "$zsq" "${q_mpi_online[@]}" --resume --out "$work/mrun4"
  same_checkpoints "$work/mrun3/checkpoint.h5" "$work/mrun4/checkpoint.h5" &&
    ok "two-process online resume = uninterrupted" || bad "two-process online resume differs"
  expect_ok "$zsq" "${q_mpi_online[@]}" --stop-after 1 --out "$work/mrun7"
  expect_ok "$mpirun_bin" --oversubscribe -np 2 "$zsq" "${q_mpi_online[@]}" --resume --out "$work/mrun7"
  grep -q "resuming a checkpoint of 1 process(es) on 2" "$work/out" &&
    ok "a one-process online checkpoint resumes on two processes" || bad "online resume 1 -> 2: $(cat "$work/out")"
  expect_fail 2 "zsq ptq runs in one process; start it without mpirun" \
    "$mpirun_bin" --oversubscribe -np 2 "$zsq" ptq --teacher "$work/teacher.h5" --out "$work/ptq-mpi"
  "$py" -c "import h5py,sys; f=h5py.File(sys.argv[1]); assert 'train/rng/rank0' in f and 'train/rng/rank1' in f" \
    "$work/mrun3/checkpoint.h5" && ok "checkpoint holds every rank's random state" || bad "rng states missing"
fi

echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

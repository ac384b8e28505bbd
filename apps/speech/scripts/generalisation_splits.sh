#!/usr/bin/env bash
# Issue 25's speech corpus: a training split spoken by many voices, a dev
# split by the same voices (in-voice), and a dev split by voices the
# training set never uses, with words outside its vocabulary (unseen-voice).
#
#   apps/speech/scripts/generalisation_splits.sh OUT [TRAIN_UTTERANCES] [DEV_UTTERANCES]
#
# Needs python3, espeak-ng, sox and flac (`apt-get install espeak-ng sox
# flac`) and ../shared/data/synth_speech.py (SYNTH=path to override).
# Defaults: 12000 training utterances, 300 per dev split. Writes
# OUT/{train-clean,dev-clean,dev-unseen} and OUT/lm-train.trans.txt (the training
# transcripts, for `kiln speech lm`).
set -euo pipefail
out=${1:?usage: generalisation_splits.sh OUT [TRAIN_UTTERANCES] [DEV_UTTERANCES]}
train_n=${2:-12000}
dev_n=${3:-300}
here="$(cd "$(dirname "$0")" && pwd)"
synth=${SYNTH:-$here/../../../../shared/data/synth_speech.py}
[ -f "$synth" ] || { echo "synth_speech.py not found at $synth (set SYNTH)" >&2; exit 2; }
for tool in python3 espeak-ng sox flac; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install espeak-ng sox flac" >&2; exit 2; }
done
jobs=$(nproc)
# Unseen voices: accents and variants the training set never uses.
unseen_voices="en-gb-scotland,en-029,en-us-nyc,en-gb-scotland+Andy,en-029+Annie,en-us-nyc+Steph,en-us+m7,en-gb+f5,en+Alicia,en-us+Quincy,en-gb-x-rp+Denis,en+klatt4"
# Training voices: six accents, each plain and with every espeak-ng variant
# that speaks intelligibly, except the unseen voices' variants and their
# siblings (Andy/AnxiousAndy, Annie, steph/steph2/steph3, m7, f5, Alicia,
# quincy, Denis, klatt4).
variants="adam Alex Andrea antonio aunty belinda benjamin boris caleb david Diogo ed edward edward2 Gene Gene2 gustave Henrique Hugo iven iven2 iven3 iven4 Jacky john kaukovalta Lee linda marcelo Marco Mario max Michael michel miguel Mike Nguyen pablo paul pedro rob robert Storm Tweaky zac anika f1 f2 f3 f4 grandma grandpa klatt klatt2 klatt3 klatt5 klatt6 m1 m2 m3 m4 m5 m6 m8 norbert sandro shelby travis victor"
train_voices=""
for accent in en-us en-gb en-gb-x-rp en-gb-x-gbclan en-gb-x-gbcwmd en; do
    train_voices+="$accent,"
    for variant in $variants; do
        train_voices+="$accent+$variant,"
    done
done
train_voices=${train_voices%,}
# The unseen split first, so that its speaker ids do not depend on the others.
python3 "$synth" --out "$out" --split dev-unseen --utterances "$dev_n" --seed 27 \
    --speakers "$unseen_voices" --speed 110,210 --pitch 20,80 \
    --extra-words "$here/unseen_words.txt" --jobs "$jobs"
# Training and in-voice dev: a wider rate and pitch spread, and more words
# (train_words.txt, none of them in unseen_words.txt).
python3 "$synth" --out "$out" --split train-clean --utterances "$train_n" --seed 25 \
    --speakers "$train_voices" --speed 100,230 --pitch 10,90 \
    --extra-words "$here/train_words.txt" --extra-rate 0.5 --jobs "$jobs"
python3 "$synth" --out "$out" --split dev-clean --utterances "$dev_n" --seed 26 \
    --speakers "$train_voices" --speed 100,230 --pitch 10,90 \
    --extra-words "$here/train_words.txt" --extra-rate 0.5 --jobs "$jobs"
cat "$out"/train-clean/*/*/*.trans.txt > "$out/lm-train.trans.txt"
echo "wrote $out/{train-clean,dev-clean,dev-unseen} and $out/lm-train.trans.txt"

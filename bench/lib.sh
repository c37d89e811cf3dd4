# Shared by the bench scripts (source it). A script that measures something
# the performance issue sets an aim for calls `summary` once per row; when
# bench/run.sh runs it (WARD_BENCH_SUMMARY set to a file) the rows are
# collected into its one summary table, otherwise they are printed at once.
#
#   summary WORK WARD PEER RATIO AIM MET
#
# RATIO reads "ward ahead" when > 1 (peer time ÷ ward time, ward rate ÷
# peer rate); MET is yes, no or "-" (nothing to compare, said in PEER).

summary() {
  if [ -n "${WARD_BENCH_SUMMARY:-}" ]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" >>"$WARD_BENCH_SUMMARY"
  else
    printf 'summary: %s | %s | %s | %s | %s | %s\n' "$1" "$2" "$3" "$4" "$5" "$6"
  fi
}

# ratio A B -> A/B with two decimals and an x ("-" when either is empty or B is 0).
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2fx\n", a / b }'
}

# met VALUE OP BOUND -> yes/no (OP is >= or <=; "-" when VALUE is empty or "-").
met() {
  awk -v v="$1" -v op="$2" -v b="$3" 'BEGIN {
    sub(/x$/, "", v)
    if (v == "" || v == "-") { print "-"; exit }
    if (op == ">=") print (v + 0 >= b + 0) ? "yes" : "no"; else print (v + 0 <= b + 0) ? "yes" : "no" }'
}

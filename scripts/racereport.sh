#!/usr/bin/env bash
# Prints again the data race reports found in go test output (the files
# given, or stdin): one line per report (the test and package that saw it,
# where each side accessed), then the first report in full, last. A race
# report is long and CI keeps only the tail of a run's output, which used
# to hold only the end of a report (the last "created at" stack): printed
# at the very end of scripts/test.sh, the tail shows both accesses and
# both goroutines. Prints nothing when there is no report.
# Usage: scripts/racereport.sh LOG... (scripts/test.sh calls it).
set -euo pipefail
awk -v max_lines=120 '
  /^WARNING: DATA RACE$/ {
    nrep++; inrace = 1; nl[nrep] = 0; side = 0
    add(nrep, "==================")
    add(nrep, $0)
    next
  }
  inrace {
    add(nrep, $0)
    if ($0 ~ /^==================$/) { inrace = 0; open_test[nrep] = 1; open_pkg[nrep] = 1; next }
    # The accesses: "Read at 0x... by goroutine N:", "Previous write at ...".
    if ($0 ~ /^(Previous )?(atomic )?(read|write|Read|Write) at 0x[0-9a-f]+ by /) {
      side++; what[nrep, side] = $0; sub(/ at 0x.*/, "", what[nrep, side]); need[nrep, side] = 2
      next
    }
    if ($0 ~ /^Goroutine [0-9]+ /) { side = 99; next }
    if (side >= 1 && side <= 2 && need[nrep, side] == 2 && $0 ~ /^  [^ ]/) {
      fn = $0; sub(/^ +/, "", fn); sub(/\(\)$/, "", fn); n = split(fn, parts, "/"); fn = parts[n]
      where[nrep, side] = fn; need[nrep, side] = 1; next
    }
    if (side >= 1 && side <= 2 && need[nrep, side] == 1 && $0 ~ /^      [^ ]/) {
      loc = $0; sub(/^ +/, "", loc); sub(/ \+0x[0-9a-f]+$/, "", loc); n = split(loc, parts, "/")
      where[nrep, side] = where[nrep, side] " (" parts[n] ")"; need[nrep, side] = 0
    }
    next
  }
  # After a report: the test it failed and its package (go test prints a
  # package output whole, then "FAIL <package> <time>").
  /^ *--- FAIL: / {
    for (i = 1; i <= nrep; i++) if (open_test[i]) { t = $3; test[i] = t; open_test[i] = 0 }
  }
  /^FAIL\t/ {
    for (i = 1; i <= nrep; i++) if (open_pkg[i]) { pkg[i] = $2; open_pkg[i] = 0; open_test[i] = 0 }
  }
  function add(r, line) { if (nl[r] < max_lines) { nl[r]++; body[r, nl[r]] = line } else if (nl[r] == max_lines) { nl[r]++; body[r, nl[r]] = "  ... (cut here: the whole report is above)" } }
  END {
    if (nrep == 0) exit 0
    printf "==> data races: %d report(s), each also above in the go test output\n", nrep
    for (i = 1; i <= nrep && i <= 20; i++) {
      printf "race %d: %s in %s: %s %s, %s %s\n", i, (test[i] != "" ? test[i] : "?"), (pkg[i] != "" ? pkg[i] : "?"),
        what[i, 1], where[i, 1], what[i, 2], where[i, 2]
    }
    if (nrep > 20) printf "... and %d more\n", nrep - 20
    printf "race 1 in full (%s in %s):\n", (test[1] != "" ? test[1] : "?"), (pkg[1] != "" ? pkg[1] : "?")
    for (j = 1; j <= nl[1]; j++) print body[1, j]
  }
' "$@"

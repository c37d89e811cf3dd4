package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

// The versioned documents of the authority (policy, posture) are listed and
// named by version the same way.

// versionArg parses a VERSION argument: a positive number, as listed by
// the command lister (e.g. "ward policy list").
func versionArg(arg, lister string) (uint64, error) {
	n, err := strconv.ParseUint(arg, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("version %q is not a positive number: give a version number from %s", arg, lister)
	}
	return n, nil
}

// versionTable lists versions, one a row: number, the current one marked
// "*", created, actor, then the document's own columns.
type versionTable struct{ tw *tabwriter.Writer }

func newVersionTable(w io.Writer, columns ...string) *versionTable {
	t := &versionTable{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	fmt.Fprintln(t.tw, strings.Join(append([]string{"VERSION", "CURRENT", "CREATED", "ACTOR"}, columns...), "\t"))
	return t
}

func (t *versionTable) row(number uint64, current bool, created *timestamppb.Timestamp, actor string, columns ...any) {
	cur := ""
	if current {
		cur = "*"
	}
	fmt.Fprintf(t.tw, "%d\t%s\t%s\t%s", number, cur, created.AsTime().UTC().Format(time.RFC3339), actor)
	for _, c := range columns {
		fmt.Fprintf(t.tw, "\t%v", c)
	}
	fmt.Fprintln(t.tw)
}

func (t *versionTable) flush() error { return t.tw.Flush() }

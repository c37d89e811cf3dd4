package cli

import (
	"fmt"
	"io"
	"os"
	"time"
)

// counter prints a live "n/total" line on a terminal, at most ten times a
// second, and nothing at all when w is not a terminal.
type counter struct {
	w     io.Writer
	label string
	total uint64
	n     uint64
	last  time.Time
	on    bool
}

func newCounter(w io.Writer, label string, total uint64) *counter {
	f, ok := w.(*os.File)
	return &counter{w: w, label: label, total: total, on: ok && isTerminal(f)}
}

func (c *counter) add(d uint64) {
	c.n += d
	if !c.on || time.Since(c.last) < 100*time.Millisecond {
		return
	}
	c.last = time.Now()
	c.print()
}

func (c *counter) print() {
	if c.total > 0 {
		fmt.Fprintf(c.w, "\r%s: %d/%d (%.0f%%)", c.label, c.n, c.total, 100*float64(c.n)/float64(c.total))
	} else {
		fmt.Fprintf(c.w, "\r%s: %d", c.label, c.n)
	}
}

func (c *counter) done() {
	if c.on {
		c.print()
		fmt.Fprintln(c.w)
	}
}

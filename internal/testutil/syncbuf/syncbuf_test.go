package syncbuf

import (
	"fmt"
	"sync"
	"testing"
)

func TestConcurrentWriters(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 50 {
				fmt.Fprintf(&b, "w%d-%d\n", i, j)
				_ = b.String()
			}
		}()
	}
	wg.Wait()
	if n := len(b.Lines()); n != 400 {
		t.Fatalf("%d lines, want 400", n)
	}
	if !b.Contains("w7-49\n") {
		t.Fatal("a line is missing")
	}
	b.Reset()
	if b.String() != "" || b.Lines() != nil {
		t.Fatalf("after Reset: %q", b.String())
	}
}

func TestJSONLines(t *testing.T) {
	var b Buffer
	b.Write([]byte("{\"a\":1}\nnot json\n{\"b\":\"x\"}\n"))
	got := b.JSONLines()
	if len(got) != 2 || got[0]["a"] != float64(1) || got[1]["b"] != "x" {
		t.Fatalf("JSONLines = %v", got)
	}
}

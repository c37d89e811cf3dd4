package registry

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/testutil/benchcpu"
)

// BenchmarkRecordIssued measures recording the SVIDs signed through an
// agent serving 1,000 entries, each already holding 3 unexpired SVIDs
// (the current one, the next, one from a restart): "batch" records one
// new SVID per entry in one call (an agent starting), "one" records a
// single SVID (a rotation; entries rotate one by one). Compare with
// ca.BenchmarkSignX509SVID: one signing per recorded SVID.
func BenchmarkRecordIssued(b *testing.B) {
	const entries = 1000
	for _, batch := range []int{entries, 1} {
		name := "batch=1000"
		if batch == 1 {
			name = "one"
		}
		b.Run(name, func(b *testing.B) {
			f := newFixture(b)
			ctx := context.Background()
			agent := spiffeid.RequireFromString("spiffe://example.org/ward/agent/bench")
			serial := 0
			item := func(e int, ttl time.Duration) Issued {
				serial++
				return Issued{Entry: fmt.Sprintf("%032x", e), Serial: fmt.Sprintf("%032x", serial), NotAfter: f.clk.Now().Add(ttl)}
			}
			for range 3 {
				items := make([]Issued, entries)
				for e := range items {
					items[e] = item(e, time.Hour)
				}
				if _, err := f.reg.RecordIssued(ctx, agent, items, false); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			t0 := benchcpu.Process(b)
			for i := range b.N {
				items := make([]Issued, batch)
				for j := range items {
					items[j] = item((i*batch+j)%entries, time.Second) // expired by the next round
				}
				perItem, err := f.reg.RecordIssued(ctx, agent, items, false)
				if err != nil || perItem[0] != nil {
					b.Fatal(err, perItem[0])
				}
				f.advance(2 * time.Second)
			}
			b.ReportMetric(float64((benchcpu.Process(b)-t0).Microseconds())/float64(b.N*batch), "cpu-µs/svid")
		})
	}
}

package anomaly

import (
	"testing"
	"time"
)

// BenchmarkObserve scores synthetic normal traffic (300 callers, 400 keys)
// and reports events scored per second.
func BenchmarkObserve(b *testing.B) {
	syn := newSynthetic(7, 300, 400)
	var events []Event
	var buf []Event
	for m := 0; len(events) < 500000; m++ {
		buf = syn.minute(day0.Add(time.Duration(m)*time.Minute), buf)
		events = append(events, buf...)
	}
	d, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		d.Observe(events[i%len(events)])
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

package anomaly

import (
	"context"
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

// BenchmarkSubmitRun is the path of a committed event: Submit (what the
// audit path pays) with Run scoring on its own goroutine; it reports the
// events scored per second and the share dropped when the producer
// outruns the scorer.
func BenchmarkSubmitRun(b *testing.B) {
	syn := newSynthetic(7, 300, 400)
	var events []Event
	var buf []Event
	for m := 0; len(events) < 200000; m++ {
		buf = syn.minute(day0.Add(time.Duration(m)*time.Minute), buf)
		events = append(events, buf...)
	}
	d, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		d.Submit(events[i%len(events)])
	}
	for len(d.queue) > 0 {
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	dropped := counterValue(b, d.m.dropped)
	b.ReportMetric((float64(b.N)-dropped)/el.Seconds(), "scored/s")
	b.ReportMetric(dropped/float64(b.N), "dropped/op")
}

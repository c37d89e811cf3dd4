package anomaly

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

var day0 = time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)

// TestNormalDayThenAttacks replays a seeded day of normal traffic (many
// callers and keys, virtual clock) and requires no alert, then checks that
// an exfiltration-like decrypt burst, a new caller on a restricted key, a
// denial spike and a key used from a new trust domain are each flagged
// within seconds of virtual time.
func TestNormalDayThenAttacks(t *testing.T) {
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	syn := newSynthetic(42, 300, 400)
	var buf []Event
	events, falsePositives := 0, 0
	for m := 0; m < 24*60; m++ {
		buf = syn.minute(day0.Add(time.Duration(m)*time.Minute), buf)
		for _, ev := range buf {
			events++
			for _, a := range d.Observe(ev) {
				falsePositives++
				if falsePositives <= 10 {
					t.Errorf("false positive at %s: %+v", a.Time.Format(time.TimeOnly), a)
				}
			}
		}
	}
	t.Logf("normal day: %d events, %d streams, %d false positives", events, len(syn.streams), falsePositives)
	if falsePositives != 0 {
		t.Fatalf("%d false positives over the normal day", falsePositives)
	}

	// The attacks follow the day, each at a known virtual time; normal
	// traffic keeps flowing around them.
	start := day0.Add(24*time.Hour + 30*time.Second)
	victim := syn.streams[0] // the busiest decrypt stream: the highest baseline to beat
	for _, st := range syn.streams {
		if st.op == "kms.decrypt" && st.rate > victim.rate {
			victim = st
		}
	}
	restricted := ""
	for _, st := range syn.streams {
		if syn.class[st.key] == "restricted" {
			restricted = st.key
			break
		}
	}
	if restricted == "" {
		t.Fatal("the synthetic model has no restricted key")
	}
	intruder := "spiffe://prod.example/ns/tools/sa/debug"
	foreign := "spiffe://unknown.example/ns/x/sa/y"
	var attack []Event
	for i := 0; i < 60*200; i++ { // 200 decrypts/s for a minute
		attack = append(attack, Event{Time: start.Add(time.Duration(i) * 5 * time.Millisecond), Actor: victim.caller, Operation: "kms.decrypt",
			Key: victim.key, Classification: syn.class[victim.key], Result: "ok"})
	}
	t2 := start.Add(2 * time.Minute)
	attack = append(attack, Event{Time: t2, Actor: intruder, Operation: "kms.decrypt", Key: restricted, Classification: "restricted", Result: "ok"})
	t3 := start.Add(3 * time.Minute)
	for i := 0; i < 100; i++ { // 10 denials/s
		attack = append(attack, Event{Time: t3.Add(time.Duration(i) * 100 * time.Millisecond), Actor: syn.streams[2].caller, Operation: "kms.decrypt",
			Key: syn.streams[2].key, Classification: syn.class[syn.streams[2].key], Result: "denied"})
	}
	t4 := start.Add(4 * time.Minute)
	attack = append(attack, Event{Time: t4, Actor: foreign, Operation: "kms.encrypt", Key: syn.streams[4].key, Classification: syn.class[syn.streams[4].key], Result: "ok"})

	// Merge the attack into 6 minutes of normal traffic.
	var stream []Event
	for m := 0; m < 6; m++ {
		stream = append(stream, syn.minute(start.Add(time.Duration(m)*time.Minute), buf)...)
	}
	stream = mergeByTime(stream, attack)
	type want struct {
		kind, caller, key string
		began             time.Time
	}
	wants := []want{
		{KindDecryptBurst, victim.caller, victim.key, start},
		{KindRestrictedFirstUse, intruder, restricted, t2},
		{KindDenialSpike, syn.streams[2].caller, syn.streams[2].key, t3},
		{KindNewTrustDomain, foreign, syn.streams[4].key, t4},
	}
	attackers := map[string]bool{victim.caller: true, intruder: true, syn.streams[2].caller: true, foreign: true}
	var alerts []Alert
	for _, ev := range stream {
		for _, a := range d.Observe(ev) {
			alerts = append(alerts, a)
			if !attackers[a.Caller] {
				t.Errorf("alert on a normal caller during the attacks: %+v", a)
			}
		}
	}
	for _, w := range wants {
		found := false
		for _, a := range alerts {
			if a.Kind == w.kind && a.Caller == w.caller && a.Key == w.key {
				found = true
				lag := a.Time.Sub(w.began)
				t.Logf("%s flagged %v (virtual) after it began: %s on %s, observed %.0f, threshold %.0f", w.kind, lag, a.Caller, a.Key, a.Observed, a.Threshold)
				if lag < 0 || lag > 5*time.Second {
					t.Errorf("%s flagged %v after it began, want within 5s", w.kind, lag)
				}
				break
			}
		}
		if !found {
			t.Errorf("%s by %s on %s not flagged; alerts: %+v", w.kind, w.caller, w.key, alerts)
		}
	}
	t.Logf("%d alerts during the attack window (one per kind, caller and key; a new caller from a new trust domain on a restricted key is both)", len(alerts))
	if len(alerts) > 8 {
		t.Errorf("%d alerts for 4 attacks: the cooldown should hold one per kind, caller and key", len(alerts))
	}
	if got := d.List(0); len(got) != len(alerts) || got[0] != alerts[len(alerts)-1] {
		t.Errorf("List: %d alerts, newest %+v", len(got), got)
	}
}

func mergeByTime(a, b []Event) []Event {
	out := make([]Event, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		if j == len(b) || (i < len(a) && a[i].Time.Before(b[j].Time)) {
			out = append(out, a[i])
			i++
		} else {
			out = append(out, b[j])
			j++
		}
	}
	return out
}

func TestLearningAndPriming(t *testing.T) {
	d, _ := New(Config{LearningPeriod: time.Hour})
	ev := Event{Time: day0, Actor: "spiffe://a/x", Operation: "kms.decrypt", Key: "k", Classification: "restricted", Result: "ok"}
	if a := d.Observe(ev); len(a) != 0 {
		t.Fatalf("alert while learning: %+v", a)
	}
	ev.Actor, ev.Time = "spiffe://a/y", day0.Add(2*time.Hour)
	d.Prime(ev)
	if a := d.Observe(ev); len(a) != 0 {
		t.Fatalf("primed pair alerted: %+v", a)
	}
	ev.Actor = "spiffe://a/z"
	if a := d.Observe(ev); len(a) != 1 || a[0].Kind != KindRestrictedFirstUse {
		t.Fatalf("new caller on a restricted key: %+v", a)
	}
	// own alerts are not scored
	if a := d.Observe(Event{Time: ev.Time, Actor: "system:anomaly", Operation: Operation, Key: "k2", Classification: "restricted", Result: "ok"}); a != nil {
		t.Fatalf("scored its own alert: %+v", a)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{Alpha: 1.5}, "anomaly.alpha"},
		{Config{Sigma: 0.5}, "anomaly.sigma"},
		{Config{Factor: 0.5}, "anomaly.factor"},
		{Config{LearningPeriod: -time.Second}, "anomaly.learning_period"},
		{Config{WebhookURL: "ftp://x"}, "anomaly.webhook_url"},
		{Config{WebhookURL: "https://user:pw@hooks.example/x"}, "credentials"},
		{Config{WebhookTimeout: time.Hour}, "anomaly.webhook_timeout"},
		{Config{RestrictedClassifications: []string{""}}, "empty name"},
		{Config{HourBaseline: 23 * time.Hour}, "anomaly.hour_baseline"},
		{Config{HourMinEvents: -3}, "anomaly.hour_min_events"},
	} {
		_, err := New(tc.c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one naming %q", tc.c, err, tc.want)
		}
	}
	if _, err := New(Config{WebhookURL: "https://hooks.example/ward"}); err != nil {
		t.Fatal(err)
	}
}

// TestSubmitNeverBlocks fills the queue with no consumer: Submit returns
// false and counts the drop.
func TestSubmitNeverBlocks(t *testing.T) {
	d, _ := New(Config{QueueSize: 2})
	ev := Event{Time: day0, Actor: "a", Operation: "kms.decrypt", Key: "k", Result: "ok"}
	if !d.Submit(ev) || !d.Submit(ev) {
		t.Fatal("queue refused below its size")
	}
	if d.Submit(ev) {
		t.Fatal("Submit accepted past the queue size")
	}
	if got := counterValue(t, d.m.dropped); got != 1 {
		t.Fatalf("dropped = %v, want 1", got)
	}
}

// TestRunSinksAndWebhook: alerts reach the sink and the webhook, whose
// payload holds the alert's names and numbers only.
func TestRunSinksAndWebhook(t *testing.T) {
	bodies := make(chan []byte, 4)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		bodies <- b
	}))
	defer hs.Close()
	sunk := make(chan Alert, 4)
	d, err := New(Config{WebhookURL: hs.URL, LearningPeriod: time.Nanosecond}, WithSink(func(_ context.Context, a Alert) { sunk <- a }))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	d.Submit(Event{Time: day0, Actor: "spiffe://a/x", Operation: "kms.encrypt", Key: "k0", Result: "ok"})
	d.Submit(Event{Time: day0.Add(time.Second), Actor: "spiffe://a/x", Operation: "kms.decrypt", Key: "secret-key", Classification: "restricted", Result: "ok"})
	a := <-sunk
	if a.Kind != KindRestrictedFirstUse || a.Key != "secret-key" {
		t.Fatalf("sink got %+v", a)
	}
	var got map[string]any
	if err := json.Unmarshal(<-bodies, &got); err != nil {
		t.Fatal(err)
	}
	if got["kind"] != KindRestrictedFirstUse || got["source"] != "ward" || got["key"] != "secret-key" {
		t.Fatalf("webhook payload %v", got)
	}
	for k := range got {
		switch k {
		case "source", "time", "kind", "caller", "key", "operation", "classification", "detail":
		default:
			t.Errorf("webhook payload has field %q", k)
		}
	}
}

// TestPrimer: Run builds the baseline from history before the first live
// event, so callers known from the past raise no first-use alert and only
// events older than the first live one are primed.
func TestPrimer(t *testing.T) {
	sunk := make(chan Alert, 8)
	var before time.Time
	d, err := New(Config{}, WithSink(func(_ context.Context, a Alert) { sunk <- a }),
		WithPrimer(func(_ context.Context, b time.Time, prime func(Event)) error {
			before = b
			prime(Event{Time: day0, Actor: "spiffe://a/old", Operation: "kms.decrypt", Key: "vault", Classification: "restricted", Result: "ok"})
			prime(Event{Time: day0.Add(3 * time.Hour), Actor: "spiffe://a/late", Operation: "kms.decrypt", Key: "vault", Classification: "restricted", Result: "ok"})
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	live := day0.Add(2 * time.Hour)
	d.Submit(Event{Time: live, Actor: "spiffe://a/old", Operation: "kms.decrypt", Key: "vault", Classification: "restricted", Result: "ok"})
	d.Submit(Event{Time: live.Add(time.Second), Actor: "spiffe://a/late", Operation: "kms.decrypt", Key: "vault", Classification: "restricted", Result: "ok"})
	a := <-sunk
	if a.Caller != "spiffe://a/late" || a.Kind != KindRestrictedFirstUse {
		t.Fatalf("alert %+v: want the first use by the caller only seen after the first live event", a)
	}
	if !before.Equal(live) {
		t.Fatalf("primer asked for events before %v, want %v", before, live)
	}
	if got := counterValue(t, d.m.primed); got != 1 {
		t.Fatalf("primed %v events, want 1", got)
	}
}

// TestDenialOverflowCounted: a caller beyond MaxSeries whose denials
// cannot be tracked is counted, like every other overflow.
func TestDenialOverflowCounted(t *testing.T) {
	d, err := New(Config{MaxSeries: 1})
	if err != nil {
		t.Fatal(err)
	}
	ev := Event{Time: day0, Actor: "spiffe://a/x", Operation: "kms.decrypt", Result: "denied"}
	d.Observe(ev)
	before := counterValue(t, d.m.overflow)
	ev.Actor = "spiffe://a/y"
	d.Observe(ev)
	if got := counterValue(t, d.m.overflow); got != before+1 {
		t.Fatalf("overflow %v after an untracked caller's denial, want %v", got, before+1)
	}
}

// TestUnusualHour: the time-of-day baseline. Seeded normal traffic runs
// for four days, among it callers that work office hours only (08:00 to
// 18:00 UTC); once their pairs have a baseline (HourBaseline 72h here)
// none of it alerts, round-the-clock callers included. Then an office-hours
// caller decrypts at 03:00: an unusual_hour alert within seconds, naming
// the hour; the same caller at 10:00 the same day raises nothing, and a
// pair younger than the baseline is not judged by its hours.
func TestUnusualHour(t *testing.T) {
	d, err := New(Config{HourBaseline: 72 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	syn := newSynthetic(7, 16, 30) // small: four days under -race stay near 10 s
	// Office callers use keys round-the-clock callers of their trust
	// domain use too (a new key for a trust domain would be another alert).
	var office []stream
	for _, st := range syn.streams {
		if len(office) < 5 && strings.HasPrefix(st.caller, "spiffe://prod.example/") && st.op == "kms.decrypt" && syn.class[st.key] != "restricted" {
			office = append(office, stream{caller: fmt.Sprintf("spiffe://prod.example/ns/office-%d/sa/clerk", len(office)), key: st.key,
				op: "kms.decrypt", rate: 4, from: 8, to: 18})
		}
	}
	syn.streams = append(syn.streams, office...)
	var buf []Event
	events, falsePositives, armed := 0, 0, 0
	for m := 0; m < 4*24*60; m++ {
		now := day0.Add(time.Duration(m) * time.Minute)
		buf = syn.minute(now, buf)
		for _, ev := range buf {
			events++
			if ev.Time.Sub(day0) >= 72*time.Hour {
				armed++
			}
			for _, a := range d.Observe(ev) {
				falsePositives++
				if falsePositives <= 10 {
					t.Errorf("false positive at %s: %+v", a.Time.Format(time.DateTime), a)
				}
			}
		}
	}
	t.Logf("four normal days: %d events (%d with the hour baseline armed), %d streams, %d false positives", events, armed, len(syn.streams), falsePositives)
	if falsePositives != 0 {
		t.Fatalf("%d false positives over the normal days", falsePositives)
	}
	if armed == 0 {
		t.Fatal("no event was scored with the hour baseline armed: the test proves nothing")
	}

	night := day0.Add(4*24*time.Hour + 3*time.Hour)
	victim := office[2]
	// A newcomer: first seen at 09:00 on the last day, used at 03:00 —
	// too young for a time-of-day baseline.
	class := syn.class[victim.key]
	newcomer := Event{Actor: "spiffe://prod.example/ns/new/sa/clerk", Operation: "kms.decrypt", Key: victim.key, Classification: class, Result: "ok"}
	for i := 0; i < 300; i++ {
		newcomer.Time = day0.Add(3*24*time.Hour + 9*time.Hour + time.Duration(i)*time.Second)
		if a := d.Observe(newcomer); len(a) != 0 {
			t.Fatalf("newcomer in office hours: %+v", a)
		}
	}
	var alerts []Alert
	for s := 0; s < 30; s++ { // a decrypt every 2 s from 03:00:05
		ev := Event{Time: night.Add(5*time.Second + time.Duration(s)*2*time.Second), Actor: victim.caller, Operation: "kms.decrypt",
			Key: victim.key, Classification: class, Result: "ok"}
		alerts = append(alerts, d.Observe(ev)...)
	}
	newcomer.Time = night.Add(10 * time.Second)
	alerts = append(alerts, d.Observe(newcomer)...)
	if len(alerts) != 1 {
		t.Fatalf("alerts at 03:00: %+v, want one unusual_hour for %s", alerts, victim.caller)
	}
	a := alerts[0]
	if a.Kind != KindUnusualHour || a.Caller != victim.caller || a.Key != victim.key || a.Hour == nil || *a.Hour != 3 ||
		!strings.Contains(a.Detail, "03:00-03:59 UTC") {
		t.Fatalf("alert: %+v", a)
	}
	if lag := a.Time.Sub(night.Add(5 * time.Second)); lag < 0 || lag > 5*time.Second {
		t.Fatalf("flagged %v after the first use at night", lag)
	}
	t.Logf("%s flagged at %s: %s", a.Kind, a.Time.Format(time.TimeOnly), a.Detail)
	day := Event{Time: night.Add(7 * time.Hour), Actor: victim.caller, Operation: "kms.decrypt", Key: victim.key, Classification: class, Result: "ok"}
	if got := d.Observe(day); len(got) != 0 {
		t.Fatalf("the same caller at 10:00: %+v", got)
	}
}

// TestTablesFullAlert: an attacker floods new callers and keys until the
// tables are full, so its own unusual use would go unscored: the first
// overflow of each table raises one tables_full alert (an audited alert
// in the authority, through the sinks), the following ones only count.
// Priming that fills a table raises none; the first live overflow does.
func TestTablesFullAlert(t *testing.T) {
	var sunk []Alert
	d, err := New(Config{MaxSeries: 2}, WithSink(func(_ context.Context, a Alert) { sunk = append(sunk, a) }))
	if err != nil {
		t.Fatal(err)
	}
	dec := func(i int, actor string) Event {
		return Event{Time: day0.Add(time.Duration(i) * time.Second), Actor: actor, Operation: "kms.decrypt", Key: fmt.Sprintf("k%d", i), Result: "ok"}
	}
	d.Prime(dec(0, "spiffe://a/p0"))
	d.Prime(dec(1, "spiffe://a/p1"))
	d.Prime(dec(2, "spiffe://a/p2")) // overflow while priming: counted, no alert
	if got := counterValue(t, d.m.overflow); got != 1 {
		t.Fatalf("overflow while priming counted %v, want 1", got)
	}
	var full []Alert
	for i := 3; i < 20; i++ {
		for _, a := range d.Observe(dec(i, fmt.Sprintf("spiffe://a/flood%d", i))) {
			if a.Kind == KindTablesFull {
				full = append(full, a)
			}
		}
	}
	if len(full) != 1 || full[0].Caller != "spiffe://a/flood3" || full[0].Key != "k3" || !strings.Contains(full[0].Detail, "pairs") ||
		!strings.Contains(full[0].Detail, "max_series 2") {
		t.Fatalf("tables_full alerts after a flood: %+v, want one naming the pairs table and the first untracked event", full)
	}
	// The denials table overflows on its own: one more alert, once.
	var denied []Alert
	for i := range 6 {
		denied = append(denied, d.Observe(Event{Time: day0.Add(time.Minute), Actor: fmt.Sprintf("spiffe://a/deny%d", i), Operation: "kms.decrypt", Result: "denied"})...)
	}
	if len(denied) != 1 || denied[0].Kind != KindTablesFull || !strings.Contains(denied[0].Detail, "denials") {
		t.Fatalf("denial flood: %+v", denied)
	}
	if l := d.List(0); len(l) != 2 || l[0].Kind != KindTablesFull {
		t.Fatalf("recent alerts: %+v", l)
	}
	// Through Run, the alert reaches the sinks (the authority audits it).
	d2, _ := New(Config{MaxSeries: 1}, WithSink(func(_ context.Context, a Alert) { sunk = append(sunk, a) }))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d2.Run(ctx) }()
	d2.Submit(dec(0, "spiffe://a/x"))
	d2.Submit(dec(1, "spiffe://a/y"))
	deadline := time.Now().Add(10 * time.Second)
	for len(d2.List(0)) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if len(sunk) != 1 || sunk[0].Kind != KindTablesFull {
		t.Fatalf("sunk: %+v", sunk)
	}
}

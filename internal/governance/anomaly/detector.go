// Package anomaly scores ward's audit stream for unusual key access
// (docs/anomaly.md). Per caller and key it keeps a baseline: for every
// (caller, key, operation) series an exponentially weighted mean and
// variance of the items per minute, an hour-of-day histogram per (caller,
// key), the trust domains each key was used from, and per caller the
// denials per minute. It raises an Alert when
//
//   - a caller uses (encrypt, decrypt, datakey, rewrap) a key of a restricted
//     classification for the first time,
//   - a minute's decrypt volume of a series exceeds mean + Sigma·stddev,
//     Factor × mean and MinDecrypts at once,
//   - a caller's denials in a minute exceed mean + Sigma·stddev and MinDenials,
//   - a key is used by a caller of a trust domain it never was used from,
//   - a (caller, key) pair with a time-of-day baseline (seen for
//     HourBaseline, HourMinEvents events) is used in an hour of the day it
//     never was used in,
//   - one of its tables is full (max_series): what is not tracked is not
//     scored, so an attacker flooding new callers or keys could hide in
//     the overflow; raised once per overflow episode.
//
// Time is the events' own time (a virtual clock in tests), so a replayed
// log scores as the live stream did. The authority feeds it the events its
// audit log committed through Submit (a bounded queue: the audit path never
// waits; drops are counted); alerts go back to the log as "anomaly.alert"
// events, to Prometheus, to an optional webhook and to List (`ward anomaly
// list` reads them from the log). It imports no authority package: its
// input is the small Event below, which the CLI's wiring fills.
package anomaly

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
)

// Event is what the detector reads of one committed audit event.
type Event struct {
	Time      time.Time
	Actor     string // the caller: spiffe://td/path, admin:uid=N, system:...
	Operation string // e.g. kms.decrypt
	Key       string // the key name; "" for events on no key
	// Classification of Key (the KMS classification name), "" if unknown.
	Classification string
	Result         string // ok, error, denied, started
	Count          int    // items of a batch; 0 means 1
	// Alert is set on an "anomaly.alert" event read back from the log:
	// priming with it restores that alert's cooldown across a restart.
	Alert *Alert
}

// Alert kinds.
const (
	KindRestrictedFirstUse = "restricted_first_use"
	KindDecryptBurst       = "decrypt_burst"
	KindDenialSpike        = "denial_spike"
	KindNewTrustDomain     = "new_trust_domain"
	KindUnusualHour        = "unusual_hour"
	// KindTablesFull: a baseline table reached max_series; events on new
	// series of it are no longer scored (raised once per episode: until
	// the table takes a new series again).
	KindTablesFull = "tables_full"
)

// Operation is the audit operation of an alert event.
const Operation = "anomaly.alert"

// Alert is one finding. It holds names and numbers only: no context
// values, no plaintext, no key material.
type Alert struct {
	Time           time.Time `json:"time"`
	Kind           string    `json:"kind"`
	Caller         string    `json:"caller"`
	Key            string    `json:"key,omitempty"`
	Operation      string    `json:"operation,omitempty"`
	Classification string    `json:"classification,omitempty"`
	TrustDomain    string    `json:"trust_domain,omitempty"`
	Observed       float64   `json:"observed,omitempty"`  // items this minute
	Baseline       float64   `json:"baseline,omitempty"`  // EWMA mean per minute
	Stddev         float64   `json:"stddev,omitempty"`    // EWMA standard deviation
	Threshold      float64   `json:"threshold,omitempty"` // what Observed crossed
	HourShare      float64   `json:"hour_share,omitempty"`
	Hour           *int      `json:"hour,omitempty"` // unusual_hour: the hour of the day (UTC)
	Detail         string    `json:"detail"`
}

type seriesKey struct{ caller, key, op string }

// series is one (caller, key, operation) rate baseline.
type series struct {
	minute  int64   // the minute (Unix time / 60) cur counts
	cur     float64 // items in that minute so far
	mean    float64 // EWMA of items per closed minute
	vr      float64 // EWMA variance
	minutes int64   // closed minutes seen
}

type pairKey struct{ caller, key string }

type pair struct {
	hours [24]uint32
	total uint32
	since time.Time // the pair's first event
	class string    // the key's classification when the pair was first seen
}

type alertKey struct{ kind, caller, key string }

// Detector is the scorer. Observe and Prime are for one goroutine (Run is
// that goroutine in the authority); Submit, List and the metrics are safe
// from any.
type Detector struct {
	cfg        Config
	restricted map[string]bool

	series  map[seriesKey]*series
	denials map[string]*series // per caller
	pairs   map[pairKey]*pair
	domains map[string]map[string]struct{} // key -> trust domains
	last    map[alertKey]time.Time
	first   time.Time
	priming bool
	// full names the tables in an overflow episode (an alert raised).
	full map[string]bool

	queue    chan Event
	sinks    []func(context.Context, Alert)
	classify func(key string) string
	primer   func(ctx context.Context, before time.Time, prime func(Event)) error
	primed   bool
	hook     *webhook

	mu     sync.Mutex
	recent []Alert // ring, newest last
	next   int

	m metrics
}

// Option configures a Detector.
type Option func(*Detector)

// WithSink calls fn with every alert, on the goroutine running Run (the
// authority records the alert in its audit log there).
func WithSink(fn func(context.Context, Alert)) Option {
	return func(d *Detector) { d.sinks = append(d.sinks, fn) }
}

// WithClassifier names the classification of keys whose events carry
// none; it is asked once per new (caller, key) pair, on the goroutine
// running Run (never on the audit path).
func WithClassifier(fn func(key string) string) Option {
	return func(d *Detector) { d.classify = fn }
}

// WithPrimer makes Run, before it scores the first queued event, build the
// baseline from history: fn calls prime with past events older than
// before, oldest first (the authority reads its log's recent events), so a
// restarted authority neither forgets its callers nor alerts on them.
func WithPrimer(fn func(ctx context.Context, before time.Time, prime func(Event)) error) Option {
	return func(d *Detector) { d.primer = fn }
}

// New returns a detector for cfg (defaults applied, then validated).
func New(cfg Config, opts ...Option) (*Detector, error) {
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Detector{
		cfg: cfg, restricted: map[string]bool{},
		series: map[seriesKey]*series{}, denials: map[string]*series{}, pairs: map[pairKey]*pair{},
		domains: map[string]map[string]struct{}{}, last: map[alertKey]time.Time{}, full: map[string]bool{},
		queue: make(chan Event, cfg.QueueSize), recent: make([]Alert, 0, cfg.RecentAlerts),
	}
	for _, n := range cfg.RestrictedClassifications {
		d.restricted[n] = true
	}
	d.m = newMetrics()
	for _, o := range opts {
		o(d)
	}
	if cfg.WebhookURL != "" {
		d.hook = newWebhook(cfg.WebhookURL, cfg.WebhookTimeout, &d.m)
	}
	return d, nil
}

// Config returns the detector's configuration (defaults applied).
func (d *Detector) Config() Config { return d.cfg }

// Submit queues ev for scoring without waiting: false (and a counted
// drop) when the queue is full.
func (d *Detector) Submit(ev Event) bool {
	select {
	case d.queue <- ev:
		return true
	default:
		d.m.dropped.Inc()
		return false
	}
}

// Run scores queued events until ctx ends, handing each alert to the
// sinks, the webhook and List.
func (d *Detector) Run(ctx context.Context) {
	if d.hook != nil {
		go d.hook.run(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-d.queue:
			if d.primer != nil && !d.primed {
				d.primed = true
				d.primeFrom(ctx, ev.Time)
			}
			for _, a := range d.Observe(ev) {
				for _, s := range d.sinks {
					s(ctx, a)
				}
				if d.hook != nil {
					d.hook.send(a)
				}
			}
		}
	}
}

// Prime builds the baseline from ev without alerting (the authority primes
// with the log's recent events at unseal).
func (d *Detector) Prime(ev Event) {
	d.priming = true
	d.Observe(ev)
	d.priming = false
}

func (d *Detector) primeFrom(ctx context.Context, before time.Time) {
	n := 0
	err := d.primer(ctx, before, func(ev Event) {
		if ev.Time.Before(before) {
			d.Prime(ev)
			n++
		}
	})
	d.m.primed.Add(float64(n))
	if err != nil {
		d.m.primeErrors.Inc()
	}
}

// List returns up to n of the newest alerts, newest first (n <= 0: all kept).
func (d *Detector) List(n int) []Alert {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := len(d.recent)
	if n <= 0 || n > k {
		n = k
	}
	out := make([]Alert, 0, n)
	for i := 0; i < n; i++ {
		// the ring's newest entry is at next-1 once it wrapped
		j := (d.next - 1 - i + 2*k) % k
		out = append(out, d.recent[j])
	}
	return out
}

// TrustDomain returns the trust domain of a SPIFFE ID actor, or "" for
// local actors (admin:uid=N, system:...).
func TrustDomain(actor string) string {
	rest, ok := strings.CutPrefix(actor, "spiffe://")
	if !ok {
		return ""
	}
	td, _, _ := strings.Cut(rest, "/")
	return td
}

// isDataOp: the KMS operations that use a key's material.
func isDataOp(op string) bool {
	switch op {
	case "kms.encrypt", "kms.decrypt", "kms.datakey", "kms.rewrap":
		return true
	}
	return false
}

func isDecrypt(op string) bool { return op == "kms.decrypt" || op == "kms.rewrap" }

// Observe scores one event and returns the alerts it raises (none while
// priming or learning for first-use kinds). Events older than a series'
// current minute count in that minute (the stream is committed nearly in
// order).
func (d *Detector) Observe(ev Event) []Alert {
	d.m.events.Inc()
	if ev.Operation == Operation || ev.Actor == "" {
		if a := ev.Alert; a != nil && d.priming {
			k := alertKey{a.Kind, a.Caller, a.Key}
			if a.Time.After(d.last[k]) {
				d.last[k] = a.Time
			}
		}
		return nil // our own alerts; unattributed events
	}
	if d.first.IsZero() {
		d.first = ev.Time
	}
	learning := ev.Time.Sub(d.first) < d.cfg.LearningPeriod
	n := float64(ev.Count)
	if n <= 0 {
		n = 1
	}
	min := ev.Time.Unix() / 60
	var out []Alert

	if ev.Result == "denied" {
		s := d.denials[ev.Actor]
		if s == nil && len(d.denials) < d.cfg.MaxSeries {
			s = &series{minute: min}
			d.denials[ev.Actor] = s
			d.m.series.Inc()
			d.full["denials"] = false
		}
		if s == nil {
			out = d.overflow(out, ev, "denials", "callers' denial rates")
		} else {
			s.add(min, n, d.cfg.Alpha)
			thr := math.Max(d.cfg.MinDenials, s.mean+d.cfg.Sigma*math.Sqrt(s.vr))
			if s.cur > thr {
				out = d.raise(out, ev, Alert{Kind: KindDenialSpike, Observed: s.cur, Baseline: s.mean, Stddev: math.Sqrt(s.vr), Threshold: thr,
					Detail: "denials by this caller in one minute far above its baseline"})
			}
		}
	}
	if ev.Key == "" || !isDataOp(ev.Operation) {
		return d.keep(out) // key management (create, rotate, ...) is no use of a key
	}

	pk := pairKey{ev.Actor, ev.Key}
	p := d.pairs[pk]
	if p == nil {
		if len(d.pairs) >= d.cfg.MaxSeries {
			return d.keep(d.overflow(out, ev, "pairs", "(caller, key) pairs: first uses, hours of the day, trust domains"))
		}
		p = &pair{since: ev.Time}
		d.pairs[pk] = p
		d.m.series.Inc()
		d.full["pairs"] = false
		if ev.Classification == "" && d.classify != nil {
			ev.Classification = d.classify(ev.Key)
		}
		p.class = ev.Classification
		if d.restricted[ev.Classification] && !learning {
			out = d.raise(out, ev, Alert{Kind: KindRestrictedFirstUse,
				Detail: "first use of a " + ev.Classification + " key by this caller"})
		}
	}
	if ev.Classification == "" {
		ev.Classification = p.class
	}
	h := ev.Time.UTC().Hour()
	if p.hours[h] == 0 && p.total >= uint32(d.cfg.HourMinEvents) && ev.Time.Sub(p.since) >= d.cfg.HourBaseline {
		hour := h
		out = d.raise(out, ev, Alert{Kind: KindUnusualHour, Hour: &hour,
			Detail: fmt.Sprintf("key used at %02d:00-%02d:59 UTC, an hour of the day this caller never used it in (%d uses since %s)",
				h, h, p.total, p.since.UTC().Format(time.RFC3339))})
	}
	p.hours[h]++
	p.total++

	if td := TrustDomain(ev.Actor); td != "" {
		set := d.domains[ev.Key]
		if set == nil {
			set = map[string]struct{}{}
			d.domains[ev.Key] = set
		}
		if _, ok := set[td]; !ok {
			if len(set) < 64 {
				set[td] = struct{}{}
			}
			if !learning {
				out = d.raise(out, ev, Alert{Kind: KindNewTrustDomain, TrustDomain: td,
					Detail: "key used from a trust domain it was never used from"})
			}
		}
	}

	if isDecrypt(ev.Operation) && ev.Result == "ok" {
		sk := seriesKey{ev.Actor, ev.Key, ev.Operation}
		s := d.series[sk]
		if s == nil {
			if len(d.series) >= d.cfg.MaxSeries {
				return d.keep(d.overflow(out, ev, "series", "decrypt rates per (caller, key, operation)"))
			}
			s = &series{minute: min}
			d.series[sk] = s
			d.m.series.Inc()
			d.full["series"] = false
		}
		s.add(min, n, d.cfg.Alpha)
		sd := math.Sqrt(s.vr)
		thr := math.Max(d.cfg.MinDecrypts, math.Max(s.mean+d.cfg.Sigma*sd, d.cfg.Factor*s.mean))
		if s.cur > thr {
			out = d.raise(out, ev, Alert{Kind: KindDecryptBurst, Observed: s.cur, Baseline: s.mean, Stddev: sd, Threshold: thr,
				HourShare: float64(p.hours[h]) / float64(p.total),
				Detail:    "decrypt volume in one minute far above this caller's baseline for the key"})
		}
	}
	return d.keep(out)
}

// overflow counts an event on a new series of a full table (every
// overflow is counted, as docs/anomaly.md says) and, at the first of an
// episode, raises a tables_full alert naming the table and the event that
// found it full (not while priming: the first live overflow raises it).
func (d *Detector) overflow(out []Alert, ev Event, table, what string) []Alert {
	d.m.overflow.Inc()
	if d.priming || d.full[table] {
		return out
	}
	d.full[table] = true
	return append(out, Alert{Time: ev.Time.UTC(), Kind: KindTablesFull, Caller: ev.Actor, Key: ev.Key, Operation: ev.Operation,
		Classification: ev.Classification, Threshold: float64(d.cfg.MaxSeries),
		Detail: fmt.Sprintf("the %s table (%s) is full at max_series %d: events on new ones, from this one on, are not scored (counted in ward_anomaly_series_overflow_total); raise anomaly.max_series or restart the authority to rebuild the baselines", table, what, d.cfg.MaxSeries)})
}

// add counts n items at minute m, first closing the minutes before it.
func (s *series) add(m int64, n, alpha float64) {
	if m > s.minute {
		s.close(s.cur, alpha)
		gap := m - s.minute - 1
		// empty minutes in between: a few exactly, the rest in closed form
		if gap > 60 {
			f := math.Pow(1-alpha, float64(gap-60))
			s.mean *= f
			s.vr *= f
			s.minutes += gap - 60
			gap = 60
		}
		for ; gap > 0; gap-- {
			s.close(0, alpha)
		}
		s.minute, s.cur = m, 0
	}
	s.cur += n
}

// close folds one finished minute of x items into the EWMA mean and variance.
func (s *series) close(x, alpha float64) {
	diff := x - s.mean
	inc := alpha * diff
	s.mean += inc
	s.vr = (1 - alpha) * (s.vr + diff*inc)
	s.minutes++
}

// raise appends a (the event's caller, key and time filled in) unless
// priming or an alert of its kind for the caller and key is cooling down.
func (d *Detector) raise(out []Alert, ev Event, a Alert) []Alert {
	if d.priming {
		return out
	}
	k := alertKey{a.Kind, ev.Actor, ev.Key}
	if t, ok := d.last[k]; ok && ev.Time.Sub(t) < d.cfg.Cooldown {
		return out
	}
	d.last[k] = ev.Time
	a.Time, a.Caller, a.Key, a.Operation, a.Classification = ev.Time.UTC(), ev.Actor, ev.Key, ev.Operation, ev.Classification
	return append(out, a)
}

// keep records alerts in the recent ring and the metrics.
func (d *Detector) keep(out []Alert) []Alert {
	if len(out) == 0 {
		return nil
	}
	d.mu.Lock()
	for _, a := range out {
		d.m.alerts.WithLabelValues(a.Kind).Inc()
		if cap(d.recent) == 0 {
			break
		}
		if len(d.recent) < cap(d.recent) {
			d.recent = append(d.recent, a)
			d.next = len(d.recent) % cap(d.recent)
		} else {
			d.recent[d.next] = a
			d.next = (d.next + 1) % cap(d.recent)
		}
	}
	d.mu.Unlock()
	return out
}

package anomaly

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"time"
)

// synthetic is a seeded model of a day of normal key access: callers in a
// few trust domains (and local admins), each using a few keys at its own
// Poisson rate shaped by a day/night profile, with occasional batches and
// a trickle of denials.
type synthetic struct {
	rng     *rand.Rand
	streams []stream
	class   map[string]string
}

type stream struct {
	caller, key, op string
	rate            float64 // events per minute at the daily peak
	batchP          float64 // chance an event is a batch of 2..20
	denyRate        float64 // denials per minute at peak
	from, to        int     // active only from:00 to to:00 UTC when to > 0 (office hours)
}

var domains = []string{"prod.example", "edge.example", "partner.example"}

func newSynthetic(seed uint64, callers, keys int) *synthetic {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	s := &synthetic{rng: rng, class: map[string]string{}}
	classes := []string{"public", "internal", "confidential", "restricted"}
	keyNames := make([]string, keys)
	for i := range keyNames {
		keyNames[i] = fmt.Sprintf("tenant-%d/key-%d", i%17, i)
		s.class[keyNames[i]] = classes[rng.IntN(len(classes))]
	}
	for c := 0; c < callers; c++ {
		caller := fmt.Sprintf("spiffe://%s/ns/app-%d/sa/worker", domains[c%len(domains)], c)
		if c%25 == 0 {
			caller = fmt.Sprintf("admin:uid=%d", 1000+c)
		}
		n := 1 + rng.IntN(3)
		for j := 0; j < n; j++ {
			key := keyNames[rng.IntN(keys)]
			rate := 1 + rng.Float64()*rng.Float64()*40 // most quiet, some busy
			s.streams = append(s.streams,
				stream{caller: caller, key: key, op: "kms.decrypt", rate: rate, batchP: 0.02, denyRate: 0.02},
				stream{caller: caller, key: key, op: "kms.encrypt", rate: rate / 3})
		}
	}
	return s
}

// profile is the day/night shape of traffic: 0.35 at night to 1 at 15:00.
func profile(t time.Time) float64 {
	h := float64(t.Hour()) + float64(t.Minute())/60
	return 0.35 + 0.65*(1+math.Cos((h-15)/24*2*math.Pi))/2
}

func (s *synthetic) poisson(l float64) int {
	if l > 30 { // normal approximation
		v := int(math.Round(l + math.Sqrt(l)*s.rng.NormFloat64()))
		return max(v, 0)
	}
	L, k, p := math.Exp(-l), 0, 1.0
	for {
		p *= s.rng.Float64()
		if p <= L {
			return k
		}
		k++
	}
}

// minute returns the events of the minute starting at t, in time order.
func (s *synthetic) minute(t time.Time, out []Event) []Event {
	out = out[:0]
	f := profile(t)
	for _, st := range s.streams {
		if st.to > 0 && (t.Hour() < st.from || t.Hour() >= st.to) {
			continue
		}
		for k := s.poisson(st.rate * f); k > 0; k-- {
			ev := Event{Time: t.Add(time.Duration(s.rng.Int64N(int64(time.Minute)))), Actor: st.caller, Operation: st.op,
				Key: st.key, Classification: s.class[st.key], Result: "ok"}
			if s.rng.Float64() < st.batchP {
				ev.Count = 2 + s.rng.IntN(19)
			}
			out = append(out, ev)
		}
		if st.denyRate > 0 {
			for k := s.poisson(st.denyRate * f); k > 0; k-- {
				out = append(out, Event{Time: t.Add(time.Duration(s.rng.Int64N(int64(time.Minute)))), Actor: st.caller, Operation: st.op,
					Key: st.key, Classification: s.class[st.key], Result: "denied"})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out
}

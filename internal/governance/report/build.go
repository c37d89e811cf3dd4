package report

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Report is the computed compliance report (its JSON form is `ward report
// --format json`).
type Report struct {
	Generated    time.Time          `json:"generated"`
	TrustDomain  string             `json:"trust_domain"`
	Version      string             `json:"authority_version"`
	Summary      []Headline         `json:"summary"`
	Coverage     CoverageSection    `json:"encryption_coverage"`
	Rotation     RotationSection    `json:"key_rotation"`
	Certificates CertificateSection `json:"certificates"`
	Revocations  RevocationSection  `json:"revocations"`
	Audit        Audit              `json:"audit"`
	Drift        DriftSection       `json:"drift"`
	Anomalies    AnomalySection     `json:"anomalies"`
}

// Status grades a headline.
const (
	StatusOK   = "ok"
	StatusWarn = "warn"
	StatusFail = "fail"
	StatusInfo = "info" // not measured or not configured
)

// Headline is one number of the summary with its grade and evidence.
type Headline struct {
	Label    string `json:"label"`
	Value    string `json:"value"`
	Status   string `json:"status"`
	Evidence string `json:"evidence"`
}

// CoverageSection: connections with and without mTLS.
type CoverageSection struct {
	Measured  bool       `json:"measured"`
	Sources   []Coverage `json:"sources"`
	MTLS      uint64     `json:"mtls"`
	Plaintext uint64     `json:"plaintext"`
	TLS13     uint64     `json:"tls13"`
	PQ        uint64     `json:"pq_hybrid"`
	Failed    uint64     `json:"failed_handshakes"`
	// Percent of the measured connections that used mTLS.
	Percent float64 `json:"percent"`
	Note    string  `json:"note"`
}

// RotationSection: key rotation compliance.
type RotationSection struct {
	Keys       int `json:"keys"`
	Compliant  int `json:"compliant"`
	Overdue    int `json:"overdue"`
	NoSchedule int `json:"manual_only"`
	// Grace added to every rotation period before a key counts as overdue.
	Grace             Duration              `json:"grace"`
	PerClassification []ClassificationStats `json:"per_classification"`
	// OverdueKeys, most overdue first (at most MaxListed).
	OverdueKeys []OverdueKey `json:"overdue_keys"`
	// Rotations are the key.rotate events in the log (count, newest seq).
	Rotations      int    `json:"rotation_events"`
	NewestRotation uint64 `json:"newest_rotation_seq,omitempty"`
}

// ClassificationStats is rotation compliance and time-to-rotate for one
// classification. Time-to-rotate is how long a version stayed the newest
// before the next one replaced it (from the versions' creation times).
type ClassificationStats struct {
	Name      string   `json:"name"`
	Period    Duration `json:"rotation_period"`
	Keys      int      `json:"keys"`
	Compliant int      `json:"compliant"`
	Overdue   int      `json:"overdue"`
	// Intervals between consecutive versions.
	Rotations int      `json:"rotations"`
	Median    Duration `json:"time_to_rotate_median"`
	P95       Duration `json:"time_to_rotate_p95"`
	Max       Duration `json:"time_to_rotate_max"`
	// MaxKey names the key and versions of Max.
	MaxEvidence string `json:"time_to_rotate_max_evidence,omitempty"`
}

// OverdueKey is a key whose active version is older than its period.
type OverdueKey struct {
	Name           string    `json:"name"`
	Classification string    `json:"classification"`
	LastRotated    time.Time `json:"last_rotated"`
	Period         Duration  `json:"rotation_period"`
	OverdueBy      Duration  `json:"overdue_by"`
	Evidence       string    `json:"evidence"`
}

// CertificateSection: SVID lifetimes and the nearest expiries.
type CertificateSection struct {
	Entries        int        `json:"entries"`
	DefaultTTL     Duration   `json:"default_ttl"`
	DefaultEntries int        `json:"entries_with_default_ttl"`
	TTLBuckets     []Bucket   `json:"ttl_distribution"`
	LongestTTL     Duration   `json:"longest_ttl"`
	LongestEntry   string     `json:"longest_ttl_evidence,omitempty"`
	CAKeys         []CAKeyRow `json:"ca_keys"`
	Nearest        []Expiry   `json:"nearest_expiries"`
	Agents         int        `json:"agents"`
}

// Bucket is one bar of a distribution.
type Bucket struct {
	Label string `json:"label"`
	Count int    `json:"count"`
}

// CAKeyRow is one CA key with its lifetime.
type CAKeyRow struct {
	ID       string    `json:"id"`
	Kind     string    `json:"kind"`
	State    string    `json:"state"`
	Lifetime Duration  `json:"lifetime"`
	NotAfter time.Time `json:"not_after"`
}

// Expiry is one certificate that expires soon.
type Expiry struct {
	Subject  string    `json:"subject"`
	Kind     string    `json:"kind"`
	NotAfter time.Time `json:"not_after"`
	In       Duration  `json:"expires_in"`
	Evidence string    `json:"evidence"`
}

// RevocationSection: revocations from the audit log.
type RevocationSection struct {
	Count int          `json:"count"`
	Items []Revocation `json:"items"`
	// Publish: seconds from the request to the new policy version
	// (median and max over Items that completed).
	PublishMedian Duration `json:"publish_median"`
	PublishMax    Duration `json:"publish_max"`
	Note          string   `json:"note"`
}

// Revocation is one policy.revoke (or unrevoke, or a federated peer's
// revocations published here) with the time it took to publish.
type Revocation struct {
	Seq           uint64    `json:"seq"`
	StartSeq      uint64    `json:"start_seq,omitempty"`
	Time          time.Time `json:"time"`
	Operation     string    `json:"operation"`
	Actor         string    `json:"actor"`
	Subjects      string    `json:"subjects"`
	PolicyVersion string    `json:"policy_version"`
	Result        string    `json:"result"`
	Publish       Duration  `json:"publish"`
	Evidence      string    `json:"evidence"`
}

// DriftSection: drift findings, or that drift is not configured.
type DriftSection struct {
	Configured bool      `json:"configured"`
	Source     string    `json:"source,omitempty"`
	Findings   []Finding `json:"findings"`
}

// AnomalySection: the anomaly alerts of the log.
type AnomalySection struct {
	Alerts []Alert   `json:"alerts"`
	ByKind []Bucket  `json:"by_kind"`
	Since  time.Time `json:"since,omitempty"`
}

// MaxListed bounds every list of the report (overdue keys, expiries,
// revocations, findings, alerts); counts always cover everything.
const MaxListed = 200

// Build computes the report.
func Build(in Input) *Report {
	if in.Generated.IsZero() {
		in.Generated = time.Now()
	}
	r := &Report{Generated: in.Generated.UTC(), TrustDomain: in.TrustDomain, Version: in.Version, Audit: in.Audit}
	r.Coverage = coverage(in.Coverage)
	r.Rotation = rotation(in)
	r.Certificates = certificates(in)
	r.Revocations = revocations(in.Events)
	r.Drift = DriftSection{Findings: []Finding{}}
	if in.Drift != nil {
		r.Drift.Configured, r.Drift.Source = true, in.Drift.Source
		r.Drift.Findings = capList(in.Drift.Findings)
		if r.Drift.Findings == nil {
			r.Drift.Findings = []Finding{}
		}
	}
	r.Anomalies = anomalies(in.Alerts)
	r.Summary = summary(r, in)
	return r
}

func capList[T any](s []T) []T {
	if len(s) > MaxListed {
		return s[:MaxListed]
	}
	return s
}

func coverage(srcs []Coverage) CoverageSection {
	c := CoverageSection{Sources: srcs}
	if c.Sources == nil {
		c.Sources = []Coverage{}
	}
	for _, s := range srcs {
		c.MTLS += s.MTLS
		c.Plaintext += s.Plaintext
		c.TLS13 += s.TLS13
		c.PQ += s.PQ
		c.Failed += s.Failed
	}
	c.Measured = len(srcs) > 0
	switch {
	case !c.Measured:
		c.Note = "not measured: no proxy metrics or telemetry were given (ward report --proxy-metrics URL)"
	case c.MTLS+c.Plaintext == 0:
		c.Note = "no connections seen yet by the reporters"
	default:
		c.Percent = 100 * float64(c.MTLS) / float64(c.MTLS+c.Plaintext)
		c.Note = "counted by ward proxies (their metrics, or their telemetry through the agents): plaintext is what a reporter accepted without a client certificate; connections that bypass every reporter are not counted"
	}
	return c
}

// lastRotated is when the key's newest version was created.
func lastRotated(k Key) (time.Time, uint32) {
	t, v := k.Created, uint32(0)
	for _, kv := range k.Versions {
		if kv.Version >= v {
			t, v = kv.Created, kv.Version
		}
	}
	return t, v
}

func rotation(in Input) RotationSection {
	rs := RotationSection{Keys: len(in.Keys), Grace: Duration(in.RotationGrace)}
	lastRotate := map[string]uint64{} // key -> newest key.rotate seq
	for _, e := range in.Events {
		if e.Operation == "key.rotate" && e.Result == "ok" {
			rs.Rotations++
			rs.NewestRotation = e.Seq
			lastRotate[e.Key] = e.Seq
		}
	}
	classes := map[string]*ClassificationStats{}
	intervals := map[string][]time.Duration{}
	order := []string{}
	for _, c := range in.Classifications {
		classes[c.Name] = &ClassificationStats{Name: c.Name, Period: Duration(c.RotationPeriod)}
		order = append(order, c.Name)
	}
	var overdue []OverdueKey
	var ivs []time.Duration
	for _, k := range in.Keys {
		cs := classes[k.Classification]
		if cs == nil {
			cs = &ClassificationStats{Name: k.Classification, Period: Duration(k.RotationPeriod)}
			classes[k.Classification] = cs
			order = append(order, k.Classification)
		}
		cs.Keys++
		// time-to-rotate: intervals between consecutive versions
		ivs = ivs[:0]
		vs := slices.SortedFunc(slices.Values(k.Versions), func(a, b KeyVersion) int { return cmp.Compare(a.Version, b.Version) })
		for i := 1; i < len(vs); i++ {
			d := vs[i].Created.Sub(vs[i-1].Created)
			if d < 0 {
				continue
			}
			intervals[cs.Name] = append(intervals[cs.Name], d)
			cs.Rotations++
			if Duration(d) > cs.Max {
				cs.Max = Duration(d)
				cs.MaxEvidence = fmt.Sprintf("key %s: version %d (%s) → %d (%s)", k.Name, vs[i-1].Version,
					vs[i-1].Created.UTC().Format(time.RFC3339), vs[i].Version, vs[i].Created.UTC().Format(time.RFC3339))
			}
		}
		if k.RotationPeriod <= 0 {
			rs.NoSchedule++
			continue
		}
		last, v := lastRotated(k)
		age := in.Generated.Sub(last)
		if age > k.RotationPeriod+in.RotationGrace {
			rs.Overdue++
			cs.Overdue++
			ev := fmt.Sprintf("Keys.ListKeys: %s version %d created %s, rotation period %s", k.Name, v, last.UTC().Format(time.RFC3339), fmtDur(k.RotationPeriod))
			if s, ok := lastRotate[k.Name]; ok {
				ev += fmt.Sprintf("; last key.rotate at audit seq %d", s)
			}
			overdue = append(overdue, OverdueKey{Name: k.Name, Classification: k.Classification, LastRotated: last.UTC(),
				Period: Duration(k.RotationPeriod), OverdueBy: Duration(age - k.RotationPeriod), Evidence: ev})
		} else {
			rs.Compliant++
			cs.Compliant++
		}
	}
	slices.SortFunc(overdue, func(a, b OverdueKey) int {
		return cmp.Or(cmp.Compare(b.OverdueBy, a.OverdueBy), strings.Compare(a.Name, b.Name))
	})
	rs.OverdueKeys = capList(overdue)
	if rs.OverdueKeys == nil {
		rs.OverdueKeys = []OverdueKey{}
	}
	for _, name := range order {
		cs := classes[name]
		d := intervals[name]
		slices.Sort(d)
		if len(d) > 0 {
			cs.Median = Duration(d[len(d)/2])
			cs.P95 = Duration(d[min(len(d)-1, len(d)*95/100)])
		}
		rs.PerClassification = append(rs.PerClassification, *cs)
	}
	if rs.PerClassification == nil {
		rs.PerClassification = []ClassificationStats{}
	}
	return rs
}

// ttlBounds are the buckets of the SVID TTL distribution.
var ttlBounds = []struct {
	label string
	max   time.Duration
}{
	{"≤ 1h", time.Hour}, {"≤ 6h", 6 * time.Hour}, {"≤ 24h", 24 * time.Hour}, {"≤ 7d", 7 * 24 * time.Hour}, {"≤ 30d", 30 * 24 * time.Hour}, {"> 30d", 1<<63 - 1},
}

func certificates(in Input) CertificateSection {
	cs := CertificateSection{Entries: len(in.Entries), DefaultTTL: Duration(in.DefaultSVIDTTL)}
	counts := make([]int, len(ttlBounds))
	for _, e := range in.Entries {
		ttl := e.TTL
		if ttl <= 0 {
			cs.DefaultEntries++
			ttl = in.DefaultSVIDTTL
			if ttl <= 0 {
				continue
			}
		}
		for i, b := range ttlBounds {
			if ttl <= b.max {
				counts[i]++
				break
			}
		}
		if Duration(ttl) > cs.LongestTTL {
			cs.LongestTTL = Duration(ttl)
			cs.LongestEntry = fmt.Sprintf("entry %s (%s), TTL %s", e.ID, e.SPIFFEID, fmtDur(ttl))
		}
	}
	for i, b := range ttlBounds {
		cs.TTLBuckets = append(cs.TTLBuckets, Bucket{Label: b.label, Count: counts[i]})
	}
	var exp []Expiry
	for _, k := range in.CAKeys {
		cs.CAKeys = append(cs.CAKeys, CAKeyRow{ID: k.ID, Kind: k.Kind, State: k.State, Lifetime: Duration(k.NotAfter.Sub(k.NotBefore)), NotAfter: k.NotAfter.UTC()})
		if k.State == "retired" || k.NotAfter.IsZero() {
			continue
		}
		exp = append(exp, Expiry{Subject: k.ID, Kind: "CA " + k.Kind + " (" + k.State + ")", NotAfter: k.NotAfter.UTC(),
			In: Duration(k.NotAfter.Sub(in.Generated)), Evidence: "CA.ShowCA: key " + k.ID})
	}
	if cs.CAKeys == nil {
		cs.CAKeys = []CAKeyRow{}
	}
	for _, a := range in.Agents {
		if a.Evicted || a.Expires.IsZero() {
			continue
		}
		cs.Agents++
		exp = append(exp, Expiry{Subject: a.SPIFFEID, Kind: "agent SVID", NotAfter: a.Expires.UTC(), In: Duration(a.Expires.Sub(in.Generated)),
			Evidence: "Agents.ListAgents: serial " + a.Serial})
	}
	slices.SortFunc(exp, func(a, b Expiry) int {
		return cmp.Or(a.NotAfter.Compare(b.NotAfter), strings.Compare(a.Subject, b.Subject))
	})
	if len(exp) > 20 {
		exp = exp[:20]
	}
	cs.Nearest = exp
	if cs.Nearest == nil {
		cs.Nearest = []Expiry{}
	}
	return cs
}

func revocations(events []Event) RevocationSection {
	rs := RevocationSection{Items: []Revocation{}}
	started := map[string]Event{} // request id is not kept here: match by operation and subjects
	var pubs []time.Duration
	var items []Revocation
	for _, e := range events {
		switch e.Operation {
		case "policy.revoke", "policy.unrevoke", "policy.remote_deny_list":
		default:
			continue
		}
		subj := subjects(e)
		k := e.Operation + "\x00" + subj
		if e.Result == "started" {
			started[k] = e
			continue
		}
		rv := Revocation{Seq: e.Seq, Time: e.Time.UTC(), Operation: e.Operation, Actor: e.Actor, Subjects: subj,
			PolicyVersion: e.Fields["policy_version"], Result: e.Result}
		rv.Evidence = fmt.Sprintf("audit seq %d (%s %s)", e.Seq, e.Operation, e.Result)
		if s, ok := started[k]; ok {
			delete(started, k)
			rv.StartSeq = s.Seq
			rv.Publish = Duration(e.Time.Sub(s.Time))
			rv.Evidence = fmt.Sprintf("audit seq %d (started) → %d (%s)", s.Seq, e.Seq, e.Result)
			if e.Result == "ok" {
				pubs = append(pubs, time.Duration(rv.Publish))
			}
		}
		if rv.PolicyVersion != "" {
			rv.Evidence += ", policy version " + rv.PolicyVersion
		}
		items = append(items, rv)
	}
	rs.Count = len(items)
	slices.Reverse(items) // newest first
	rs.Items = capList(items)
	if rs.Items == nil {
		rs.Items = []Revocation{}
	}
	slices.Sort(pubs)
	if len(pubs) > 0 {
		rs.PublishMedian, rs.PublishMax = Duration(pubs[len(pubs)/2]), Duration(pubs[len(pubs)-1])
	}
	rs.Note = "publish: from the revocation request to the new policy version on the authority (audit timestamps); " +
		"enforcement points receive it on their open policy stream (docs/policy.md)"
	return rs
}

func subjects(e Event) string {
	var parts []string
	for _, f := range []string{"spiffe_ids", "serials", "trust_domain"} {
		v := strings.Trim(e.Fields[f], "[]")
		if v != "" {
			parts = append(parts, v)
		}
	}
	return strings.Join(parts, " ")
}

func anomalies(alerts []Alert) AnomalySection {
	as := AnomalySection{}
	kinds := map[string]int{}
	for _, a := range alerts {
		kinds[a.Kind]++
	}
	for k, n := range kinds {
		as.ByKind = append(as.ByKind, Bucket{Label: k, Count: n})
	}
	slices.SortFunc(as.ByKind, func(a, b Bucket) int { return strings.Compare(a.Label, b.Label) })
	if as.ByKind == nil {
		as.ByKind = []Bucket{}
	}
	list := slices.Clone(alerts)
	slices.Reverse(list) // newest first
	as.Alerts = capList(list)
	if as.Alerts == nil {
		as.Alerts = []Alert{}
	}
	if len(alerts) > 0 {
		as.Since = alerts[0].Time.UTC()
	}
	return as
}

func summary(r *Report, in Input) []Headline {
	var h []Headline
	// coverage
	cv := Headline{Label: "Encryption coverage", Status: StatusInfo, Value: "not measured", Evidence: r.Coverage.Note}
	if r.Coverage.Measured && r.Coverage.MTLS+r.Coverage.Plaintext > 0 {
		cv.Value = strconv.FormatFloat(r.Coverage.Percent, 'f', 1, 64) + "% mTLS"
		cv.Status = StatusOK
		if r.Coverage.Plaintext > 0 {
			cv.Status = StatusWarn
		}
		cv.Evidence = fmt.Sprintf("%d mTLS, %d plaintext connections from %d reporter(s)", r.Coverage.MTLS, r.Coverage.Plaintext, len(r.Coverage.Sources))
	} else if r.Coverage.Measured {
		cv.Value = "no connections yet"
	}
	h = append(h, cv)
	// rotation
	rot := Headline{Label: "Key rotation compliance", Evidence: fmt.Sprintf("Keys.ListKeys: %d keys, %d on a schedule, %d manual only; %d key.rotate events in the audit log",
		r.Rotation.Keys, r.Rotation.Compliant+r.Rotation.Overdue, r.Rotation.NoSchedule, r.Rotation.Rotations)}
	if sched := r.Rotation.Compliant + r.Rotation.Overdue; sched == 0 {
		rot.Value, rot.Status = "no scheduled keys", StatusInfo
	} else {
		rot.Value = fmt.Sprintf("%d/%d keys on time", r.Rotation.Compliant, sched)
		rot.Status = StatusOK
		if r.Rotation.Overdue > 0 {
			rot.Status = StatusFail
			rot.Evidence += fmt.Sprintf("; most overdue: %s by %s", r.Rotation.OverdueKeys[0].Name, r.Rotation.OverdueKeys[0].OverdueBy)
		}
	}
	h = append(h, rot)
	// expiries
	ex := Headline{Label: "Nearest certificate expiry", Value: "none", Status: StatusInfo, Evidence: "CA.ShowCA and Agents.ListAgents"}
	if len(r.Certificates.Nearest) > 0 {
		n := r.Certificates.Nearest[0]
		ex.Value = fmt.Sprintf("%s in %s", n.Subject, n.In)
		ex.Status = StatusOK
		if n.In < 0 {
			ex.Status, ex.Value = StatusFail, fmt.Sprintf("%s expired %s ago", n.Subject, -n.In)
		} else if time.Duration(n.In) < time.Hour && n.Kind != "agent SVID" {
			ex.Status = StatusWarn
		}
		ex.Evidence = n.Kind + "; " + n.Evidence
	}
	h = append(h, ex)
	// revocations
	rv := Headline{Label: "Revocations", Value: strconv.Itoa(r.Revocations.Count), Status: StatusOK, Evidence: "policy.revoke, policy.unrevoke and federated deny-list events in the audit log"}
	if r.Revocations.Count > 0 {
		rv.Value += fmt.Sprintf(" (published in %s median, %s max)", r.Revocations.PublishMedian, r.Revocations.PublishMax)
		rv.Evidence = "newest: " + r.Revocations.Items[0].Evidence
	}
	h = append(h, rv)
	// audit
	au := Headline{Label: "Audit log", Status: StatusInfo, Value: "not verified (--no-verify)"}
	switch {
	case in.Audit.Checked && in.Audit.Verified:
		au.Status, au.Value = StatusOK, fmt.Sprintf("verified, %d events", in.Audit.Size)
	case in.Audit.Checked:
		au.Status, au.Value = StatusFail, fmt.Sprintf("FAILED (%d problems)", len(in.Audit.Problems))
	}
	au.Evidence = fmt.Sprintf("checkpoint %s size %d root %s, signed by %s at %s", in.Audit.Origin, in.Audit.Size, shortHex(in.Audit.Root), in.Audit.KeyID, in.Audit.Time.UTC().Format(time.RFC3339))
	h = append(h, au)
	// drift
	dr := Headline{Label: "Drift", Value: "not configured", Status: StatusInfo, Evidence: "no drift findings were available to this report"}
	if r.Drift.Configured {
		dr.Value, dr.Status, dr.Evidence = fmt.Sprintf("%d finding(s)", len(in.Drift.Findings)), StatusOK, r.Drift.Source
		if len(in.Drift.Findings) > 0 {
			dr.Status = StatusWarn
		}
	}
	h = append(h, dr)
	an := Headline{Label: "Anomaly alerts", Value: strconv.Itoa(len(in.Alerts)), Status: StatusOK, Evidence: "anomaly.alert events in the audit log"}
	if len(in.Alerts) > 0 {
		an.Status = StatusWarn
		a := r.Anomalies.Alerts[0]
		an.Evidence = fmt.Sprintf("newest: %s by %s at audit seq %d", a.Kind, a.Caller, a.Seq)
	}
	h = append(h, an)
	return h
}

func shortHex(s string) string {
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}

// fmtDur prints a duration in days, hours and minutes (or seconds when
// shorter than a minute).
func fmtDur(d time.Duration) string {
	neg := d < 0
	if neg {
		d = -d
	}
	var s string
	switch {
	case d < time.Second:
		s = d.Round(time.Millisecond).String()
	case d < time.Minute:
		s = d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		s = fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		s = fmt.Sprintf("%dd%02dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	}
	if neg {
		return "-" + s
	}
	return s
}

// Duration is a duration in the report; JSON gives it in seconds.
type Duration time.Duration

// MarshalJSON writes the duration in seconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, time.Duration(d).Seconds(), 'f', -1, 64), nil
}

// String prints the duration as fmtDur does.
func (d Duration) String() string { return fmtDur(time.Duration(d)) }

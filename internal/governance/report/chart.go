package report

import (
	"fmt"
	"strconv"
)

// Chart is a horizontal bar chart drawn as inline SVG: every coordinate is
// computed here, the template only places them (text goes through
// html/template's escaping like everything else).
type Chart struct {
	Title  string
	Width  int
	Height int
	Rows   []ChartRow
	Empty  string // shown instead of bars when no row has a value
}

// ChartRow is one labelled bar, made of segments.
type ChartRow struct {
	Label    string
	Y, TextY int
	Value    string // printed after the bar
	ValueX   int
	Segments []Segment
}

// Segment is one part of a bar.
type Segment struct {
	X, Y, W int
	Class   string
	Title   string
}

// SegmentValue is one value to draw.
type SegmentValue struct {
	Value float64
	Class string // ok, warn, fail, info, a, b
	Title string
}

const (
	chartLabelW = 170
	chartBarW   = 330
	chartRowH   = 24
)

// barChart lays out rows of stacked segments scaled to the largest total.
func barChart(title string, labels []string, values [][]SegmentValue, valueText []string) Chart {
	c := Chart{Title: title, Width: chartLabelW + chartBarW + 200}
	var maxTotal float64
	for _, row := range values {
		var t float64
		for _, s := range row {
			t += s.Value
		}
		maxTotal = max(maxTotal, t)
	}
	if maxTotal == 0 {
		c.Empty = "nothing to chart"
	}
	for i, l := range labels {
		y := 8 + i*chartRowH
		r := ChartRow{Label: l, Y: y, TextY: y + 13}
		x := chartLabelW
		for _, s := range values[i] {
			if s.Value <= 0 || maxTotal == 0 {
				continue
			}
			w := int(s.Value / maxTotal * chartBarW)
			w = max(w, 2)
			r.Segments = append(r.Segments, Segment{X: x, Y: y, W: w, Class: s.Class, Title: s.Title})
			x += w
		}
		r.ValueX = x + 6
		if i < len(valueText) {
			r.Value = valueText[i]
		}
		c.Rows = append(c.Rows, r)
	}
	c.Height = 16 + len(labels)*chartRowH
	return c
}

func itoa(n int) string { return strconv.Itoa(n) }

func charts(r *Report) []Chart {
	var out []Chart
	// rotation compliance per classification
	var labels, texts []string
	var vals [][]SegmentValue
	for _, c := range r.Rotation.PerClassification {
		labels = append(labels, c.Name)
		manual := c.Keys - c.Compliant - c.Overdue
		vals = append(vals, []SegmentValue{
			{float64(c.Compliant), "ok", fmt.Sprintf("%d on time", c.Compliant)},
			{float64(c.Overdue), "fail", fmt.Sprintf("%d overdue", c.Overdue)},
			{float64(manual), "info", fmt.Sprintf("%d manual only", manual)},
		})
		texts = append(texts, fmt.Sprintf("%d/%d on time", c.Compliant, c.Compliant+c.Overdue))
	}
	out = append(out, barChart("Key rotation compliance per classification", labels, vals, texts))
	// time to rotate
	labels, texts, vals = nil, nil, nil
	for _, c := range r.Rotation.PerClassification {
		labels = append(labels, c.Name)
		vals = append(vals, []SegmentValue{{float64(c.Median), "a", "median " + c.Median.String()}, {float64(c.Max - c.Median), "b", "max " + c.Max.String()}})
		texts = append(texts, fmt.Sprintf("median %s, max %s", c.Median, c.Max))
	}
	out = append(out, barChart("Time to rotate (between versions) per classification", labels, vals, texts))
	// TTL distribution
	labels, texts, vals = nil, nil, nil
	for _, b := range r.Certificates.TTLBuckets {
		labels = append(labels, "TTL "+b.Label)
		vals = append(vals, []SegmentValue{{float64(b.Count), "a", itoa(b.Count) + " entries"}})
		texts = append(texts, itoa(b.Count))
	}
	out = append(out, barChart("X509-SVID lifetimes of registration entries", labels, vals, texts))
	// coverage
	if r.Coverage.Measured {
		cv := r.Coverage
		out = append(out, barChart("Connections seen by reporters", []string{"mTLS", "of them TLS 1.3", "of them PQ hybrid", "plaintext", "failed handshakes"},
			[][]SegmentValue{{{float64(cv.MTLS), "ok", "mTLS"}}, {{float64(cv.TLS13), "a", "TLS 1.3"}}, {{float64(cv.PQ), "a", "post-quantum hybrid"}},
				{{float64(cv.Plaintext), "fail", "plaintext"}}, {{float64(cv.Failed), "warn", "failed"}}},
			[]string{fmt.Sprint(cv.MTLS), fmt.Sprint(cv.TLS13), fmt.Sprint(cv.PQ), fmt.Sprint(cv.Plaintext), fmt.Sprint(cv.Failed)}))
	}
	// anomalies
	if len(r.Anomalies.ByKind) > 0 {
		labels, texts, vals = nil, nil, nil
		for _, b := range r.Anomalies.ByKind {
			labels = append(labels, b.Label)
			vals = append(vals, []SegmentValue{{float64(b.Count), "warn", itoa(b.Count)}})
			texts = append(texts, itoa(b.Count))
		}
		out = append(out, barChart("Anomaly alerts by kind", labels, vals, texts))
	}
	return out
}

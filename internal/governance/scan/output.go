package scan

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable writes results as the human table of `ward scan`.
func WriteTable(w io.Writer, results []*Result) error {
	for i, r := range results {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "== %s", r.Target)
		if r.Source != "" {
			fmt.Fprintf(w, " [%s]", r.Source)
		}
		if r.ServerName != "" {
			fmt.Fprintf(w, " (SNI %s)", r.ServerName)
		}
		fmt.Fprintf(w, ": %d probes in %.0f ms\n", r.Probes, r.DurationMS)
		if r.Error != "" {
			fmt.Fprintf(w, "error: %s\n", r.Error)
		} else {
			writeDetails(w, r)
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEVERITY\tRULE\tFINDING")
		for _, f := range r.Findings {
			fmt.Fprintf(tw, "%s\t%s\t%s: %s\n", strings.ToUpper(f.Severity.String()), f.Rule, f.Title, f.Evidence)
		}
		if len(r.Findings) == 0 {
			fmt.Fprintln(tw, "-\t-\tno findings")
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func writeDetails(w io.Writer, r *Result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, p := range r.Protocols {
		if !p.Offered {
			note := ""
			if p.Note != "" {
				note = " (" + p.Note + ")"
			}
			fmt.Fprintf(tw, "%s\tnot offered%s\n", p.Version, note)
			continue
		}
		order := "client's order"
		if p.ServerOrder {
			order = "server's order, prefers " + p.Preferred
		} else if len(p.Suites) == 1 {
			order = "one suite"
		}
		fmt.Fprintf(tw, "%s\toffered, %d suites (%s)\n", p.Version, len(p.Suites), order)
		for _, s := range p.Suites {
			fmt.Fprintf(tw, "\t  %s\t0x%04X\t%d bits\n", s.Name, s.ID, s.Bits)
		}
		if len(p.Groups) > 0 {
			var names []string
			for _, g := range p.Groups {
				names = append(names, g.Name)
			}
			fmt.Fprintf(tw, "\t  groups: %s\n", strings.Join(names, ", "))
		}
	}
	tw.Flush()
	if r.Offered(TLS13) {
		pq := r.PostQuantum
		fmt.Fprintf(w, "post-quantum %s: offered=%t, preferred=%t (chosen when offered first: %s; when listed last: %s)\n",
			pq.Group, pq.Offered, pq.Preferred, orNone(pq.ChosenWhenClientPrefers), orNone(pq.ChosenWhenListedLast))
	}
	if n := r.Negotiated; n != nil {
		if n.Version != 0 {
			fmt.Fprintf(w, "negotiated (Go client): %s %s %s\n", n.Version, n.Suite, n.Group)
		} else if n.Error != "" {
			fmt.Fprintf(w, "negotiated (Go client): failed: %s\n", n.Error)
		}
	}
	ca := r.ClientAuth
	fmt.Fprintf(w, "client certificate: requested=%t required=%t\n", ca.Requested, ca.Required)
	if ch := r.Chain; ch != nil {
		fmt.Fprintf(w, "chain: trusted=%t (%s)", ch.Trusted, ch.Bundle)
		if ch.HostnameMatch != nil {
			fmt.Fprintf(w, ", hostname %s match=%t", ch.Hostname, *ch.HostnameMatch)
		}
		if ch.SPIFFEIDMatch != nil {
			fmt.Fprintf(w, ", SPIFFE ID %s match=%t", ch.SPIFFEID, *ch.SPIFFEIDMatch)
		}
		if ch.OCSP != nil {
			fmt.Fprintf(w, ", OCSP stapled: %s", orNone(ch.OCSP.Status))
		}
		fmt.Fprintln(w)
		for i, c := range ch.Certificates {
			fmt.Fprintf(w, "  [%d] %s: %s %d, %s, expires %s\n", i, certName(c), c.KeyType, c.KeyBits, c.SignatureAlgorithm, c.NotAfter.Format(time.RFC3339))
		}
	}
}

// WriteJSON writes results as one JSON document {"results": [...]}.
func WriteJSON(w io.Writer, results []*Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		Results []*Result `json:"results"`
	}{results})
}

// WriteSARIF writes the findings as a SARIF 2.1.0 log (one run, the rubric
// as the tool's rules, each endpoint as the location tls://HOST:PORT).
func WriteSARIF(w io.Writer, results []*Result, version string) error {
	type msg struct {
		Text string `json:"text"`
	}
	type rule struct {
		ID                   string            `json:"id"`
		ShortDescription     msg               `json:"shortDescription"`
		Help                 msg               `json:"help"`
		DefaultConfiguration map[string]string `json:"defaultConfiguration"`
		Properties           map[string]string `json:"properties"`
	}
	type location struct {
		PhysicalLocation struct {
			ArtifactLocation struct {
				URI string `json:"uri"`
			} `json:"artifactLocation"`
		} `json:"physicalLocation"`
	}
	type result struct {
		RuleID     string            `json:"ruleId"`
		RuleIndex  int               `json:"ruleIndex"`
		Level      string            `json:"level"`
		Message    msg               `json:"message"`
		Locations  []location        `json:"locations"`
		Properties map[string]string `json:"properties"`
	}
	var rules []rule
	index := map[string]int{}
	for i, r := range Rules {
		index[r.ID] = i
		rules = append(rules, rule{ID: r.ID, ShortDescription: msg{r.Title}, Help: msg{orNone(r.Fix)},
			DefaultConfiguration: map[string]string{"level": sarifLevel(r.Severity)},
			Properties:           map[string]string{"severity": r.Severity.String()}})
	}
	var out []result
	for _, r := range results {
		for _, f := range r.Findings {
			var loc location
			loc.PhysicalLocation.ArtifactLocation.URI = "tls://" + r.Target
			out = append(out, result{RuleID: f.Rule, RuleIndex: index[f.Rule], Level: sarifLevel(f.Severity),
				Message:    msg{fmt.Sprintf("%s: %s: %s", r.Target, f.Title, f.Evidence)},
				Locations:  []location{loc},
				Properties: map[string]string{"severity": f.Severity.String(), "target": r.Target}})
		}
	}
	if out == nil {
		out = []result{}
	}
	doc := map[string]any{
		"version": "2.1.0",
		"$schema": "https://json.schemastore.org/sarif-2.1.0.json",
		"runs": []any{map[string]any{
			"tool": map[string]any{"driver": map[string]any{
				"name": "ward scan", "version": version, "informationUri": "docs/scan.md", "rules": rules,
			}},
			"results": out,
		}},
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

func sarifLevel(s Severity) string {
	switch {
	case s >= High:
		return "error"
	case s == Medium:
		return "warning"
	}
	return "note"
}

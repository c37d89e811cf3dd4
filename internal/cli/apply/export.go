package apply

import (
	"bytes"
	"fmt"
	"io"
	"sort"

	"gopkg.in/yaml.v3"
)

// Document forms for writing (field order is the order written).
type keyOut struct {
	Kind              string `yaml:"kind"`
	Name              string `yaml:"name"`
	Classification    string `yaml:"classification"`
	Purpose           string `yaml:"purpose,omitempty"`
	MinDecryptVersion uint32 `yaml:"min_decrypt_version,omitempty"`
}

type entryOut struct {
	Kind          string            `yaml:"kind"`
	SPIFFEID      string            `yaml:"spiffe_id"`
	ParentID      string            `yaml:"parent_id"`
	Selectors     []string          `yaml:"selectors,flow"`
	TTL           string            `yaml:"ttl,omitempty"`
	DNSNames      []string          `yaml:"dns_names,omitempty,flow"`
	Hint          string            `yaml:"hint,omitempty"`
	FederatesWith []string          `yaml:"federates_with,omitempty,flow"`
	Labels        map[string]string `yaml:"labels,omitempty"`
}

type federationOut struct {
	Kind             string   `yaml:"kind"`
	TrustDomain      string   `yaml:"trust_domain"`
	EndpointURL      string   `yaml:"endpoint_url"`
	Profile          string   `yaml:"profile"`
	EndpointSPIFFEID string   `yaml:"endpoint_spiffe_id,omitempty"`
	AllowedGateways  []string `yaml:"allowed_gateways,omitempty"`
	Network          bool     `yaml:"network,omitempty"`
	NetworkEndpoints []string `yaml:"network_endpoint_cidrs,omitempty"`
}

type postureOut struct {
	Kind    string `yaml:"kind"`
	Posture string `yaml:"posture"`
}

type policyOut struct {
	Kind  string `yaml:"kind"`
	Name  string `yaml:"name"`
	Cedar string `yaml:"cedar"`
}

// Export writes the state as documents `ward apply` reads: every key
// (min_decrypt_version only when above 1), every federation relationship
// added through the API (without its bootstrap bundle: add bundle: FILE
// before applying to another authority), every entry (identified by
// SPIFFE ID, parent and selectors), and the current policy set's files
// inline, and the declared posture inline. Applying the output to the same
// authority changes nothing.
func Export(w io.Writer, st *State) error {
	var buf bytes.Buffer
	fmt.Fprintln(&buf, "# Written by `ward export`: the authority's keys, entries and policy set as")
	fmt.Fprintln(&buf, "# `ward apply` documents (docs/apply.md). `ward apply --dry-run -f` this file")
	fmt.Fprintln(&buf, "# against the same authority shows no changes.")
	var docs []any
	for _, n := range sortedNames(st.Keys) {
		k := st.Keys[n]
		mdv := k.MinDecryptVersion
		if mdv <= 1 {
			mdv = 0
		}
		docs = append(docs, keyOut{KindKey, k.Name, k.Classification, k.Purpose, mdv})
	}
	for _, td := range sortedNames(st.Federations) {
		f := st.Federations[td]
		if f.Source == "config" {
			continue // the server's configuration declares it
		}
		docs = append(docs, federationOut{KindFederation, f.TrustDomain, f.EndpointURL, f.Profile, f.EndpointSPIFFEID, f.AllowedGateways, f.Network, f.NetworkEndpoints})
	}
	entries := append([]*StoredEntry(nil), st.Entries...)
	sort.SliceStable(entries, func(i, j int) bool {
		if entries[i].SPIFFEID != entries[j].SPIFFEID {
			return entries[i].SPIFFEID < entries[j].SPIFFEID
		}
		return entries[i].Identity() < entries[j].Identity()
	})
	for _, e := range entries {
		o := entryOut{Kind: KindEntry, SPIFFEID: e.SPIFFEID, ParentID: e.ParentID, DNSNames: e.DNSNames, Hint: e.Hint, FederatesWith: e.FederatesWith, Labels: e.Labels}
		for _, s := range e.Selectors {
			o.Selectors = append(o.Selectors, s.String())
		}
		if e.TTL != 0 {
			o.TTL = fmtTTL(e.TTL)
		}
		docs = append(docs, o)
	}
	for _, n := range sortedNames(st.Policy) {
		docs = append(docs, policyOut{KindPolicy, n, string(st.Policy[n])})
	}
	if st.Posture != nil {
		docs = append(docs, postureOut{KindPosture, string(st.Posture)})
	}
	for _, d := range docs {
		var b bytes.Buffer
		enc := yaml.NewEncoder(&b)
		enc.SetIndent(2)
		if err := enc.Encode(d); err != nil {
			return err
		}
		enc.Close()
		buf.WriteString("---\n")
		buf.Write(b.Bytes())
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// Package apply is `ward apply` and `ward export`: a declarative set of
// YAML documents (kind Key, Entry, Policy, Federation) read and checked as
// a whole,
// compared with the authority's state as a plan (+ create, ~ change,
// - delete only with prune), applied in batches, and the state written
// back in the same format (docs/apply.md).
package apply

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/catalog"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
	"github.com/wardproject/ward/internal/shared/posture"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// Kinds of documents. Exported services will become a further kind: a
// parse function in kinds, a state reader, a plan step, an execute step
// and an export writer (docs/apply.md, "Extending").
const (
	KindKey        = "Key"
	KindEntry      = "Entry"
	KindPolicy     = "Policy"
	KindFederation = "Federation"
	KindPosture    = "Posture"
)

// kindNames lists the kinds for messages.
var kindNames = []string{KindKey, KindEntry, KindPolicy, KindFederation, KindPosture}

// kinds maps each kind to its fields (for "did you mean") and parser.
var kinds = map[string]struct {
	fields []string
	parse  func(p *parser, d *Doc, fields map[string]*yaml.Node)
}{
	KindKey:        {[]string{"kind", "name", "classification", "purpose", "min_decrypt_version"}, parseKey},
	KindEntry:      {[]string{"kind", "id", "spiffe_id", "parent_id", "selectors", "ttl", "dns_names", "hint", "federates_with", "labels"}, parseEntry},
	KindPolicy:     {[]string{"kind", "name", "file", "cedar"}, parsePolicy},
	KindFederation: {[]string{"kind", "trust_domain", "endpoint_url", "profile", "endpoint_spiffe_id", "bundle", "allowed_gateways", "network", "network_endpoint_cidrs"}, parseFederation},
	KindPosture:    {[]string{"kind", "file", "posture"}, parsePosture},
}

// Limits on untrusted input.
const (
	MaxFileSize  = 32 << 20
	maxDocuments = 100000
)

// Doc is one document with where it came from.
type Doc struct {
	Kind       string
	File       string
	Line       int
	Key        *KeySpec
	Entry      *EntrySpec
	Policy     *PolicySpec
	Federation *FederationSpec
	Posture    *PostureSpec
	// lines of the fields, for errors found after parsing.
	lines map[string]int
}

// FieldLine returns the line of field in the document (the document's
// line if the field is absent).
func (d *Doc) FieldLine(field string) int {
	if l, ok := d.lines[field]; ok {
		return l
	}
	return d.Line
}

// Where is "file:line" of the document.
func (d *Doc) Where() string { return fmt.Sprintf("%s:%d", d.File, d.Line) }

// errAt is an error about field of d.
func (d *Doc) errAt(field, format string, a ...any) *Error {
	return &Error{File: d.File, Line: d.FieldLine(field), Field: field, Msg: fmt.Sprintf(format, a...)}
}

// KeySpec is a KMS key.
type KeySpec struct {
	Name           string
	Classification string
	Purpose        string
	// MinDecryptVersion is 0 when the document does not set it (left
	// as it is).
	MinDecryptVersion uint32
}

// EntrySpec is a registration entry, normalized as the registry stores it.
type EntrySpec struct {
	ID            string
	SPIFFEID      string
	ParentID      string
	Selectors     []attest.Selector
	TTL           time.Duration
	DNSNames      []string
	Hint          string
	FederatesWith []string
	Labels        map[string]string
}

// Identity is the entry's natural key: SPIFFE ID, parent and selectors
// (the registry allows one entry per triple).
func (e *EntrySpec) Identity() string {
	var b strings.Builder
	b.WriteString(e.SPIFFEID)
	b.WriteByte('\x00')
	b.WriteString(e.ParentID)
	for _, s := range e.Selectors {
		b.WriteByte('\x00')
		b.WriteString(s.String())
	}
	return b.String()
}

// PolicySpec is one Cedar file of the policy set, named Name.
type PolicySpec struct {
	Name string
	// Path is the file the document names (relative to the document),
	// read by Load; empty for inline sources.
	Path string
	// Source is the Cedar text (inline, or read from Path).
	Source []byte
	// SourceFile and SourceLine say where line 1 of Source is, for
	// mapping compile errors back: the .cedar file (line 1), or the
	// YAML document (the line before the block's first).
	SourceFile string
	SourceLine int
}

// PostureSpec is the declared posture file (docs/governance.md).
type PostureSpec struct {
	// Path is the posture file the document names (relative to the
	// document), read by Load; empty for an inline posture.
	Path string
	// Source is the file's text (inline, or read from Path).
	Source []byte
}

// FederationSpec is a federation relationship with a foreign trust domain.
type FederationSpec struct {
	TrustDomain      string
	EndpointURL      string
	Profile          string // https_spiffe (default) or https_web
	EndpointSPIFFEID string // https_spiffe: default spiffe://TRUST-DOMAIN/ward/server
	// BundlePath is the bootstrap bundle file (relative to the document),
	// read by Load; Bundle is its content. Used only to create the
	// relationship.
	BundlePath string
	Bundle     []byte
	// AllowedGateways bound where the trust domain's exported services
	// may have their gateways (catalog.ParseGatewayAllow; empty: the
	// endpoint's host only).
	AllowedGateways []string
	// Network shares this cluster's WireGuard tunnels with the trust
	// domain and relays its tunnels (https_spiffe only; docs/network.md);
	// NetworkEndpoints bound where its tunnels' endpoints may be (CIDR
	// prefixes; empty: anywhere but this cluster's own ranges).
	Network          bool
	NetworkEndpoints []string
}

// Error is a problem in the documents: file, line and field.
type Error struct {
	File  string
	Line  int
	Field string
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, ": field %s", e.Field)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Errors are every problem found; nothing was changed.
type Errors []*Error

func (es Errors) Error() string {
	lines := []string{fmt.Sprintf("%d problem(s) in the documents; nothing was changed:", len(es))}
	for _, e := range es {
		lines = append(lines, "  "+e.Error())
	}
	return strings.Join(lines, "\n")
}

// orNil returns es as an error, or nil if empty.
func (es Errors) orNil() error {
	if len(es) == 0 {
		return nil
	}
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].File != es[j].File {
			return es[i].File < es[j].File
		}
		return es[i].Line < es[j].Line
	})
	return es
}

type parser struct {
	file string
	errs Errors
}

func (p *parser) fail(line int, field, format string, a ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Field: field, Msg: fmt.Sprintf(format, a...)})
}

// Parse reads the YAML documents of one file (a stream separated by
// "---"). It returns every document it could read and every problem, each
// with file, line and field; policy files named by "file:" are read later
// by Load.
func Parse(file string, data []byte) ([]*Doc, error) {
	p := &parser{file: file}
	if len(data) > MaxFileSize {
		p.fail(0, "", "the file is %d bytes, more than the limit of %d: split it", len(data), MaxFileSize)
		return nil, p.errs.orNil()
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []*Doc
	for n := 0; ; n++ {
		var root yaml.Node
		err := dec.Decode(&root)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			p.fail(yamlErrLine(err), "", "invalid YAML: %s", yamlErrMsg(err))
			break
		}
		if n >= maxDocuments {
			p.fail(root.Line, "", "more than %d documents in one file: split it", maxDocuments)
			break
		}
		if len(root.Content) == 0 || root.Content[0].Kind == yaml.ScalarNode && root.Content[0].Tag == "!!null" {
			continue // an empty document (a trailing "---")
		}
		if d := p.document(root.Content[0]); d != nil {
			docs = append(docs, d)
		}
	}
	return docs, p.errs.orNil()
}

// yamlErrLine finds "line N" in a yaml.v3 error.
func yamlErrLine(err error) int {
	s := err.Error()
	if i := strings.Index(s, "line "); i >= 0 {
		j := i + 5
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if n, err := strconv.Atoi(s[i+5 : j]); err == nil {
			return n
		}
	}
	return 0
}

func yamlErrMsg(err error) string {
	s := strings.TrimPrefix(err.Error(), "yaml: ")
	if i := strings.Index(s, "line "); i == 0 {
		if j := strings.Index(s, ": "); j > 0 {
			s = s[j+2:]
		}
	}
	return s
}

func (p *parser) document(n *yaml.Node) *Doc {
	if n.Kind != yaml.MappingNode {
		p.fail(n.Line, "", "a document must be a mapping starting with kind: Key, Entry, Policy, Federation or Posture")
		return nil
	}
	fields := map[string]*yaml.Node{}
	keyLines := map[string]int{}
	order := []string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.fail(k.Line, "", "a field name must be a plain string")
			continue
		}
		if _, dup := fields[k.Value]; dup {
			p.fail(k.Line, k.Value, "given twice in one document (first on line %d)", keyLines[k.Value])
			continue
		}
		fields[k.Value], keyLines[k.Value] = v, k.Line
		order = append(order, k.Value)
	}
	kn, ok := fields["kind"]
	if !ok {
		p.fail(n.Line, "kind", "missing: every document starts with kind: Key, Entry, Policy, Federation or Posture")
		return nil
	}
	kind, ok := p.scalar(kn, "kind")
	if !ok {
		return nil
	}
	spec, known := kinds[kind]
	if !known {
		hint := ""
		if near := yamlconf.Nearest(kind, kindNames); near != "" {
			hint = fmt.Sprintf(" (did you mean %s?)", near)
		}
		p.fail(kn.Line, "kind", "unknown kind %q%s: use %s", kind, hint, strings.Join(kindNames, ", "))
		return nil
	}
	d := &Doc{Kind: kind, File: p.file, Line: n.Line, lines: keyLines}
	suggested := map[string]bool{}
	for _, f := range order {
		if !contains(spec.fields, f) {
			hint := ""
			if near := yamlconf.Nearest(f, spec.fields); near != "" {
				hint = fmt.Sprintf(": did you mean %s?", near)
				suggested[near] = true
			}
			p.fail(keyLines[f], f, "unknown field in the %s document%s (fields: %s)", kind, hint, strings.Join(spec.fields[1:], ", "))
			delete(fields, f)
		}
	}
	before := len(p.errs)
	spec.parse(p, d, fields)
	if len(p.errs) > before {
		// A field reported missing that a misspelt one was suggested
		// for is said once, by the suggestion.
		kept := p.errs[:before]
		for _, e := range p.errs[before:] {
			if !(suggested[e.Field] && strings.HasPrefix(e.Msg, "missing")) {
				kept = append(kept, e)
			}
		}
		p.errs = kept
		return nil
	}
	return d
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.AliasNode:
		return "an alias"
	}
	return "a " + strings.TrimPrefix(n.Tag, "!!")
}

// scalar reads a string field.
func (p *parser) scalar(n *yaml.Node, field string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.fail(n.Line, field, "expected a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

// list reads a list of strings.
func (p *parser) list(n *yaml.Node, field string) ([]string, bool) {
	if n.Kind != yaml.SequenceNode {
		p.fail(n.Line, field, "expected a list of strings, got %s", describe(n))
		return nil, false
	}
	out := make([]string, 0, len(n.Content))
	for _, c := range n.Content {
		s, ok := p.scalar(c, field)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

// strmap reads a mapping of strings.
func (p *parser) strmap(n *yaml.Node, field string) (map[string]string, bool) {
	if n.Kind != yaml.MappingNode {
		p.fail(n.Line, field, "expected a mapping of strings (key: value), got %s", describe(n))
		return nil, false
	}
	out := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, ok1 := p.scalar(n.Content[i], field)
		v, ok2 := p.scalar(n.Content[i+1], field+"."+n.Content[i].Value)
		if !ok1 || !ok2 {
			return nil, false
		}
		if _, dup := out[k]; dup {
			p.fail(n.Content[i].Line, field+"."+k, "given twice")
			return nil, false
		}
		out[k] = v
	}
	return out, true
}

func (p *parser) required(d *Doc, fields map[string]*yaml.Node, field, example string) (string, bool) {
	n, ok := fields[field]
	if !ok {
		p.fail(d.Line, field, "missing: a %s document needs it (e.g. %s: %s)", d.Kind, field, example)
		return "", false
	}
	s, ok := p.scalar(n, field)
	if ok && s == "" {
		p.fail(n.Line, field, "is empty (e.g. %s: %s)", field, example)
		return "", false
	}
	return s, ok
}

func parseKey(p *parser, d *Doc, f map[string]*yaml.Node) {
	k := &KeySpec{}
	var ok bool
	if k.Name, ok = p.required(d, f, "name", "tenant-a/payments"); ok {
		if err := kmsfmt.ValidateKeyName(k.Name); err != nil {
			p.fail(f["name"].Line, "name", "%v", err)
		}
	}
	k.Classification, _ = p.required(d, f, "classification", "confidential")
	if n, ok := f["purpose"]; ok {
		k.Purpose, _ = p.scalar(n, "purpose")
	}
	if n, ok := f["min_decrypt_version"]; ok {
		if s, ok := p.scalar(n, "min_decrypt_version"); ok {
			v, err := strconv.ParseUint(s, 10, 32)
			if err != nil || v == 0 {
				p.fail(n.Line, "min_decrypt_version", "%q is not a version number (1, 2, ...)", s)
			}
			k.MinDecryptVersion = uint32(v)
		}
	}
	d.Key = k
}

func parseEntry(p *parser, d *Doc, f map[string]*yaml.Node) {
	e := &EntrySpec{}
	if n, ok := f["id"]; ok {
		if s, ok := p.scalar(n, "id"); ok {
			if !validEntryID(s) {
				p.fail(n.Line, "id", "%q is not an entry ID: 32 lowercase hex digits (see `ward entry list`), or leave it out", s)
			}
			e.ID = s
		}
	}
	for _, fld := range []struct {
		name, example string
		out           *string
	}{{"spiffe_id", "spiffe://example.org/payments", &e.SPIFFEID}, {"parent_id", "spiffe://example.org/ward/agent/node-1", &e.ParentID}} {
		s, ok := p.required(d, f, fld.name, fld.example)
		if !ok {
			continue
		}
		id, err := spiffeid.FromString(s)
		if err != nil {
			p.fail(f[fld.name].Line, fld.name, "%q is not a SPIFFE ID (%v): e.g. %s", s, err, fld.example)
			continue
		}
		*fld.out = id.String()
	}
	if n, ok := f["selectors"]; !ok {
		p.fail(d.Line, "selectors", "missing: an entry needs at least one, e.g. selectors: [unix:uid:1000]")
	} else if ss, ok := p.list(n, "selectors"); ok {
		if len(ss) == 0 {
			p.fail(n.Line, "selectors", "is empty: give at least one, e.g. unix:uid:1000")
		}
		for i, s := range ss {
			sel, err := attest.ParseSelector(s)
			if err != nil {
				p.fail(n.Content[i].Line, "selectors", "%q: %v", s, err)
				continue
			}
			e.Selectors = append(e.Selectors, sel)
		}
		e.Selectors = attest.Normalize(e.Selectors)
	}
	if n, ok := f["ttl"]; ok {
		if s, ok := p.scalar(n, "ttl"); ok {
			v, err := yamlconf.ParseDuration(s)
			if err != nil {
				p.fail(n.Line, "ttl", "%v", err)
			}
			e.TTL = v
		}
	}
	if n, ok := f["dns_names"]; ok {
		if ss, ok := p.list(n, "dns_names"); ok {
			for _, s := range ss {
				e.DNSNames = append(e.DNSNames, strings.ToLower(s))
			}
		}
	}
	if n, ok := f["hint"]; ok {
		e.Hint, _ = p.scalar(n, "hint")
	}
	if n, ok := f["federates_with"]; ok {
		if ss, ok := p.list(n, "federates_with"); ok {
			for i, s := range ss {
				td, err := spiffeid.TrustDomainFromString(s)
				if err != nil || strings.Contains(s, "/") {
					p.fail(n.Content[i].Line, "federates_with", "%q is not a trust domain name (e.g. prod-us.example.org)", s)
					continue
				}
				e.FederatesWith = append(e.FederatesWith, td.Name())
			}
		}
	}
	if n, ok := f["labels"]; ok {
		if m, ok := p.strmap(n, "labels"); ok && len(m) > 0 {
			e.Labels = m
		}
	}
	d.Entry = e
}

func validEntryID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// fileOrText reads the source a document gives either as file (a path
// relative to the document) or inline as text under key: exactly one of
// them (need says so when both or neither are there). An empty file fails
// saying emptyFile. ok is false when there is nothing to go on.
func (p *parser) fileOrText(d *Doc, f map[string]*yaml.Node, key, need, emptyFile string) (path string, text *yaml.Node, ok bool) {
	fileN, hasFile := f["file"]
	textN, hasText := f[key]
	switch {
	case hasFile == hasText:
		p.fail(d.Line, "file", "%s", need)
		return "", nil, false
	case hasFile:
		path, _ = p.scalar(fileN, "file")
		if path == "" {
			p.fail(fileN.Line, "file", "is empty: %s", emptyFile)
		}
		return path, nil, true
	}
	_, ok = p.scalar(textN, key)
	return "", textN, ok
}

func parsePolicy(p *parser, d *Doc, f map[string]*yaml.Node) {
	ps := &PolicySpec{}
	path, cedarN, ok := p.fileOrText(d, f, "cedar", "a Policy document needs exactly one of file (a .cedar file or a directory, relative to this document) or cedar (the policy text)", "give a .cedar file or a directory")
	switch {
	case !ok:
		return
	case cedarN == nil:
		ps.Path = path
		if n, ok := f["name"]; ok {
			p.fail(n.Line, "name", "only for inline cedar: a policy file is named by its path")
		}
	default:
		ps.Source = []byte(cedarN.Value)
		ps.SourceFile, ps.SourceLine = p.file, cedarN.Line
		if cedarN.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
			ps.SourceLine = cedarN.Line // the "|" line; the text starts on the next
		} else {
			ps.SourceLine = cedarN.Line - 1
		}
		n, ok := f["name"]
		if !ok {
			p.fail(d.Line, "name", "missing: an inline policy needs a name for its file in the set (e.g. name: connect.cedar)")
			return
		}
		ps.Name, _ = p.scalar(n, "name")
	}
	d.Policy = ps
}

func parsePosture(p *parser, d *Doc, f map[string]*yaml.Node) {
	ps := &PostureSpec{}
	path, srcN, ok := p.fileOrText(d, f, "posture", "a Posture document needs exactly one of file (a posture file, relative to this document) or posture (its text)", "give the posture file")
	switch {
	case !ok:
		return
	case srcN == nil:
		if ps.Path = path; path == "" {
			return
		}
	default:
		ps.Source = []byte(srcN.Value)
		if _, err := posture.Parse(ps.Source, nil); err != nil {
			p.fail(srcN.Line, "posture", "%v", err)
			return
		}
	}
	d.Posture = ps
}

func parseFederation(p *parser, d *Doc, f map[string]*yaml.Node) {
	fs := &FederationSpec{Profile: "https_spiffe"}
	if s, ok := p.required(d, f, "trust_domain", "b.example.org"); ok {
		td, err := spiffeid.TrustDomainFromString(s)
		if err != nil || strings.Contains(s, "/") {
			p.fail(f["trust_domain"].Line, "trust_domain", "%q is not a trust domain name (e.g. b.example.org)", s)
		} else {
			fs.TrustDomain = td.Name()
		}
	}
	if s, ok := p.required(d, f, "endpoint_url", "https://ward.b.example.org:8444"); ok {
		if u, err := url.Parse(s); err != nil || u.Scheme != "https" || u.Host == "" {
			p.fail(f["endpoint_url"].Line, "endpoint_url", "%q is not an https:// URL of a bundle endpoint", s)
		}
		fs.EndpointURL = s
	}
	if n, ok := f["profile"]; ok {
		if s, ok := p.scalar(n, "profile"); ok {
			if s != "https_spiffe" && s != "https_web" {
				p.fail(n.Line, "profile", "%q: use https_spiffe or https_web", s)
			}
			fs.Profile = s
		}
	}
	if n, ok := f["endpoint_spiffe_id"]; ok {
		if s, ok := p.scalar(n, "endpoint_spiffe_id"); ok {
			id, err := spiffeid.FromString(s)
			switch {
			case err != nil:
				p.fail(n.Line, "endpoint_spiffe_id", "%q is not a SPIFFE ID (%v)", s, err)
			case fs.Profile == "https_web":
				p.fail(n.Line, "endpoint_spiffe_id", "profile https_web authenticates the endpoint with Web PKI and takes no SPIFFE ID")
			case fs.TrustDomain != "" && id.TrustDomain().Name() != fs.TrustDomain:
				p.fail(n.Line, "endpoint_spiffe_id", "%s is not in trust domain %s: its bundle could not authenticate the endpoint", s, fs.TrustDomain)
			default:
				fs.EndpointSPIFFEID = id.String()
			}
		}
	} else if fs.Profile == "https_spiffe" && fs.TrustDomain != "" {
		fs.EndpointSPIFFEID = "spiffe://" + fs.TrustDomain + "/ward/server"
	}
	if n, ok := f["bundle"]; ok {
		fs.BundlePath, _ = p.scalar(n, "bundle")
	}
	if n, ok := f["allowed_gateways"]; ok {
		if l, ok := p.list(n, "allowed_gateways"); ok {
			if _, err := catalog.ParseGatewayAllow(l); err != nil {
				p.fail(n.Line, "allowed_gateways", "%v", err)
			}
			fs.AllowedGateways = l
		}
	}
	if n, ok := f["network"]; ok {
		switch {
		case n.Kind != yaml.ScalarNode || n.Tag != "!!bool":
			p.fail(n.Line, "network", "expected true or false, got %s", describe(n))
		default:
			fs.Network = n.Value == "true" || n.Value == "True" || n.Value == "TRUE"
			if fs.Network && fs.Profile != "https_spiffe" {
				p.fail(n.Line, "network", "network needs profile https_spiffe (the tunnels are exchanged between the authorities' server IDs)")
			}
		}
	}
	if n, ok := f["network_endpoint_cidrs"]; ok {
		if l, ok := p.list(n, "network_endpoint_cidrs"); ok {
			for _, c := range l {
				if pr, err := netip.ParsePrefix(c); err != nil || pr.Bits() == 0 {
					p.fail(n.Line, "network_endpoint_cidrs", "%q is not a CIDR prefix narrower than everything (e.g. 198.51.100.0/24): name the peer's node networks", c)
				}
			}
			if !fs.Network {
				p.fail(n.Line, "network_endpoint_cidrs", "bounds the tunnels of a relationship with network: true; set it too, or drop this field")
			}
			fs.NetworkEndpoints = l
		}
	}
	d.Federation = fs
}

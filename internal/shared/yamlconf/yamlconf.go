// Package yamlconf is the YAML every ward configuration file is read with:
// strict decoding (unknown fields, empty files and extra documents are
// errors) and durations that also take days ("30d").
package yamlconf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// DecodeStrict decodes one YAML document into out: unknown fields, an
// empty file and extra documents are errors. docs names the page with an
// example, for the empty-file message.
func DecodeStrict(b []byte, out any, docs string) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("file is empty: see %s for an example", docs)
		}
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return explainTypeError(te, out, docs)
		}
		return fmt.Errorf("invalid YAML: %v", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document: keep the whole configuration in one")
	}
	return nil
}

// Duration is a time.Duration that YAML reads from "90s", "12h" or "30d".
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// ParseDuration accepts Go durations plus a "d" (days) suffix.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if strings.HasSuffix(s, "d") {
		n, err := strconv.ParseFloat(strings.TrimSuffix(s, "d"), 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("bad duration %q: use e.g. 90s, 12h or 30d", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad duration %q: use e.g. 90s, 12h or 30d", s)
	}
	return v, nil
}

// unknownField is yaml.v3's message for a field KnownFields refuses.
var unknownField = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^line (\d+): field (\S+) not found in type (\S+)$`) })

// explainTypeError says yaml.v3's decoding errors in ward's words: an
// unknown field is named with its line, where it is (top level, or under
// which section) and the nearest valid field, instead of Go type names.
func explainTypeError(te *yaml.TypeError, out any, docs string) error {
	sections := map[string]section{}
	collectSections(reflect.TypeOf(out), "", sections)
	msgs := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		m := unknownField().FindStringSubmatch(e)
		if m == nil {
			msgs = append(msgs, e)
			continue
		}
		line, field, typ := m[1], m[2], m[3]
		sec, ok := sections[typ]
		if !ok {
			msgs = append(msgs, fmt.Sprintf("line %s: unknown field %q", line, field))
			continue
		}
		where := "at the top level"
		if sec.paths[0] != "" {
			where = "under " + strings.Join(sec.paths, " or ")
		}
		msg := fmt.Sprintf("line %s: unknown field %q %s", line, field, where)
		if near := nearest(field, sec.fields); near != "" {
			msg += fmt.Sprintf(": did you mean %q?", near)
		} else {
			msg += "; the fields there are " + strings.Join(sec.fields, ", ")
		}
		msgs = append(msgs, msg)
	}
	return fmt.Errorf("%s (see %s)", strings.Join(msgs, "; "), docs)
}

// section is one YAML mapping of a configuration: where it is and the
// fields it takes.
type section struct {
	paths  []string // "" (top level), "inbound[]", "identity", ...: every place the type is used
	fields []string
}

// collectSections maps each struct type reachable from t (by its Go name,
// as yaml.v3 reports it) to its place in the file and its YAML fields.
func collectSections(t reflect.Type, path string, out map[string]section) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
		switch t.Kind() {
		case reflect.Slice, reflect.Array:
			path += "[]"
		case reflect.Map:
			path += ".*"
		}
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return
	}
	if sec, seen := out[t.String()]; seen {
		if !slices.Contains(sec.paths, path) {
			sec.paths = append(sec.paths, path)
			out[t.String()] = sec
		}
		return
	}
	sec := section{paths: []string{path}}
	out[t.String()] = sec
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") {
			collectSections(f.Type, path, out)
			if in, ok := out[f.Type.String()]; ok {
				sec.fields = append(sec.fields, in.fields...)
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		sec.fields = append(sec.fields, name)
		child := name
		if path != "" {
			child = path + "." + name
		}
		collectSections(f.Type, child, out)
	}
	slices.Sort(sec.fields)
	sec.paths = out[t.String()].paths // places found while recursing
	out[t.String()] = sec
}

// Nearest returns the name in names closest to name by edit distance, if
// it is close enough to be a likely typo, else "" (for "did you mean"
// messages outside configuration files, e.g. ward apply's documents).
func Nearest(name string, names []string) string { return nearest(name, names) }

// nearest returns the field closest to name by edit distance, if it is
// close enough to be a likely typo (or name is a prefix of it).
func nearest(name string, fields []string) string {
	best, bestD := "", len(name)/3+2
	for _, f := range fields {
		d := editDistance(name, f)
		if strings.HasPrefix(f, name) || strings.HasPrefix(name, f) {
			d = min(d, 2)
		}
		if d < bestD {
			best, bestD = f, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

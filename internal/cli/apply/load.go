package apply

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/wardproject/ward/internal/shared/posture"
)

// Set is every document of one `ward apply`, checked as a whole.
type Set struct {
	Keys     []*Doc
	Entries  []*Doc
	Policies []*Doc // one per Cedar file (a directory is expanded)
	// Federations are relationships with foreign trust domains.
	Federations []*Doc
	// Posture is the declared posture (at most one document).
	Posture *Doc
}

// Load reads the documents of every path (a file, or a directory: every
// *.yaml and *.yml inside, recursively, in lexical order), reads the
// policy files they name and checks the set as a whole: every problem is
// returned at once, each with file, line and field.
func Load(paths []string) (*Set, error) {
	var files []string
	var errs Errors
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			errs = append(errs, &Error{File: p, Msg: fmt.Sprintf("cannot read it: %v", err)})
			continue
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		var found []string
		err = filepath.WalkDir(p, func(f string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && (strings.HasSuffix(f, ".yaml") || strings.HasSuffix(f, ".yml")) {
				found = append(found, f)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, &Error{File: p, Msg: fmt.Sprintf("cannot read the directory: %v", err)})
		}
		if len(found) == 0 && err == nil {
			errs = append(errs, &Error{File: p, Msg: "holds no .yaml or .yml documents"})
		}
		sort.Strings(found)
		files = append(files, found...)
	}
	type parsed struct {
		docs []*Doc
		errs Errors
	}
	byFile := map[string]parsed{}
	// A posture file a Posture document names is YAML too, but no
	// document: it is read by readPosture, not parsed here.
	postureFiles := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, &Error{File: f, Msg: fmt.Sprintf("cannot read it: %v", err)})
			continue
		}
		ds, err := Parse(f, b)
		pe, _ := err.(Errors)
		byFile[f] = parsed{ds, pe}
		for _, d := range ds {
			if d.Kind == KindPosture && d.Posture.Path != "" {
				postureFiles[filepath.Clean(postureFilePath(d))] = true
			}
		}
	}
	var docs []*Doc
	for _, f := range files {
		if postureFiles[filepath.Clean(f)] {
			continue
		}
		errs = append(errs, byFile[f].errs...)
		docs = append(docs, byFile[f].docs...)
	}
	set, serrs := build(docs, readPolicyPath)
	for _, d := range set.Federations {
		if err := readBundle(d); err != nil {
			serrs = append(serrs, err)
		}
	}
	if d := set.Posture; d != nil {
		if err := readPosture(d); err != nil {
			serrs = append(serrs, err)
		}
	}
	errs = append(errs, serrs...)
	return set, errs.orNil()
}

// readPolicyPath reads a Policy document's file: a .cedar file, or every
// *.cedar in a directory, named by their path relative to the document's
// directory (slash-separated, so the names do not depend on where ward
// apply runs).
func readPolicyPath(d *Doc) ([]*PolicySpec, *Error) {
	rel := filepath.Clean(filepath.FromSlash(d.Policy.Path))
	full := rel
	if !filepath.IsAbs(rel) {
		full = filepath.Join(filepath.Dir(d.File), rel)
	}
	fi, err := os.Stat(full)
	if err != nil {
		return nil, d.errAt("file", "cannot read %s: %v", full, err)
	}
	if !fi.IsDir() {
		b, err := os.ReadFile(full)
		if err != nil {
			return nil, d.errAt("file", "cannot read %s: %v", full, err)
		}
		return []*PolicySpec{{Name: filepath.ToSlash(rel), Path: d.Policy.Path, Source: b, SourceFile: full}}, nil
	}
	var out []*PolicySpec
	err = filepath.WalkDir(full, func(f string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() || !strings.HasSuffix(f, ".cedar") {
			return err
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		r, err := filepath.Rel(full, f)
		if err != nil {
			return err
		}
		out = append(out, &PolicySpec{Name: path.Join(filepath.ToSlash(rel), filepath.ToSlash(r)), Path: d.Policy.Path, Source: b, SourceFile: f})
		return nil
	})
	if err != nil {
		return nil, d.errAt("file", "cannot read %s: %v", full, err)
	}
	if len(out) == 0 {
		return nil, d.errAt("file", "directory %s holds no .cedar files", full)
	}
	return out, nil
}

// postureFilePath is the file a Posture document names (relative to it).
func postureFilePath(d *Doc) string {
	full := filepath.FromSlash(d.Posture.Path)
	if !filepath.IsAbs(full) {
		full = filepath.Join(filepath.Dir(d.File), full)
	}
	return full
}

// readPosture reads and parses a Posture document's file.
func readPosture(d *Doc) *Error {
	ps := d.Posture
	if ps.Path == "" {
		return nil
	}
	full := postureFilePath(d)
	f, err := os.Open(full)
	if err != nil {
		return d.errAt("file", "cannot read the posture file %s: %v", full, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, posture.MaxFileBytes+1))
	if err != nil {
		return d.errAt("file", "cannot read the posture file %s: %v", full, err)
	}
	if _, err := posture.Parse(b, nil); err != nil {
		return d.errAt("file", "%s: %v", full, err)
	}
	ps.Source = b
	return nil
}

// readBundle reads a Federation document's bootstrap bundle file.
func readBundle(d *Doc) *Error {
	fs := d.Federation
	if fs.BundlePath == "" {
		return nil
	}
	full := filepath.FromSlash(fs.BundlePath)
	if !filepath.IsAbs(full) {
		full = filepath.Join(filepath.Dir(d.File), full)
	}
	b, err := os.ReadFile(full)
	if err != nil {
		return d.errAt("bundle", "cannot read the bootstrap bundle %s: %v", full, err)
	}
	fs.Bundle = b
	return nil
}

// build sorts documents by kind, expands policy files and finds what no
// single document shows: a key, an entry or a policy file given twice.
func build(docs []*Doc, readPolicy func(*Doc) ([]*PolicySpec, *Error)) (*Set, Errors) {
	s := &Set{}
	var errs Errors
	keys := map[string]*Doc{}
	ids := map[string]*Doc{}
	idents := map[string]*Doc{}
	policies := map[string]*Doc{}
	feds := map[string]*Doc{}
	for _, d := range docs {
		switch d.Kind {
		case KindFederation:
			if o, dup := feds[d.Federation.TrustDomain]; dup {
				errs = append(errs, d.errAt("trust_domain", "a relationship with %s is also declared at %s", d.Federation.TrustDomain, o.Where()))
				continue
			}
			feds[d.Federation.TrustDomain] = d
			s.Federations = append(s.Federations, d)
		case KindPosture:
			if s.Posture != nil {
				errs = append(errs, d.errAt("kind", "the posture is also declared at %s: declare it once", s.Posture.Where()))
				continue
			}
			s.Posture = d
		case KindKey:
			if o, dup := keys[d.Key.Name]; dup {
				errs = append(errs, d.errAt("name", "key %s is also declared at %s: declare each key once", d.Key.Name, o.Where()))
				continue
			}
			keys[d.Key.Name] = d
			s.Keys = append(s.Keys, d)
		case KindEntry:
			e := d.Entry
			if o, dup := idents[e.Identity()]; dup {
				errs = append(errs, d.errAt("spiffe_id", "an entry for %s under %s with the same selectors is also declared at %s: an entry is unique by SPIFFE ID, parent and selectors", e.SPIFFEID, e.ParentID, o.Where()))
				continue
			}
			if o, dup := ids[e.ID]; dup && e.ID != "" {
				errs = append(errs, d.errAt("id", "entry %s is also declared at %s", e.ID, o.Where()))
				continue
			}
			idents[e.Identity()], ids[e.ID] = d, d
			s.Entries = append(s.Entries, d)
		case KindPolicy:
			specs := []*PolicySpec{d.Policy}
			if d.Policy.Path != "" {
				var err *Error
				if readPolicy == nil {
					continue
				}
				if specs, err = readPolicy(d); err != nil {
					errs = append(errs, err)
					continue
				}
			}
			for _, ps := range specs {
				if o, dup := policies[ps.Name]; dup {
					errs = append(errs, d.errAt("name", "policy file %s is also declared at %s", ps.Name, o.Where()))
					continue
				}
				nd := *d
				nd.Policy = ps
				policies[ps.Name] = &nd
				s.Policies = append(s.Policies, &nd)
			}
		}
	}
	return s, errs
}

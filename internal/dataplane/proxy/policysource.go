package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/wardproject/ward/internal/shared/policy"
)

// PolicySource delivers versioned policy Sets to a proxy. The proxy stores
// each one in its policy.Engine only if its version is newer than the
// current one (policy.Engine.StoreIfNewer), then re-checks open connections
// against it. The file source below is one implementation; the node agent's
// policy stream is another.
type PolicySource interface {
	// Run calls update with every new Set until ctx is done, then returns
	// nil. update must not be called concurrently. A source that cannot
	// produce a valid Set delivers nothing: the proxy keeps its last valid
	// Set, or denies everything if it never had one.
	Run(ctx context.Context, update func(*policy.Set)) error
}

// FileSource reads Cedar policy files (and an optional JSON deny-list) and
// delivers a new Set, with the next version number, whenever their content
// changes: it polls at a bounded interval and reloads at once on Reload
// (SIGHUP). A file that fails to compile leaves the previous Set in force.
type FileSource struct {
	paths    []string
	denyFile string
	interval time.Duration
	reload   chan struct{}

	// OnError, if set, is called with every failed load (for logs and
	// metrics); the previous Set stays in force.
	OnError func(error)

	version uint64
	last    [32]byte
	stamp   string
}

// NewFileSource returns a FileSource for paths (files, or directories whose
// *.cedar files are read) and denyFile (may be empty), polling every
// interval.
func NewFileSource(paths []string, denyFile string, interval time.Duration) *FileSource {
	return &FileSource{paths: paths, denyFile: denyFile, interval: interval, reload: make(chan struct{}, 1)}
}

// Reload asks Run to re-read the files now (non-blocking).
func (f *FileSource) Reload() {
	select {
	case f.reload <- struct{}{}:
	default:
	}
}

// Run implements PolicySource. It loads once at start, then on every poll
// tick where the files' size or modification time changed and on Reload.
func (f *FileSource) Run(ctx context.Context, update func(*policy.Set)) error {
	t := time.NewTicker(f.interval)
	defer t.Stop()
	f.poll(update, true)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.reload:
			f.poll(update, true)
		case <-t.C:
			f.poll(update, false)
		}
	}
}

func (f *FileSource) poll(update func(*policy.Set), force bool) {
	names, err := f.files()
	if err != nil {
		f.fail(err)
		return
	}
	stamp := f.statStamp(names)
	if !force && stamp == f.stamp {
		return
	}
	set, sum, err := f.load(names)
	if err != nil {
		f.fail(err)
		return
	}
	f.stamp = stamp
	if sum == f.last && f.version > 0 {
		return
	}
	f.last = sum
	f.version++
	update(set.WithVersion(f.version))
}

func (f *FileSource) fail(err error) {
	f.stamp = "" // try again on the next tick
	if f.OnError != nil {
		f.OnError(err)
	}
}

// files expands the configured paths into the list of files to read.
func (f *FileSource) files() ([]string, error) {
	var out []string
	for _, p := range f.paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("policy file %s: %w (fix policy_files)", p, err)
		}
		if !fi.IsDir() {
			out = append(out, p)
			continue
		}
		m, err := filepath.Glob(filepath.Join(p, "*.cedar"))
		if err != nil {
			return nil, err
		}
		sort.Strings(m)
		out = append(out, m...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("policy_files %v hold no .cedar file", f.paths)
	}
	return out, nil
}

func (f *FileSource) statStamp(names []string) string {
	var b strings.Builder
	all := names
	if f.denyFile != "" {
		all = append(append([]string(nil), names...), f.denyFile)
	}
	for _, n := range all {
		fi, err := os.Stat(n)
		if err != nil {
			fmt.Fprintf(&b, "%s:missing;", n)
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d;", n, fi.Size(), fi.ModTime().UnixNano())
	}
	return b.String()
}

// load reads and compiles every file; it returns the Set and a digest of
// the input that decides whether anything changed.
func (f *FileSource) load(names []string) (*policy.Set, [32]byte, error) {
	h := sha256.New()
	files := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, [32]byte{}, fmt.Errorf("read policy file: %w", err)
		}
		files[n] = b
		fmt.Fprintf(h, "%d:%s:%d:", len(n), n, len(b))
		h.Write(b)
	}
	set, err := policy.Compile(files)
	if err != nil {
		return nil, [32]byte{}, err
	}
	if f.denyFile != "" {
		b, err := os.ReadFile(f.denyFile)
		if err != nil {
			return nil, [32]byte{}, fmt.Errorf("read deny-list: %w (fix deny_list_file)", err)
		}
		dl, err := ParseDenyList(b)
		if err != nil {
			return nil, [32]byte{}, fmt.Errorf("deny-list %s: %w", f.denyFile, err)
		}
		if set, err = set.WithDenyList(dl); err != nil {
			return nil, [32]byte{}, fmt.Errorf("deny-list %s: %w", f.denyFile, err)
		}
		fmt.Fprintf(h, "deny:%d:", len(b))
		h.Write(b)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return set, sum, nil
}

// CheckPolicyFiles reads and compiles policy_files and deny_list_file as
// the proxy will at start (`ward proxy --check`): a missing path, a
// directory without *.cedar files, a policy that does not compile or a
// bad deny-list is an error naming the file.
func (c *Config) CheckPolicyFiles() error {
	if len(c.PolicyFiles) == 0 {
		if c.DenyListFile != "" {
			if _, err := os.Stat(c.DenyListFile); err != nil {
				return fmt.Errorf("deny_list_file: %w", err)
			}
		}
		return nil
	}
	f := NewFileSource(c.PolicyFiles, c.DenyListFile, 0)
	names, err := f.files()
	if err != nil {
		return err
	}
	if _, _, err := f.load(names); err != nil {
		return err
	}
	return nil
}

// ParseDenyList decodes a JSON deny-list ({"spiffe_ids": [...], "serials":
// [...], "tainted_keys": [...]}); unknown fields are errors.
func ParseDenyList(b []byte) (policy.DenyList, error) {
	var dl policy.DenyList
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&dl); err != nil {
		return policy.DenyList{}, fmt.Errorf("decode deny-list: %w (expected JSON {\"spiffe_ids\": [...], \"serials\": [...], \"tainted_keys\": [...]})", err)
	}
	if dec.More() {
		return policy.DenyList{}, fmt.Errorf("decode deny-list: trailing data after the JSON object")
	}
	return dl, nil
}

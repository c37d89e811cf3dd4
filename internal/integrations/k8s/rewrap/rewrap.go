// Package rewrap is `ward k8s rewrap`: after a rotation of the key behind
// ward's KMS v2 plugin, it rewrites every encrypted object of the named
// resources through the apiserver until etcd holds each under the key's
// newest version, reporting progress. It reads etcd directly (read-only)
// to see which key_id each object is stored under, and writes only through
// the apiserver: an unchanged update of an object whose key_id is not the
// current one is marked stale by KMS v2, so the apiserver writes it again
// under its current DEK seed. Only when nothing older remains may the key's
// minimum decrypt version be raised.
package rewrap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/encoding/protowire"
)

// Prefix starts every value kube-apiserver's KMS v2 provider writes; the
// provider's name and a colon follow.
const Prefix = "k8s:enc:kms:v2:"

// NotWard is the key_id reported for a value not written by the named
// KMS v2 provider (plaintext, another provider).
const NotWard = "(not under the provider)"

// KeyIDOf returns the key_id a stored value was written under by the KMS v2
// provider named provider, or NotWard.
func KeyIDOf(value []byte, provider string) string {
	rest, ok := bytes.CutPrefix(value, []byte(Prefix+provider+":"))
	if !ok {
		return NotWard
	}
	// EncryptedObject (k8s.io/apiserver kmsv2/v2): keyID is field 2.
	for len(rest) > 0 {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 {
			return NotWard
		}
		rest = rest[n:]
		if num == 2 && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(rest)
			if m < 0 {
				return NotWard
			}
			return string(v)
		}
		m := protowire.ConsumeFieldValue(num, typ, rest)
		if m < 0 {
			return NotWard
		}
		rest = rest[m:]
	}
	return NotWard
}

// Options configures a run.
type Options struct {
	// APIServer is the apiserver's URL; Token its bearer token; Client the
	// HTTP client (its TLS configuration trusts the apiserver).
	APIServer string
	Token     string
	Client    *http.Client
	// Etcd reads the stored values; EtcdPrefix is the apiserver's
	// --etcd-prefix (default /registry).
	Etcd       *clientv3.Client
	EtcdPrefix string
	// Resources are core (v1) namespaced resources, e.g. secrets.
	Resources []string
	// Provider is the KMS v2 provider's name in the EncryptionConfiguration.
	Provider string
	// Target is the key_id every object must end under.
	Target string
	// DryRun only counts.
	DryRun bool
	// Timeout bounds the whole run: the apiserver picks a new key_id up at
	// its next Status poll (about a minute), so early rewrites may land
	// under the old one and are done again.
	Timeout time.Duration
	// Progress receives progress lines (nil: none).
	Progress io.Writer
}

// Report says where the objects are.
type Report struct {
	// Counts per resource per key_id, from the last scan.
	Counts map[string]map[string]int
	// Rewritten objects (updates the apiserver accepted).
	Rewritten int
	// Stale objects left: not under Target.
	Stale int
}

func (r *Report) String() string {
	var b strings.Builder
	var res []string
	for k := range r.Counts {
		res = append(res, k)
	}
	sort.Strings(res)
	for _, k := range res {
		var ids []string
		for id := range r.Counts[k] {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		fmt.Fprintf(&b, "%s:", k)
		for _, id := range ids {
			fmt.Fprintf(&b, " %d under %s;", r.Counts[k][id], id)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// scan counts the stored objects of resource per key_id and returns the
// etcd keys of those not under target.
func scan(ctx context.Context, o *Options, resource string) (map[string]int, []string, error) {
	prefix := strings.TrimSuffix(o.EtcdPrefix, "/") + "/" + resource + "/"
	counts := map[string]int{}
	var stale []string
	key := prefix
	end := clientv3.GetPrefixRangeEnd(prefix)
	for {
		r, err := o.Etcd.Get(ctx, key, clientv3.WithRange(end), clientv3.WithLimit(500))
		if err != nil {
			return nil, nil, fmt.Errorf("reading %s from etcd: %w", prefix, err)
		}
		for _, kv := range r.Kvs {
			id := KeyIDOf(kv.Value, o.Provider)
			counts[id]++
			if id != o.Target {
				stale = append(stale, string(kv.Key))
			}
		}
		if !r.More || len(r.Kvs) == 0 {
			break
		}
		key = string(r.Kvs[len(r.Kvs)-1].Key) + "\x00"
	}
	return counts, stale, nil
}

// Run scans, rewrites what is stale and scans again until nothing is
// stale, the timeout passes or (DryRun) after one scan.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.EtcdPrefix == "" {
		o.EtcdPrefix = "/registry"
	}
	if o.Provider == "" {
		o.Provider = "ward"
	}
	if len(o.Resources) == 0 {
		o.Resources = []string{"secrets"}
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	rep := &Report{}
	for pass := 1; ; pass++ {
		rep.Counts = map[string]map[string]int{}
		rep.Stale = 0
		work := map[string][]string{}
		for _, res := range o.Resources {
			c, stale, err := scan(ctx, &o, res)
			if err != nil {
				return rep, err
			}
			rep.Counts[res] = c
			rep.Stale += len(stale)
			work[res] = stale
		}
		if rep.Stale == 0 || o.DryRun {
			return rep, nil
		}
		progress(o.Progress, "pass %d: %d objects not under %s", pass, rep.Stale, o.Target)
		done := 0
		for _, res := range o.Resources {
			for _, k := range work[res] {
				if err := rewrite(ctx, &o, res, k); err != nil {
					if ctx.Err() != nil {
						return rep, fmt.Errorf("timed out after %s with %d objects not under %s: %w", o.Timeout, rep.Stale-done, o.Target, ctx.Err())
					}
					progress(o.Progress, "%s: %v (retried in the next pass)", k, err)
					continue
				}
				done++
				rep.Rewritten++
				if done%100 == 0 || done == rep.Stale {
					progress(o.Progress, "pass %d: %d/%d rewritten", pass, done, rep.Stale)
				}
			}
		}
		select {
		case <-ctx.Done():
			return rep, fmt.Errorf("timed out after %s with objects not under %s (is the apiserver's plugin reporting it yet?)", o.Timeout, o.Target)
		case <-time.After(2 * time.Second):
		}
	}
}

func progress(w io.Writer, format string, args ...any) {
	if w != nil {
		fmt.Fprintf(w, format+"\n", args...)
	}
}

// rewrite reads the object at etcd key k through the apiserver and writes
// it back unchanged (its resourceVersion guards against a concurrent
// writer: a conflict is retried in the next pass).
func rewrite(ctx context.Context, o *Options, resource, k string) error {
	rel := strings.TrimPrefix(k, strings.TrimSuffix(o.EtcdPrefix, "/")+"/"+resource+"/")
	ns, name, ok := strings.Cut(rel, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("unexpected etcd key %q for the namespaced resource %s", k, resource)
	}
	u := strings.TrimSuffix(o.APIServer, "/") + "/api/v1/namespaces/" + url.PathEscape(ns) + "/" + resource + "/" + url.PathEscape(name)
	body, code, err := call(ctx, o, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	if code == http.StatusNotFound {
		return nil // deleted meanwhile
	}
	if code != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d: %s", u, code, truncate(body))
	}
	body, code, err = call(ctx, o, http.MethodPut, u, body)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("PUT %s: HTTP %d: %s", u, code, truncate(body))
	}
	return nil
}

func call(ctx context.Context, o *Options, method, u string, body []byte) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if o.Token != "" {
		req.Header.Set("Authorization", "Bearer "+o.Token)
	}
	resp, err := o.Client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return b, resp.StatusCode, err
}

func truncate(b []byte) string {
	if len(b) > 300 {
		b = b[:300]
	}
	return string(b)
}

// ErrStale is returned when asked to raise the minimum decrypt version
// while objects remain under older versions.
var ErrStale = errors.New("objects remain under older key versions")

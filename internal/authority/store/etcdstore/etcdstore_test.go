package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/storetest"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/testutil/etcdtest"
	"github.com/wardproject/ward/internal/testutil/netutil"
)

func open(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, store.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// prefixFor gives every test its own key space on the shared server.
func prefixFor(t testing.TB) string { return "/wardtest/" + t.Name() + "/" }

// TestPlain runs everything that needs a plaintext etcd on one server.
func TestPlain(t *testing.T) {
	srv := etcdtest.Start(t)
	t.Run("Conformance", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			return open(t, Config{Endpoints: srv.Endpoints(), Prefix: prefixFor(t)})
		})
	})
	t.Run("MultiWriter", func(t *testing.T) {
		cfg := Config{Endpoints: srv.Endpoints(), Prefix: prefixFor(t)}
		storetest.RunMultiWriter(t, open(t, cfg), open(t, cfg))
	})
	t.Run("PrefixIsolation", func(t *testing.T) { testPrefixIsolation(t, srv) })
	t.Run("SlowWatcherDropped", func(t *testing.T) { testSlowWatcherDropped(t, srv) })
	t.Run("Defaults", func(t *testing.T) { testDefaults(t, srv) })
	t.Run("CutOffFailsFast", func(t *testing.T) { testCutOffFailsFast(t, srv) })
}

// testCutOffFailsFast: with the link to etcd silently cut (packets
// dropped, connections open), a request with no deadline of its own
// returns an error of kind Unavailable after RequestTimeout instead of
// hanging; once the link is back the same store works again.
func testCutOffFailsFast(t *testing.T, srv *etcdtest.Server) {
	hole := netutil.NewBlackhole(t, strings.TrimPrefix(srv.Endpoints()[0], "http://"))
	s := open(t, Config{Endpoints: []string{"http://" + hole.Addr()}, Prefix: prefixFor(t), RequestTimeout: 300 * time.Millisecond})
	ctx := context.Background()
	if _, err := s.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	hole.Cut()
	ops := map[string]func() error{
		"get":  func() error { _, err := s.Get(ctx, "k"); return err },
		"list": func() error { _, err := s.List(ctx, ""); return err },
		"put":  func() error { _, err := s.Put(ctx, "k", []byte("w")); return err },
		"cas":  func() error { _, err := s.CompareAndSwap(ctx, "k2", []byte("w"), 0); return err },
		"batch": func() error {
			_, err := s.Batch(ctx, []store.Op{{Key: "k3", Value: []byte("x"), ExpectRevision: -1}})
			return err
		},
	}
	for name, op := range ops {
		done := make(chan error, 1)
		go func() { done <- op() }()
		select {
		case err := <-done:
			if !errs.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), "did not answer within") {
				t.Fatalf("%s while cut off: %v, want an Unavailable error saying etcd did not answer", name, err)
			}
			if st := status.Convert(errs.ToStatus(err)); st.Code() != codes.Unavailable {
				t.Fatalf("%s while cut off maps to %v, want Unavailable", name, st.Code())
			}
		case <-time.After(time.Minute): // a bound on the test, not a timing assertion
			t.Fatalf("%s with the link to etcd cut still hangs after a minute", name)
		}
	}
	hole.Heal()
	var err error
	for range 100 {
		if _, err = s.Get(ctx, "k"); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("after the link came back: %v", err)
}

// TestTLS runs the suite and the TLS configuration checks against an etcd
// that requires mutual TLS.
func TestTLS(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithTLS())
	t.Run("Conformance", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			return open(t, Config{Endpoints: srv.Endpoints(), Prefix: prefixFor(t), TLS: srv.ClientTLS()})
		})
	})
	t.Run("Config", func(t *testing.T) { testTLSConfig(t, srv) })
}

func testTLSConfig(t *testing.T, srv *etcdtest.Server) {
	ca, cert, key := srv.ClientCertFiles()
	noCert := srv.ClientTLS()
	noCert.Certificates = nil
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"PEM files", Config{CAFile: ca, CertFile: cert, KeyFile: key}, true},
		{"tls.Config", Config{TLS: srv.ClientTLS()}, true},
		{"no client certificate", Config{TLS: noCert}, false},
		{"CA only file", Config{CAFile: ca}, false},
		{"unknown CA", Config{TLS: &tls.Config{Certificates: srv.ClientTLS().Certificates}}, false},
		{"plaintext", Config{}, false},
		{"both forms", Config{TLS: srv.ClientTLS(), CAFile: ca}, false},
		{"cert without key", Config{CAFile: ca, CertFile: cert}, false},
		{"CA file not PEM", Config{CAFile: key, CertFile: cert, KeyFile: key}, false},
		{"missing CA file", Config{CAFile: ca + ".missing", CertFile: cert, KeyFile: key}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Endpoints = srv.Endpoints()
			if tc.name == "plaintext" {
				cfg.Endpoints = []string{strings.Replace(srv.Endpoints()[0], "https://", "http://", 1)}
			}
			cfg.Prefix = prefixFor(t)
			cfg.DialTimeout = time.Second
			s, err := Open(t.Context(), cfg)
			if !tc.ok {
				if err == nil {
					s.Close()
					t.Fatal("Open succeeded, want error")
				}
				if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), "MII") {
					t.Errorf("error leaks key material: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			rev, err := s.Put(t.Context(), "k", []byte("v"))
			if err != nil {
				t.Fatal(err)
			}
			if kv, err := s.Get(t.Context(), "k"); err != nil || kv.Revision != rev {
				t.Fatalf("Get = %+v, %v", kv, err)
			}
		})
	}
}

func testPrefixIsolation(t *testing.T, srv *etcdtest.Server) {
	a := open(t, Config{Endpoints: srv.Endpoints(), Prefix: "/iso/a/"})
	b := open(t, Config{Endpoints: srv.Endpoints(), Prefix: "/iso/b/"})
	sub := open(t, Config{Endpoints: srv.Endpoints(), Prefix: "/iso/a"}) // a's prefix without the slash
	ctx := t.Context()
	wb, err := b.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Put(ctx, "k", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "k"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("b sees a's key: %v", err)
	}
	if kvs, err := b.List(ctx, ""); err != nil || len(kvs) != 0 {
		t.Errorf("b.List(\"\") = %v, %v; want empty", kvs, err)
	}
	if kvs, err := sub.List(ctx, "/"); err != nil || len(kvs) != 1 || kvs[0].Key != "/k" {
		t.Errorf("store with prefix /iso/a lists %v, %v; want [/k]", kvs, err)
	}
	if _, err := b.Put(ctx, "end", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-wb:
		if ev.Key != "end" {
			t.Errorf("b's watcher saw %q from another prefix", ev.Key)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no event")
	}
}

func testSlowWatcherDropped(t *testing.T, srv *etcdtest.Server) {
	const buf = 2
	s := open(t, Config{Endpoints: srv.Endpoints(), Prefix: prefixFor(t), WatchBuffer: buf})
	ch, err := s.Watch(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	ops := make([]store.Op, 10)
	for i := range ops {
		ops[i] = store.Op{Key: fmt.Sprint(i), ExpectRevision: -1}
	}
	if _, err := s.Batch(t.Context(), ops); err != nil {
		t.Fatal(err)
	}
	// Read nothing until the buffer is full: the next event must drop the watch.
	for deadline := time.Now().Add(20 * time.Second); len(ch) < buf; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("watch buffer holds %d events, want %d", len(ch), buf)
		}
	}
	n := 0
	for range ch {
		n++
	}
	if n != buf {
		t.Errorf("slow watcher got %d events before being dropped, want %d", n, buf)
	}
}

func TestOpenErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no endpoints", Config{}, "no endpoints"},
		{"unreachable", Config{Endpoints: []string{dead}, DialTimeout: 300 * time.Millisecond}, "did not answer"},
		{"bad max batch", Config{Endpoints: []string{dead}, MaxBatch: -1}, "max batch"},
		{"bad watch buffer", Config{Endpoints: []string{dead}, WatchBuffer: -1}, "watch buffer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(t.Context(), tc.cfg)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func testDefaults(t *testing.T, srv *etcdtest.Server) {
	s := open(t, Config{Endpoints: srv.Endpoints()})
	if s.Prefix() != DefaultPrefix || s.MaxBatch() != DefaultMaxBatch || s.Backend() != "etcd" {
		t.Errorf("defaults: prefix %q, max batch %d, backend %q", s.Prefix(), s.MaxBatch(), s.Backend())
	}
}

func BenchmarkStore(b *testing.B) {
	srv := etcdtest.Start(b)
	storetest.Bench(b, open(b, Config{Endpoints: srv.Endpoints(), Prefix: "/bench/"}))
}

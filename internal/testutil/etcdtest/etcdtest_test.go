package etcdtest

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func TestStart(t *testing.T) {
	tests := []struct {
		name   string
		opts   []Option
		scheme string
	}{
		{"plaintext", nil, "http://"},
		{"mutual TLS", []Option{WithTLS()}, "https://"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := Start(t, tc.opts...)
			ep := srv.Endpoints()[0]
			if !strings.HasPrefix(ep, tc.scheme+"127.0.0.1:") {
				t.Errorf("endpoint %q, want %s127.0.0.1:port", ep, tc.scheme)
			}
			cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), TLS: srv.ClientTLS(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if _, err := cli.Put(ctx, "k", "v"); err != nil {
				t.Fatalf("put through %s: %v", ep, err)
			}
			ca, cert, key := srv.ClientCertFiles()
			for _, f := range []string{ca, cert, key} {
				if (f != "") != (srv.ClientTLS() != nil) {
					t.Errorf("cert file %q set for a server without TLS (or missing with TLS)", f)
				}
				if f != "" {
					if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
						t.Errorf("cert file %s: %v, mode %v; want 0600", f, err, st.Mode())
					}
				}
			}
		})
	}
}

func TestTLSRequiresClientCert(t *testing.T) {
	srv := Start(t, WithTLS())
	cfg := srv.ClientTLS()
	cfg.Certificates = nil
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	resp, err := hc.Get(srv.Endpoints()[0] + "/health")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("request without a client certificate succeeded: %s", resp.Status)
	}
	// And with a certificate it works, with the server verified for 127.0.0.1.
	hc.Transport = &http.Transport{TLSClientConfig: srv.ClientTLS()}
	resp, err = hc.Get(srv.Endpoints()[0] + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.TLS == nil || resp.TLS.Version != tls.VersionTLS13 {
		t.Errorf("connection not TLS 1.3")
	}
}

func TestStopIsIdempotent(t *testing.T) {
	srv := Start(t)
	srv.Stop()
	srv.Stop()
	hc := &http.Client{Timeout: time.Second}
	if resp, err := hc.Get(srv.Endpoints()[0] + "/health"); err == nil {
		resp.Body.Close()
		t.Error("server still answers after Stop")
	}
}

// A three-member TLS cluster keeps serving with one member killed.
func TestClusterSurvivesOneMember(t *testing.T) {
	c := StartCluster(t, 3, ClusterTLS())
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), TLS: c.ClientTLS(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	c.Kill(0)
	// A request in flight when the member died may fail ("request timed
	// out, possibly due to previous leader failure"); the next succeeds.
	for {
		_, err := cli.Put(ctx, "k", "v2")
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("two of three members should keep quorum: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	r, err := cli.Get(ctx, "k")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v2" {
		t.Fatalf("get after a member died: %v %v", r, err)
	}
}

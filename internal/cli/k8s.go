package cli

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/integrations/k8s/kmsplugin"
	"github.com/wardproject/ward/internal/integrations/k8s/rewrap"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(k8sCommand()) }, "k8s")
}

func k8sCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "k8s", Short: "Kubernetes operations: rewrap the objects kube-apiserver encrypted through ward's KMS plugin"}
	var o struct {
		key, apiserver, tokenFile, apiCA, etcdCA, etcdCert, etcdKey, etcdPrefix, provider string
		etcd, resources                                                                   []string
		dryRun, raise                                                                     bool
		timeout, settle                                                                   time.Duration
	}
	rw := &cobra.Command{
		Use:   "rewrap --key NAME --apiserver URL --token-file F --etcd-endpoints URL...",
		Short: "Rewrite every encrypted object until all are under the key's newest version; then optionally raise its minimum decrypt version",
		Long: `After ` + "`ward key rotate`" + ` of the key behind ward kms-plugin, rewrite every object of
the named resources (core v1, namespaced; default secrets) so that etcd holds all of
them under the key's newest version. See docs/kubernetes.md.

It reads etcd directly (read-only) to see the key_id each object is stored under,
and writes only through the apiserver: an unchanged update of an object under an
older key_id is marked stale by KMS v2 and written again under the current DEK
seed. It repeats until nothing older remains (the apiserver takes up to a minute
to notice a rotation), printing progress, or fails after --timeout.

--raise-min-decrypt-version then sets the key's minimum decrypt version to the
newest version, and only then: with anything left under an older version it
refuses, so the cluster is never locked out of its own objects. --dry-run only
counts (and with --raise-min-decrypt-version, raises only if nothing is older).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.key == "" || o.apiserver == "" || len(o.etcd) == 0 {
				return fmt.Errorf("give --key, --apiserver and --etcd-endpoints")
			}
			c, chk, err := dialChecked(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			k, err := c.Keys.GetKey(cmd.Context(), &wardv1.GetKeyRequest{Name: o.key})
			if err != nil {
				if perr := chk.refused(); perr != nil {
					return perr
				}
				return client.Unwrap(err)
			}
			target := kmsplugin.KeyID(o.key, k.LatestVersion)
			hc, err := k8sHTTPClient(o.apiCA)
			if err != nil {
				return err
			}
			var token string
			if o.tokenFile != "" {
				b, err := os.ReadFile(o.tokenFile)
				if err != nil {
					return err
				}
				token = strings.TrimSpace(string(b))
			}
			etcdTLS, err := etcdTLSConfig(o.etcdCA, o.etcdCert, o.etcdKey)
			if err != nil {
				return err
			}
			ec, err := clientv3.New(clientv3.Config{Endpoints: o.etcd, DialTimeout: 10 * time.Second, TLS: etcdTLS})
			if err != nil {
				return err
			}
			defer ec.Close()
			errw := cmd.ErrOrStderr()
			rep, err := rewrap.Run(cmd.Context(), rewrap.Options{
				APIServer: o.apiserver, Token: token, Client: hc, Etcd: ec, EtcdPrefix: o.etcdPrefix,
				Resources: o.resources, Provider: o.provider, Target: target, DryRun: o.dryRun, Timeout: o.timeout, Progress: errw,
			})
			out := cmd.OutOrStdout()
			if rep != nil {
				fmt.Fprint(out, rep.String())
			}
			if err != nil {
				return err
			}
			if rep.Stale > 0 {
				if o.raise {
					return &exitError{code: 1, err: fmt.Errorf("refusing to raise the minimum decrypt version of %s to %d: %d objects are not under %s (%w); rewrap them first", o.key, k.LatestVersion, rep.Stale, target, rewrap.ErrStale)}
				}
				fmt.Fprintf(out, "%d objects not under %s (dry run)\n", rep.Stale, target)
				return nil
			}
			fmt.Fprintf(out, "every object is under %s (%d rewritten)\n", target, rep.Rewritten)
			if o.raise && !o.dryRun && o.settle > 0 {
				// An apiserver that has not noticed the rotation yet (it
				// polls the plugin's Status once a minute) may still write
				// under the older version after the pass above: look again
				// once every apiserver must have noticed it.
				fmt.Fprintf(errw, "waiting %s (--settle) for every apiserver to write under %s, then checking again\n", o.settle, target)
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(o.settle):
				}
				again, err := rewrap.Run(cmd.Context(), rewrap.Options{
					APIServer: o.apiserver, Token: token, Client: hc, Etcd: ec, EtcdPrefix: o.etcdPrefix,
					Resources: o.resources, Provider: o.provider, Target: target, DryRun: true, Timeout: o.timeout, Progress: errw,
				})
				if err != nil {
					return err
				}
				if again.Stale > 0 {
					return &exitError{code: 1, err: fmt.Errorf("refusing to raise the minimum decrypt version of %s to %d: %d objects were written under an older version while waiting (an apiserver had not noticed the rotation yet; %w); run ward k8s rewrap again", o.key, k.LatestVersion, again.Stale, rewrap.ErrStale)}
				}
			}
			if o.raise {
				if _, err := c.Keys.ConfigureKey(cmd.Context(), &wardv1.ConfigureKeyRequest{Name: o.key, MinDecryptVersion: k.LatestVersion}); err != nil {
					return client.Unwrap(err)
				}
				fmt.Fprintf(out, "minimum decrypt version of %s raised to %d\n", o.key, k.LatestVersion)
			}
			return nil
		},
	}
	f := rw.Flags()
	f.StringVar(&o.key, "key", "", "the ward key of the kms-plugin (its configuration's key)")
	f.StringVar(&o.apiserver, "apiserver", "", "kube-apiserver URL, e.g. https://127.0.0.1:6443")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding a bearer token allowed to get and update the resources")
	f.StringVar(&o.apiCA, "apiserver-ca", "", "PEM file of the CA that signed the apiserver's certificate (default: system roots)")
	f.StringSliceVar(&o.etcd, "etcd-endpoints", nil, "the apiserver's etcd (read-only use)")
	f.StringVar(&o.etcdCA, "etcd-cacert", "", "etcd CA (PEM)")
	f.StringVar(&o.etcdCert, "etcd-cert", "", "etcd client certificate (PEM)")
	f.StringVar(&o.etcdKey, "etcd-key", "", "etcd client key (PEM)")
	f.StringVar(&o.etcdPrefix, "etcd-prefix", "/registry", "the apiserver's --etcd-prefix")
	f.StringVar(&o.provider, "provider", "ward", "the KMS v2 provider's name in the EncryptionConfiguration")
	f.StringSliceVar(&o.resources, "resource", []string{"secrets"}, "core v1 namespaced resources to rewrap (repeatable)")
	f.BoolVar(&o.dryRun, "dry-run", false, "only count the objects per key version")
	f.BoolVar(&o.raise, "raise-min-decrypt-version", false, "after a complete rewrap, set the key's minimum decrypt version to its newest version")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up after this long")
	f.DurationVar(&o.settle, "settle", 70*time.Second, "with --raise-min-decrypt-version: wait this long after a complete pass and check again before raising (every apiserver notices a rotation within a minute)")
	cmd.AddCommand(rw)
	return cmd
}

func k8sHTTPClient(caFile string) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := pemPool(caFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}, nil
}

func pemPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return pool, nil
}

func etcdTLSConfig(ca, cert, key string) (*tls.Config, error) {
	if ca == "" && cert == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pool, err := pemPool(ca)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	if cert != "" {
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	return tc, nil
}

package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/server"
	"github.com/wardproject/ward/internal/governance/drift"
	"github.com/wardproject/ward/internal/shared/buildinfo"
	"github.com/wardproject/ward/internal/shared/reqctx"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(serverCommand()) }, "server")
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

func serverCommand() *cobra.Command {
	var cfgPath, devDir, devTD, meshDir string
	var dev, check bool
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run an authority: `--dev` for a throwaway unsealed one, `--config ward.yaml` for production",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case dev && cfgPath != "":
				return fmt.Errorf("--dev and --config exclude each other: --dev builds its own configuration")
			case meshDir != "" && !dev:
				return fmt.Errorf("--mesh runs beside a development authority: give --dev --mesh DIR")
			case meshDir != "" && devDir != "":
				return fmt.Errorf("--mesh keeps the authority's data in DIR/authority: leave out --dev-dir")
			case dev:
				return runDevServer(cmd, devDir, devTD, meshDir)
			case cfgPath == "":
				return fmt.Errorf("give --config ward.yaml (see docs/configuration.md), or --dev for a throwaway development authority")
			}
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			if check {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (trust domain %s, storage %s, seal %s)\n", cfgPath, cfg.TrustDomain, cfg.Storage.Backend, cfg.Seal.Type)
				return nil
			}
			return runServer(cmd, cfg, nil)
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "path to the server configuration (YAML)")
	cmd.Flags().BoolVar(&dev, "dev", false, "start a development authority: embedded store in a temporary directory, already initialised and unsealed")
	cmd.Flags().BoolVar(&check, "check", false, "validate the configuration and exit")
	cmd.Flags().StringVar(&devDir, "dev-dir", "", "with --dev: keep data in this directory instead of a temporary one (kept on exit)")
	cmd.Flags().StringVar(&meshDir, "mesh", "", "with --dev: also run a mesh demo (agent, two proxies, a demo app) and write its configs into `DIR` (as ward dev up does, in the foreground)")
	cmd.Flags().StringVar(&devTD, "trust-domain", "dev.ward.internal", "with --dev: the trust domain (two dev authorities with different ones can federate)")
	return cmd
}

// runServer opens storage and the seal, starts the authority and blocks
// until SIGINT/SIGTERM. ready, if set, runs once the server listens.
func runServer(cmd *cobra.Command, cfg *config.Server, ready func(*server.Server) error) error {
	log := newLogger(cmd.ErrOrStderr(), cfg.LogLevel)
	gc := server.TuneGC()
	// docs/configuration.md#memory; GOGC and GOMEMLIMIT override.
	log.Info("garbage collector", "gogc", gc.GOGC, "memory_limit", gc.MemoryLimit, "memory_limit_from", gc.Source)
	ctx := cmd.Context()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("creating data_dir: %w", err)
	}
	raw, err := server.OpenStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer raw.Close()
	sl, err := server.OpenSeal(cfg)
	if err != nil {
		return err
	}
	srv, err := server.New(cfg, raw, sl, log)
	if err != nil {
		return err
	}
	// Drift of the declared posture (docs/governance.md): the authority
	// evaluates it with governance's rules, which it never imports.
	srv.SetDriftEvaluator(drift.Evaluate, 0)
	stopAnomaly, err := wireAnomaly(srv, cfg.Anomaly, log)
	if err != nil {
		return err
	}
	defer stopAnomaly()
	if err := srv.Start(ctx); err != nil {
		srv.Stop()
		return err
	}
	defer srv.Stop()
	log.Info("authority started", "trust_domain", cfg.TrustDomain, "admin", srv.AdminAddress(), "http", srv.HTTPAddress(),
		"storage", raw.Backend(), "sealed", srv.Sealed(), "version", buildinfo.Read().Version)
	if ready != nil {
		if err := ready(srv); err != nil {
			return err
		}
	}
	return srv.Wait(ctx)
}

func runDevServer(cmd *cobra.Command, dir, trustDomain, meshDir string) error {
	var m *mesh
	if meshDir != "" {
		abs, err := filepath.Abs(meshDir)
		if err != nil {
			return err
		}
		if err := prepareMeshDir(abs); err != nil {
			return err
		}
		m = &mesh{Dir: abs, Shown: filepath.Clean(meshDir), TrustDomain: trustDomain}
		dir = m.path("authority")
	}
	keep := dir != ""
	if dir == "" {
		d, err := os.MkdirTemp("", "ward-dev-")
		if err != nil {
			return err
		}
		dir = d
		defer os.RemoveAll(dir)
	}
	dir, _ = filepath.Abs(dir)
	cfg := &config.Server{
		TrustDomain: trustDomain,
		DataDir:     dir,
		HTTPAddress: "127.0.0.1:0",
		LogLevel:    "warn",
		Seal:        config.Seal{Type: "keyfile", KeyFile: filepath.Join(dir, "dev-seal.key")},
		KMS:         config.KMS{RotationCheckInterval: yamlconf.Duration(time.Minute)},
		Identity:    config.Identity{NodeAPIAddress: "127.0.0.1:0"},
		Federation:  config.Federation{BundleEndpoint: config.BundleEndpoint{Address: "127.0.0.1:0"}},
		Dashboard:   config.Dashboard{Address: "127.0.0.1:0", TokenFile: filepath.Join(dir, "dashboard.token"), RefreshInterval: yamlconf.Duration(time.Second)},
	}
	cfg.Storage.Backend = "bbolt"
	cfg.Storage.Bbolt.Path = filepath.Join(dir, "ward.db")
	cfg.AdminSocket = filepath.Join(dir, "admin.sock")
	if err := cfg.Validate(); err != nil {
		return err
	}
	meshCtx, stopMesh := context.WithCancel(cmd.Context())
	meshWait := func() {}
	defer func() { stopMesh(); meshWait() }()
	return runServer(cmd, cfg, func(srv *server.Server) error {
		ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
		defer cancel()
		// The init's audit events (operator.init, ca.init, operator.unseal)
		// name the user who started the dev authority.
		ctx = reqctx.With(ctx, reqctx.Caller{Actor: fmt.Sprintf("dev:uid=%d", os.Getuid()), RequestID: reqctx.NewRequestID()})
		// Telemetry every 2 s (the Node API starts at the unseal below), so
		// ward drift sees a dev mesh's proxies at once.
		srv.SetTelemetryInterval(2 * time.Second)
		if err := srv.DevInit(ctx); err != nil {
			return fmt.Errorf("initialising the dev authority: %w", err)
		}
		out := cmd.OutOrStdout()
		where := "a temporary directory, deleted on exit"
		if keep {
			where = "the directory you gave, kept on exit"
		}
		var b strings.Builder
		fmt.Fprintf(&b, "ward %s: development authority running, initialised and unsealed.\n\n", buildinfo.Read().Version)
		fmt.Fprintf(&b, "  trust domain:  %s\n", cfg.TrustDomain)
		fmt.Fprintf(&b, "  admin socket:  %s\n", srv.AdminAddress())
		fmt.Fprintf(&b, "  metrics:       http://%s/metrics   (/healthz, /readyz)\n", srv.HTTPAddress())
		fmt.Fprintf(&b, "  node API:      %s   (agents: server_address; server ID spiffe://%s/ward/server)\n", srv.NodeAPIAddress(), cfg.TrustDomain)
		fmt.Fprintf(&b, "  bundle:        https://%s   (SPIFFE bundle endpoint, https_spiffe; for `ward federation add`)\n", srv.BundleEndpointAddress())
		fmt.Fprintf(&b, "  dashboard:     http://%s/   (log in with the token in %s)\n", srv.DashboardAddress(), srv.DashboardTokenFile())
		fmt.Fprintf(&b, "  data:          %s (%s)\n\n", dir, where)
		fmt.Fprintf(&b, "Point the CLI at it (paste into another shell):\n\n    export WARD_ADDRESS=%s\n\n", srv.AdminAddress())
		if m != nil {
			wait, err := startMesh(meshCtx, srv, m, cmd.ErrOrStderr())
			if wait != nil {
				meshWait = wait
			}
			if err != nil {
				return err
			}
			text, err := m.render(meshInstructions)
			if err != nil {
				return err
			}
			b.Write(text)
			b.WriteString("\n")
		} else {
			fmt.Fprintf(&b, "Then try:\n\n")
			fmt.Fprintf(&b, "    ward key create tenant-a/payments --classification confidential\n")
			fmt.Fprintf(&b, "    echo -n 'card 4111-1111' | ward kms encrypt --key tenant-a/payments --context tenant=a > secret.txt\n")
			fmt.Fprintf(&b, "    ward kms decrypt --context tenant=a < secret.txt && ward audit verify\n\n")
		}
		fmt.Fprintf(&b, "Dev mode uses a key-file seal and keeps everything on this machine: never use it in production.\n")
		fmt.Fprintf(&b, "Press Ctrl-C to stop.\n")
		_, err := io.WriteString(out, b.String())
		return err
	})
}

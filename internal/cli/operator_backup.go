package cli

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/backup"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/authority/store/etcdstore"
	"github.com/wardproject/ward/internal/shared/atomicfile"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// The operator's maintenance commands (docs/backup.md): backups, barrier
// rotation and rekeying. They hang under `ward operator` (operator.go).
func init() {
	register(func(root *cobra.Command) {
		for _, c := range root.Commands() {
			if c.Name() == "operator" {
				c.AddCommand(backupCommand(), rotateCommand(), rekeyCommand())
				return
			}
		}
		panic("cli: the operator command must be registered before its maintenance commands")
	}, "operator")
}

func backupCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "backup", Short: "Create, verify and restore backups of the authority's whole storage (docs/backup.md)"}

	var out string
	create := &cobra.Command{
		Use:   "create -o FILE",
		Short: "Write a consistent, still-encrypted snapshot of the authority with a signed manifest (file mode 0600)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return errors.New("name the backup file with -o FILE")
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				man, err := receiveBackup(ctx, c, out)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "Backup written to %s (%d entries, %d bytes of payload, sha256 %s).\n", out, man.Entries, man.PayloadSize, man.PayloadSHA256)
				fmt.Fprintf(w, "Audit checkpoint: %d events, root %x, signed by audit key %s.\n", man.Audit.Checkpoint.Size, man.Audit.Checkpoint.RootHash, man.KeyID)
				fmt.Fprintf(w, "It holds no plaintext key: restoring it needs the unseal shares (%d of %d, %s seal). Keep it offline (docs/backup.md).\n", man.Seal.Threshold, man.Seal.Shares, man.Seal.Type)
				return nil
			})
		},
	}
	create.Flags().StringVarP(&out, "output", "o", "", "the backup file to write (replaced atomically)")

	var keyPath, cpOut, stateDir string
	var asJSON, skipKeyCheck bool
	verify := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check a backup without unsealing anything: signature, payload hash, structure, audit checkpoint",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := verifyBackupFile(cmd, args[0], keyPath, stateDir, skipKeyCheck)
			if err != nil {
				return err
			}
			m := v.Manifest
			if cpOut != "" {
				b, err := checkpoint.Encode(m.Audit.Checkpoint)
				if err != nil {
					return err
				}
				if err := atomicfile.Write(cpOut, b, 0o600); err != nil {
					return err
				}
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(w).Encode(m)
			}
			fmt.Fprintf(w, "Backup %s is intact.\n", args[0])
			fmt.Fprintf(w, "  trust domain:  %s\n  created:       %s (ward %s, %s store, revision %d)\n", m.TrustDomain, m.Created.Format(time.RFC3339), m.WardVersion, m.Backend, m.StoreRevision)
			fmt.Fprintf(w, "  entries:       %d (%d reserved), barrier terms %v\n", m.Entries, m.Reserved, m.Terms)
			fmt.Fprintf(w, "  audit:         %d events, checkpoint at %d with root %x\n", m.Audit.Entries, m.Audit.Checkpoint.Size, m.Audit.Checkpoint.RootHash)
			fmt.Fprintf(w, "  signed by:     audit key %s\n", m.KeyID)
			fmt.Fprintf(w, "  seal:          %s, %d of %d shares unseal it\n", m.Seal.Type, m.Seal.Threshold, m.Seal.Shares)
			return nil
		},
	}
	verify.Flags().StringVar(&keyPath, "public-key", "", "the authority's audit public key (PEM, kept apart from the backups): the backup must be signed by it")
	verify.Flags().StringVar(&cpOut, "checkpoint-out", "", "write the backup's audit checkpoint to this file (for ward audit verify --checkpoint)")
	verify.Flags().StringVar(&stateDir, "state-dir", "", "where ward audit verify remembers audit keys (default $WARD_STATE_DIR, ...): a remembered key for the backup's trust domain must match")
	verify.Flags().BoolVar(&asJSON, "json", false, "print the manifest as JSON")
	verify.Flags().BoolVar(&skipKeyCheck, "skip-key-check", false, "accept a backup whose signing key nothing trusted vouches for (no --public-key, no key remembered by ward audit verify): a warning is printed; anyone who can write a backup can sign one")

	var dataDir, prefix, caFile, certFile, keyFile string
	var endpoints []string
	var keepLint bool
	restore := &cobra.Command{
		Use:   "restore FILE (--data-dir DIR | --etcd-endpoints URL,... --etcd-prefix P)",
		Short: "Restore a verified backup into an empty data directory or etcd prefix (then unseal with the original shares)",
		Long: `Restore a backup into an EMPTY target: a data directory (its ward.db must not exist or be
empty) or an etcd prefix holding no key. A non-empty target is refused and nothing is changed.
The backup is verified completely before anything is written; the barrier keyring is written
last, so an interrupted restore leaves a store nobody can unseal (empty it and restore again).
Start ward server on the target, then unseal it with the shares of the backed-up authority.

A restore never lowers the policy federation lint: the restored authority enforces the stricter
of the backup's stored mode and strict (the restore cannot read the mode of the cluster it
replaces), and audits it at its first unseal (operator.backup.restore). --keep-backup-lint-mode
lets the backup's mode stand, warn included (audited as such).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (dataDir == "") == (len(endpoints) == 0) {
				return errors.New("give exactly one target: --data-dir DIR (bbolt) or --etcd-endpoints (etcd, with --etcd-prefix)")
			}
			v, err := verifyBackupFile(cmd, args[0], keyPath, stateDir, skipKeyCheck)
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			ctx := cmd.Context()
			var dst store.Store
			var cleanup func()
			if dataDir != "" {
				dst, cleanup, err = openBoltTarget(dataDir)
			} else {
				dst, err = etcdstore.Open(ctx, etcdstore.Config{Endpoints: endpoints, Prefix: prefix, CAFile: caFile, CertFile: certFile, KeyFile: keyFile, DialTimeout: 10 * time.Second})
				cleanup = func() {}
			}
			if err != nil {
				return fmt.Errorf("opening the restore target: %w", err)
			}
			cnt := newCounter(cmd.ErrOrStderr(), "restoring entries", uint64(v.Manifest.Entries))
			_, err = backup.Restore(ctx, f, dst, backup.RestoreOptions{TrustedKey: v.PublicKey, KeepBackupLintMode: keepLint,
				Progress: func(done, _ int64) { cnt.add(uint64(done) - cnt.n) }})
			cnt.done()
			dst.Close()
			if err != nil {
				if errors.Is(err, backup.ErrNotEmpty) {
					cleanup = func() {}
				}
				cleanup()
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "Restored %d entries of the %s authority (audit checkpoint at %d events) into %s.\n", v.Manifest.Entries, v.Manifest.TrustDomain, v.Manifest.Audit.Checkpoint.Size, targetName(dataDir, endpoints, prefix))
			fmt.Fprintf(w, "Start ward server on it and unseal with %d of the original %d shares (ward operator unseal).\n", v.Manifest.Seal.Threshold, v.Manifest.Seal.Shares)
			if keepLint {
				fmt.Fprintln(w, "Policy federation lint: the backup's stored mode stands, warn included (--keep-backup-lint-mode); audited at the first unseal.")
			} else {
				fmt.Fprintln(w, "Policy federation lint: strict at the first unseal, whatever the backup stored (a restore never lowers it; audited). If the cluster it replaces was in warn mode: ward policy lint-mode warn -m WHY.")
			}
			return nil
		},
	}
	restore.Flags().StringVar(&dataDir, "data-dir", "", "restore into this data directory (bbolt, DIR/ward.db)")
	restore.Flags().StringSliceVar(&endpoints, "etcd-endpoints", nil, "restore into etcd at these endpoints")
	restore.Flags().StringVar(&prefix, "etcd-prefix", "", "the etcd key prefix of the restored authority (storage.etcd.prefix)")
	restore.Flags().StringVar(&caFile, "etcd-ca", "", "etcd CA certificate (PEM)")
	restore.Flags().StringVar(&certFile, "etcd-cert", "", "etcd client certificate (PEM)")
	restore.Flags().StringVar(&keyFile, "etcd-key", "", "etcd client key (PEM)")
	restore.Flags().StringVar(&keyPath, "public-key", "", "the authority's audit public key (PEM): the backup must be signed by it")
	restore.Flags().StringVar(&stateDir, "state-dir", "", "where ward audit verify remembers audit keys: a remembered key for the backup's trust domain must match")
	restore.Flags().BoolVar(&skipKeyCheck, "skip-key-check", false, "restore a backup whose signing key nothing trusted vouches for (a warning is printed)")
	restore.Flags().BoolVar(&keepLint, "keep-backup-lint-mode", false, "let the backup's stored policy federation lint mode stand, warn included (default: the restored authority enforces strict; audited either way)")

	cmd.AddCommand(create, verify, restore)
	return cmd
}

func targetName(dataDir string, endpoints []string, prefix string) string {
	if dataDir != "" {
		return dataDir
	}
	return fmt.Sprintf("etcd %s prefix %q", strings.Join(endpoints, ","), prefix)
}

// openBoltTarget opens DIR/ward.db for a restore; cleanup removes what
// the restore created (the directory and the file) if it fails.
func openBoltTarget(dir string) (store.Store, func(), error) {
	if !filepath.IsAbs(dir) {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, nil, err
		}
		dir = abs
	}
	_, statErr := os.Stat(dir)
	newDir := errors.Is(statErr, os.ErrNotExist)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	path := filepath.Join(dir, "ward.db")
	_, statErr = os.Stat(path)
	newFile := errors.Is(statErr, os.ErrNotExist)
	st, err := boltstore.Open(path, boltstore.WithLockTimeout(2*time.Second))
	if err != nil {
		return nil, nil, fmt.Errorf("%w (is an authority running on %s? stop it first)", err, dir)
	}
	return st, func() {
		if newFile {
			os.Remove(path)
		}
		if newDir {
			os.Remove(dir)
		}
	}, nil
}

// receiveBackup streams a backup into path: a temporary file (0600) in
// the same directory, fsynced, renamed over path; nothing at path until
// the whole backup arrived and was checked.
func receiveBackup(ctx context.Context, c *client.Client, path string) (*backup.Manifest, error) {
	stream, err := c.Maintenance().CreateBackup(ctx, &wardv1.CreateBackupRequest{})
	if err != nil {
		return nil, client.Unwrap(err)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("creating a temporary file beside %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return nil, err
	}
	var manifest string
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, client.Unwrap(err)
		}
		if _, err := f.Write(msg.Data); err != nil {
			return nil, fmt.Errorf("writing %s: %w", tmp, err)
		}
		if msg.ManifestJson != "" {
			manifest = msg.ManifestJson
		}
	}
	if manifest == "" {
		return nil, errors.New("the authority ended the backup stream without its manifest: the backup is incomplete; nothing was written")
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	v, err := backup.Verify(f, backup.VerifyOptions{})
	if err != nil {
		return nil, fmt.Errorf("the backup received does not verify (%w); nothing was written", err)
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	ok = true
	if err := atomicfile.SyncDir(dir); err != nil {
		return nil, err
	}
	return &v.Manifest, nil
}

// verifyBackupFile verifies a backup file against --public-key, else
// against the audit key the CLI remembers for its trust domain. With
// neither, the signature only proves someone signed it: refused unless
// skip (--skip-key-check), which warns.
func verifyBackupFile(cmd *cobra.Command, path, keyPath, stateDir string, skip bool) (*backup.Verified, error) {
	var trusted crypto.PublicKey
	if keyPath != "" {
		b, err := os.ReadFile(keyPath)
		if err != nil {
			return nil, fmt.Errorf("reading --public-key: %w", err)
		}
		if trusted, err = checkpoint.ParsePublicKeyPEM(b); err != nil {
			return nil, fmt.Errorf("--public-key %s: %w", keyPath, err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	v, err := backup.Verify(f, backup.VerifyOptions{TrustedKey: trusted})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if trusted != nil {
		return v, nil
	}
	origin := v.Manifest.Audit.Checkpoint.Origin
	why := "no audit key is remembered for " + origin
	if dir, err := checkpointDir(stateDir); err != nil {
		why = fmt.Sprintf("no state directory to look for a remembered audit key in (%v)", err)
	} else if _, serr := os.Stat(dir); serr != nil {
		why = fmt.Sprintf("no audit key is remembered for %s (%s does not exist)", origin, dir)
	} else if mem, err := checkpoint.OpenDirMemory(dir); err != nil {
		why = fmt.Sprintf("the remembered audit keys in %s cannot be read: %v", dir, err)
	} else if id, where, err := mem.PinnedKey(origin); err != nil {
		why = fmt.Sprintf("the remembered audit key of %s cannot be read: %v", origin, err)
	} else if id != "" && id != v.Manifest.KeyID {
		return nil, fmt.Errorf("%s: %w: it is signed by audit key %s, but the audit key of %s remembered in %s is %s: it comes from another authority, or was forged",
			path, backup.ErrRefused, v.Manifest.KeyID, origin, where, id)
	} else if id != "" {
		return v, nil
	} else {
		why = fmt.Sprintf("no audit key is remembered for %s in %s", origin, dir)
	}
	if !skip {
		return nil, fmt.Errorf("%s: its signing key %s was not checked: %s. Pass --public-key FILE (the authority's audit public key, kept apart from the backups), or run `ward audit verify` against the authority first (it remembers the key), or --skip-key-check to accept a signature anyone who can write a backup could make",
			path, v.Manifest.KeyID, why)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: --skip-key-check: the backup's signing key %s was not checked against a trusted key (%s): anyone who can write a backup could have signed it; compare the key with `ward audit verify`'s\n", v.Manifest.KeyID, why)
	return v, nil
}

func rotateCommand() *cobra.Command {
	var statusOnly, noWait bool
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Start a new barrier key term and rewrite every stored value under it (progress shown; resumable)",
		Long: `Start a new barrier key term: new writes use it at once, values under older terms stay
readable, and a background rewrite moves every stored value to the new term, in key order, saving
its progress with each batch (after a crash or a seal it resumes at the next unseal). The command
follows the rewrite's progress until it is done (--no-wait returns at once; --status only shows it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				m := c.Maintenance()
				var st *wardv1.BarrierStatus
				var err error
				if statusOnly {
					st, err = m.GetBarrierStatus(ctx, &wardv1.BarrierStatusRequest{})
				} else {
					st, err = m.RotateBarrier(ctx, &wardv1.RotateBarrierRequest{})
				}
				if err != nil {
					return client.Unwrap(err)
				}
				w := cmd.OutOrStdout()
				if !statusOnly {
					fmt.Fprintf(w, "Barrier rotated: new writes use term %d.\n", st.ActiveTerm)
				}
				if !statusOnly && !noWait {
					cnt := newCounter(cmd.ErrOrStderr(), fmt.Sprintf("rewriting values to term %d", st.RotationTerm), uint64(st.Total))
					moved := time.Now()
					for !st.RewriteDone && (st.RewriteRunning || st.Error == "") {
						time.Sleep(200 * time.Millisecond)
						prev := st.Scanned
						if st, err = m.GetBarrierStatus(ctx, &wardv1.BarrierStatusRequest{}); err != nil {
							return client.Unwrap(err)
						}
						cnt.total = uint64(st.Total)
						if uint64(st.Scanned) > cnt.n {
							cnt.add(uint64(st.Scanned) - cnt.n)
						}
						if st.Scanned != prev || st.RewriteRunning {
							moved = time.Now()
						} else if time.Since(moved) > rotateStall {
							cnt.done()
							fmt.Fprintf(w, "The rewrite made no progress for %s and does not run on this authority: it runs on the elected leader (see ward operator status) and resumes there; follow it with ward operator rotate --status.\n", rotateStall)
							printBarrierStatus(w, st)
							return nil
						}
					}
					cnt.done()
				}
				printBarrierStatus(w, st)
				if st.Error != "" && !st.RewriteRunning && !st.RewriteDone {
					return fmt.Errorf("the rewrite stopped: %s (it resumes at the next unseal or rotate)", st.Error)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&statusOnly, "status", false, "only show the active term and the rewrite's progress")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the new term is active, without following the rewrite")
	return cmd
}

// rotateStall is how long `ward operator rotate` follows a rewrite that
// does not move and does not run on the authority it asked.
const rotateStall = time.Minute

func printBarrierStatus(w io.Writer, st *wardv1.BarrierStatus) {
	fmt.Fprintf(w, "Active barrier term: %d\n", st.ActiveTerm)
	if st.RotationTerm == 0 {
		fmt.Fprintln(w, "The barrier was never rotated.")
		return
	}
	state := "running"
	switch {
	case st.RewriteDone:
		state = "done"
	case !st.RewriteRunning:
		state = "paused (resumes at the next unseal or rotate)"
	}
	fmt.Fprintf(w, "Rewrite to term %d: %s, %d of %d values visited, %d rewritten (pass %d)\n", st.RotationTerm, state, st.Scanned, st.Total, st.Rewritten, st.Pass)
	if st.Failed > 0 {
		fmt.Fprintf(w, "%d values could not be opened and stay under older terms (altered in storage?): %s\n", st.Failed, strings.Join(st.FailedKeys, ", "))
	}
}

func rekeyCommand() *cobra.Command {
	var shares, threshold uint32
	var nonce string
	var statusOnly, cancel, asJSON bool
	cmd := &cobra.Command{
		Use:   "rekey (--shares N --threshold M | --nonce NONCE | --status | --cancel)",
		Short: "Replace the unseal shares after a quorum of the current ones (stored data unchanged)",
		Long: `Replace the unseal shares, as Vault's rekey does. Start with --shares N --threshold M: it prints
a nonce. Then holders of the CURRENT shares each run ` + "`ward operator rekey --nonce NONCE`" + ` and enter
their share (stdin or a hidden prompt, never an argument) until the current threshold is reached;
the last one receives the new shares, shown once. A new root key is split into them and the
barrier keyring is rewrapped under it, in one write with the new seal configuration: the old
shares stop working, no stored value changes. Backups taken before need the old shares.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &wardv1.RekeyRequest{}
			switch {
			case cancel:
				req.Cancel = true
			case statusOnly:
			case nonce != "":
				s, err := readSecretLine(cmd, "Current unseal share (input hidden): ")
				if err != nil {
					return err
				}
				if s == "" {
					return errors.New("no share given: pass it on stdin or type it at the prompt")
				}
				req.Nonce, req.Share = nonce, s
			case shares > 0 || threshold > 0:
				req.Start, req.Shares, req.Threshold = true, shares, threshold
			default:
				return errors.New("give --shares N --threshold M to start a rekey, --nonce NONCE to submit a current share, --status or --cancel")
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.Maintenance().Rekey(ctx, req)
				if err != nil {
					return client.Unwrap(err)
				}
				w := cmd.OutOrStdout()
				if asJSON {
					return json.NewEncoder(w).Encode(r)
				}
				switch {
				case r.Complete:
					for i, s := range r.NewShares {
						fmt.Fprintf(w, "New unseal share %d: %s\n", i+1, s)
					}
					fmt.Fprintf(w, "\nUnseal shares replaced: %d new shares, any %d unseal. The old shares no longer work.\n", len(r.NewShares), r.Threshold)
					fmt.Fprintln(w, "These shares are shown once and stored nowhere: give each to a different person. Backups taken before this rekey still need the OLD shares.")
				case cancel:
					fmt.Fprintln(w, "Rekey cancelled; nothing was changed.")
				case !r.Started:
					fmt.Fprintln(w, "No rekey in progress.")
				default:
					fmt.Fprintf(w, "Rekey in progress (nonce %s): %d/%d current shares submitted; new shares: %d, threshold %d.\n", r.Nonce, r.Progress, r.OldThreshold, r.Shares, r.Threshold)
					if req.Start {
						fmt.Fprintf(w, "Each holder of a current share runs: ward operator rekey --nonce %s\n", r.Nonce)
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().Uint32Var(&shares, "shares", 0, "number of new unseal shares")
	cmd.Flags().Uint32Var(&threshold, "threshold", 0, "number of new shares needed to unseal")
	cmd.Flags().StringVar(&nonce, "nonce", "", "submit one current share to the rekey with this nonce")
	cmd.Flags().BoolVar(&statusOnly, "status", false, "show the rekey in progress")
	cmd.Flags().BoolVar(&cancel, "cancel", false, "cancel the rekey in progress (nothing changes)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON (for automation)")
	return cmd
}

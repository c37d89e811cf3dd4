package cli

import (
	"bytes"
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
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// checkpointDir returns where `ward audit verify` remembers checkpoints:
// <flag or $WARD_STATE_DIR>/checkpoints, else
// $XDG_STATE_HOME/ward/checkpoints, else ~/.local/state/ward/checkpoints.
func checkpointDir(flag string) (string, error) {
	if flag == "" {
		flag = os.Getenv("WARD_STATE_DIR")
	}
	if flag != "" {
		return filepath.Join(flag, "checkpoints"), nil
	}
	if x := os.Getenv("XDG_STATE_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "ward", "checkpoints"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no place to remember audit checkpoints: %w; give one with --state-dir or WARD_STATE_DIR", err)
	}
	return filepath.Join(home, ".local", "state", "ward", "checkpoints"), nil
}

func auditVerifyCommand() *cobra.Command {
	var cpPath, keyPath, stateDir string
	var acceptNewKey bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Recompute the audit Merkle tree, check the signed checkpoint and (with --checkpoint) consistency with an earlier one",
		Long: `verify streams every stored audit event from the authority, recomputes the RFC 6962
Merkle tree locally and checks it against the authority's latest signed checkpoint.
Altered, deleted or reordered events are reported with their sequence numbers.
With --checkpoint FILE (saved earlier by 'ward audit checkpoint -o FILE') it also proves
that today's log extends that checkpoint: history was only appended to.
With --public-key FILE the checkpoints must be signed by that key (PEM), not just by
the key the authority presents.

verify also remembers the newest checkpoint it has verified for each log (by signing key)
in --state-dir (default $WARD_STATE_DIR, else $XDG_STATE_HOME/ward, else
~/.local/state/ward; files checkpoints/<key id>.json, mode 0600) and proves every later head
extends it, as Certificate Transparency monitors do. A log that went backwards (truncated,
rolled back to an old head, or forked) fails loudly with exit code 1, naming the remembered
and the current size and root.

It lists the audit witnesses: every federated authority that witnessed this log
(docs/federation.md, "Audit witnesses") with the size and time of the newest checkpoint it
cosigned. Each cosignature is verified with the witness's checkpoint key as this authority
pinned it, and the log must extend the cosigned checkpoint: a log that went back behind what
a witness cosigned fails with exit code 1.

It also remembers each log's signing key by origin (ward/<trust domain>). An authority's
audit signing key never changes, so a checkpoint of a known origin signed by another key
fails with exit code 1 ("AUDIT SIGNING KEY CHANGED"): the log was wiped or replaced in
storage, and its new history would start empty. Only after a deliberate re-initialisation
pass --accept-new-key to verify the new log and remember its key from then on.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var earlier *checkpoint.Checkpoint
			if cpPath != "" {
				b, err := os.ReadFile(cpPath)
				if err != nil {
					return fmt.Errorf("reading --checkpoint: %w", err)
				}
				cp, err := checkpoint.Parse(b)
				if err != nil {
					return fmt.Errorf("--checkpoint %s: %w", cpPath, err)
				}
				earlier = &cp
			}
			var trusted crypto.PublicKey
			if keyPath != "" {
				b, err := os.ReadFile(keyPath)
				if err != nil {
					return fmt.Errorf("reading --public-key: %w", err)
				}
				if trusted, err = checkpoint.ParsePublicKeyPEM(b); err != nil {
					return fmt.Errorf("--public-key %s: %w", keyPath, err)
				}
			}
			memDir, err := checkpointDir(stateDir)
			if err != nil {
				return err
			}
			mem, err := checkpoint.OpenDirMemory(memDir)
			if err != nil {
				return err
			}
			witness := checkpoint.NewWitness(mem)
			c, err := dial(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx := cmd.Context()
			head, err := c.Audit.Checkpoint(ctx, &wardv1.CheckpointRequest{})
			if err != nil {
				return client.Unwrap(err)
			}
			cp, err := checkpoint.Parse(head.Checkpoint)
			if err != nil {
				return fmt.Errorf("the authority's checkpoint: %w", err)
			}
			pub := trusted
			if pub == nil {
				if pub, err = checkpoint.ParsePublicKeyPEM(head.PublicKeyPem); err != nil {
					return fmt.Errorf("the authority's public key: %w", err)
				}
			}
			out := cmd.OutOrStdout()
			if err := witness.CheckKey(cp); err != nil {
				var kc *checkpoint.KeyChangedError
				if !errors.As(err, &kc) {
					return err
				}
				if !acceptNewKey {
					fmt.Fprintln(out, "PROBLEM", err)
					return &exitError{code: 1, err: err}
				}
				fmt.Fprintf(out, "WARNING: the audit signing key of %s changed from %s to %s; accepted with --accept-new-key\n", kc.Origin, kc.OldKeyID, kc.NewKeyID)
			} else {
				acceptNewKey = false // nothing to accept
			}
			remembered, memPath, err := witness.CheckLog(cp)
			if err != nil {
				var rb *checkpoint.RollbackError
				if errors.As(err, &rb) {
					fmt.Fprintln(out, "PROBLEM", err)
					return &exitError{code: 1, err: err}
				}
				return err
			}
			v := audit.NewVerifier(audit.VerifyOptions{Head: cp, PublicKey: pub, Earlier: earlier})
			vs := []*audit.Verifier{v}
			var vm *audit.Verifier
			if remembered != nil {
				vm = audit.NewVerifier(audit.VerifyOptions{Head: cp, PublicKey: pub, Earlier: remembered})
				vs = append(vs, vm)
			}
			wits := witnessChecks(head.Cosignatures, cp, pub)
			for _, w := range wits {
				if w.v != nil {
					vs = append(vs, w.v)
				}
			}
			if err := streamRecords(ctx, cmd, c, cp.Size, vs...); err != nil {
				return err
			}
			rep := v.Finish()
			if vm != nil {
				if mrep := vm.Finish(); rep.OK() && !mrep.Consistent {
					for _, p := range mrep.Problems {
						fmt.Fprintln(out, "PROBLEM remembered checkpoint:", p.String())
					}
					rb := &checkpoint.RollbackError{Remembered: *remembered, Head: cp, Path: memPath,
						Inconsistent: errors.New("its records do not reproduce the remembered root: history was rewritten")}
					return &exitError{code: 1, err: rb}
				}
			}
			if !rep.OK() {
				for _, p := range rep.Problems {
					fmt.Fprintln(out, "PROBLEM", p.String())
				}
				if rep.Omitted > 0 {
					fmt.Fprintf(out, "... and %d more record problems\n", rep.Omitted)
				}
				return &exitError{code: 1, err: fmt.Errorf("audit log verification FAILED: %d problem(s) in %d events", len(rep.Problems)+rep.Omitted, cp.Size)}
			}
			fmt.Fprintf(out, "OK: %d events; Merkle root %x matches the checkpoint signed by key %s at %s\n",
				cp.Size, cp.RootHash, cp.KeyID, cp.Time.UTC().Format(time.RFC3339))
			if earlier != nil {
				fmt.Fprintf(out, "OK: consistent with the earlier checkpoint of %d events (%s): history was only appended to\n",
					earlier.Size, cpPath)
			}
			if remembered != nil {
				fmt.Fprintf(out, "OK: consistent with the checkpoint of %d events remembered from %s (%s)\n",
					remembered.Size, remembered.Time.UTC().Format(time.RFC3339), memPath)
			}
			if err := printWitnesses(out, wits); err != nil {
				return &exitError{code: 1, err: err}
			}
			if acceptNewKey {
				if err := witness.AcceptKey(cp); err != nil {
					return &exitError{code: 1, err: err}
				}
				fmt.Fprintf(out, "remembered key %s as the audit signing key of %s\n", cp.KeyID, cp.Origin)
			}
			if err := witness.Remember(cp, pub); err != nil {
				return &exitError{code: 1, err: err}
			}
			if remembered == nil || remembered.Size < cp.Size {
				fmt.Fprintf(out, "remembered this checkpoint in %s: later verifications must extend it\n", memPath)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cpPath, "checkpoint", "", "an earlier checkpoint file to prove consistency with")
	cmd.Flags().StringVar(&keyPath, "public-key", "", "PEM public key the checkpoints must be signed with")
	cmd.Flags().BoolVar(&acceptNewKey, "accept-new-key", false, "accept a new audit signing key for a log verified before under another key (only after a deliberate re-initialisation)")
	cmd.Flags().StringVar(&stateDir, "state-dir", "", "where to remember verified checkpoints (default $WARD_STATE_DIR, $XDG_STATE_HOME/ward or ~/.local/state/ward)")
	return cmd
}

// streamRecords feeds records [0, size) to v, with a live count on a
// terminal.
func streamRecords(ctx context.Context, cmd *cobra.Command, c *client.Client, size uint64, vs ...*audit.Verifier) error {
	stream, err := c.Audit.Read(ctx, &wardv1.ReadAuditRequest{Start: 0, End: size})
	if err != nil {
		return client.Unwrap(err)
	}
	progress := newCounter(cmd.ErrOrStderr(), "verifying audit events", size)
	defer progress.done()
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return client.Unwrap(err)
		}
		rec := audit.Record{Seq: r.Seq, Leaf: r.Leaf}
		if r.Error != "" {
			if r.Missing {
				rec.Err = fmt.Errorf("%w: %s", store.ErrNotFound, r.Error)
			} else {
				rec.Err = errors.New(r.Error)
			}
		}
		for _, v := range vs {
			v.Add(rec)
		}
		progress.add(1)
	}
}

// witnessCheck is one audit witness's cosignature on the log being
// verified: checked at once (err), then proven extended by the records
// (v, fed with the others).
type witnessCheck struct {
	td  string
	cs  checkpoint.Cosignature
	key string
	err error
	v   *audit.Verifier
}

// witnessChecks verifies each cosignature with its witness's pinned key
// and prepares a Verifier proving that head extends the cosigned
// checkpoint (signed by the log's key pub).
func witnessChecks(cws []*wardv1.WitnessCosignature, head checkpoint.Checkpoint, pub crypto.PublicKey) []*witnessCheck {
	var out []*witnessCheck
	for _, w := range cws {
		wc := &witnessCheck{td: w.TrustDomain}
		out = append(out, wc)
		dec := json.NewDecoder(bytes.NewReader(w.Cosignature))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&wc.cs); err != nil {
			wc.err = fmt.Errorf("its cosignature does not parse: %w", err)
			continue
		}
		wpub, err := checkpoint.ParsePublicKeyPEM(w.PublicKeyPem)
		if err != nil {
			wc.err = fmt.Errorf("its pinned key: %w", err)
			continue
		}
		wc.key = wc.cs.KeyID
		switch {
		case wc.cs.Witness != w.TrustDomain:
			wc.err = fmt.Errorf("the cosignature names witness %q", wc.cs.Witness)
		case wc.cs.Checkpoint.Origin != head.Origin:
			wc.err = fmt.Errorf("the cosignature is on log %q, not %q", wc.cs.Checkpoint.Origin, head.Origin)
		}
		if wc.err == nil {
			wc.err = checkpoint.VerifyCosignature(wc.cs, wpub)
		}
		if wc.err == nil {
			if err := checkpoint.Verify(wc.cs.Checkpoint, pub); err != nil {
				wc.err = fmt.Errorf("the checkpoint it cosigned was not signed by this log's key: %w", err)
			}
		}
		if wc.err == nil {
			earlier := wc.cs.Checkpoint
			wc.v = audit.NewVerifier(audit.VerifyOptions{Head: head, PublicKey: pub, Earlier: &earlier})
		}
	}
	return out
}

// printWitnesses reports each witness; a cosignature that does not verify
// or a log that does not extend what a witness cosigned is an error.
func printWitnesses(out io.Writer, wits []*witnessCheck) error {
	if len(wits) == 0 {
		fmt.Fprintln(out, "no audit witnesses: no federated authority has cosigned this log (docs/federation.md, \"Audit witnesses\")")
		return nil
	}
	bad := 0
	for _, w := range wits {
		cp := w.cs.Checkpoint
		if w.err == nil && w.v != nil {
			if rep := w.v.Finish(); !rep.Consistent {
				var ps []string
				for _, p := range rep.Problems {
					ps = append(ps, p.String())
				}
				w.err = fmt.Errorf("AUDIT LOG ROLLBACK: the log does not extend the checkpoint %s cosigned: %s", w.td, strings.Join(ps, "; "))
			}
		}
		if w.err != nil {
			bad++
			fmt.Fprintf(out, "PROBLEM witnessed by %s at size %d, time %s: %v\n", w.td, cp.Size, w.cs.Time.UTC().Format(time.RFC3339), w.err)
			continue
		}
		fmt.Fprintf(out, "OK: witnessed by %s at size %d, time %s (root %x; cosignature verified with its checkpoint key %s, pinned by this authority's federation relationship); the log extends it\n",
			w.td, cp.Size, w.cs.Time.UTC().Format(time.RFC3339), cp.RootHash, w.key)
	}
	if bad > 0 {
		return fmt.Errorf("audit log verification FAILED: %d audit witness(es) cosigned a checkpoint this log does not extend, or a cosignature that does not verify", bad)
	}
	return nil
}

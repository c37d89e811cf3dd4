// Package cli builds ward's command tree (cobra): server, operator, key,
// kms, audit, file encryption and the rest. Each area registers its
// commands from its own file through register, so areas stay independent.
package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/spf13/cobra"
)

// registration adds top-level commands (or extends one: the operator's
// maintenance commands) named by names; one without names (root flags)
// runs for every tree. Each area file registers in init.
type registration struct {
	names []string
	add   func(root *cobra.Command)
}

var registrations []registration

// register adds a registration whose add creates or extends exactly the
// top-level commands names (TestRegistrationNames holds it to that).
func register(add func(root *cobra.Command), names ...string) {
	registrations = append(registrations, registration{names: names, add: add})
}

// NewRoot builds the full command tree.
func NewRoot() *cobra.Command { return newRoot("") }

// newRoot builds the tree with only the top-level command named only
// (and what every tree has) when only is not empty, else the full tree.
func newRoot(only string) *cobra.Command {
	root := &cobra.Command{
		Use:           "ward",
		Short:         "ward: workload identity, mTLS and key management for a fleet of clusters",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("address", "", "authority address: unix:///path/to/admin.sock or host:port, or several authorities separated by commas (calls fail over between them, docs/ha.md) (default $WARD_ADDRESS)")
	for _, r := range registrations {
		if only == "" || len(r.names) == 0 || slices.Contains(r.names, only) {
			r.add(root)
		}
	}
	return root
}

// rootFor builds the tree args run: a process runs one command, so when
// args start with the name of a registered top-level command only that
// command's subtree is built (every ward invocation pays for what it
// builds: flags, defaults, closures). Anything else (help, completion,
// flags first, an unknown or mistyped name cobra suggests a command for)
// gets the full tree.
func rootFor(args []string) *cobra.Command {
	if len(args) > 0 {
		for _, r := range registrations {
			if slices.Contains(r.names, args[0]) {
				return newRoot(args[0])
			}
		}
	}
	return NewRoot()
}

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Main runs ward with args and returns the process exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(args) == 1 && args[0] == "--version" {
		args = []string{"version"} // as other tools answer it
	}
	root := rootFor(args)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

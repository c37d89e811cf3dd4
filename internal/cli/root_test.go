package cli

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// describe is a command subtree as a user meets it: every command's path,
// use, short help and flags (name, shorthand, default, usage), sorted.
func describe(c *cobra.Command) []string {
	var out []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		out = append(out, fmt.Sprintf("%s | %s | %s | hidden=%v", c.CommandPath(), c.Use, c.Short, c.Hidden))
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			out = append(out, fmt.Sprintf("%s --%s -%s default=%q %s", c.CommandPath(), f.Name, f.Shorthand, f.DefValue, f.Usage))
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(c)
	slices.Sort(out)
	return out
}

// TestRegistrationNames: Main builds only the top-level command its
// arguments name (rootFor), so each registration must name exactly the
// top-level commands it creates or extends, and that command's subtree
// built alone must be the one of the full tree.
func TestRegistrationNames(t *testing.T) {
	full := NewRoot()
	var named []string
	for _, r := range registrations {
		named = append(named, r.names...)
	}
	for _, c := range full.Commands() {
		if !slices.Contains(named, c.Name()) {
			t.Errorf("top-level command %q is added by a registration that does not name it: register(..., %q)", c.Name(), c.Name())
		}
	}
	for _, name := range named {
		alone := newRoot(name)
		var got []string
		for _, c := range alone.Commands() {
			got = append(got, c.Name())
		}
		if !slices.Equal(got, []string{name}) {
			t.Errorf("the tree built for %q has the top-level commands %q, want only %q", name, got, name)
			continue
		}
		want, _, err := full.Find([]string{name})
		if err != nil || want.Name() != name {
			t.Errorf("%q: not in the full tree (%v)", name, err)
			continue
		}
		if g, w := describe(alone.Commands()[0]), describe(want); !slices.Equal(g, w) {
			t.Errorf("%q built alone differs from the full tree's:\n got %s\nwant %s", name, strings.Join(g, "\n     "), strings.Join(w, "\n     "))
		}
		if g, w := describe(alone)[0], describe(full)[0]; g != w {
			t.Errorf("%q: root differs: %s, want %s", name, g, w)
		}
		var gf, wf []string
		alone.PersistentFlags().VisitAll(func(f *pflag.Flag) { gf = append(gf, f.Name+"="+f.DefValue) })
		full.PersistentFlags().VisitAll(func(f *pflag.Flag) { wf = append(wf, f.Name+"="+f.DefValue) })
		if !slices.Equal(gf, wf) {
			t.Errorf("%q: global flags %q, want %q", name, gf, wf)
		}
	}
}

// TestRootFor: a named command gets its subtree alone; help, completion,
// flags before the command and unknown names (cobra's suggestions need
// every name) get the full tree.
func TestRootFor(t *testing.T) {
	all := len(NewRoot().Commands())
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"encrypt", "--local-key", "k.json", "-i", "a"}, 1},
		{[]string{"operator", "backup", "create"}, 1},
		{[]string{"kms-plugin"}, 1},
		{nil, all},
		{[]string{"help", "encrypt"}, all},
		{[]string{"--help"}, all},
		{[]string{"--address", "unix:///x.sock", "key", "list"}, all},
		{[]string{"completion", "bash"}, all},
		{[]string{"__complete", "enc"}, all},
		{[]string{"encrpyt"}, all},
	} {
		if got := len(rootFor(tc.args).Commands()); got != tc.want {
			t.Errorf("rootFor(%q): %d top-level commands, want %d", tc.args, got, tc.want)
		}
	}
	// A mistyped command still gets cobra's suggestion through Main.
	root := rootFor([]string{"encrpyt"})
	root.SetArgs([]string{"encrpyt"})
	err := root.Execute()
	if err == nil || !strings.Contains(err.Error(), "encrypt") {
		t.Errorf("ward encrpyt: %v, want a suggestion of encrypt", err)
	}
}

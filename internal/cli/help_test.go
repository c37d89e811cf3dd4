package cli

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestFlagHelpReadsWell: backticks in a flag's usage name its value in
// the help (`--local-key FILE`), so they must hold one word, not a
// command: "--local-key ward local-key new" is what a whole command in
// backticks prints.
func TestFlagHelpReadsWell(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		check := func(f *pflag.Flag) {
			name, usage := pflag.UnquoteUsage(f)
			if strings.ContainsAny(name, " \t") {
				t.Errorf("%s --%s: help shows the value name %q (backticks around a phrase in %q)", c.CommandPath(), f.Name, name, f.Usage)
			}
			if strings.Contains(usage, "`") {
				t.Errorf("%s --%s: stray backtick in %q", c.CommandPath(), f.Name, f.Usage)
			}
		}
		c.LocalFlags().VisitAll(check)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(NewRoot())
}

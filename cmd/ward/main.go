// Command ward is the single binary for ward's authority, agent, proxy and
// CLI. It only wires flags to internal/cli; all behaviour lives there.
package main

import (
	"os"

	"github.com/wardproject/ward/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}

// Command ferry moves Nix store paths and builds between machines. See the
// README and "ferry help".
package main

import (
	"os"

	"ferry/internal/cli"
	"ferry/internal/sandbox"
)

func main() {
	// A re-exec of ferry as a build sandbox's init never returns from here.
	sandbox.Init()
	os.Exit(cli.Main(os.Args[1:]))
}

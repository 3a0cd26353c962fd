// Command ferry moves Nix store paths and builds between machines. See the
// README and "ferry help".
package main

import (
	"os"
	"path/filepath"

	"ferry/internal/cli"
	"ferry/internal/sandbox"
)

func main() {
	// A re-exec of ferry as a build sandbox's init never returns from here.
	sandbox.Init()
	args := os.Args[1:]
	if filepath.Base(os.Args[0]) == cli.BuildHookName { // build-hook = .../ferry-build-hook
		args = append([]string{"build-hook"}, args...)
	}
	os.Exit(cli.Main(args))
}

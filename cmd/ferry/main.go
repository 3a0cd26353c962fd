// Command ferry moves Nix store paths and builds between machines. See the
// README and "ferry help".
package main

import (
	"os"

	"ferry/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}

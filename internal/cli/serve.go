package cli

import "context"

// runNixServeArgv handles Nix's own argv, "--serve [--write] [--store X]",
// which real Nix clients run on the remote side.
func runNixServeArgv(ctx context.Context, e *Env, args []string) error {
	return usagef("--serve is not implemented yet")
}

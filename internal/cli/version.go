package cli

import (
	"context"
	"fmt"
	"runtime/debug"

	"ferry/internal/serve"
)

// Version is ferry's version; the build sets it with
// -ldflags "-X ferry/internal/cli.Version=...", else it comes from the
// module's build information.
var Version = ""

func init() {
	register(&command{name: "version", summary: "print ferry's version and the Nix protocol versions it speaks", run: cmdVersion})
}

func version() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v = "git-" + s.Value[:12]
			}
		}
		if v != "" && v != "(devel)" {
			return v
		}
	}
	return "devel"
}

func cmdVersion(ctx context.Context, e *Env, args []string) error {
	if _, err := parseFlags(newFlags(e, "version"), args); err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "ferry %s\nserve protocol %d.%d (nix-store --serve of Nix 2.4 and later; older servers down to 2.0 are spoken to as they are)\nstore: Nix 2.8 database schema 10, NAR, export format 1\n",
		version(), serve.Version>>8, serve.Version&0xff)
	return nil
}

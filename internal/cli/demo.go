package cli

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"ferry/examples"
	"ferry/internal/localstore"
	"ferry/internal/remote"
	"ferry/internal/storefs"
	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/store"
)

func init() {
	register(&command{name: "demo", args: "[--keep]", summary: "ferry's main job on an embedded default: remote builds of in-memory derivations over the serve protocol (no sshd, no root)", run: cmdDemo})
}

// demoResult is what the demo reports of one derivation.
type demoResult struct {
	Name    string
	DrvPath storepath.Path
	Status  store.BuildStatus
	Outputs map[string]storepath.Path
}

// cmdDemo runs ferry's main job on the embedded examples: a client with a
// local store builds each example derivation on a remote store reached as
// ssh://localhost?remote-program=FERRY&remote-store=DIR, which (as in Nix)
// runs `ferry --serve --write` directly, without sshd. For each derivation
// the client copies what the remote lacks of its inputs (ferry copy's
// locked, pipelined copy), sends the derivation itself in memory
// (BuildDerivation: the remote never sees a .drv file), and copies the
// outputs back.
func cmdDemo(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "demo")
	keep := fs.Bool("keep", false, "keep the two stores and print where they are")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ops) != 0 {
		return usagef("demo takes no operands")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "ferry-demo-")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Fprintf(e.Stdout, "stores kept in %s (local, remote)\n", work)
	} else {
		defer storefs.Delete(work)
	}
	_, err = runDemo(ctx, e, self, filepath.Join(work, "local"), filepath.Join(work, "remote"))
	return err
}

// demoURI is the remote store of the demo: ferry as the remote program
// of an ssh://localhost store, which needs no sshd.
func demoURI(ferry, remoteRoot string) string {
	q := url.Values{"remote-program": {ferry}, "remote-store": {remoteRoot}}
	return "ssh://localhost?" + q.Encode()
}

func runDemo(ctx context.Context, e *Env, ferry, localRoot, remoteRoot string) ([]demoResult, error) {
	local, err := localstore.Open(localRoot, &localstore.Options{NoSync: true})
	if err != nil {
		return nil, err
	}
	defer local.Close()
	uri := demoURI(ferry, remoteRoot)
	fmt.Fprintf(e.Stdout, "remote store: %s\n", uri)
	st, err := store.Open(ctx, uri, &store.OpenOptions{Log: e.Stderr})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	sess, ok := st.(remote.Session)
	if !ok {
		return nil, fmt.Errorf("demo: %s cannot build", uri)
	}

	// The input sources, as builtins.toFile would add them.
	for name, file := range examples.Sources {
		data, err := examples.FS.ReadFile(file)
		if err != nil {
			return nil, err
		}
		if _, err := local.AddText(ctx, name, data, nil); err != nil {
			return nil, err
		}
	}
	drvs := map[storepath.Path]*derivation.Derivation{}
	var results []demoResult
	var copied, sentBytes int
	for _, name := range examples.Derivations {
		data, err := examples.FS.ReadFile(name)
		if err != nil {
			return nil, err
		}
		drv, err := derivation.ParseJSON(data)
		if err != nil {
			return nil, fmt.Errorf("example %s: %w", name, err)
		}
		if err := drv.FillOutputPaths(storepath.DefaultDir, derivation.MapResolver(drvs), nil); err != nil {
			return nil, fmt.Errorf("example %s: %w", name, err)
		}
		drvPath, err := drv.Path(storepath.DefaultDir)
		if err != nil {
			return nil, err
		}
		drvs[drvPath] = drv
		res, sent, err := demoBuild(ctx, sess, local, drvs, drvPath, drv)
		if err != nil {
			return nil, err
		}
		copied += sent.SentPaths
		sentBytes += int(sent.SentBytes)
		results = append(results, *res)
		fmt.Fprintf(e.Stdout, "%-8s %-13s on the remote from an in-memory derivation (sent %d input paths)\n", drv.Name, res.Status, sent.SentPaths)
		for _, o := range sortedKeys(res.Outputs) {
			fmt.Fprintf(e.Stdout, "         %-4s %s\n", o, res.Outputs[o])
		}
	}
	if err := st.Close(); err != nil {
		return nil, fmt.Errorf("serve session: %w", err)
	}

	// What the mission promises: the remote built everything without ever
	// holding a .drv file, and the outputs came back complete.
	entries, err := os.ReadDir(filepath.Join(remoteRoot, "nix/store"))
	if err != nil {
		return nil, err
	}
	for _, ent := range entries {
		if strings.HasSuffix(ent.Name(), ".drv") {
			return nil, fmt.Errorf("demo: the remote store holds a .drv file: %s", ent.Name())
		}
	}
	rep, err := local.Verify(ctx, true, false)
	if err != nil {
		return nil, err
	}
	if !rep.OK() {
		return nil, fmt.Errorf("demo: local store does not verify: %v", rep.Messages)
	}
	last := results[len(results)-1]
	msg, err := os.ReadFile(filepath.Join(local.RealPath(last.Outputs["out"]), "message"))
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(e.Stdout, "sent %d input paths (%d bytes); no .drv file reached the remote; outputs copied back and verified\n%s/message:\n%s", copied, sentBytes, last.Outputs["out"], msg)
	return results, nil
}

// demoBuild builds drv on the remote as ferry build --builders does
// (remote.BuildOn: the missing inputs after a locked query, the
// derivation in memory, the outputs copied back).
func demoBuild(ctx context.Context, sess remote.Session, local *localstore.Store, drvs map[storepath.Path]*derivation.Derivation, drvPath storepath.Path, drv *derivation.Derivation) (*demoResult, *remote.StepResult, error) {
	step := &remote.Step{DrvPath: drvPath, Drv: drv, Outputs: func(p storepath.Path) (map[string]storepath.Path, error) {
		in, ok := drvs[p]
		if !ok {
			return nil, fmt.Errorf("unknown input derivation %s", p)
		}
		return in.OutputPaths(), nil
	}}
	res, err := remote.BuildOn(ctx, local, "localhost", sess, step)
	if err != nil {
		return nil, nil, err
	}
	if !res.Result.Status.Success() {
		return nil, nil, fmt.Errorf("build of %s failed (%v): %s", drvPath, res.Result.Status, res.Result.ErrorMsg)
	}
	return &demoResult{Name: drv.Name, DrvPath: drvPath, Status: res.Result.Status, Outputs: drv.OutputPaths()}, res, nil
}

func sortedKeys(m map[string]storepath.Path) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

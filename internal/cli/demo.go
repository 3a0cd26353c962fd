package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"ferry/examples"
	"ferry/internal/localserve"
	"ferry/internal/localstore"
	"ferry/internal/serve"
	"ferry/internal/settings"
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

// cmdDemo plays both ends of a remote build in one process: a client with
// a local store and the embedded example derivations, and a `ferry serve
// --write` session on a second store, connected by pipes as ssh would
// connect them. For each derivation the client sends what the remote lacks
// of its inputs, sends the derivation itself in memory (BuildDerivation:
// the remote never sees a .drv file), and copies the outputs back.
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
	work, err := os.MkdirTemp("", "ferry-demo-")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Fprintf(e.Stdout, "stores kept in %s (local, remote)\n", work)
	} else {
		defer removeAll(work)
	}
	_, err = runDemo(ctx, e, filepath.Join(work, "local"), filepath.Join(work, "remote"))
	return err
}

func runDemo(ctx context.Context, e *Env, localRoot, remoteRoot string) ([]demoResult, error) {
	local, err := localstore.Open(localRoot, &localstore.Options{NoSync: true})
	if err != nil {
		return nil, err
	}
	defer local.Close()
	remote, err := localstore.Open(remoteRoot, &localstore.Options{NoSync: true})
	if err != nil {
		return nil, err
	}
	defer remote.Close()
	conf, err := settings.Load(nil)
	if err != nil {
		return nil, err
	}

	// The remote end: one serve session, as `ferry serve --write` behind ssh.
	toServer, clientOut := io.Pipe()
	clientIn, fromServer := io.Pipe()
	served := make(chan error, 1)
	go func() {
		err := serve.NewServer(localserve.NewBackend(remote, conf, nil),
			&serve.Options{Write: true, Log: prefixWriter(e.Stderr, "remote> ")}).Serve(ctx, toServer, fromServer)
		fromServer.CloseWithError(fmt.Errorf("server ended: %v", err))
		toServer.Close()
		served <- err
	}()
	client, err := serve.NewClient(ctx, clientIn, clientOut, storepath.DefaultDir, nil)
	if err != nil {
		return nil, err
	}

	drvs := map[storepath.Path]*derivation.Derivation{}
	var results []demoResult
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
		res, err := demoBuild(ctx, client, local, drvs, drvPath, drv)
		if err != nil {
			return nil, err
		}
		results = append(results, *res)
		fmt.Fprintf(e.Stdout, "%-8s %-13s on the remote from an in-memory derivation\n", drv.Name, res.Status)
		for _, o := range sortedKeys(res.Outputs) {
			fmt.Fprintf(e.Stdout, "         %-4s %s\n", o, res.Outputs[o])
		}
	}
	clientOut.Close()
	if err := <-served; err != nil {
		return nil, fmt.Errorf("serve session: %w", err)
	}

	// What the mission promises: the remote built everything without ever
	// holding a .drv file, and the outputs came back complete.
	entries, err := os.ReadDir(remote.RealDir())
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
	fmt.Fprintf(e.Stdout, "no .drv file reached the remote; outputs copied back and verified\n%s/message: %s", last.Outputs["out"], msg)
	return results, nil
}

// demoBuild sends drv's missing inputs, builds it remotely in memory and
// copies its outputs back into local.
func demoBuild(ctx context.Context, c *serve.Client, local *localstore.Store, drvs map[storepath.Path]*derivation.Derivation, drvPath storepath.Path, drv *derivation.Derivation) (*demoResult, error) {
	basic, err := serve.BasicDerivation(drv, func(p storepath.Path) (map[string]storepath.Path, error) {
		in, ok := drvs[p]
		if !ok {
			return nil, fmt.Errorf("unknown input derivation %s", p)
		}
		return in.OutputPaths(), nil
	})
	if err != nil {
		return nil, err
	}
	// Ask what the remote has, locking it there for the session, and send
	// only the rest of the input closure, references first.
	closure, err := local.QueryClosure(ctx, basic.InputSrcs, false)
	if err != nil {
		return nil, err
	}
	have, err := c.QueryValidPaths(ctx, closure, true, false)
	if err != nil {
		return nil, err
	}
	missing := without(closure, have)
	sorted, err := localstore.TopoSort(missing, func(p storepath.Path) []storepath.Path {
		refs, _ := local.QueryReferences(ctx, p)
		return refs
	})
	if err != nil {
		return nil, err
	}
	for _, p := range sorted {
		info, err := local.QueryPathInfo(ctx, p)
		if err != nil {
			return nil, err
		}
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(local.NarFromPath(ctx, p, pw)) }()
		if err := c.AddToStoreNar(ctx, info, pr); err != nil {
			return nil, fmt.Errorf("send %s: %w", p, err)
		}
	}
	res, err := c.BuildDerivation(ctx, drvPath, basic, nil)
	if err != nil {
		return nil, err
	}
	if !res.Status.Success() {
		return nil, fmt.Errorf("build of %s failed (%v): %s", drvPath, res.Status, res.ErrorMsg)
	}
	outs := drv.OutputPaths()
	var paths []storepath.Path
	for _, p := range outs {
		paths = append(paths, p)
	}
	infos, err := c.QueryPathInfos(ctx, paths)
	if err != nil {
		return nil, err
	}
	for _, info := range infos {
		pr, pw := io.Pipe()
		added := make(chan error, 1)
		go func() {
			err := local.AddToStoreNar(ctx, info, pr)
			pr.CloseWithError(err)
			added <- err
		}()
		err := c.DumpStorePath(ctx, info.Path, pw)
		pw.CloseWithError(err)
		if aerr := <-added; err == nil {
			err = aerr
		}
		if err != nil {
			return nil, fmt.Errorf("copy back %s: %w", info.Path, err)
		}
	}
	return &demoResult{Name: drv.Name, DrvPath: drvPath, Status: res.Status, Outputs: outs}, nil
}

func without(all, have []storepath.Path) []storepath.Path {
	h := map[storepath.Path]bool{}
	for _, p := range have {
		h[p] = true
	}
	var out []storepath.Path
	for _, p := range all {
		if !h[p] {
			out = append(out, p)
		}
	}
	return out
}

func sortedKeys(m map[string]storepath.Path) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// prefixWriter prefixes every line written to w.
func prefixWriter(w io.Writer, prefix string) io.Writer {
	return &prefixer{w: w, prefix: prefix, bol: true}
}

type prefixer struct {
	w      io.Writer
	prefix string
	bol    bool
}

func (p *prefixer) Write(b []byte) (int, error) {
	var out []byte
	for _, c := range b {
		if p.bol {
			out = append(out, p.prefix...)
		}
		out = append(out, c)
		p.bol = c == '\n'
	}
	_, err := p.w.Write(out)
	return len(b), err
}

// removeAll removes a tree of store objects, which are read-only.
func removeAll(dir string) {
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	os.RemoveAll(dir)
}

package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"ferry/internal/localstore"
	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/store"
)

func init() {
	register(&command{name: "derivation show", args: "DRV...", summary: "print derivations as JSON, exactly as nix show-derivation", run: cmdDerivationShow})
	register(&command{name: "derivation path", args: "FILE", summary: "print the .drv store path and the output paths Nix would compute for a .drv or JSON derivation", run: cmdDerivationPath})
}

// storeLayout is the layout of the local store --store names, by the rule
// store.Open uses (localstore.Resolve), without opening it. For a store
// that is not local it has only the logical directory (the URI's store=,
// else the default), and no physical one.
func storeLayout(e *Env) localstore.Layout {
	if r, err := localstore.ResolveString(e.Store); err == nil {
		return r.Layout
	}
	var l localstore.Layout
	l.Dir = storepath.DefaultDir
	if u, err := store.ParseURI(e.Store); err == nil {
		if d, err := u.StoreDirParam(); err == nil {
			l.Dir = d
		}
	}
	return l
}

// readDrvFile reads a derivation named by a store path (looked up in the
// physical store) or by a file name, and returns its contents and, when
// known, its store path.
func readDrvFile(l *localstore.Layout, arg string) ([]byte, storepath.Path, error) {
	if p, err := l.Dir.Parse(arg); err == nil && l.RealDir != "" {
		data, err := os.ReadFile(filepath.Join(l.RealDir, p.Base()))
		if err == nil {
			return data, p, nil
		}
		if !os.IsNotExist(err) {
			return nil, "", err
		}
	}
	data, err := os.ReadFile(arg)
	return data, "", err
}

// loadDerivation parses a .drv (ATerm) or JSON derivation and fills in any
// missing output paths, reading input derivations from the store.
func loadDerivation(e *Env, arg string) (*derivation.Derivation, storepath.Path, error) {
	l := storeLayout(e)
	return loadDerivationIn(&l, arg)
}

// loadDerivationIn is loadDerivation in the store laid out as l.
func loadDerivationIn(l *localstore.Layout, arg string) (*derivation.Derivation, storepath.Path, error) {
	data, p, err := readDrvFile(l, arg)
	if err != nil {
		return nil, "", err
	}
	var drv *derivation.Derivation
	if bytes.HasPrefix(data, []byte("Derive(")) {
		name := ""
		if p != "" {
			if name, err = derivation.NameFromPath(p); err != nil {
				return nil, "", err
			}
		} else if base := filepath.Base(arg); len(base) > 5 && base[len(base)-4:] == ".drv" {
			if sp, err := l.Dir.Join(base); err == nil {
				name, _ = derivation.NameFromPath(sp)
			}
		}
		drv, err = derivation.ParseIn(l.Dir, data, name)
	} else {
		drv, err = derivation.ParseJSONIn(l.Dir, data)
	}
	if err != nil {
		return nil, "", fmt.Errorf("read derivation %s: %w", arg, err)
	}
	if err := drv.FillOutputPaths(l.Dir, storeResolver(l, filepath.Dir(arg)), nil); err != nil {
		return nil, "", fmt.Errorf("compute output paths of %s: %w", arg, err)
	}
	if p == "" {
		if p, err = drv.Path(l.Dir); err != nil {
			return nil, "", err
		}
	}
	return drv, p, nil
}

// storeResolver reads input derivations from the physical store, or from
// fallbackDir (the directory of the file being read) when they are not
// there.
func storeResolver(l *localstore.Layout, fallbackDir string) derivation.Resolver {
	return func(p storepath.Path) (*derivation.Derivation, error) {
		name, err := derivation.NameFromPath(p)
		if err != nil {
			return nil, err
		}
		data, err := os.ReadFile(filepath.Join(l.RealDir, p.Base()))
		if l.RealDir == "" || os.IsNotExist(err) {
			data, err = os.ReadFile(filepath.Join(fallbackDir, p.Base()))
		}
		if err != nil {
			return nil, fmt.Errorf("read input derivation %s: %w", p, err)
		}
		return derivation.ParseIn(l.Dir, data, name)
	}
}

func cmdDerivationShow(ctx context.Context, e *Env, args []string) error {
	ops, err := parseFlags(newFlags(e, "derivation show"), args)
	if err != nil {
		return err
	}
	if len(ops) == 0 {
		return usagef("derivation show needs at least one DRV")
	}
	drvs := map[storepath.Path]*derivation.Derivation{}
	for _, arg := range ops {
		drv, p, err := loadDerivation(e, arg)
		if err != nil {
			return err
		}
		drvs[p] = drv
	}
	out, err := derivation.MarshalShowJSON(drvs)
	if err != nil {
		return err
	}
	_, err = e.Stdout.Write(out)
	return err
}

func cmdDerivationPath(ctx context.Context, e *Env, args []string) error {
	ops, err := parseFlags(newFlags(e, "derivation path"), args)
	if err != nil {
		return err
	}
	if len(ops) != 1 {
		return usagef("derivation path takes exactly one FILE")
	}
	l := storeLayout(e)
	drv, _, err := loadDerivationIn(&l, ops[0])
	if err != nil {
		return err
	}
	p, err := drv.Path(l.Dir)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.Stdout, p)
	outs := drv.OutputPaths()
	names := make([]string, 0, len(outs))
	for n := range outs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(e.Stdout, "%s\t%s\n", n, outs[n])
	}
	return nil
}

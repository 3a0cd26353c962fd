package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"ferry/internal/build"
	storecopy "ferry/internal/copy"
	"ferry/internal/localstore"
	"ferry/internal/settings"
	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/store"
)

func init() {
	register(&command{name: "store add", args: "[--fixed ALGO] [--recursive] PATH...", summary: "add files or directories to the store (as nix-store --add / --add-fixed)", run: cmdStoreAdd})
	register(&command{name: "store add-text", args: "NAME FILE [--ref PATH]...", summary: "add FILE's contents as a text object NAME with the given references (as builtins.toFile)", run: cmdStoreAddText})
	register(&command{name: "derivation add", args: "FILE...", summary: "write derivations (.drv or JSON) into the store, computing missing output paths (as nix-instantiate)", run: cmdDerivationAdd})
	register(&command{name: "path-info", args: "[--json] [--closure] [--size] [--closure-size] PATH...", summary: "show what the store knows of paths (as nix path-info)", run: cmdPathInfo})
	register(&command{name: "query", args: "--references|--referrers|--requisites|--deriver PATH...", summary: "query the references, referrers, closure or deriver of paths (as nix-store -q)", run: cmdQuery})
	register(&command{name: "store export", args: "PATH...", summary: "write paths as a nix-store --export stream to standard output", run: cmdStoreExport})
	register(&command{name: "store import", summary: "import a nix-store --export stream from standard input, printing the imported paths", run: cmdStoreImport})
	register(&command{name: "store dump", args: "PATH", summary: "write the NAR of a valid store path to standard output", run: cmdStoreDump})
	register(&command{name: "store verify", args: "[--check-contents] [--repair]", summary: "check the store's database against its files (as nix-store --verify)", run: cmdStoreVerify})
}

func parsePaths(st store.Store, args []string) ([]storepath.Path, error) {
	ps := make([]storepath.Path, 0, len(args))
	for _, a := range args {
		p, err := st.Dir().Parse(a)
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return fmt.Sprint(*s) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func cmdStoreAdd(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "store add")
	fixed := fs.String("fixed", "", "add as a fixed-output path hashed with ALGO (flat unless --recursive), as nix-store --add-fixed")
	recursive := fs.Bool("recursive", false, "with --fixed: hash the NAR serialisation")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ops) == 0 {
		return usagef("store add needs at least one PATH")
	}
	method, algo := storepath.Recursive, hash.SHA256
	if *fixed != "" {
		if algo, err = hash.ParseAlgorithm(*fixed); err != nil {
			return usagef("--fixed: %v", err)
		}
		if !*recursive {
			method = storepath.Flat
		}
	} else if *recursive {
		return usagef("--recursive goes with --fixed")
	}
	return withStore(ctx, e, func(st *localstore.Store) error {
		for _, p := range ops {
			info, err := st.AddPath(ctx, p, method, algo)
			if err != nil {
				return err
			}
			fmt.Fprintln(e.Stdout, info.Path)
		}
		return nil
	})
}

func cmdStoreAddText(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "store add-text")
	var refs stringList
	fs.Var(&refs, "ref", "a store path the text refers to (repeatable)")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ops) != 2 {
		return usagef("store add-text takes NAME and FILE")
	}
	data, err := os.ReadFile(ops[1])
	if err != nil {
		return err
	}
	return withStore(ctx, e, func(st *localstore.Store) error {
		rs, err := parsePaths(st, refs)
		if err != nil {
			return err
		}
		info, err := st.AddText(ctx, ops[0], data, rs)
		if err != nil {
			return err
		}
		fmt.Fprintln(e.Stdout, info.Path)
		return nil
	})
}

func cmdDerivationAdd(ctx context.Context, e *Env, args []string) error {
	ops, err := parseFlags(newFlags(e, "derivation add"), args)
	if err != nil {
		return err
	}
	if len(ops) == 0 {
		return usagef("derivation add needs at least one FILE")
	}
	return withStore(ctx, e, func(st *localstore.Store) error {
		// Resolve input derivations in the store's own directories.
		l := st.Layout()
		for _, f := range ops {
			drv, _, err := loadDerivationIn(&l, f)
			if err != nil {
				return err
			}
			p, err := st.AddDerivation(ctx, drv)
			if err != nil {
				return err
			}
			fmt.Fprintln(e.Stdout, p)
		}
		return nil
	})
}

// pathInfoJSON is one element of nix path-info --json, fields in Nix
// 2.8's order.
type pathInfoJSON struct {
	Path             string   `json:"path"`
	Valid            *bool    `json:"valid,omitempty"`
	NarHash          string   `json:"narHash,omitempty"`
	NarSize          *uint64  `json:"narSize,omitempty"`
	References       []string `json:"references"`
	CA               string   `json:"ca,omitempty"`
	ClosureSize      *uint64  `json:"closureSize,omitempty"`
	Deriver          string   `json:"deriver,omitempty"`
	RegistrationTime *int64   `json:"registrationTime,omitempty"`
	Ultimate         bool     `json:"ultimate,omitempty"`
	Signatures       []string `json:"signatures,omitempty"`
}

func cmdPathInfo(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "path-info")
	asJSON := fs.Bool("json", false, "print JSON as nix path-info --json")
	closure := fs.Bool("closure", false, "include the closure of each path")
	fs.BoolVar(closure, "r", false, "same as --closure")
	size := fs.Bool("size", false, "print the NAR size")
	fs.BoolVar(size, "s", false, "same as --size")
	closureSize := fs.Bool("closure-size", false, "print the closure size")
	fs.BoolVar(closureSize, "S", false, "same as --closure-size")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	return withAnyStore(ctx, e, func(st store.Store) error {
		paths, err := parsePaths(st, ops)
		if err != nil {
			return err
		}
		if *closure {
			if paths, err = storecopy.Closure(ctx, st, paths, false); err != nil {
				return err
			}
		}
		// The infos in one request where the store can (one round trip over
		// ssh), and with --closure-size, those of the whole closure.
		want := paths
		if *closureSize {
			if want, err = storecopy.Closure(ctx, st, validOnly(ctx, st, paths), false); err != nil {
				return err
			}
			want = append(want, paths...)
		}
		known, err := storecopy.ValidInfos(ctx, st, want)
		if err != nil {
			return err
		}
		w := bufio.NewWriter(e.Stdout)
		defer w.Flush()
		var out []pathInfoJSON
		for _, p := range paths {
			info := known[p]
			if info == nil {
				_, err := st.QueryPathInfo(ctx, p) // the store's own error
				if err == nil {
					err = fmt.Errorf("path '%s' %w", p, store.ErrNotValid)
				}
				if errors.Is(err, store.ErrNotValid) && *asJSON {
					f := false
					out = append(out, pathInfoJSON{Path: string(p), Valid: &f})
					continue
				}
				return err
			}
			var csize uint64
			if *closureSize {
				cl, err := store.WalkClosure([]storepath.Path{p}, func(q storepath.Path) ([]storepath.Path, error) {
					if known[q] == nil {
						return nil, fmt.Errorf("path '%s' %w", q, store.ErrNotValid)
					}
					return known[q].References, nil
				})
				if err != nil {
					return err
				}
				for _, c := range cl {
					csize += known[c].NarSize
				}
			}
			if *asJSON {
				j := pathInfoJSON{
					Path:       string(p),
					NarHash:    info.NarHash.SRI(),
					NarSize:    &info.NarSize,
					References: make([]string, 0, len(info.References)),
					CA:         info.CA.String(),
					Deriver:    string(info.Deriver),
					Ultimate:   info.Ultimate,
					Signatures: info.Sigs,
				}
				for _, r := range info.References {
					j.References = append(j.References, string(r))
				}
				if *closureSize {
					j.ClosureSize = &csize
				}
				rt := info.RegistrationTime.Unix()
				j.RegistrationTime = &rt
				out = append(out, j)
				continue
			}
			fmt.Fprint(w, p)
			if *size {
				fmt.Fprintf(w, "\t%11d", info.NarSize)
			}
			if *closureSize {
				fmt.Fprintf(w, "\t%11d", csize)
			}
			fmt.Fprintln(w)
		}
		if *asJSON {
			if out == nil {
				out = []pathInfoJSON{}
			}
			data, err := json.Marshal(out)
			if err != nil {
				return err
			}
			w.Write(data)
			w.WriteString("\n")
		}
		return nil
	})
}

// validOnly returns the valid ones among paths (an error counts as none).
func validOnly(ctx context.Context, st store.Store, paths []storepath.Path) []storepath.Path {
	valid, _ := st.QueryValidPaths(ctx, paths)
	return valid
}

func cmdQuery(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "query")
	refs := fs.Bool("references", false, "print the direct references of each path")
	referrers := fs.Bool("referrers", false, "print the paths that refer to each path")
	reqs := fs.Bool("requisites", false, "print the closure of the paths")
	fs.BoolVar(reqs, "R", false, "same as --requisites")
	deriver := fs.Bool("deriver", false, "print the deriver of each path, or unknown-deriver")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	n := 0
	for _, b := range []bool{*refs, *referrers, *reqs, *deriver} {
		if b {
			n++
		}
	}
	if n != 1 {
		return usagef("query needs exactly one of --references, --referrers, --requisites and --deriver")
	}
	return withAnyStore(ctx, e, func(st store.Store) error {
		paths, err := parsePaths(st, ops)
		if err != nil {
			return err
		}
		w := bufio.NewWriter(e.Stdout)
		defer w.Flush()
		switch {
		case *deriver:
			for _, p := range paths {
				info, err := st.QueryPathInfo(ctx, p)
				if err != nil {
					return err
				}
				d := info.Deriver
				if d == "" {
					fmt.Fprintln(w, "unknown-deriver")
				} else {
					fmt.Fprintln(w, d)
				}
			}
			return nil
		case *reqs:
			cl, err := storecopy.Closure(ctx, st, paths, false)
			if err != nil {
				return err
			}
			infos, err := storecopy.PathInfos(ctx, st, cl)
			if err != nil {
				return err
			}
			list := make([]*store.PathInfo, 0, len(cl))
			for _, p := range cl {
				list = append(list, infos[p])
			}
			sorted, err := storecopy.TopoSort(list)
			if err != nil {
				return err
			}
			// Nix prints dependencies before the paths that need them.
			for _, info := range sorted {
				fmt.Fprintln(w, info.Path)
			}
			return nil
		}
		seen := map[storepath.Path]bool{}
		var all []storepath.Path
		for _, p := range paths {
			var rs []storepath.Path
			info, err := st.QueryPathInfo(ctx, p)
			if err != nil {
				return err
			}
			if *refs {
				rs = info.References
			} else {
				local, ok := st.(*localstore.Store)
				if !ok {
					return store.Unsupported(e.Store, "list referrers: the serve protocol has no query for them")
				}
				rs, err = local.QueryReferrers(ctx, p)
			}
			if err != nil {
				return err
			}
			for _, r := range rs {
				if !seen[r] {
					seen[r] = true
					all = append(all, r)
				}
			}
		}
		sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
		for _, r := range all {
			fmt.Fprintln(w, r)
		}
		return nil
	})
}

func cmdStoreExport(ctx context.Context, e *Env, args []string) error {
	ops, err := parseFlags(newFlags(e, "store export"), args)
	if err != nil {
		return err
	}
	return withStore(ctx, e, func(st *localstore.Store) error {
		paths, err := parsePaths(st, ops)
		if err != nil {
			return err
		}
		w := bufio.NewWriterSize(e.Stdout, 1<<20)
		if err := st.Export(ctx, w, paths); err != nil {
			return err
		}
		return w.Flush()
	})
}

func cmdStoreImport(ctx context.Context, e *Env, args []string) error {
	ops, err := parseFlags(newFlags(e, "store import"), args)
	if err != nil {
		return err
	}
	if len(ops) != 0 {
		return usagef("store import reads the stream from standard input and takes no operands")
	}
	return withStore(ctx, e, func(st *localstore.Store) error {
		paths, err := st.Import(ctx, bufio.NewReaderSize(e.Stdin, 1<<20))
		if err != nil {
			return err
		}
		for _, p := range paths {
			fmt.Fprintln(e.Stdout, p)
		}
		return nil
	})
}

func cmdStoreDump(ctx context.Context, e *Env, args []string) error {
	ops, err := parseFlags(newFlags(e, "store dump"), args)
	if err != nil {
		return err
	}
	if len(ops) != 1 {
		return usagef("store dump takes exactly one PATH")
	}
	return withAnyStore(ctx, e, func(st store.Store) error {
		paths, err := parsePaths(st, ops)
		if err != nil {
			return err
		}
		w := bufio.NewWriterSize(e.Stdout, 1<<20)
		if err := st.NarFromPath(ctx, paths[0], w); err != nil {
			return err
		}
		return w.Flush()
	})
}

func cmdStoreVerify(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "store verify")
	check := fs.Bool("check-contents", false, "also hash every path and compare with the database")
	repair := fs.Bool("repair", false, "rebuild the derivers of missing or modified paths and replace them in place")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ops) != 0 {
		return usagef("store verify takes no operands")
	}
	conf, err := settings.Load(nil)
	if err != nil {
		return err
	}
	var s *settings.Settings // repair settings: nil without --repair
	if *repair {
		s = conf
	}
	return withConfiguredStore(ctx, e, conf, func(st *localstore.Store) error {
		return runStoreVerify(ctx, e, st, *check, s)
	})
}

// runStoreVerify checks st like nix-store --verify; with repair settings
// (non-nil s) a damaged path is repaired by rebuilding its deriver
// (build.RepairPath), builder logs going to standard error. It fails when
// something is still wrong afterwards.
func runStoreVerify(ctx context.Context, e *Env, st *localstore.Store, checkContents bool, s *settings.Settings) error {
	opts := &localstore.VerifyOptions{CheckContents: checkContents}
	if s != nil {
		bopts := &build.Options{Settings: build.ForStore(st, s), Log: e.Stderr}
		opts.Repair = func(ctx context.Context, p storepath.Path) error {
			return build.RepairPath(ctx, st, p, bopts)
		}
	}
	rep, err := st.VerifyWith(ctx, opts)
	if err != nil {
		return err
	}
	for _, m := range rep.Messages {
		fmt.Fprintln(e.Stderr, m)
	}
	if !rep.OK() {
		if s != nil {
			bad := len(rep.Missing) + len(rep.Modified) - len(rep.Invalidated) - len(rep.Repaired)
			return fmt.Errorf("store verify: %d damaged paths could not be repaired", bad)
		}
		return fmt.Errorf("store verify: %d missing, %d modified paths", len(rep.Missing), len(rep.Modified))
	}
	return nil
}

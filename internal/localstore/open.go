package localstore

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"ferry/internal/db"
	"ferry/internal/settings"
	"ferry/nix/storepath"
	"ferry/store"
)

func init() { store.Register("local", openURI) }

// openURI opens the local store a URI names (store.Open): see Resolve.
func openURI(ctx context.Context, u *store.URI, opts *store.OpenOptions) (store.Store, error) {
	r, err := Resolve(u)
	if err != nil {
		return nil, err
	}
	if opts.Log != nil {
		for _, w := range r.Warnings {
			fmt.Fprintf(opts.Log, "warning: %s\n", w)
		}
		if opts.Verbose {
			fmt.Fprintf(opts.Log, "using store %s (%s)\n", r.Layout.name(), r.Why)
		}
	}
	o := r.Options
	o.ReservedSize = opts.ReservedSize
	return OpenLayout(r.Layout, &o)
}

// Resolved is what a local store URI says: where the store is, its
// options, and why it was chosen.
type Resolved struct {
	Layout  Layout
	Options Options // SystemFeatures and RequireSigs from the URI
	// Why says which rule chose the store, for -v.
	Why string
	// Warnings are Nix's, for parameters it doesn't know ("unknown
	// setting 'x'"); the store opens anyway, as in Nix.
	Warnings []string
}

// ResolveString is Resolve for a URI not parsed yet, "" and "auto" being
// store.DefaultURI's.
func ResolveString(uri string) (*Resolved, error) {
	uri, why := store.DefaultURI(uri)
	u, err := store.ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "local" {
		return nil, fmt.Errorf("store %q is not a local store", uri)
	}
	r, err := Resolve(u)
	if err == nil && why != "" {
		r.Why = why
	}
	return r, err
}

// Resolve reads a local store URI as Nix 2.8's openStore and
// LocalFSStoreConfig do (store-api.cc, local-fs-store.hh@2.8.0):
//
//   - "DIR?params" (anything with a "/") is a chroot store with root=DIR,
//     "local?params" the store with no root unless root= is given, and
//     "daemon" the same (ferry talks to no daemon). "" and "auto" (when
//     store.DefaultURI found no $FERRY_STORE or $NIX_REMOTE) are the
//     store with no root when its state directory is named (state=,
//     $NIX_STATE_DIR) or writable (/nix/var/nix), else a per-user chroot
//     store in ${XDG_DATA_HOME:-~/.local/share}/ferry.
//     Anything else is Nix's "don't know how to open Nix store".
//   - store= is the logical store directory (default $NIX_STORE_DIR, else
//     /nix/store); real= the physical one (default root/nix/store with a
//     root, else the logical one); state= and log= the state and log
//     directories (default root/nix/var/nix and root/nix/var/log/nix,
//     else $NIX_STATE_DIR and $NIX_LOG_DIR, else /nix/var/nix and
//     /nix/var/log/nix). Every path must be absolute.
//   - system-features= (space-separated) replaces nix.conf's for builds
//     in the store, require-sigs= its require-sigs; trusted=, priority=,
//     want-mass-query= and path-info-cache-size= are checked and change
//     nothing here. Any other parameter is a warning, as in Nix.
func Resolve(u *store.URI) (*Resolved, error) {
	// Errors and warnings are Nix's words, so that a serve session on a
	// badly named store says what nix-store --serve would.
	bad := func(format string, a ...any) error {
		return fmt.Errorf(format, a...)
	}
	r := &Resolved{}
	root, hasRoot := u.Params["root"]
	spec := u.Path
	switch {
	case spec == "" || spec == "auto":
		// A state directory that is named (state=, NIX_STATE_DIR) is
		// used, and created if need be, as Nix does when no daemon
		// runs; only the default one falls back to a per-user store
		// when it is not writable.
		state, named := u.Params["state"]
		if !named {
			if v := os.Getenv("NIX_STATE_DIR"); v != "" {
				state, named = filepath.Clean(v), true
			} else {
				state = "/nix/var/nix"
			}
		}
		if hasRoot || named || unix.Access(state, unix.R_OK|unix.W_OK) == nil {
			r.Why = "the store with state directory " + state
			break
		}
		base := os.Getenv("XDG_DATA_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				home = "/"
			}
			base = filepath.Join(home, ".local/share")
		}
		root, hasRoot = filepath.Join(base, "ferry"), true
		r.Why = "per-user store: " + state + " is not writable"
	case spec == "local" || spec == "daemon":
		r.Why = "--store " + u.Raw
	case strings.Contains(spec, "/"):
		abs, err := filepath.Abs(spec)
		if err != nil {
			return nil, bad("%v", err)
		}
		root, hasRoot = abs, true
		r.Why = "--store " + u.Raw
	default:
		return nil, fmt.Errorf("don't know how to open Nix store '%s'", u.Raw)
	}
	if r.Why == "" {
		r.Why = "--store " + u.Raw
	}
	if hasRoot && root != "" {
		var err error
		if root, err = store.AbsPathParam("root", root); err != nil {
			return nil, bad("%v", err)
		}
	} else {
		root = ""
	}
	dir, err := u.StoreDirParam()
	if err != nil {
		return nil, err
	}
	l := Layout{Dir: dir, Root: root}
	pathParam := func(name, withRoot, envName, dflt string) (string, error) {
		if v, ok := u.Params[name]; ok {
			p, err := store.AbsPathParam(name, v)
			if err != nil {
				return "", bad("%v", err)
			}
			return p, nil
		}
		if root != "" {
			return filepath.Join(root, withRoot), nil
		}
		if envName == "" {
			return dflt, nil
		}
		return envPath(envName, dflt), nil
	}
	if l.StateDir, err = pathParam("state", "nix/var/nix", "NIX_STATE_DIR", "/nix/var/nix"); err != nil {
		return nil, err
	}
	if l.LogDir, err = pathParam("log", "nix/var/log/nix", "NIX_LOG_DIR", "/nix/var/log/nix"); err != nil {
		return nil, err
	}
	if l.RealDir, err = pathParam("real", "nix/store", "", string(dir)); err != nil {
		return nil, err
	}
	r.Layout = l
	for k, v := range u.Params {
		switch k {
		case "root", "store", "state", "log", "real":
		case "system-features":
			r.Options.SystemFeatures = strings.Fields(v)
			if r.Options.SystemFeatures == nil {
				r.Options.SystemFeatures = []string{}
			}
		case "require-sigs", "trusted", "want-mass-query":
			b, err := settings.ParseBool(k, v)
			if err != nil {
				return nil, bad("%v", err)
			}
			if k == "require-sigs" {
				r.Options.RequireSigs = &b
			}
		case "priority", "path-info-cache-size":
			if _, err := strconv.Atoi(v); err != nil {
				return nil, bad("setting '%s' has invalid value '%s'", k, v)
			}
		default:
			r.Warnings = append(r.Warnings, fmt.Sprintf("unknown setting '%s'", k))
		}
	}
	sort.Strings(r.Warnings)
	return r, nil
}

// envPath is the cleaned value of the environment variable name, else
// dflt, as Nix's settings read NIX_STATE_DIR and NIX_LOG_DIR.
func envPath(name, dflt string) string {
	if v := os.Getenv(name); v != "" {
		return filepath.Clean(v)
	}
	return dflt
}

var (
	_ store.Locker          = (*Store)(nil)
	_ store.PathInfoQuerier = (*Store)(nil)
	_ store.MultiAdder      = (*Store)(nil)
	_ store.Closurer        = (*Store)(nil)
	_ store.Importer        = (*Store)(nil)
	_ store.Batcher         = (*Store)(nil)
)

// QueryPathInfos returns the infos of the valid ones among paths, in two
// queries whatever their number.
func (s *Store) QueryPathInfos(ctx context.Context, paths []storepath.Path) ([]*store.PathInfo, error) {
	for _, p := range paths {
		if err := s.checkDir(p); err != nil {
			return nil, err
		}
	}
	var infos []*store.PathInfo
	err := s.db.Read(ctx, func(tx *db.Tx) error {
		var err error
		infos, err = tx.QueryPathInfos(paths)
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Path < infos[j].Path })
	return infos, nil
}

// AddToStoreNars stages infos in one Batch (each NAR verified as it
// arrives) and commits them together: one sync and one transaction per 256
// paths. If a path fails, the ones staged before it are still committed,
// so they are valid and a later copy need not send them again; added is
// called for each path once it is valid.
func (s *Store) AddToStoreNars(ctx context.Context, infos []*store.PathInfo, nars store.NarSource, added func(*store.PathInfo)) error {
	b := s.NewBatch()
	var staged []*store.PathInfo
	var addErr error
	for _, info := range infos {
		if addErr = addOne(ctx, b, info, nars); addErr != nil {
			break
		}
		staged = append(staged, info)
		if b.Len() >= store.BatchAsyncPaths || b.Bytes() >= store.BatchAsyncBytes {
			b.CommitAsync(ctx)
		}
	}
	// Whatever was staged whole is made valid even after a failure or an
	// interrupt: it is complete, and its references are valid or staged.
	if err := b.Commit(context.WithoutCancel(ctx)); err != nil {
		b.Discard()
		return err
	}
	if added != nil {
		for _, info := range staged {
			added(info)
		}
	}
	return addErr
}

// addOne streams one path's NAR from nars into b.
func addOne(ctx context.Context, b store.Batch, info *store.PathInfo, nars store.NarSource) error {
	pr := nars.Open(ctx, info)
	err := b.Add(ctx, info, pr)
	if err == nil {
		// The NAR must end where the batch stopped reading.
		if n, _ := io.Copy(io.Discard, pr); n > 0 {
			err = fmt.Errorf("add %s: %d bytes after the NAR", info.Path, n)
		}
	}
	pr.CloseWithError(fmt.Errorf("add %s: stopped reading", info.Path))
	return err
}

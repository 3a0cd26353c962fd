package localserve

import (
	"context"
	"errors"
	"fmt"
	"io"

	"ferry/internal/build"
	"ferry/internal/localstore"
	"ferry/internal/settings"
	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/store"
)

// localBuilder builds on a local store with internal/build.
type localBuilder struct {
	st     *localstore.Store
	s      *settings.Settings
	autoGC func(context.Context)
}

// NewBuilder returns the builder of a serve session over the local
// store st: derivations are realised by internal/build with the machine's
// settings s (nil means settings.Default(); the store's own
// system-features replace s's, build.ForStore) and the limits each client
// sends (docs/protocol.md §3.8), as Nix's opServe does. autoGC, if not
// nil, is build.Options.AutoGC: the automatic collection of min-free and
// max-free while builds run.
func NewBuilder(st *localstore.Store, s *settings.Settings, autoGC func(context.Context)) store.Builder {
	return &localBuilder{st: st, s: build.ForStore(st, s), autoGC: autoGC}
}

func (b *localBuilder) opts(bs *store.BuildSettings, log io.Writer, inMemory bool) *build.Options {
	var client store.BuildSettings
	if bs != nil {
		client = *bs
	}
	// The session's log is at Nix's serve verbosity (build.QuietLog).
	return &build.Options{Settings: build.WithBuildSettings(b.s, client), Log: build.QuietLog(log), InMemory: inMemory, AutoGC: b.autoGC}
}

// BuildDerivation mirrors cmdBuildDerivation: the derivation arrived in
// memory, its .drv need not exist, only its inputs must be valid.
func (b *localBuilder) BuildDerivation(ctx context.Context, drvPath storepath.Path, drv *derivation.Derivation, bs *store.BuildSettings, log io.Writer) (*store.BuildResult, error) {
	// Nix 2.8 reads a floating CA output only with ca-derivations on
	// (parseDerivationOutput); without it the error ends the session.
	if typ, err := drv.Type(); err == nil && typ == derivation.TypeFloating {
		if err := b.s.RequireFeature(settings.CADerivations); err != nil {
			return nil, err
		}
	}
	res, err := build.Build(ctx, b.st, drvPath, drv, b.opts(bs, log, true))
	var hook *build.HookError
	if errors.As(err, &hook) {
		// Nix 2.8's Store::buildDerivation (src/libstore/build/
		// entry-points.cc@2.8.0) catches the hook's error and replies
		// with a new result: MiscFailure, the error as Nix prints it
		// ("error: " in red first), no times and no outputs. The
		// outputs stay valid.
		return &store.BuildResult{Status: store.MiscFailure, ErrorMsg: hookErrorPrefix + hook.Msg}, nil
	}
	if err == nil && res.Status == store.InputRejected {
		// Nix throws a plain Error for a platform or features it lacks
		// (LocalDerivationGoal::startBuilder@2.8.0), which the same
		// catch turns into MiscFailure with the error as printed.
		return &store.BuildResult{Status: store.MiscFailure, ErrorMsg: hookErrorPrefix + res.ErrorMsg}, nil
	}
	return res, err
}

// hookErrorPrefix is how Nix's Error::msg() begins (showErrorInfo).
const hookErrorPrefix = "\x1b[31;1merror:\x1b[0m "

// BuildPaths mirrors cmdBuildPaths: each derivation present in the store
// is realised with its dependencies; an opaque path must be valid.
func (b *localBuilder) BuildPaths(ctx context.Context, paths []store.DerivedPath, bs *store.BuildSettings, log io.Writer) ([]*store.BuildResult, error) {
	results := make([]*store.BuildResult, 0, len(paths))
	for _, p := range paths {
		if p.Outputs == nil {
			ok, err := b.st.IsValidPath(ctx, p.Path)
			if err != nil {
				return nil, err
			}
			if ok {
				results = append(results, &store.BuildResult{Status: store.AlreadyValid})
			} else {
				results = append(results, &store.BuildResult{Status: store.MiscFailure,
					ErrorMsg: fmt.Sprintf("path '%s' is required, but there is no substituter that can build it", p.Path)})
			}
			continue
		}
		jobs := b.s.MaxJobs
		if jobs < 1 {
			jobs = 1
		}
		res, err := build.BuildGraph(ctx, b.st, []storepath.Path{p.Path}, jobs, b.opts(bs, log, false))
		if err != nil {
			return nil, err
		}
		r := res[p.Path]
		if r == nil {
			r = &store.BuildResult{Status: store.MiscFailure, ErrorMsg: fmt.Sprintf("building '%s' gave no result", p.Path)}
		}
		results = append(results, r)
	}
	return results, nil
}

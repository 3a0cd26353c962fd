package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"ferry/internal/build"
	storecopy "ferry/internal/copy"
	"ferry/internal/localstore"
	"ferry/internal/machines"
	"ferry/internal/serve"
	"ferry/internal/settings"
	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/store"
)

// Session is a store on a build machine that builds in-memory
// derivations: an ssh:// store, or anything else store.Open returns that
// implements store.Builder.
type Session interface {
	store.Store
	store.Builder
}

// MachineError is a failure of the machine or its session rather than of
// the derivation: it could not be reached, the session died, it refused
// the inputs. The build goes elsewhere.
type MachineError struct {
	Machine string
	Err     error
}

func (e *MachineError) Error() string { return fmt.Sprintf("machine '%s': %v", e.Machine, e.Err) }
func (e *MachineError) Unwrap() error { return e.Err }

// Times are how long each step of a remote build took.
type Times struct {
	CopyIn  time.Duration
	Build   time.Duration
	CopyOut time.Duration
}

// MarshalJSON gives the times in seconds: {"copyIn":0.01,"build":1.2,...}.
func (t Times) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		CopyIn  float64 `json:"copyIn"`
		Build   float64 `json:"build"`
		CopyOut float64 `json:"copyOut"`
	}{t.CopyIn.Seconds(), t.Build.Seconds(), t.CopyOut.Seconds()})
}

// Step is one derivation's build on one session.
type Step struct {
	DrvPath storepath.Path
	Drv     *derivation.Derivation
	// Outputs gives the output paths of an input derivation.
	Outputs func(storepath.Path) (map[string]storepath.Path, error)
	// Settings are the limits sent with the build.
	Settings *store.BuildSettings
	// Log receives the remote build log.
	Log io.Writer
	// Copy, if not nil, hears about the copies in and out.
	Copy storecopy.Progress
	// Substitute has the machine substitute the inputs it lacks before
	// they are sent (builders-use-substitutes).
	Substitute bool
	// Upload, if not nil, is called before the inputs are sent, and its
	// release after: the machine's upload lock, as build-remote takes
	// it.
	Upload func(ctx context.Context) (release func(), err error)
}

// StepResult is what a Step did.
type StepResult struct {
	Result    *store.BuildResult
	Times     Times
	SentPaths int
	SentBytes uint64
	// Received are the outputs copied back, valid in the local store.
	Received []storepath.Path
	// Outputs are the outputs by name, valid in the local store: for a
	// floating content-addressed derivation the paths the machine
	// reported in the BuildResult's builtOutputs.
	Outputs map[string]storepath.Path
}

// BuildOn builds one derivation on sess as Nix's build-remote does, but
// with ferry's copy: the input closure the machine lacks (input sources
// and the used outputs of input derivations) is sent after one locked
// query, so the machine's GC cannot take what it already had; the
// derivation goes in memory (BuildDerivation: no .drv file reaches the
// machine); the outputs come back with their references, verified against
// their NAR hashes and registered in local, temp-rooted there first.
//
// A build that fails is a result with a failure status and a nil error.
// An error is a *MachineError when the machine or its session failed, so
// that the caller may try another machine; any other error is the local
// store's.
func BuildOn(ctx context.Context, local *localstore.Store, machine string, sess Session, s *Step) (*StepResult, error) {
	mErr := func(what string, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &MachineError{Machine: machine, Err: fmt.Errorf("%s '%s': %w", what, s.DrvPath, err)}
	}
	basic, err := serve.BasicDerivation(s.Drv, s.Outputs)
	if err != nil {
		return nil, err
	}
	res := &StepResult{}
	t := time.Now()
	copts := &storecopy.Options{Progress: s.Copy}
	release := func() {}
	if s.Upload != nil {
		if release, err = s.Upload(ctx); err != nil {
			return nil, err
		}
	}
	sent, err := storecopy.Copy(ctx, local, sess, basic.InputSrcs, &storecopy.Options{Progress: s.Copy, Substitute: s.Substitute})
	release()
	if err != nil {
		return nil, mErr("copy the inputs of", err)
	}
	res.SentPaths, res.SentBytes = len(sent.Copied), sent.Bytes
	res.Times.CopyIn = time.Since(t)

	t = time.Now()
	br, err := sess.BuildDerivation(ctx, s.DrvPath, basic, s.Settings, s.Log)
	res.Times.Build = time.Since(t)
	if err != nil {
		return nil, mErr("build", err)
	}
	res.Result = br
	if !br.Status.Success() {
		return res, nil
	}

	outs := br.BuiltOutputs
	if len(outs) == 0 {
		outs = s.Drv.OutputPaths()
	}
	want := s.Drv.OutputPaths()
	if len(want) != len(s.Drv.Outputs) {
		// A floating content-addressed derivation: its paths are known
		// only from the machine's builtOutputs (protocol 2.6 on), as
		// build-remote reads them (src/build-remote/build-remote.cc@2.8.0);
		// the copy back checks each path against its content address.
		reported := outs
		outs = map[string]storepath.Path{}
		for _, name := range s.Drv.OutputNames() {
			p, ok := reported[name]
			if !ok {
				return nil, mErr("check the outputs of", fmt.Errorf("the machine did not report the path of output '%s'", name))
			}
			if want := storepath.OutputPathName(s.Drv.Name, name); p.Name() != want {
				return nil, mErr("check the outputs of", fmt.Errorf("output '%s' is %s, whose name is not '%s'", name, p, want))
			}
			outs[name] = p
		}
	} else {
		// Input-addressed outputs are known: the machine must have built
		// exactly those.
		for name, p := range want {
			if got, ok := outs[name]; ok && got != p {
				return nil, mErr("check the outputs of", fmt.Errorf("output '%s' is %s, want %s", name, got, p))
			}
		}
		outs = want
	}
	paths := make([]storepath.Path, 0, len(outs))
	for _, p := range outs {
		if err := local.AddTempRoot(ctx, p); err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	storepath.Sort(paths)
	t = time.Now()
	if _, err := storecopy.Copy(ctx, sess, local, paths, copts); err != nil {
		if isLocal(err) {
			return nil, err
		}
		return nil, mErr("copy back the outputs of", err)
	}
	res.Times.CopyOut = time.Since(t)
	res.Received = paths
	res.Outputs = outs
	return res, nil
}

// isLocal reports whether a copy-back error is the local store's: a full
// or read-only disk. The copy wraps the two ends' errors alike, and every
// other one is taken as the machine's.
func isLocal(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EDQUOT)
}

// RegisterRealisations records, with ca-derivations on in s, the
// realisations of drv's outputs, built by a hook's machine and now valid
// in local at outs: a floating content-addressed derivation's are known
// only now, and Nix finds its outputs by them (build-remote registers
// result.builtOutputs, build-remote.cc@2.8.0; Nix hands the hook a
// resolved derivation); an input-addressed one's are its static outputs,
// as Nix's checkPathValidity registers them.
func RegisterRealisations(ctx context.Context, local *localstore.Store, s *settings.Settings, drvPath storepath.Path, drv *derivation.Derivation, outs map[string]storepath.Path) error {
	if err := build.NewRealiser(local, s, drvPath, drv).RegisterBuilt(ctx, outs); err != nil {
		return fmt.Errorf("register the realisations of '%s': %w", drvPath, err)
	}
	return nil
}

// UploadLock is a Step's Upload: m's upload lock in load, waited for as
// build-remote waits for it (wait, zero meaning 15 minutes), after which
// the upload goes on without it and hog hears build-remote's "somebody
// is hogging the upload lock" message.
func UploadLock(load *machines.Load, m *machines.Machine, wait time.Duration, hog func(string)) func(context.Context) (func(), error) {
	return func(ctx context.Context) (func(), error) {
		ul, hogged, err := load.UploadLockWait(ctx, m, wait)
		if err != nil {
			return nil, err
		}
		if hogged {
			hog(fmt.Sprintf("somebody is hogging the upload lock for '%s', continuing...", m.URI))
		}
		return func() { ul.Release() }, nil
	}
}

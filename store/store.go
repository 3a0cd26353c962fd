// Package store is ferry's vocabulary for stores: what a store object is
// (PathInfo), what every store can do (Store), the optional capabilities
// some stores have (TempRooter, Builder), and the result of a build
// (BuildResult). It holds no policy: the local on-disk store lives in
// internal/localstore, the ssh:// client in internal/sshstore, and both
// ends of the serve protocol speak in these types.
package store

import (
	"context"
	"errors"
	"io"
	"time"

	"ferry/nix/hash"
	"ferry/nix/storepath"
)

// ErrNotValid is returned (wrapped) for a path that is not valid in the
// store. Its message matches Nix's "path '...' is not valid".
var ErrNotValid = errors.New("is not valid")

// PathInfo is what a store knows about one valid store object: the row of
// ValidPaths plus its references.
type PathInfo struct {
	Path             storepath.Path
	Deriver          storepath.Path // "" if unknown
	NarHash          hash.Hash      // SHA-256 of the NAR serialisation
	NarSize          uint64
	References       []storepath.Path // sorted; may include Path itself
	RegistrationTime time.Time        // zero means now, when registering
	Ultimate         bool             // built locally
	Sigs             []string         // "keyname:base64"
	CA               storepath.ContentAddress
}

// Store is what every store offers. Implementations document whether they
// are safe for concurrent use.
type Store interface {
	// Dir is the logical store directory.
	Dir() storepath.Dir
	// QueryPathInfo returns the info of a valid path, or an error
	// wrapping ErrNotValid.
	QueryPathInfo(ctx context.Context, p storepath.Path) (*PathInfo, error)
	// QueryValidPaths returns the subset of paths that are valid, in the
	// order given.
	QueryValidPaths(ctx context.Context, paths []storepath.Path) ([]storepath.Path, error)
	// NarFromPath writes the NAR serialisation of a valid path to w.
	NarFromPath(ctx context.Context, p storepath.Path, w io.Writer) error
	// AddToStoreNar adds a path from its NAR, verifying the NAR against
	// info.NarHash and info.NarSize (when non-zero) before registering
	// it, atomically, with its references, which must already be valid.
	// Adding a path that is already valid consumes the NAR and succeeds.
	AddToStoreNar(ctx context.Context, info *PathInfo, nar io.Reader) error
	// Close releases the store's resources (temp roots included).
	Close() error
}

// TempRooter is a store that can protect paths from garbage collection
// for as long as the store handle is open.
type TempRooter interface {
	AddTempRoot(ctx context.Context, p storepath.Path) error
}

// BuildStatus is Nix's BuildResult::Status; the values are the wire values.
type BuildStatus uint64

// Status codes (2.8.0:src/libstore/build-result.hh).
const (
	Built                  BuildStatus = 0
	Substituted            BuildStatus = 1
	AlreadyValid           BuildStatus = 2
	PermanentFailure       BuildStatus = 3
	InputRejected          BuildStatus = 4
	OutputRejected         BuildStatus = 5
	TransientFailure       BuildStatus = 6 // possibly transient
	CachedFailure          BuildStatus = 7 // no longer used
	TimedOut               BuildStatus = 8
	MiscFailure            BuildStatus = 9
	DependencyFailed       BuildStatus = 10
	LogLimitExceeded       BuildStatus = 11
	NotDeterministic       BuildStatus = 12
	ResolvesToAlreadyValid BuildStatus = 13
	NoSubstituters         BuildStatus = 14
)

var statusNames = [...]string{
	"Built", "Substituted", "AlreadyValid", "PermanentFailure", "InputRejected",
	"OutputRejected", "TransientFailure", "CachedFailure", "TimedOut", "MiscFailure",
	"DependencyFailed", "LogLimitExceeded", "NotDeterministic", "ResolvesToAlreadyValid",
	"NoSubstituters",
}

func (s BuildStatus) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "BuildStatus(" + itoa(uint64(s)) + ")"
}

// Success reports whether the status means the outputs are valid.
func (s BuildStatus) Success() bool {
	return s == Built || s == Substituted || s == AlreadyValid || s == ResolvesToAlreadyValid
}

func itoa(u uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + u%10)
		u /= 10
		if u == 0 {
			return string(b[i:])
		}
	}
}

// BuildResult is the outcome of building one derivation.
type BuildResult struct {
	Status             BuildStatus
	ErrorMsg           string
	TimesBuilt         uint64
	IsNonDeterministic bool
	StartTime          time.Time
	StopTime           time.Time
	// BuiltOutputs maps output name to the output's path.
	BuiltOutputs map[string]storepath.Path
}

// BuildSettings are the per-build knobs a client sends (serve protocol
// §3.8) and the CLI sets. Zero values mean "no limit" / defaults.
type BuildSettings struct {
	MaxSilentTime      time.Duration
	Timeout            time.Duration // BuildTimeout
	MaxLogSize         uint64
	BuildRepeat        uint64
	EnforceDeterminism bool
	KeepFailed         bool
}

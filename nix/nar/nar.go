package nar

import (
	"errors"
	"fmt"
	"strings"
)

// Type is the type of a file system object in a NAR.
type Type uint8

// The three object types a NAR can hold.
const (
	TypeRegular   Type = 1 + iota // a regular file, possibly executable
	TypeDirectory                 // a directory
	TypeSymlink                   // a symbolic link
)

// String returns the NAR token for t ("regular", "directory", "symlink").
func (t Type) String() string {
	switch t {
	case TypeRegular:
		return "regular"
	case TypeDirectory:
		return "directory"
	case TypeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Limits enforced by Reader and Writer. They match the limits of current Nix
// (narMaxName, the symlink target limit) except MaxDepth, which is looser than
// Nix's 64 so that no tree Nix 2.8.0 itself could dump is rejected in practice.
const (
	// MaxNameLen is the longest directory entry name, in bytes.
	MaxNameLen = 255
	// MaxTargetLen is the longest symlink target, in bytes.
	MaxTargetLen = 4095
	// MaxDepth is the deepest nesting of directories below the root. An
	// object at depth MaxDepth (its path has MaxDepth components) is allowed;
	// one deeper is rejected.
	MaxDepth = 256
)

// Header describes one file system object in a NAR.
type Header struct {
	// Path is the slash-separated path of the object relative to the root
	// of the archive; the root itself has the empty path "".
	Path string
	// Type is the object's type.
	Type Type
	// Executable reports whether a regular file has its executable bit set.
	Executable bool
	// Size is the length of a regular file's contents; zero otherwise.
	Size int64
	// LinkTarget is a symlink's target, stored verbatim.
	LinkTarget string
	// ContentOffset is the byte offset of a regular file's contents from the
	// start of the NAR. The Reader sets it; the Writer ignores it.
	ContentOffset int64
}

// Name returns the last component of h.Path ("" for the root).
func (h *Header) Name() string {
	return h.Path[strings.LastIndexByte(h.Path, '/')+1:]
}

// Sentinel errors. Errors returned by this package wrap them, so callers can
// test with errors.Is.
var (
	// ErrFormat is wrapped by every error about a malformed archive.
	ErrFormat = errors.New("nar: malformed archive")
	// ErrHeader reports an invalid Header passed to Writer.WriteHeader.
	ErrHeader = errors.New("nar: invalid header")
	// ErrWriteTooLong reports a Write past the Size declared in the header.
	ErrWriteTooLong = errors.New("nar: write too long")
	// ErrWriteAfterClose reports use of a Writer after Close.
	ErrWriteAfterClose = errors.New("nar: write after close")
)

// FormatError describes a malformed archive: what was wrong, where in the
// byte stream, and at which entry. It wraps ErrFormat, or
// io.ErrUnexpectedEOF when the archive is truncated.
type FormatError struct {
	Offset int64  // byte offset of the offending token or data
	Path   string // path of the entry being parsed ("" for the root)
	Msg    string // what was wrong
	Err    error  // ErrFormat or io.ErrUnexpectedEOF
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("nar: parse entry %q at offset %d: %s", e.Path, e.Offset, e.Msg)
}

func (e *FormatError) Unwrap() error { return e.Err }

// Is makes every FormatError match ErrFormat, truncations included.
func (e *FormatError) Is(target error) bool { return target == ErrFormat }

// checkName reports why name is not a valid directory entry name, or "".
func checkName(name string) string {
	switch {
	case name == "":
		return "empty entry name"
	case name == "." || name == "..":
		return fmt.Sprintf("invalid entry name %q", name)
	case len(name) > MaxNameLen:
		return fmt.Sprintf("entry name of %d bytes is longer than %d", len(name), MaxNameLen)
	case strings.IndexByte(name, '/') >= 0:
		return fmt.Sprintf("entry name %q contains '/'", name)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Sprintf("entry name %q contains NUL", name)
	}
	return ""
}

// checkTarget reports why target is not a valid symlink target, or "".
func checkTarget(target string) string {
	switch {
	case target == "":
		return "empty symlink target"
	case len(target) > MaxTargetLen:
		return fmt.Sprintf("symlink target of %d bytes is longer than %d", len(target), MaxTargetLen)
	case strings.IndexByte(target, 0) >= 0:
		return fmt.Sprintf("symlink target %q contains NUL", target)
	}
	return ""
}

// NAR tokens (docs/store.md §3.2).
const (
	magic = "nix-archive-1"
)

// padLen returns the number of zero bytes that pad n bytes to a multiple of 8.
func padLen(n uint64) int { return int(-n & 7) }

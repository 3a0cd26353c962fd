package serve

import (
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"ferry/nix/storepath"
	"ferry/nix/wire"
)

// Handshake magics (2.8.0:src/libstore/serve-protocol.hh).
const (
	// Magic1 (0x390c9deb) is the first word a client sends.
	Magic1 = 0x390c9deb
	// Magic2 (0x5452eecb) is the server's answer to Magic1.
	Magic2 = 0x5452eecb
)

// Version words are (major << 8) | minor; every version Nix has shipped has
// major 2 (0x2xx).
const (
	// Version is what ferry advertises as a server and sends as a client:
	// 0x207, proto 2.7, as Nix 2.4 to 2.34 do (docs/protocol.md §10).
	Version = 0x207
	// MinClientVersion (0x200, proto 2.0, Nix 1.8) is the oldest client
	// version this package knows; older words are accepted but treated as
	// 2.0, as Nix 2.8 does (it never validates the client's version).
	MinClientVersion = 0x200
)

// Minor returns the minor part of a version word (GET_PROTOCOL_MINOR).
func Minor(v uint64) uint64 { return v & 0x00ff }

// Major returns the major part of a version word (GET_PROTOCOL_MAJOR),
// still shifted: 0x200 for proto 2.x.
func Major(v uint64) uint64 { return v & 0xff00 }

// Command is a serve command number (ServeCommand in serve-protocol.hh).
type Command uint64

// The commands. There are none numbered 0 or 10 and above.
const (
	// CmdQueryValidPaths (1): lock, substitute, paths -> valid subset.
	CmdQueryValidPaths Command = 1
	// CmdQueryPathInfos (2): paths -> a path-info record per valid path,
	// ended by an empty string.
	CmdQueryPathInfos Command = 2
	// CmdDumpStorePath (3): path -> its NAR, unprefixed.
	CmdDumpStorePath Command = 3
	// CmdImportPaths (4, needs --write): an export stream -> 1.
	CmdImportPaths Command = 4
	// CmdExportPaths (5): an ignored int (the old sign flag), paths ->
	// their export stream, dependencies first.
	CmdExportPaths Command = 5
	// CmdBuildPaths (6, needs --write): derived paths, build settings ->
	// 0, or an exit status and a message.
	CmdBuildPaths Command = 6
	// CmdQueryClosure (7): includeOutputs, paths -> their closure.
	CmdQueryClosure Command = 7
	// CmdBuildDerivation (8, needs --write, proto >= 2.1): drv path,
	// BasicDerivation, build settings -> BuildResult.
	CmdBuildDerivation Command = 8
	// CmdAddToStoreNar (9, needs --write, proto >= 2.5): path-info
	// metadata, then exactly narSize bytes of NAR -> 1.
	CmdAddToStoreNar Command = 9
)

func (c Command) String() string {
	switch c {
	case CmdQueryValidPaths:
		return "QueryValidPaths"
	case CmdQueryPathInfos:
		return "QueryPathInfos"
	case CmdDumpStorePath:
		return "DumpStorePath"
	case CmdImportPaths:
		return "ImportPaths"
	case CmdExportPaths:
		return "ExportPaths"
	case CmdBuildPaths:
		return "BuildPaths"
	case CmdQueryClosure:
		return "QueryClosure"
	case CmdBuildDerivation:
		return "BuildDerivation"
	case CmdAddToStoreNar:
		return "AddToStoreNar"
	}
	return fmt.Sprintf("Command(%d)", uint64(c))
}

// Limits on what a peer may send. They are far above anything real Nix sends
// and keep a hostile peer from making us allocate without sending the bytes.
const (
	// MaxPathLen bounds a store path string on the wire (Nix's own paths
	// are at most the store dir plus 245 bytes; readers canonicalise, so
	// allow slack).
	MaxPathLen = 4096
	// MaxPaths bounds the number of paths in one set or list.
	MaxPaths = 1 << 20
	// MaxStringLen bounds short strings: derivers, hashes, CAs, signatures,
	// output names, messages.
	MaxStringLen = 64 << 10
	// MaxSigs bounds the number of signatures on one path.
	MaxSigs = 1024
	// MaxDerivationSize bounds the total bytes of one BasicDerivation's
	// strings (the same as derivation.MaxSize, 64 MiB).
	MaxDerivationSize = 64 << 20
	// MaxOutputs bounds the number of outputs of a derivation.
	MaxOutputs = 1024
)

// ErrProtocolMismatch is the handshake failure Nix reports as "protocol
// mismatch".
var ErrProtocolMismatch = errors.New("protocol mismatch")

// ServerHandshake performs the server side of the handshake, in Nix's order
// (opServe): read the client's magic, write Magic2 and version, flush, and
// only then read the client's version word, which is returned raw.
func ServerHandshake(r *wire.Reader, w *wire.Writer, version uint64) (clientVersion uint64, err error) {
	magic, err := r.ReadInt()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("read client magic: %w", wire.NoEOF(err))
		}
		return 0, fmt.Errorf("read client magic: %w", err)
	}
	if magic != Magic1 {
		return 0, ErrProtocolMismatch
	}
	if err := WriteServerHello(w, version); err != nil {
		return 0, err
	}
	if err := w.Flush(); err != nil {
		return 0, fmt.Errorf("write server hello: %w", err)
	}
	clientVersion, err = r.ReadInt()
	if err != nil {
		return 0, fmt.Errorf("read client version: %w", wire.NoEOF(err))
	}
	return clientVersion, nil
}

// ClientHandshake performs the client side: send Magic1 and version together
// (as every real client does), flush, then read Magic2 and the server's
// version, which must have major 2 (LegacySSHStore::openConnection).
func ClientHandshake(r *wire.Reader, w *wire.Writer, version uint64) (serverVersion uint64, err error) {
	if err := WriteClientHello(w, version); err != nil {
		return 0, err
	}
	if err := w.Flush(); err != nil {
		return 0, fmt.Errorf("write client hello: %w", err)
	}
	serverVersion, err = ReadServerHello(r)
	if err != nil {
		return 0, err
	}
	if Major(serverVersion) != 0x200 {
		return 0, fmt.Errorf("unsupported 'nix-store --serve' protocol version %#x", serverVersion)
	}
	return serverVersion, nil
}

// WriteClientHello writes Magic1 and the client's version.
func WriteClientHello(w *wire.Writer, version uint64) error {
	w.WriteUint64(Magic1)
	return w.WriteUint64(version)
}

// ReadClientHello reads Magic1 and the client's version (for tests and
// relays; a server must use ServerHandshake to keep Nix's order).
func ReadClientHello(r *wire.Reader) (uint64, error) {
	magic, err := r.ReadInt()
	if err != nil {
		return 0, fmt.Errorf("read client magic: %w", wire.NoEOF(err))
	}
	if magic != Magic1 {
		return 0, ErrProtocolMismatch
	}
	v, err := r.ReadInt()
	if err != nil {
		return 0, fmt.Errorf("read client version: %w", wire.NoEOF(err))
	}
	return v, nil
}

// WriteServerHello writes Magic2 and the server's version
// (the handshake-to-client fixture).
func WriteServerHello(w *wire.Writer, version uint64) error {
	w.WriteUint64(Magic2)
	return w.WriteUint64(version)
}

// ReadServerHello reads Magic2 and the server's version.
func ReadServerHello(r *wire.Reader) (uint64, error) {
	magic, err := r.ReadInt()
	if err != nil {
		return 0, fmt.Errorf("read server magic: %w", wire.NoEOF(err))
	}
	if magic != Magic2 {
		return 0, ErrProtocolMismatch
	}
	v, err := r.ReadInt()
	if err != nil {
		return 0, fmt.Errorf("read server version: %w", wire.NoEOF(err))
	}
	return v, nil
}

// ParsePath parses a store path read from the wire as Nix's parseStorePath
// does, with Nix's message for a path outside the store.
func ParsePath(dir storepath.Dir, s string) (storepath.Path, error) {
	if strings.HasPrefix(s, "/") && path.Dir(path.Clean(s)) != string(dir) {
		return "", fmt.Errorf("path '%s' is not in the Nix store", s)
	}
	p, err := dir.Parse(s)
	if err != nil {
		return "", err
	}
	return p, nil
}

// ReadPath reads one store path.
func ReadPath(r *wire.Reader, dir storepath.Dir) (storepath.Path, error) {
	s, err := r.ReadString(MaxPathLen)
	if err != nil {
		return "", fmt.Errorf("read store path: %w", wire.NoEOF(err))
	}
	return ParsePath(dir, s)
}

// ReadOptionalPath reads a store path where the empty string means none.
func ReadOptionalPath(r *wire.Reader, dir storepath.Dir) (storepath.Path, error) {
	s, err := r.ReadString(MaxPathLen)
	if err != nil {
		return "", fmt.Errorf("read store path: %w", wire.NoEOF(err))
	}
	if s == "" {
		return "", nil
	}
	return ParsePath(dir, s)
}

// WritePath writes a store path ("" writes the empty string, i.e. none).
func WritePath(w *wire.Writer, p storepath.Path) error {
	return w.WriteString(string(p))
}

// ReadPathSet reads a StorePathSet: a count and that many paths. Duplicates
// collapse and the result is in StorePathSet order (by base name), as Nix's
// std::set gives.
func ReadPathSet(r *wire.Reader, dir storepath.Dir) ([]storepath.Path, error) {
	ps, err := ReadPathList(r, dir)
	if err != nil {
		return nil, err
	}
	return sortedSet(ps), nil
}

// ReadPathList reads a count and that many paths, in wire order.
func ReadPathList(r *wire.Reader, dir storepath.Dir) ([]storepath.Path, error) {
	n, err := r.ReadUint64()
	if err != nil {
		return nil, fmt.Errorf("read store path set: %w", wire.NoEOF(err))
	}
	if n > MaxPaths {
		return nil, fmt.Errorf("read store path set: %d paths: %w", n, wire.ErrTooLong)
	}
	var ps []storepath.Path
	for i := uint64(0); i < n; i++ {
		p, err := ReadPath(r, dir)
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// WritePathSet writes a StorePathSet, sorted by base name and deduplicated,
// as Nix's writers emit it. ps is not modified.
func WritePathSet(w *wire.Writer, ps []storepath.Path) error {
	s := sortedSet(append([]storepath.Path(nil), ps...))
	w.WriteUint64(uint64(len(s)))
	for _, p := range s {
		w.WriteString(string(p))
	}
	return stickyErr(w)
}

// sortedSet sorts ps in place by base name and removes duplicates.
func sortedSet(ps []storepath.Path) []storepath.Path {
	storepath.Sort(ps)
	out := ps[:0]
	for i, p := range ps {
		if i > 0 && p == ps[i-1] {
			continue
		}
		out = append(out, p)
	}
	return out
}

// ReadStringSet reads a StringSet: duplicates collapse, result sorted.
func ReadStringSet(r *wire.Reader, maxCount, maxLen int) ([]string, error) {
	ss, err := r.ReadStrings(maxCount, maxLen)
	if err != nil {
		return nil, wire.NoEOF(err)
	}
	return sortedStrings(ss), nil
}

// WriteStringSet writes a StringSet in bytewise order, deduplicated.
func WriteStringSet(w *wire.Writer, ss []string) error {
	return w.WriteStrings(sortedStrings(append([]string(nil), ss...)))
}

func sortedStrings(ss []string) []string {
	slices.Sort(ss)
	out := ss[:0]
	for i, s := range ss {
		if i > 0 && s == ss[i-1] {
			continue
		}
		out = append(out, s)
	}
	return out
}

// ReadContentAddress reads an optional content address ("" = none).
func ReadContentAddress(r *wire.Reader) (storepath.ContentAddress, error) {
	s, err := r.ReadString(MaxStringLen)
	if err != nil {
		return storepath.ContentAddress{}, fmt.Errorf("read content address: %w", wire.NoEOF(err))
	}
	ca, err := storepath.ParseContentAddress(s)
	if err != nil {
		return storepath.ContentAddress{}, fmt.Errorf("read content address: %w", err)
	}
	return ca, nil
}

// WriteContentAddress writes an optional content address.
func WriteContentAddress(w *wire.Writer, ca storepath.ContentAddress) error {
	return w.WriteString(ca.String())
}

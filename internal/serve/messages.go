package serve

import (
	"fmt"
	"strings"
	"time"

	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/nix/wire"
	"ferry/store"
)

// ReadCommand reads a command number with readInt. io.EOF (unwrapped) means
// the peer ended the stream cleanly at a command boundary.
func ReadCommand(r *wire.Reader) (Command, error) {
	n, err := r.ReadInt()
	if err != nil {
		return 0, err
	}
	return Command(n), nil
}

// WriteCommand writes a command number.
func WriteCommand(w *wire.Writer, c Command) error { return w.WriteUint64(uint64(c)) }

// QueryValidPathsRequest is the body of CmdQueryValidPaths.
type QueryValidPathsRequest struct {
	// Lock asks the server to add temp roots for the paths for the rest of
	// the session (honoured only with --write).
	Lock bool
	// Substitute asks the server to substitute missing paths first
	// (honoured only with --write).
	Substitute bool
	Paths      []storepath.Path
}

// ReadQueryValidPaths reads the body of CmdQueryValidPaths. Both flags are
// read with readInt, so any non-zero value below 2^32 is true.
func ReadQueryValidPaths(r *wire.Reader, dir storepath.Dir) (*QueryValidPathsRequest, error) {
	var q QueryValidPathsRequest
	var err error
	if q.Lock, err = r.ReadBoolLenient(); err != nil {
		return nil, fmt.Errorf("read lock flag: %w", wire.NoEOF(err))
	}
	if q.Substitute, err = r.ReadBoolLenient(); err != nil {
		return nil, fmt.Errorf("read substitute flag: %w", wire.NoEOF(err))
	}
	if q.Paths, err = ReadPathSet(r, dir); err != nil {
		return nil, err
	}
	return &q, nil
}

// WriteQueryValidPaths writes the body of CmdQueryValidPaths (without the
// command number). The reply is a path set (ReadPathSet).
func WriteQueryValidPaths(w *wire.Writer, q *QueryValidPathsRequest) error {
	w.WriteBool(q.Lock)
	w.WriteBool(q.Substitute)
	return WritePathSet(w, q.Paths)
}

// ReadQueryClosure reads the body of CmdQueryClosure: includeOutputs
// (readInt) and the paths.
func ReadQueryClosure(r *wire.Reader, dir storepath.Dir) (includeOutputs bool, paths []storepath.Path, err error) {
	if includeOutputs, err = r.ReadBoolLenient(); err != nil {
		return false, nil, fmt.Errorf("read includeOutputs flag: %w", wire.NoEOF(err))
	}
	paths, err = ReadPathSet(r, dir)
	return includeOutputs, paths, err
}

// WriteQueryClosure writes the body of CmdQueryClosure. The reply is a path
// set.
func WriteQueryClosure(w *wire.Writer, includeOutputs bool, paths []storepath.Path) error {
	w.WriteBool(includeOutputs)
	return WritePathSet(w, paths)
}

// ReadExportPaths reads the body of CmdExportPaths: an obsolete int (the sign
// flag removed in 2016, read with readInt and ignored) and the paths.
func ReadExportPaths(r *wire.Reader, dir storepath.Dir) ([]storepath.Path, error) {
	if _, err := r.ReadInt(); err != nil {
		return nil, fmt.Errorf("read sign flag: %w", wire.NoEOF(err))
	}
	return ReadPathSet(r, dir)
}

// WriteExportPaths writes the body of CmdExportPaths with the sign flag 0.
func WriteExportPaths(w *wire.Writer, paths []storepath.Path) error {
	w.WriteUint64(0)
	return WritePathSet(w, paths)
}

// WritePathInfo writes one record of the QueryPathInfos reply: the path and
// then the unkeyed fields (WriteUnkeyedPathInfo).
func WritePathInfo(w *wire.Writer, version uint64, info *store.PathInfo) error {
	WritePath(w, info.Path)
	return WriteUnkeyedPathInfo(w, version, info)
}

// WriteUnkeyedPathInfo writes the fields of a QueryPathInfos record after the
// path (master's ServeProto UnkeyedValidPathInfo): deriver, references,
// downloadSize (Nix sends narSize: "lie a little"), narSize and, from proto
// 2.4, narHash as "sha256:<nix32>", ca and sigs.
func WriteUnkeyedPathInfo(w *wire.Writer, version uint64, info *store.PathInfo) error {
	WritePath(w, info.Deriver)
	WritePathSet(w, info.References)
	w.WriteUint64(info.NarSize)
	w.WriteUint64(info.NarSize)
	if Minor(version) >= 4 {
		if info.NarHash.IsZero() {
			w.WriteString("")
		} else {
			w.WriteString(info.NarHash.String())
		}
		WriteContentAddress(w, info.CA)
		WriteStringSet(w, info.Sigs)
	}
	return stickyErr(w)
}

// stickyErr returns the Writer's sticky error, if any, without writing.
func stickyErr(w *wire.Writer) error {
	_, err := w.Write(nil)
	return err
}

// ReadPathInfo reads one record of the QueryPathInfos reply. It returns nil
// at the empty string that ends the reply.
func ReadPathInfo(r *wire.Reader, dir storepath.Dir, version uint64) (*store.PathInfo, error) {
	s, err := r.ReadString(MaxPathLen)
	if err != nil {
		return nil, fmt.Errorf("read path info: %w", wire.NoEOF(err))
	}
	if s == "" {
		return nil, nil
	}
	p, err := ParsePath(dir, s)
	if err != nil {
		return nil, err
	}
	info := &store.PathInfo{Path: p}
	if err := ReadUnkeyedPathInfo(r, dir, version, info); err != nil {
		return nil, err
	}
	return info, nil
}

// ReadUnkeyedPathInfo reads the fields WriteUnkeyedPathInfo writes into info.
// downloadSize is read and dropped.
func ReadUnkeyedPathInfo(r *wire.Reader, dir storepath.Dir, version uint64, info *store.PathInfo) error {
	var err error
	if info.Deriver, err = ReadOptionalPath(r, dir); err != nil {
		return fmt.Errorf("read deriver: %w", err)
	}
	if info.References, err = ReadPathSet(r, dir); err != nil {
		return fmt.Errorf("read references: %w", err)
	}
	if _, err = r.ReadUint64(); err != nil {
		return fmt.Errorf("read download size: %w", wire.NoEOF(err))
	}
	if info.NarSize, err = r.ReadUint64(); err != nil {
		return fmt.Errorf("read nar size: %w", wire.NoEOF(err))
	}
	if Minor(version) < 4 {
		return nil
	}
	s, err := r.ReadString(MaxStringLen)
	if err != nil {
		return fmt.Errorf("read nar hash: %w", wire.NoEOF(err))
	}
	if s != "" {
		if info.NarHash, err = hash.ParseAny(s, hash.SHA256); err != nil {
			return fmt.Errorf("read nar hash: %w", err)
		}
	}
	if info.CA, err = ReadContentAddress(r); err != nil {
		return err
	}
	if info.Sigs, err = ReadStringSet(r, MaxSigs, MaxStringLen); err != nil {
		return fmt.Errorf("read signatures: %w", err)
	}
	return nil
}

// ReadAddToStoreNar reads the metadata of CmdAddToStoreNar (everything before
// the NAR, which follows raw: exactly info.NarSize bytes). The NAR hash is
// parsed as Nix's Hash::parseAny(s, sha256) does. A zero narSize is refused
// with Nix's message; ultimate is a strict bool.
func ReadAddToStoreNar(r *wire.Reader, dir storepath.Dir) (*store.PathInfo, error) {
	var info store.PathInfo
	var err error
	if info.Path, err = ReadPath(r, dir); err != nil {
		return nil, err
	}
	if info.Deriver, err = ReadOptionalPath(r, dir); err != nil {
		return nil, fmt.Errorf("read deriver: %w", err)
	}
	s, err := r.ReadString(MaxStringLen)
	if err != nil {
		return nil, fmt.Errorf("read nar hash: %w", wire.NoEOF(err))
	}
	if info.NarHash, err = hash.ParseAny(s, hash.SHA256); err != nil {
		return nil, fmt.Errorf("read nar hash: %w", err)
	}
	if info.References, err = ReadPathSet(r, dir); err != nil {
		return nil, fmt.Errorf("read references: %w", err)
	}
	t, err := r.ReadUint64()
	if err != nil {
		return nil, fmt.Errorf("read registration time: %w", wire.NoEOF(err))
	}
	if t != 0 {
		if t > 1<<62 {
			return nil, fmt.Errorf("read registration time: %d is out of range", t)
		}
		info.RegistrationTime = time.Unix(int64(t), 0)
	}
	if info.NarSize, err = r.ReadUint64(); err != nil {
		return nil, fmt.Errorf("read nar size: %w", wire.NoEOF(err))
	}
	if info.Ultimate, err = r.ReadBool(); err != nil {
		return nil, fmt.Errorf("read ultimate flag: %w", wire.NoEOF(err))
	}
	if info.Sigs, err = ReadStringSet(r, MaxSigs, MaxStringLen); err != nil {
		return nil, fmt.Errorf("read signatures: %w", err)
	}
	if info.CA, err = ReadContentAddress(r); err != nil {
		return nil, err
	}
	if info.NarSize == 0 {
		return nil, fmt.Errorf("narInfo is too old and missing the narSize field")
	}
	return &info, nil
}

// WriteAddToStoreNar writes the metadata of CmdAddToStoreNar as the Nix 2.8
// client does (narHash as bare base16). The caller then writes exactly
// info.NarSize bytes of NAR.
func WriteAddToStoreNar(w *wire.Writer, info *store.PathInfo) error {
	WritePath(w, info.Path)
	WritePath(w, info.Deriver)
	w.WriteString(info.NarHash.Hex())
	WritePathSet(w, info.References)
	var t uint64
	if !info.RegistrationTime.IsZero() && info.RegistrationTime.Unix() > 0 {
		t = uint64(info.RegistrationTime.Unix())
	}
	w.WriteUint64(t)
	w.WriteUint64(info.NarSize)
	w.WriteBool(info.Ultimate)
	WriteStringSet(w, info.Sigs)
	WriteContentAddress(w, info.CA)
	return stickyErr(w)
}

// ReadBuildSettings reads the build settings that follow BuildPaths and
// BuildDerivation requests (docs/protocol.md §3.8), gated on the client's
// minor version as Nix 2.8's opServe getBuildSettings does.
func ReadBuildSettings(r *wire.Reader, version uint64) (*store.BuildSettings, error) {
	var s store.BuildSettings
	silent, err := r.ReadInt()
	if err != nil {
		return nil, fmt.Errorf("read maxSilentTime: %w", wire.NoEOF(err))
	}
	s.MaxSilentTime = time.Duration(silent) * time.Second
	timeout, err := r.ReadInt()
	if err != nil {
		return nil, fmt.Errorf("read buildTimeout: %w", wire.NoEOF(err))
	}
	s.Timeout = time.Duration(timeout) * time.Second
	minor := Minor(version)
	if minor >= 2 {
		if s.MaxLogSize, err = r.ReadUint64(); err != nil {
			return nil, fmt.Errorf("read maxLogSize: %w", wire.NoEOF(err))
		}
	}
	if minor >= 3 {
		if s.BuildRepeat, err = r.ReadInt(); err != nil {
			return nil, fmt.Errorf("read buildRepeat: %w", wire.NoEOF(err))
		}
		if s.EnforceDeterminism, err = r.ReadBoolLenient(); err != nil {
			return nil, fmt.Errorf("read enforceDeterminism: %w", wire.NoEOF(err))
		}
	}
	if minor >= 7 {
		if s.KeepFailed, err = r.ReadBoolLenient(); err != nil {
			return nil, fmt.Errorf("read keepFailed: %w", wire.NoEOF(err))
		}
	}
	return &s, nil
}

// WriteBuildSettings writes build settings for a peer of the given version.
func WriteBuildSettings(w *wire.Writer, version uint64, s *store.BuildSettings) error {
	w.WriteUint64(uint64(s.MaxSilentTime / time.Second))
	w.WriteUint64(uint64(s.Timeout / time.Second))
	minor := Minor(version)
	if minor >= 2 {
		w.WriteUint64(s.MaxLogSize)
	}
	if minor >= 3 {
		w.WriteUint64(s.BuildRepeat)
		w.WriteBool(s.EnforceDeterminism)
	}
	if minor >= 7 {
		w.WriteBool(s.KeepFailed)
	}
	return stickyErr(w)
}

// DerivedPath is one element of a BuildPaths request (store.DerivedPath).
type DerivedPath = store.DerivedPath

// ParseDerivedPath parses "path" or "drvPath!out1,out2" (parsePathWithOutputs).
func ParseDerivedPath(dir storepath.Dir, s string) (DerivedPath, error) {
	ps, outs, found := strings.Cut(s, "!")
	p, err := ParsePath(dir, ps)
	if err != nil {
		return DerivedPath{}, err
	}
	if !found {
		return DerivedPath{Path: p}, nil
	}
	d := DerivedPath{Path: p, Outputs: []string{}}
	for _, o := range strings.Split(outs, ",") {
		if o != "" {
			d.Outputs = append(d.Outputs, o)
		}
	}
	return d, nil
}

// ReadBuildPaths reads the body of CmdBuildPaths: a list of derived paths
// and the build settings.
func ReadBuildPaths(r *wire.Reader, dir storepath.Dir, version uint64) ([]DerivedPath, *store.BuildSettings, error) {
	ss, err := r.ReadStrings(MaxPaths, MaxPathLen+MaxStringLen)
	if err != nil {
		return nil, nil, fmt.Errorf("read paths: %w", wire.NoEOF(err))
	}
	var ps []DerivedPath
	for _, s := range ss {
		p, err := ParseDerivedPath(dir, s)
		if err != nil {
			return nil, nil, err
		}
		ps = append(ps, p)
	}
	settings, err := ReadBuildSettings(r, version)
	if err != nil {
		return nil, nil, err
	}
	return ps, settings, nil
}

// WriteBuildPaths writes the body of CmdBuildPaths.
func WriteBuildPaths(w *wire.Writer, version uint64, ps []DerivedPath, s *store.BuildSettings) error {
	w.WriteUint64(uint64(len(ps)))
	for _, p := range ps {
		w.WriteString(p.String())
	}
	return WriteBuildSettings(w, version, s)
}

// BuildPathsReply is the reply to CmdBuildPaths: Status is a process exit
// status (0 success, 1 generic failure, 100-111 build failures as
// Worker::exitStatus computes them), not a BuildStatus; Message is sent only
// when Status is not 0.
type BuildPathsReply struct {
	Status  uint64
	Message string
}

// WriteBuildPathsReply writes the reply to CmdBuildPaths.
func WriteBuildPathsReply(w *wire.Writer, rep *BuildPathsReply) error {
	w.WriteUint64(rep.Status)
	if rep.Status != 0 {
		w.WriteString(rep.Message)
	}
	return stickyErr(w)
}

// ReadBuildPathsReply reads the reply to CmdBuildPaths. Unlike Nix's
// client, it reads the message for every non-zero status (Nix's success()
// test misreads status 1, docs/protocol.md §3.6).
func ReadBuildPathsReply(r *wire.Reader) (*BuildPathsReply, error) {
	var rep BuildPathsReply
	var err error
	if rep.Status, err = r.ReadInt(); err != nil {
		return nil, fmt.Errorf("read build status: %w", wire.NoEOF(err))
	}
	if rep.Status != 0 {
		if rep.Message, err = r.ReadString(MaxStringLen * 16); err != nil {
			return nil, fmt.Errorf("read build message: %w", wire.NoEOF(err))
		}
	}
	return &rep, nil
}

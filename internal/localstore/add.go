package localstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	gohash "hash"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"ferry/internal/db"
	"ferry/internal/lock"
	"ferry/internal/storefs"
	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/store"
)

// TempPrefix starts the name of every temporary entry ferry creates in the
// physical store directory: ".ferry-tmp-<pid>-<n>". The leading dot keeps
// it from ever being a store path; the pid lets a later writer (or the
// GC) tell a leftover from an entry in use: the entry is a leftover once
// process <pid> no longer holds its temp roots file (lock.ProcessAlive),
// which ferry creates before making any temporary entry.
const TempPrefix = ".ferry-tmp-"

// ParseTempName returns the pid in a temporary entry name made by ferry,
// and false for any other name.
func ParseTempName(name string) (pid int, ok bool) {
	rest, ok := strings.CutPrefix(name, TempPrefix)
	if !ok {
		return 0, false
	}
	pidStr, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// newTemp returns a fresh temporary name in the store directory. The
// first call of a Store also removes the leftovers of dead processes.
func (s *Store) newTemp(ctx context.Context) (string, error) {
	if err := s.temps.Ensure(ctx); err != nil {
		return "", err
	}
	s.cleanOnce.Do(func() { s.CleanLeftovers() })
	n := s.tmpSeq.Add(1)
	return filepath.Join(s.realDir, fmt.Sprintf("%s%d-%d", TempPrefix, os.Getpid(), n)), nil
}

// CleanLeftovers deletes the temporary entries (TempPrefix) of processes
// that are gone. It runs on a Store's first write; the GC may call it too.
func (s *Store) CleanLeftovers() error {
	ents, err := os.ReadDir(s.realDir)
	if err != nil {
		return fmt.Errorf("clean leftovers: %w", err)
	}
	alive := map[int]bool{}
	for _, e := range ents {
		pid, ok := ParseTempName(e.Name())
		if !ok {
			continue
		}
		a, seen := alive[pid]
		if !seen {
			a, err = lock.ProcessAlive(s.stateDir, pid)
			if err != nil {
				continue
			}
			alive[pid] = a
		}
		if !a {
			storefs.Delete(filepath.Join(s.realDir, e.Name()))
		}
	}
	return nil
}

// pending is an object restored and canonicalised at a temporary name,
// waiting to be installed under its store path.
type pending struct {
	info *store.PathInfo
	tmp  string
}

// installBatch is the one place store objects become valid. For the
// batch, in order: temp roots; path locks (sorted); a re-check of
// validity under the locks (valid ones are dropped); removal of any
// leftover at the final name; rename into place; fsync of the store
// directory; one transaction registering everything. If the transaction
// fails, the renamed objects are removed again (they are still invalid and
// locked). Temporaries are always gone when it returns.
func (s *Store) installBatch(ctx context.Context, batch []*pending) (err error) {
	defer func() {
		for _, p := range batch {
			if p.tmp != "" {
				storefs.Delete(p.tmp)
			}
		}
	}()
	var real []string
	for _, p := range batch {
		if err := s.temps.Add(ctx, string(p.info.Path)); err != nil {
			return err
		}
		real = append(real, s.RealPath(p.info.Path))
	}
	locks, err := lock.LockPaths(ctx, s.held.filter(real), true)
	if err != nil {
		return err
	}
	defer locks.Unlock()

	var todo []*pending
	err = s.db.Read(ctx, func(tx *db.Tx) error {
		todo = todo[:0]
		for _, p := range batch {
			ok, err := tx.IsValid(p.info.Path)
			if err != nil {
				return err
			}
			if !ok {
				todo = append(todo, p)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(todo) == 0 {
		locks.SetDeletion(true)
		return nil
	}
	var moved []string
	for _, p := range todo {
		dst := s.RealPath(p.info.Path)
		if _, err := storefs.Delete(dst); err != nil {
			return fmt.Errorf("install %s: %w", p.info.Path, err)
		}
		if err := os.Rename(p.tmp, dst); err != nil {
			for _, m := range moved {
				storefs.Delete(m)
			}
			return fmt.Errorf("move %s into place: %w", p.info.Path, err)
		}
		p.tmp = ""
		moved = append(moved, dst)
	}
	if !s.opts.NoSync {
		if err := storefs.Sync(s.realDir); err != nil {
			for _, m := range moved {
				storefs.Delete(m)
			}
			return err
		}
	}
	infos := make([]*store.PathInfo, len(todo))
	for i, p := range todo {
		infos[i] = p.info
	}
	if err := s.register(ctx, infos); err != nil {
		for _, m := range moved {
			storefs.Delete(m)
		}
		return err
	}
	locks.SetDeletion(true)
	return nil
}

// RegisterValidPaths registers objects that are already complete and
// canonical at their final names (e.g. build outputs), in one transaction
// (Nix's registerValidPaths): already-valid paths get their info updated,
// every reference must be valid or in infos, .drv files get their
// DerivationOutputs rows and have their output paths checked, and a
// reference cycle in the batch is refused. The caller must hold the path
// locks of infos and have added them as temp roots.
func (s *Store) RegisterValidPaths(ctx context.Context, infos []*store.PathInfo) error {
	for _, in := range infos {
		if err := s.checkDir(in.Path); err != nil {
			return err
		}
		if _, err := os.Lstat(s.RealPath(in.Path)); err != nil {
			return fmt.Errorf("register %s: %w", in.Path, err)
		}
	}
	return s.register(ctx, infos)
}

func (s *Store) register(ctx context.Context, infos []*store.PathInfo) error {
	byPath := map[storepath.Path]*store.PathInfo{}
	for _, in := range infos {
		if in.NarHash.Algorithm() != hash.SHA256 {
			return fmt.Errorf("register %s: a sha256 NAR hash is required", in.Path)
		}
		byPath[in.Path] = in
	}
	if _, err := store.TopoSort(keys(byPath), func(p storepath.Path) []storepath.Path { return byPath[p].References }); err != nil {
		return fmt.Errorf("register paths: %w", err)
	}
	// Derivations are parsed and checked before the transaction.
	drvs := map[storepath.Path]*derivation.Derivation{}
	for _, in := range infos {
		if !in.Path.IsDerivation() {
			continue
		}
		d, err := s.readDerivation(in.Path)
		if err != nil {
			return fmt.Errorf("register %s: %w", in.Path, err)
		}
		if err := d.CheckOutputPaths(s.Dir(), s.readDerivation, &s.memo); err != nil {
			return fmt.Errorf("register %s: %w", in.Path, err)
		}
		drvs[in.Path] = d
	}
	return s.db.Write(ctx, func(tx *db.Tx) error {
		ids := map[storepath.Path]int64{}
		for _, in := range infos {
			id, ok, err := tx.PathID(in.Path)
			if err != nil {
				return err
			}
			if ok {
				if err := tx.UpdatePathInfo(in); err != nil {
					return err
				}
			} else if id, err = tx.RegisterValidPath(in); err != nil {
				return err
			}
			ids[in.Path] = id
			if d := drvs[in.Path]; d != nil {
				for name, out := range d.OutputPaths() {
					if err := tx.AddDerivationOutput(id, name, out); err != nil {
						return err
					}
				}
			}
		}
		for _, in := range infos {
			for _, r := range in.References {
				rid, ok := ids[r]
				if !ok {
					var err error
					rid, ok, err = tx.PathID(r)
					if err != nil {
						return err
					}
					if !ok {
						return fmt.Errorf("cannot add path '%s' because it references path '%s' which %w", in.Path, r, store.ErrNotValid)
					}
				}
				if err := tx.AddReference(ids[in.Path], rid); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func keys(m map[storepath.Path]*store.PathInfo) []storepath.Path {
	out := make([]storepath.Path, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// readDerivation parses the .drv file of p from disk; it is the Resolver
// used to check derivations.
func (s *Store) readDerivation(p storepath.Path) (*derivation.Derivation, error) {
	f, err := os.Open(s.RealPath(p))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, derivation.MaxSize+1))
	if err != nil {
		return nil, err
	}
	name, err := derivation.NameFromPath(p)
	if err != nil {
		return nil, err
	}
	return derivation.ParseIn(s.Dir(), data, name)
}

// ReadDerivation returns the parsed derivation stored at the valid path p.
func (s *Store) ReadDerivation(ctx context.Context, p storepath.Path) (*derivation.Derivation, error) {
	if _, err := s.QueryPathInfo(ctx, p); err != nil {
		return nil, err
	}
	d, err := s.readDerivation(p)
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", p, err)
	}
	return d, nil
}

// countingHash hashes and counts what is written to it.
type countingHash struct {
	h gohash.Hash
	n uint64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += uint64(len(p))
	return c.h.Write(p)
}

// restoreTemp restores the NAR from r at a fresh temporary name, hashing
// it on the way (sha256 and, if extra is not nil, also into extra).
func (s *Store) restoreTemp(ctx context.Context, r io.Reader, extra io.Writer) (tmp string, narHash hash.Hash, narSize uint64, err error) {
	tmp, err = s.newTemp(ctx)
	if err != nil {
		return "", hash.Hash{}, 0, err
	}
	ch := &countingHash{h: sha256.New()}
	var w io.Writer = ch
	if extra != nil {
		w = io.MultiWriter(ch, extra)
	}
	if err := nar.Restore(io.TeeReader(r, w), tmp); err != nil {
		storefs.Delete(tmp)
		return "", hash.Hash{}, 0, err
	}
	return tmp, hash.FromHasher(hash.SHA256, ch.h), ch.n, nil
}

// AddToStoreNar adds info.Path from its NAR (store.Store). The NAR is
// restored to a temporary name while its SHA-256 and size are computed;
// both must match info (the size only when info.NarSize is not zero), and
// so must the content address when info.CA is set. Then it is
// canonicalised, synced, moved into place and registered with its
// references, which must be valid already (or be the path itself).
// A Batch adds many paths with one sync and one transaction.
func (s *Store) AddToStoreNar(ctx context.Context, info *store.PathInfo, r io.Reader) error {
	p, err := s.prepareNar(ctx, info, r, !s.opts.NoSync, true)
	if err != nil || p == nil {
		return err
	}
	if err := s.installBatch(ctx, []*pending{p}); err != nil {
		return fmt.Errorf("add %s: %w", info.Path, err)
	}
	return nil
}

// prepareNar is AddToStoreNar up to installing: it returns the object
// restored, verified and canonicalised (and fsynced, with sync) at a
// temporary name, or, with checkValid, nil if info.Path is valid already,
// in which case the NAR is read to its end and checked for structure only.
func (s *Store) prepareNar(ctx context.Context, info *store.PathInfo, r io.Reader, sync, checkValid bool) (*pending, error) {
	if err := s.checkDir(info.Path); err != nil {
		return nil, err
	}
	if info.NarHash.Algorithm() != hash.SHA256 {
		return nil, fmt.Errorf("add %s: a sha256 NAR hash is required", info.Path)
	}
	if err := s.temps.Add(ctx, string(info.Path)); err != nil {
		return nil, err
	}
	if checkValid {
		if ok, err := s.IsValidPath(ctx, info.Path); err != nil {
			return nil, err
		} else if ok {
			return nil, s.skipNar(info.Path, r)
		}
	}
	var caHasher gohash.Hash
	if info.CA.Method == storepath.Recursive && !info.CA.IsZero() && info.CA.Hash.Algorithm() != hash.SHA256 {
		caHasher = info.CA.Hash.Algorithm().New()
	}
	var extra io.Writer
	if caHasher != nil {
		extra = caHasher
	}
	tmp, narHash, narSize, err := s.restoreTemp(ctx, r, extra)
	if err != nil {
		return nil, fmt.Errorf("add %s: %w", info.Path, err)
	}
	fail := func(err error) (*pending, error) {
		storefs.Delete(tmp)
		return nil, fmt.Errorf("add %s: %w", info.Path, err)
	}
	if !narHash.Equal(info.NarHash) {
		return fail(fmt.Errorf("hash mismatch importing path: specified %s, got %s",
			info.NarHash.Encode(hash.Nix32, true), narHash.Encode(hash.Nix32, true)))
	}
	if info.NarSize != 0 && narSize != info.NarSize {
		return fail(fmt.Errorf("size mismatch importing path: specified %d, got %d", info.NarSize, narSize))
	}
	if !info.CA.IsZero() {
		if err := s.checkCA(info, tmp, narHash, caHasher); err != nil {
			return fail(err)
		}
	}
	if err := storefs.Canonicalise(tmp, sync); err != nil {
		return fail(err)
	}
	in := *info
	in.NarSize = narSize
	in.References = append([]storepath.Path(nil), info.References...)
	storepath.Sort(in.References)
	return &pending{info: &in, tmp: tmp}, nil
}

// skipNar reads the NAR of a path that needs no adding, checking its
// structure, so that a protocol stream stays in step.
func (s *Store) skipNar(p storepath.Path, r io.Reader) error {
	if err := nar.List(io.Discard, r, nil); err != nil {
		return fmt.Errorf("add %s: %w", p, err)
	}
	return nil
}

// checkCA verifies that the object at tmp has info's content address and
// that the address gives info.Path.
func (s *Store) checkCA(info *store.PathInfo, tmp string, narHash hash.Hash, caHasher gohash.Hash) error {
	ca := info.CA
	var got hash.Hash
	switch {
	case ca.Method == storepath.Recursive && caHasher == nil:
		got = narHash
	case ca.Method == storepath.Recursive:
		got = hash.FromHasher(ca.Hash.Algorithm(), caHasher)
	default: // Flat and Text hash a regular file's contents
		algo := ca.Hash.Algorithm()
		if ca.Method == storepath.Text {
			algo = hash.SHA256
		}
		f, err := os.Open(tmp)
		if err != nil {
			return err
		}
		defer f.Close()
		if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
			return fmt.Errorf("content address %s needs a regular file", ca)
		}
		h := algo.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		got = hash.FromHasher(algo, h)
	}
	var refs []storepath.Path
	self := false
	for _, r := range info.References {
		if r == info.Path {
			self = true
		} else {
			refs = append(refs, r)
		}
	}
	// Nix hashes a fixed-output content address modulo the path's own
	// hash part (hashCAPath, src/libstore/local-store.cc@2.8.0), which
	// differs from the plain hash only when the content holds it: a path
	// that refers to itself (a floating content-addressed output), or
	// one whose plain hash does not match.
	if ca.Method != storepath.Text && (self || !got.Equal(ca.Hash)) {
		mod, err := hashCAPath(ca.Method, ca.Hash.Algorithm(), tmp, info.Path.HashPart())
		if err != nil {
			return err
		}
		got = mod
	}
	if !got.Equal(ca.Hash) {
		return fmt.Errorf("ca hash mismatch importing path: specified %s, got %s", ca.Hash, got)
	}
	want, err := s.Dir().MakeFromCA(info.Path.Name(), ca, refs, self)
	if err != nil {
		return err
	}
	if want != info.Path {
		return fmt.Errorf("content address %s gives path '%s', not '%s'", ca, want, info.Path)
	}
	return nil
}

// AddPath adds the file or directory at srcPath like nix-store --add
// (method Recursive, algo SHA256) or --add-fixed [--recursive] ALGO. The
// name is srcPath's base name. The source is read once: its NAR is
// restored to a temporary name while every hash is computed.
func (s *Store) AddPath(ctx context.Context, srcPath string, method storepath.Method, algo hash.Algorithm) (*store.PathInfo, error) {
	name := filepath.Base(filepath.Clean(srcPath))
	if err := storepath.ValidateName(name); err != nil {
		return nil, fmt.Errorf("add %s: %w", srcPath, err)
	}
	if algo.Size() == 0 {
		return nil, fmt.Errorf("add %s: unknown hash algorithm", srcPath)
	}
	var (
		tmp     string
		narHash hash.Hash
		narSize uint64
		caHash  hash.Hash
	)
	st, err := os.Lstat(srcPath)
	if err != nil {
		return nil, fmt.Errorf("add %s: %w", srcPath, err)
	}
	switch {
	case method == storepath.Recursive && st.Mode().IsRegular():
		// A single file: copy it directly rather than through a NAR.
		var extra gohash.Hash
		var w io.Writer
		if algo != hash.SHA256 {
			extra = algo.New()
			w = extra
		}
		tmp, narHash, narSize, err = s.copyRegular(ctx, srcPath, nil, w)
		if err != nil {
			return nil, fmt.Errorf("add %s: %w", srcPath, err)
		}
		caHash = narHash
		if extra != nil {
			caHash = hash.FromHasher(algo, extra)
		}
	case method == storepath.Recursive:
		var extra gohash.Hash
		if algo != hash.SHA256 {
			extra = algo.New()
		}
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(nar.Dump(pw, srcPath)) }()
		var w io.Writer
		if extra != nil {
			w = extra
		}
		tmp, narHash, narSize, err = s.restoreTemp(ctx, pr, w)
		pr.CloseWithError(errors.New("restore ended"))
		if err != nil {
			return nil, fmt.Errorf("add %s: %w", srcPath, err)
		}
		caHash = narHash
		if extra != nil {
			caHash = hash.FromHasher(algo, extra)
		}
	case method == storepath.Flat:
		fh := algo.New()
		tmp, narHash, narSize, err = s.copyRegular(ctx, srcPath, fh, nil)
		if err != nil {
			return nil, fmt.Errorf("add %s: %w", srcPath, err)
		}
		caHash = hash.FromHasher(algo, fh)
	default:
		return nil, fmt.Errorf("add %s: method must be flat or recursive", srcPath)
	}
	ca := storepath.ContentAddress{Method: method, Hash: caHash}
	p, err := s.Dir().MakeFromCA(name, ca, nil, false)
	if err != nil {
		storefs.Delete(tmp)
		return nil, fmt.Errorf("add %s: %w", srcPath, err)
	}
	info := &store.PathInfo{Path: p, NarHash: narHash, NarSize: narSize, CA: ca}
	return s.finishAdd(ctx, info, tmp)
}

// finishAdd installs an object whose path was computed from its contents:
// temp root, validity check (a valid path wins and the temporary is
// dropped), canonicalise, sync, install.
func (s *Store) finishAdd(ctx context.Context, info *store.PathInfo, tmp string) (*store.PathInfo, error) {
	if err := s.temps.Add(ctx, string(info.Path)); err != nil {
		storefs.Delete(tmp)
		return nil, err
	}
	if got, err := s.QueryPathInfo(ctx, info.Path); err == nil {
		storefs.Delete(tmp)
		return got, nil
	} else if !errors.Is(err, store.ErrNotValid) {
		storefs.Delete(tmp)
		return nil, err
	}
	if err := storefs.Canonicalise(tmp, !s.opts.NoSync); err != nil {
		storefs.Delete(tmp)
		return nil, fmt.Errorf("add %s: %w", info.Path, err)
	}
	if err := s.installBatch(ctx, []*pending{{info: info, tmp: tmp}}); err != nil {
		return nil, fmt.Errorf("add %s: %w", info.Path, err)
	}
	return s.QueryPathInfo(ctx, info.Path)
}

// AddText adds a text object (builtins.toFile, a .drv file): a regular
// file holding content, named name, with the given references (which must
// be valid), at the text path of §2.3.
func (s *Store) AddText(ctx context.Context, name string, content []byte, refs []storepath.Path) (*store.PathInfo, error) {
	if err := storepath.ValidateName(name); err != nil {
		return nil, fmt.Errorf("add text %s: %w", name, err)
	}
	refs = append([]storepath.Path(nil), refs...)
	storepath.Sort(refs)
	h := hash.Sum(hash.SHA256, content)
	p, err := s.Dir().MakeText(name, h, refs)
	if err != nil {
		return nil, fmt.Errorf("add text %s: %w", name, err)
	}
	tmp, err := s.newTemp(ctx)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(tmp, content, 0o644); err != nil {
		storefs.Delete(tmp)
		return nil, fmt.Errorf("add text %s: %w", name, err)
	}
	ch := &countingHash{h: sha256.New()}
	nar.DumpBytes(ch, content)
	info := &store.PathInfo{
		Path:       p,
		NarHash:    hash.FromHasher(hash.SHA256, ch.h),
		NarSize:    ch.n,
		References: refs,
		CA:         storepath.ContentAddress{Method: storepath.Text, Hash: h},
	}
	return s.finishAdd(ctx, info, tmp)
}

// AddDerivation writes d's ATerm into the store as nix-instantiate does
// (a text object named <name>.drv whose references are its input sources
// and input derivations, all of which must be valid) and records its
// output paths in DerivationOutputs in the same transaction. d's output
// paths must be filled in (derivation.FillOutputPaths) and correct.
func (s *Store) AddDerivation(ctx context.Context, d *derivation.Derivation) (storepath.Path, error) {
	p, err := d.Path(s.Dir())
	if err != nil {
		return "", fmt.Errorf("add derivation %s: %w", d.Name, err)
	}
	info, err := s.AddText(ctx, p.Name(), d.ATerm(), d.References())
	if err != nil {
		return "", err
	}
	if info.Path != p {
		return "", fmt.Errorf("add derivation %s: wrote %s, expected %s", d.Name, info.Path, p)
	}
	return p, nil
}

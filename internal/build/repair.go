package build

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"ferry/internal/localstore"
	"ferry/internal/lock"
	"ferry/internal/storefs"
	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/rewrite"
	"ferry/nix/storepath"
	"ferry/store"
)

// RepairPath repairs the valid path p of st, whose files are missing or
// no longer match the database, as Nix 2.8's LocalStore::repairPath does
// once substitution has failed (ferry has no substituters): if p's deriver
// is known and is a valid .drv in st, the deriver is rebuilt in repair
// mode (Repair); otherwise the error is "cannot repair path 'p'". A build
// that fails returns its message as the error. It is the repairer
// "ferry store verify --repair" gives localstore.VerifyOptions.Repair.
func RepairPath(ctx context.Context, st *localstore.Store, p storepath.Path, opts *Options) error {
	info, err := st.QueryPathInfo(ctx, p)
	if err != nil {
		return fmt.Errorf("repair path '%s': %w", p, err)
	}
	cannot := fmt.Errorf("cannot repair path '%s'", p)
	if info.Deriver == "" {
		return cannot
	}
	if err := st.AddTempRoot(ctx, info.Deriver); err != nil {
		return err
	}
	if ok, err := st.IsValidPath(ctx, info.Deriver); err != nil {
		return err
	} else if !ok {
		return cannot
	}
	d, err := st.ReadDerivation(ctx, info.Deriver)
	if err != nil {
		return fmt.Errorf("repair path '%s': %w", p, err)
	}
	isOutput := false
	for _, o := range d.OutputPaths() {
		isOutput = isOutput || o == p
	}
	if !isOutput {
		return cannot
	}
	res, err := Repair(ctx, st, info.Deriver, d, opts)
	if err != nil {
		return err
	}
	if !res.Status.Success() {
		return errors.New(res.ErrorMsg)
	}
	return nil
}

// Repair rebuilds the derivation d at drvPath in repair mode (Nix 2.8's
// DerivationGoal with bmRepair) and replaces its outputs in place, even
// the valid ones. Its inputs must be valid; they are not repaired in turn
// (Nix repairs them too). It returns AlreadyValid without building when
// every output is valid and hashes to its database NAR hash, Built after
// the outputs were replaced, and Build's failure statuses and messages
// otherwise; the error is non-nil only when ctx ended or the store failed.
//
// The build is redirected, as Nix's is for a valid output without a
// sandbox: each output is built at a scratch path (Nix's makeFallbackPath,
// same name, another hash), with the output's hash replaced by the
// scratch hash in the environment and arguments; the output is then
// checked like any build output, its scratch hash rewritten back to the
// real one (only if the output contains it), canonicalised and synced at a
// temporary name, and swapped with the damaged tree in one
// renameat2(RENAME_EXCHANGE), so the path is never missing or
// half-written; the damaged tree is deleted afterwards. The output path
// locks are held from before the validity check until the database has
// the outputs' new NAR hashes and sizes (Nix's registerValidPaths, which
// updates the rows of valid paths: a non-deterministic build changes
// them). Repair is safe for concurrent use: a second repair of the same
// derivation waits for the locks, then finds the outputs good
// (AlreadyValid). Unlike Nix in a sandbox, the builder sees the scratch path as $out
// in a sandbox too; for a builder that only writes $out's name into files
// the result is the same.
func Repair(ctx context.Context, st *localstore.Store, drvPath storepath.Path, d *derivation.Derivation, opts *Options) (*store.BuildResult, error) {
	if opts != nil {
		defer startAutoGC(ctx, opts.AutoGC)()
	}
	return drive(ctx, st, drvPath, d, opts, (*builder).repair)
}

// repairOutput is one output on its way back into place.
type repairOutput struct {
	name    string
	final   storepath.Path // the output path, possibly damaged or missing
	scratch storepath.Path // where the builder makes it
	tmp     string         // real temporary name the finished tree waits at
}

func (b *builder) repair(ctx context.Context, res *store.BuildResult) (store.BuildStatus, string, error) {
	st, d := b.st, b.drv
	closure, status, msg, err := b.prepare(ctx)
	if err != nil || msg != "" {
		return status, msg, err
	}

	outs := d.OutputPaths()
	var ros []*repairOutput
	var realFinals []string
	for _, name := range d.OutputNames() {
		ro := &repairOutput{name: name, final: outs[name], tmp: repairTempName(st)}
		if ro.scratch, err = fallbackPath(st.Dir(), b.drvPath, ro.final); err != nil {
			return 0, "", err
		}
		for _, p := range []storepath.Path{ro.final, ro.scratch} {
			if err := st.AddTempRoot(ctx, p); err != nil {
				return 0, "", err
			}
		}
		ros = append(ros, ro)
		realFinals = append(realFinals, st.RealPath(ro.final))
	}
	locks, err := lock.LockPaths(ctx, realFinals, true)
	if err != nil {
		return 0, "", fmt.Errorf("lock outputs of '%s': %w", b.drvPath, err)
	}
	defer locks.Unlock()
	res.BuiltOutputs = outs

	// Nix's checkPathValidity with checkHash: an output is good when it
	// is valid and its contents match the database.
	good := 0
	for _, ro := range ros {
		ok, err := contentsGood(ctx, st, ro.final)
		if err != nil {
			return 0, "", err
		}
		if ok {
			good++
		}
	}
	if good == len(ros) {
		locks.SetDeletion(true)
		return store.AlreadyValid, "", nil
	}

	cleanup := func() {
		for _, ro := range ros {
			storefs.Delete(st.RealPath(ro.scratch))
			storefs.Delete(ro.tmp)
		}
	}
	cleanup() // leftovers of an earlier, interrupted repair
	defer cleanup()

	rd, scratchOuts := redirect(d, ros)
	rb := &builder{st: st, drvPath: b.drvPath, drv: rd, opts: b.opts, s: b.s}
	status, msg, infos, err := rb.runBuilder(ctx, scratchOuts, closure)
	if rb.ran {
		res.TimesBuilt = 1
	}
	if err != nil || !status.Success() {
		return status, msg, err
	}

	byScratch := map[storepath.Path]*repairOutput{}
	for _, ro := range ros {
		byScratch[ro.scratch] = ro
	}
	for _, info := range infos {
		ro := byScratch[info.Path]
		if ro == nil {
			return 0, "", fmt.Errorf("repair '%s': unexpected output %s", b.drvPath, info.Path)
		}
		if err := finishOutput(ctx, st, ro, ros, info); err != nil {
			return 0, "", err
		}
	}
	// Every finished tree is ready before any damaged one is touched.
	for _, ro := range ros {
		if err := replaceValidPath(st.RealPath(ro.final), ro.tmp); err != nil {
			return 0, "", fmt.Errorf("repair '%s': %w", ro.final, err)
		}
	}
	if err := storefs.Sync(st.RealDir()); err != nil {
		return 0, "", err
	}
	if err := b.sign(infos); err != nil {
		return 0, "", err
	}
	if err := st.RegisterValidPaths(ctx, infos); err != nil {
		return 0, "", fmt.Errorf("register outputs of '%s': %w", b.drvPath, err)
	}
	b.hooked(ctx, b.drv.OutputPaths())
	locks.SetDeletion(true)
	return store.Built, "", nil
}

// fallbackPath is Nix 2.8's LocalDerivationGoal::makeFallbackPath for a
// known output path: the scratch path a repair builds it at.
func fallbackPath(dir storepath.Dir, drvPath, p storepath.Path) (storepath.Path, error) {
	zero, err := hash.New(hash.SHA256, make([]byte, sha256.Size))
	if err != nil {
		return "", err
	}
	return dir.Make("rewrite:"+drvPath.Base()+":"+p.Base(), zero, p.Name())
}

var repairTemps atomic.Uint64

// repairTempName is a fresh temporary name in the store directory, of the
// localstore.TempPrefix form, so a leftover is cleaned up like the
// store's own once this process is gone.
func repairTempName(st *localstore.Store) string {
	return filepath.Join(st.RealDir(), fmt.Sprintf("%s%d-repair-%d", localstore.TempPrefix, os.Getpid(), repairTemps.Add(1)))
}

// redirect returns d with each output's hash and hash placeholder in the
// environment and arguments replaced by its scratch path's (Nix's
// inputRewrites, applied in the order of Nix's map: placeholders, which
// start with '/', before hash parts), and the scratch output paths.
func redirect(d *derivation.Derivation, ros []*repairOutput) (*derivation.Derivation, map[string]storepath.Path) {
	var pairs []string
	for _, ro := range ros {
		pairs = append(pairs, storepath.HashPlaceholder(ro.name), string(ro.scratch))
	}
	for _, ro := range ros {
		pairs = append(pairs, ro.final.HashPart(), ro.scratch.HashPart())
	}
	rewrite := func(s string) string {
		for i := 0; i < len(pairs); i += 2 {
			s = strings.ReplaceAll(s, pairs[i], pairs[i+1])
		}
		return s
	}
	rd := d.Clone()
	for k, v := range rd.Env {
		rd.Env[k] = rewrite(v)
	}
	for i, a := range rd.Args {
		rd.Args[i] = rewrite(a)
	}
	outs := map[string]storepath.Path{}
	for _, ro := range ros {
		outs[ro.name] = ro.scratch
	}
	return rd, outs
}

// finishOutput turns the checked scratch output of ro into the finished
// tree at ro.tmp and info into the final path's info: if the output
// refers to any scratch path (its own hash among them), its NAR is
// rewritten back to the final hashes (Nix's rewriteOutput) and hashed
// again; else the tree is renamed as it is. The tree is then canonical
// and synced.
func finishOutput(ctx context.Context, st *localstore.Store, ro *repairOutput, ros []*repairOutput, info *store.PathInfo) error {
	toFinal := map[storepath.Path]storepath.Path{}
	for _, o := range ros {
		toFinal[o.scratch] = o.final
	}
	rewrite := false
	for i, r := range info.References {
		if f, ok := toFinal[r]; ok {
			info.References[i] = f
			rewrite = true
		}
	}
	storepath.Sort(info.References)
	info.Path = ro.final
	src := st.RealPath(ro.scratch)
	if !rewrite {
		if err := os.Rename(src, ro.tmp); err != nil {
			return fmt.Errorf("repair '%s': %w", ro.final, err)
		}
	} else {
		pairs := make([][2]string, 0, len(ros))
		for _, o := range ros {
			pairs = append(pairs, [2]string{o.scratch.HashPart(), o.final.HashPart()})
		}
		h, n, err := rewriteTree(src, ro.tmp, pairs)
		if err != nil {
			return fmt.Errorf("repair '%s': rewrite hashes: %w", ro.final, err)
		}
		info.NarHash, info.NarSize = h, n
		if _, err := storefs.Delete(src); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// A renamed tree is canonical already (checkOutputs); a rewritten one
	// is not yet. Both are synced.
	return storefs.Canonicalise(ro.tmp, true)
}

// rewriteTree restores the NAR of src at dst with every hash part
// pairs[i][0] replaced by pairs[i][1], in order, and returns the rewritten
// NAR's SHA-256 and size. Hash parts all have the same length, so the
// NAR's framing stays intact.
func rewriteTree(src, dst string, pairs [][2]string) (hash.Hash, uint64, error) {
	pr, pw := io.Pipe()
	sum := sha256.New()
	var size countWriter
	w, flush := rewrite.Chain(io.MultiWriter(pw, sum, &size), pairs)
	dumped := make(chan error, 1)
	go func() {
		err := nar.Dump(w, src)
		if err == nil {
			err = flush()
		}
		pw.CloseWithError(err)
		dumped <- err
	}()
	err := nar.Restore(pr, dst)
	pr.CloseWithError(errors.New("restore ended"))
	if derr := <-dumped; err == nil {
		err = derr
	}
	if err != nil {
		storefs.Delete(dst)
		return hash.Hash{}, 0, err
	}
	return hash.FromHasher(hash.SHA256, sum), size.n, nil
}

// contentsGood reports whether p is valid, present, and hashes to its
// database NAR hash (Nix's Worker::pathContentsGood).
func contentsGood(ctx context.Context, st *localstore.Store, p storepath.Path) (bool, error) {
	info, err := st.QueryPathInfo(ctx, p)
	if errors.Is(err, store.ErrNotValid) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	sum := sha256.New()
	if err := nar.Dump(sum, st.RealPath(p)); err != nil {
		return false, nil // missing or unreadable
	}
	return hash.FromHasher(hash.SHA256, sum).Equal(info.NarHash), nil
}

// replaceValidPath puts the finished tree at tmp in place of dst (Nix's
// replaceValidPath) without a moment where dst is missing: one
// renameat2(RENAME_EXCHANGE) swaps them, then the old tree, now at tmp,
// is deleted. A missing dst is simply renamed to. Where the file system
// can't exchange, the old tree is moved aside first, as Nix does, and
// moved back if the new one can't be put in place.
func replaceValidPath(dst, tmp string) error {
	if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
		return nil
	}
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_EXCHANGE)
	if err == nil {
		_, err = storefs.Delete(tmp)
		return err
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("replace %s: %w", dst, err)
	}
	old := tmp + "-old"
	if err := os.Rename(dst, old); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Rename(old, dst)
		return err
	}
	_, err = storefs.Delete(old)
	return err
}

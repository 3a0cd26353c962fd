package gc

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"ferry/internal/localstore"
	"ferry/nix/nixbase32"
	"ferry/nix/storepath"
	"ferry/store"
)

// AutoRootPath is the gcroots/auto entry of an indirect root at link
// (an absolute, clean path): auto/<nix32(SHA-1(link))>.
func AutoRootPath(stateDir, link string) string {
	sum := sha1.Sum([]byte(link))
	return filepath.Join(stateDir, "gcroots", "auto", nixbase32.EncodeToString(sum[:]))
}

// AddRoot makes link a garbage collector root of p, as Nix 2.8's
// addPermRoot (nix-store --add-root LINK, always indirect since 2.4):
// link becomes a symlink to p, made atomically, and gcroots/auto gets a
// symlink to link, so the root lasts as long as link points into the
// store. p is temp-rooted first and must be valid. An existing link is
// replaced only if it is a symlink into the store. It returns the
// absolute link.
func AddRoot(ctx context.Context, s *localstore.Store, link string, p storepath.Path) (string, error) {
	abs, err := filepath.Abs(link)
	if err != nil {
		return "", fmt.Errorf("add root %s: %w", link, err)
	}
	if _, ok := toStorePath(s.Dir(), s.RealDir(), abs); ok {
		return "", fmt.Errorf("add root %s: creating a garbage collector root in the Nix store is forbidden", abs)
	}
	if err := s.AddTempRoot(ctx, p); err != nil {
		return "", fmt.Errorf("add root %s: %w", abs, err)
	}
	valid, err := s.IsValidPath(ctx, p)
	if err != nil {
		return "", fmt.Errorf("add root %s: %w", abs, err)
	}
	if !valid {
		return "", fmt.Errorf("add root %s: path '%s' %w", abs, p, store.ErrNotValid)
	}
	if st, err := os.Lstat(abs); err == nil {
		ok := false
		if st.Mode().Type() == os.ModeSymlink {
			if t, err := os.Readlink(abs); err == nil {
				_, ok = toStorePath(s.Dir(), s.RealDir(), t)
			}
		}
		if !ok {
			return "", fmt.Errorf("add root %s: cannot create symlink '%s'; already exists", abs, abs)
		}
	}
	if err := replaceSymlink(p.String(), abs); err != nil {
		return "", fmt.Errorf("add root %s: %w", abs, err)
	}
	auto := AutoRootPath(s.StateDir(), abs)
	if err := os.MkdirAll(filepath.Dir(auto), 0o755); err != nil {
		return "", fmt.Errorf("add root %s: %w", abs, err)
	}
	if err := replaceSymlink(abs, auto); err != nil {
		return "", fmt.Errorf("add root %s: %w", abs, err)
	}
	return abs, nil
}

// replaceSymlink makes link a symlink to target atomically, through a
// temporary link next to it (Nix's makeSymlink: "<link>.tmp-<pid>-<rand>").
func replaceSymlink(target, link string) error {
	var b [4]byte
	rand.Read(b[:])
	tmp := link + ".tmp-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

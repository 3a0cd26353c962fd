package store

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"

	"ferry/nix/export"
	"ferry/nix/hash"
	"ferry/nix/storepath"
)

// Export writes paths, which must all be valid in st, to w as a nix-store
// --export stream, as Nix 2.8's Store::exportPaths does: each path once,
// references first (TopoSort), each NAR followed by the path's
// references and deriver. Every NAR is hashed as it is written and must
// still have its registered hash (unless that is unknown, all zeros), so
// that a corrupted object is not passed on.
func Export(ctx context.Context, st Store, w io.Writer, paths []storepath.Path) error {
	infos := make(map[storepath.Path]*PathInfo, len(paths))
	set := make([]storepath.Path, 0, len(paths))
	for _, p := range paths {
		if infos[p] != nil {
			continue
		}
		info, err := st.QueryPathInfo(ctx, p)
		if err != nil {
			return fmt.Errorf("export %s: %w", p, err)
		}
		infos[p] = info
		set = append(set, p)
	}
	sorted, err := TopoSort(set, func(p storepath.Path) []storepath.Path { return infos[p].References })
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	ew := export.NewWriter(w)
	for _, p := range sorted {
		if err := ctx.Err(); err != nil {
			return err
		}
		info := infos[p]
		if err := ew.StartPath(); err != nil {
			return fmt.Errorf("export %s: %w", p, err)
		}
		h := sha256.New()
		if err := st.NarFromPath(ctx, p, io.MultiWriter(ew, h)); err != nil {
			return fmt.Errorf("export %s: %w", p, err)
		}
		if got := hash.FromHasher(hash.SHA256, h); !got.Equal(info.NarHash) && !unknownHash(info.NarHash) {
			// Nix 2.8's message (exportPath in src/libstore/export-import.cc).
			return fmt.Errorf("hash of path '%s' has changed from '%s' to '%s'!", p,
				info.NarHash.Encode(hash.Nix32, true), got.Encode(hash.Nix32, true))
		}
		if err := ew.FinishPath(&export.Info{Path: p, References: info.References, Deriver: info.Deriver}); err != nil {
			return fmt.Errorf("export %s: %w", p, err)
		}
	}
	return ew.Close()
}

// unknownHash reports whether h stands for "not known": no hash, or one of
// all zeros (Nix's Hash(type)).
func unknownHash(h hash.Hash) bool {
	for _, b := range h.Bytes() {
		if b != 0 {
			return false
		}
	}
	return true
}

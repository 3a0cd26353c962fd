package localstore

import (
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/rewrite"
	"ferry/nix/storepath"
)

// hashCAPath is Nix's LocalStore::hashCAPath (src/libstore/local-store.cc
// @2.8.0): the hash of the object at path (its NAR, or a flat file's
// contents) through a HashModuloSink of modulus, the path's hash part:
// every occurrence of modulus is hashed as as many NUL bytes, and "|<offset>"
// for each occurrence is hashed after the content. It is the content
// address of a path that refers to itself (a floating content-addressed
// output).
func hashCAPath(m storepath.Method, a hash.Algorithm, path, modulus string) (hash.Hash, error) {
	mh := rewrite.NewModuloHasher(a, modulus)
	if err := nar.DumpContents(mh, path, m == storepath.Flat); err != nil {
		return hash.Hash{}, err
	}
	return mh.Sum()
}

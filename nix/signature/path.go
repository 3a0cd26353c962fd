package signature

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"ferry/nix/hash"
	"ferry/nix/storepath"
)

// Fingerprint returns what a store path's signatures sign (Nix 2.8.0
// src/libstore/store-api.cc, ValidPathInfo::fingerprint):
//
//	1;<path>;<narHash as algo:nix32>;<narSize>;<references, comma-separated>
//
// with the references as full paths, sorted and without duplicates (Nix's
// printStorePathSet). A narSize of 0 is Nix's error; Nix 2.8 signs NAR
// hashes of any algorithm (the store's are SHA-256), and a zero narHash,
// which Nix cannot have, is an error too.
func Fingerprint(path storepath.Path, narHash hash.Hash, narSize uint64, refs []storepath.Path) (string, error) {
	if narSize == 0 {
		return "", fmt.Errorf("cannot calculate fingerprint of path '%s' because its size is not known", path)
	}
	if narHash.IsZero() {
		return "", fmt.Errorf("cannot calculate fingerprint of path '%s' because its NAR hash is not known", path)
	}
	sorted := make([]string, len(refs))
	for i, r := range refs {
		sorted[i] = string(r)
	}
	sort.Strings(sorted)
	var b strings.Builder
	b.WriteString("1;")
	b.WriteString(string(path))
	b.WriteString(";")
	b.WriteString(narHash.Encode(hash.Nix32, true))
	b.WriteString(";")
	b.WriteString(strconv.FormatUint(narSize, 10))
	b.WriteString(";")
	for i, r := range sorted {
		if i > 0 && r == sorted[i-1] {
			continue
		}
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(r)
	}
	return b.String(), nil
}

// SignPath returns k's signature of a store path with the given NAR hash,
// NAR size and references (Nix 2.8.0 src/libstore/store-api.cc,
// ValidPathInfo::sign), the string that goes into the path's signatures.
func (k SecretKey) SignPath(path storepath.Path, narHash hash.Hash, narSize uint64, refs []storepath.Path) (string, error) {
	fp, err := Fingerprint(path, narHash, narSize, refs)
	if err != nil {
		return "", err
	}
	return k.Sign(fp), nil
}

// VerifyPath counts the signatures in sigs that are valid for a store path
// with the given NAR hash, NAR size and references, by keys in ks, with
// the error of CheckSignatures (Nix 2.8.0 src/libstore/store-api.cc,
// ValidPathInfo::checkSignatures). As there, a path without signatures
// counts 0 without error, and one with signatures but a narSize of 0 is
// Fingerprint's error. A content-addressed path needs no signature:
// LocalStore::pathInfoIsUntrusted (src/libstore/local-store.cc) accepts a
// path when require-sigs is off, IsContentAddressed holds, or the count is
// non-zero; otherwise LocalStore::addToStore refuses it ("cannot add path
// '%s' because it lacks a valid signature"), and an error here makes Nix
// 2.8 fail the addition with that error instead.
func (ks PublicKeys) VerifyPath(path storepath.Path, narHash hash.Hash, narSize uint64, refs []storepath.Path, sigs []string) (int, error) {
	if len(sigs) == 0 {
		return 0, nil
	}
	fp, err := Fingerprint(path, narHash, narSize, refs)
	if err != nil {
		return 0, err
	}
	return ks.CheckSignatures(fp, sigs)
}

// IsContentAddressed reports whether path really is the content-addressed
// path its content address ca and references give (Nix 2.8.0
// src/libstore/store-api.cc, ValidPathInfo::isContentAddressed): such a
// path is trusted without signatures, checkSignatures counting it as
// maxSigs. A reference to path itself is the self reference of a
// fixed-output path. A zero ca, or one that gives another path, is false.
func IsContentAddressed(path storepath.Path, ca storepath.ContentAddress, refs []storepath.Path) bool {
	if ca.IsZero() {
		return false
	}
	if _, err := path.Dir().Parse(string(path)); err != nil {
		return false
	}
	self := false
	others := refs
	if ca.Method != storepath.Text {
		others = make([]storepath.Path, 0, len(refs))
		for _, r := range refs {
			if r == path {
				self = true
			} else {
				others = append(others, r)
			}
		}
	}
	got, err := path.Dir().MakeFromCA(path.Name(), ca, others, self)
	return err == nil && got == path
}

// Package nar reads and writes Nix archives (NAR), the serialisation Nix
// uses to hash, copy and store file system objects (docs/store.md §3).
//
// The package owns the byte format and the three ways of getting between a
// NAR and a file system:
//
//   - [Reader] and [Writer] stream a NAR with the archive/tar shape: Next or
//     WriteHeader per file system object, Read or Write for the contents of
//     regular files. Both are goroutine-free state machines.
//   - [Dump] serialises a path exactly like `nix-store --dump`; [DumpFile] and
//     [DumpBytes] write the NAR of a single regular file (Nix's dumpString).
//   - [Restore] recreates a NAR below a new destination path, and [List]
//     prints a listing like `nix nar ls`.
//
// A Reader never reads past the final ")" of the archive, so a NAR can be
// decoded from the middle of a protocol stream. It keeps no buffer of its
// own over the underlying reader; a caller that owns the stream should wrap
// it in a bufio.Reader.
//
// Parsing follows the strict grammar of current Nix rather than the lenient
// 2.8.0 parser (docs/store.md §3.5): tokens must come in the exact order
// Nix writes them, directory entries must be strictly increasing bytewise,
// padding must be zero, and names, symlink targets and nesting depth are
// bounded (see [MaxNameLen], [MaxTargetLen], [MaxDepth]). No archive written
// by Nix 2.8.0 is rejected by these rules.
package nar

// Package export reads and writes the stream of `nix-store --export` and
// `nix-store --import` (docs/protocol.md §5.1; src/libstore/export-import.cc
// in Nix 2.8.0). The same stream is the payload of the serve protocol's
// ImportPaths (client to server) and ExportPaths (server to client) commands,
// and of the single-path ImportPaths that old clients use instead of
// AddToStoreNar (§5.2).
//
// The stream is, for each store path, dependencies first:
//
//	u64 1                      another path follows
//	NAR                        raw, not length-prefixed: only parsing finds its end
//	u64 0x4558494e             EXPORT_MAGIC ("NIXE")
//	string path
//	u64 n, n × string          references, sorted by base name
//	string deriver             "" for none
//	u64 0                      legacy signature flag; on input 1 means a signature string follows, ignored
//
// and after the last path a u64 0.
//
// The metadata of a path comes after its NAR, so Reader hands out the NAR
// first (Next, then Read) and the metadata afterwards (Info). The NAR bytes
// are passed through verbatim while a nar.Reader checks their structure, so
// the Reader never reads past the end of a NAR and a malformed archive is an
// error rather than a desynchronised stream. As with every decoder of a
// protocol stream, a Reader reads only the bytes it needs; give it a
// bufio.Reader shared with whatever reads the stream afterwards.
package export
